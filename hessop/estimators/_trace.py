"""``trace``: ``tr(H)`` to a target accuracy, Hutchinson or adaptive Hutch++ chosen from the first products."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hessop._array import make_rng
from hessop._probes import DEFAULT_BLOCK
from hessop._validate import check_choice, check_int
from hessop.estimators._adaptive import DEFAULT_MAX_RANK, TraceKind, adaptive
from hessop.estimators._estimates import TraceEstimate
from hessop.estimators._exact import exact_trace
from hessop.estimators._run import MAX_HVP, Run, check_budget
from hessop.estimators._xtrace import xtrace
from hessop.operator import as_operator


def trace(
    H: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_hvp: int | None = None,
    method: str = "auto",
    seed: int | np.random.Generator | None = 0,
    block_size: int = DEFAULT_BLOCK,
    max_rank: int = DEFAULT_MAX_RANK,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> TraceEstimate:
    """``tr(H)`` to a requested accuracy at the least cost: Hutchinson or adaptive Hutch++, chosen from the first
    products, with a 95% confidence interval one can rely on.

    Maths
    -----
    Every probe is Rademacher.  A first block of ``block_size`` probes ``S`` gives Hutchinson samples
    ``s^T H s`` and a sketch ``H S``.

    * Hutchinson: ``tr(H) ~ mean(v^T H v)``, standard error ``sd / sqrt(N)``.
    * Adaptive Hutch++ (Meyer, Musco, Musco, Woodruff 2021; the adaptive split of products between sketch and
      probes follows the idea of Persson, Cortinovis, Kressner, SIAM J. Matrix Anal. Appl. 43(3), 2022): with
      ``Q`` an orthonormal basis of sketched directions, ``tr(H) = tr(Q^T H Q) + tr((I - P) H (I - P))``,
      ``P = Q Q^T``; the first term is exact (one product per column of Q), the second is estimated by Hutchinson
      with fresh probes projected off Q, ``g' = (I - P) g``.  Given Q those residual samples are i.i.d. with mean
      ``tr(H) - tr(Q^T H Q)``, so ``tr(Q^T H Q) + mean(residual)`` is unbiased and the standard error and
      Student-t interval of the residual samples are those of the estimate.  Only samples drawn after Q was last
      changed are used (with a target: only those of the last batch, see Stopping).

    Choice (``method="auto"``): if the first block predicts that Hutchinson needs fewer than
    ``TRY_DEFLATION_BLOCKS = 8`` blocks for the target (with a fixed budget and no target: if the budget is under
    ``BUDGET_TRY_BLOCKS = 4`` blocks), Hutchinson runs with
    the same probes as :func:`hutchinson`.  Otherwise Q is built from ``H S`` (one block of products) and the next
    block of probes gives both residual and plain samples (the same products serve both); deflation is kept if it
    cut the per-sample variance at least ``VARIANCE_GAIN = 2`` times, else Hutchinson goes on with every plain
    sample so far.  On a flat spectrum the try costs one block, at most 1/8 of what Hutchinson spends.

    Growth: once as many residual samples as Q has columns are in, the rank doubles (their products ``H g'`` are
    the new sketch, plus one product per new column) when (a) the last doubling (or the deflation) cut the variance
    at least 2x and (b) more than ``3 * rank`` further products are still needed (target) or left (budget).  If a
    doubling halves the variance, it pays exactly when (b) holds: staying needs ``N_rem`` more probes, doubling
    ``rank + (N_rem + rank) / 2``.

    Stopping, Hutchinson: after each block, when the 95% half-width ``t_{0.975, N-1} sd / sqrt(N)`` of the samples
    is at most ``max(rtol * |estimate|, atol)`` (from ``MIN_RTOL_SAMPLES = 32`` samples on), as
    :func:`hutchinson`.

    Stopping, Hutch++ (two stages): after each change of Q, the first ``max(32, rank)`` residual samples are a
    pilot; they decide whether to double the rank and otherwise fix the size ``N = max(32, (t sd / target)^2)`` of
    a fresh batch.  The interval is that batch's Student-t interval: its samples are independent of every decision
    taken (the method, the rank, N), so it is a fixed-size interval with no selection.  If it misses the target
    (its own ``sd`` came out larger), it is the pilot of the next batch.  Why: the residual samples of a network
    are right-skewed (small sample variances come with low means), and stopping on the samples the interval uses
    picked runs whose variance happened to be small: on the test network at rtol=0.01 the interval covered the
    trace in 93.5% of 400 seeds, every miss below it.  The pilot costs ``max(32, rank)`` products more (at 1% on
    the outlier matrix of the tests: 96 products instead of 64).

    Both: stop when the budget is spent (``converged=False`` and a ``RuntimeWarning`` if a target was not met).
    If the products still needed are at least ``n``, the trace is taken exactly from the ``n`` identity columns
    instead.  The tests measure the coverage over 200 seeds (>= 93%).

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    rtol, atol : float, optional
        Target 95% half-width ``max(rtol * |estimate|, atol)``.  Give ``atol`` when the trace may be near zero.
    max_hvp : int, optional
        Budget: with a target, the most products to spend (default 10,000); without one, the products to spend.
    method : {"auto", "hutchinson", "hutch++", "xtrace"}
        ``"auto"`` (default) chooses as above; ``"hutchinson"`` and ``"hutch++"`` force one (Hutch++ still grows
        its rank adaptively); ``"xtrace"`` runs :func:`xtrace` on the budget ``max_hvp`` (no target: its
        leave-one-out error estimate is not an interval to stop on).
    seed : int, numpy Generator or None
        Seed of the host-drawn probes; default 0.
    block_size : int
        Probes per block product; default 16.  It is also the first sketch's rank.
    max_rank : int
        Most deflated directions (memory two ``n x max_rank`` blocks); default 512, at most ``n // 2``.
    progress : bool, optional
        Show a tqdm bar (products, method, estimate and 95% half-width); default None: only when stderr is a
        terminal.
    checkpoint : str or Path, optional
        Resumable run (as :func:`hutchinson`): after every block the samples, the deflation basis and its products
        (n x rank blocks copied to the host) and the generator's state are saved to this file; default None.

    Returns
    -------
    TraceEstimate
        ``estimate``, ``std_error``, ``interval()``, ``n_hvp``, ``method`` ("hutchinson" or "hutch++"), ``rank``
        (deflated directions), ``choice`` (why that method), ``stop_reason``, ``converged``, ``samples`` (the
        plain or residual samples behind the interval).

    Examples
    --------
    >>> import hessop, hessop.testing as ht
    >>> H = ht.matrix_with_spectrum(ht.outlier_spectrum(200, seed=0), seed=1)  # 10 outliers, tr(H) = 379.98
    >>> r = hessop.trace(H, rtol=0.01, seed=0)
    >>> r.method, r.rank, round(r.estimate, 1), r.converged, r.n_hvp
    ('hutch++', 16, 380.4, True, 96)
    >>> r.choice
    'deflating 16 directions cut the per-sample variance 941x'
    """
    op = as_operator(H)
    method = check_choice(method, "method", ("auto", "hutchinson", "hutch++", "xtrace"))
    targeted = rtol is not None or atol is not None
    budget = check_budget(max_hvp, 1, "one sample", MAX_HVP if targeted else None)
    b = check_int(block_size, "block_size", 2)
    max_rank = min(check_int(max_rank, "max_rank", 1), op.n // 2)
    if method == "xtrace":
        if targeted:
            raise ValueError("method='xtrace' takes a budget max_hvp only (its leave-one-out error estimate is not a "
                             "confidence interval to stop on); for a target use method='auto' or 'hutch++'")
        return xtrace(op, budget, seed=seed, progress=progress, checkpoint=checkpoint)
    if not targeted and budget >= op.n:
        return exact_trace(op, b)
    settings = {"rtol": rtol, "atol": atol, "max_hvp": budget, "method": method, "block_size": b, "max_rank": max_rank}
    with Run(op, "trace", seed, settings, checkpoint, progress, budget) as run:
        return adaptive(TraceKind(op), run, make_rng(seed), method, rtol, atol, budget, b, max_rank)
