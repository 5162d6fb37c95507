"""Diagonal of a Hessian from Hessian-vector products: Hutchinson, Diag++ and XDiag, with a standard error per entry.

:func:`diagonal` takes a fixed number of probes or a target accuracy; with a target it chooses Hutchinson or Diag++
(deflated Hutchinson) by the rule of :func:`hessop.trace` and stops on a fresh batch of samples, so the
standard errors it reports are those of the estimate.  XDiag (``method="xdiag"``) is the fixed-budget choice where a
few eigenvalues dominate; its jackknife standard errors are conservative.
"""


from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from hessop._array import make_rng
from hessop._probes import DEFAULT_BLOCK, block_sizes
from hessop._validate import check_choice, check_int
from hessop.estimators._adaptive import DEFAULT_MAX_RANK, DiagonalKind, adaptive
from hessop.estimators._estimates import DiagonalEstimate, per_parameter
from hessop.estimators._run import MAX_HVP, Run, check_budget
from hessop.estimators._stats import MIN_RTOL_SAMPLES, Moments
from hessop.estimators._xdiag import xdiag
from hessop.operator import as_operator


def diagonal(
    H: Any,
    max_hvp: int | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int | np.random.Generator | None = 0,
    block_size: int = DEFAULT_BLOCK,
    method: str = "auto",
    max_rank: int = DEFAULT_MAX_RANK,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> DiagonalEstimate:
    """``diag(H)`` with a standard error per entry: Hutchinson's estimate (Bekas, Kokiopoulou, Saad, Appl. Numer.
    Math. 57, 2007), Diag++ (deflated Hutchinson: Baston, Nakatsukasa, "Stochastic diagonal estimation:
    probabilistic bounds and an improved algorithm", arXiv:2201.10684, 2022), or XDiag (Epperly, Tropp, Webber,
    SIAM J. Matrix Anal. Appl. 45(1), 2024).

    Maths
    -----
    Hutchinson: for Rademacher probes ``v`` (entries +-1, so ``v * v = 1``), ``E[v * (H v)] = diag(H)`` entrywise,
    with per-sample variance ``sum_{j != i} H_ij^2`` for entry ``i``.  The estimate is the mean of ``v * (H v)``
    over the probes and each entry's standard error is its sample standard deviation over ``sqrt(N)``.  Means and
    variances are accumulated on the backend block by block (Chan et al.'s pairwise update, stable for large
    means), so nothing of length n goes to the host.

    Diag++: with ``Q`` an orthonormal basis of sketched directions (``range(H S)``), ``P = Q Q^T``, ``Z = H Q`` and
    ``B = Q^T Z``,

        diag(H) = diag(P H + H P - P H P) + diag((I - P) H (I - P)),

    where the first part is exact, ``2 rowsum(Q * Z) - rowsum((Q B) * Q)``, and the second is Hutchinson's estimate
    with fresh Rademacher probes ``g``: ``g * ((I - P) H (I - P) g) = g * (H g' - Q Z^T g')``, ``g' = (I - P) g``,
    one product each.  Given Q the samples are i.i.d. and unbiased, so their standard errors are those of the
    estimate.  Entry i's variance drops from ``sum_{j != i} H_ij^2`` to the same sum over the deflated matrix: where
    a few eigenvalues dominate (trained networks) that is most of it.

    Stopping with ``rtol`` / ``atol`` (the rule of :func:`trace`, applied norm-wise): the target is met when the
    root mean square of the entries' 95% half-widths ``t_{0.975, N-1} se_i`` is at most
    ``max(rtol * rms(diagonal), atol)``.  Hutchinson stops on it after each block from ``MIN_RTOL_SAMPLES = 32``
    probes on.  ``method="auto"`` (default) chooses as :func:`trace` does: if the first block predicts that
    Hutchinson needs fewer than ``TRY_DEFLATION_BLOCKS = 8`` blocks, Hutchinson; otherwise ``Q`` is built from
    that block's products and the next block gives both residual and plain samples, and Diag++ is kept if it cut the
    entries' mean per-sample variance at least ``VARIANCE_GAIN = 2`` times.  Diag++ doubles its rank like
    :func:`trace`'s Hutch++ and stops in two stages: a pilot of ``max(32, rank)`` residual samples fixes the size of
    a fresh batch, whose standard errors alone give the result (no sample that informed a decision is in it).  If
    the products still needed reach ``n``, the diagonal is taken exactly from the ``n`` identity columns.  Two
    scalars go to the host per block.

    XDiag (``method="xdiag"``, a fixed budget ``max_hvp`` of products, no target): see :func:`xdiag`.  At a
    fixed budget on the test suite's outlier matrix (n = 400, 100 products, 100 seeds) its root-mean-square error
    was 20x smaller than Hutchinson's; on a flat spectrum 2.8x larger.  Its jackknife standard errors are
    conservative (1.2-2.3x the true error), so with a target, Diag++, whose standard errors are exact, is used.

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    max_hvp : int, optional
        The most Hessian-vector products to spend.  Without a target (then it is required): Hutchinson's number of
        Rademacher probes (>= 1), or XDiag's budget (``method="xdiag"``, >= 4, as :func:`xtrace`).  With a target:
        the cap, sketch included (default 10,000, at least 32; a ``RuntimeWarning`` if the target is not met).
    rtol, atol : float, optional
        Target root-mean-square 95% half-width, relative to the diagonal's root mean square and absolute.
    seed : int, numpy Generator or None
        Seed of the host-drawn probes; default 0.
    block_size : int
        Probes per block product, and the first sketch's rank; default 16.
    method : {"auto", "hutchinson", "diag++", "xdiag"}
        Default "auto": with a target, chosen as above; with a budget alone, Hutchinson.  "diag++" needs a target
        and deflates from the start; "xdiag" takes ``max_hvp`` only.
    max_rank : int
        Most deflated directions (memory two ``n x max_rank`` blocks); default 512, at most ``n // 2``.
    progress : bool, optional
        Show a tqdm bar (probes or products; with a target the method and the root-mean-square 95% half-width);
        default None: only when stderr is a terminal.
    checkpoint : str or Path, optional
        Resumable run (as :func:`hutchinson`): the running means and sums of squares (n-vectors copied to the host),
        the deflation basis and its products, and the generator's state are saved after every block; default None.
        Not for ``method="xdiag"``.

    Notes
    -----
    Memory: Hutchinson ``3 * block_size + 4`` n-vectors (one probe block, its product, the running mean and
    variance); Diag++ adds ``Q`` and ``Z`` (``2 * rank``), the products kept for the next doubling (up to
    ``rank``) and three running means and variances; XDiag about ``4 * max_hvp`` n-vectors.

    Returns
    -------
    DiagonalEstimate
        ``diagonal`` and ``std_error`` as native arrays; for a PyTorch operator ``per_parameter`` maps each
        parameter name to its diagonal entries shaped like the parameter; ``method``, ``choice``, ``rank`` and
        ``stop_reason`` say how it was computed.

    Examples
    --------
    >>> import hessop, hessop.testing as ht
    >>> H = ht.matrix_with_spectrum(ht.outlier_spectrum(200, seed=0), seed=1)  # 10 outliers, tr(H) = 379.98
    >>> d = hessop.diagonal(H, rtol=0.1, seed=0)
    >>> d.method, d.rank, d.n_hvp, d.converged
    ('diag++', 16, 96, True)
    >>> x = hessop.diagonal(H, 60, method="xdiag", seed=0)
    >>> x.n_hvp, x.n_samples
    (60, 30)
    """
    op = as_operator(H)
    method = check_choice(method, "method", ("auto", "hutchinson", "diag++", "xdiag"))
    targeted = rtol is not None or atol is not None
    if max_hvp is None and not targeted:
        raise ValueError("give a budget max_hvp= (the most Hessian-vector products to spend: the number of probes) "
                         "or a target: rtol= (relative root-mean-square 95% half-width, e.g. rtol=0.05) and/or atol=")
    if method == "xdiag":
        if targeted:
            raise ValueError("method='xdiag' takes a budget of products max_hvp only; for a target use the "
                             "default method='auto' (Diag++ where it pays)")
        if checkpoint is not None:
            raise ValueError("method='xdiag' has no checkpoint (its sketch is one block of products); use "
                             "method='hutchinson' for a resumable run")
        return xdiag(op, check_budget(max_hvp, 4, "XDiag (two probes and their sketch)"), seed)
    if method == "diag++" and not targeted:
        raise ValueError("method='diag++' needs a target (rtol= and/or atol=); for a fixed budget of products use "
                         "method='xdiag' or 'hutchinson'")
    block_size = check_int(block_size, "block_size", 1 if not targeted else 2)
    if targeted:
        budget = check_budget(max_hvp, MIN_RTOL_SAMPLES, "a target (never met on fewer samples)", MAX_HVP)
        max_rank = min(check_int(max_rank, "max_rank", 1), op.n // 2)
        settings = {"rtol": rtol, "atol": atol, "max_hvp": budget, "block_size": block_size, "method": method,
                    "max_rank": max_rank}
        with Run(op, "diagonal", seed, settings, checkpoint, progress, budget) as run:
            result = adaptive(DiagonalKind(op), run, make_rng(seed), method, rtol, atol, budget, block_size,
                              max_rank)
    else:
        result = _fixed(op, check_budget(max_hvp, 1, "one sample"), block_size, seed, progress, checkpoint)
        if method == "hutchinson":
            result = dataclasses.replace(result, choice="method='hutchinson' asked for")
    return dataclasses.replace(result, per_parameter=per_parameter(op, result.diagonal))


def _fixed(op: Any, n_samples: int, block_size: int, seed: Any, progress: bool | None,
           checkpoint: str | os.PathLike | None) -> DiagonalEstimate:
    """Hutchinson's diagonal on ``n_samples`` Rademacher probes."""
    kind, acc = DiagonalKind(op), Moments(op)
    settings = {"max_hvp": n_samples, "block_size": block_size, "method": "hutchinson"}
    with Run(op, "diagonal", seed, settings, checkpoint, progress, n_samples, "sample") as run:
        rng = run.rng(make_rng(seed))
        run.restore(acc=acc)
        run.bar.update(acc.count)
        for k in block_sizes(n_samples - acc.count, block_size):
            kind.hutchinson_block(rng, k, acc)
            run.save(acc=acc, rng=rng)
            run.bar.update(k)
        return DiagonalEstimate(diagonal=acc.mean, std_error=acc.std_error(), per_parameter=None, n_hvp=run.spent,
                                n_samples=acc.count, method="hutchinson", choice="a fixed number of probes")
