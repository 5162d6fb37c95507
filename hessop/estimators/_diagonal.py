"""Diagonal of a Hessian from Hessian-vector products: Hutchinson, Diag++ and XDiag, with a standard error per entry.

:func:`diagonal` takes a fixed number of probes or a target accuracy; with a target it chooses Hutchinson or Diag++
(deflated Hutchinson) by the rule of :func:`hessop.trace` and stops on a fresh batch of samples, so the
standard errors it reports are those of the estimate.  XDiag (``method="xdiag"``) is the fixed-budget choice where a
few eigenvalues dominate; its jackknife standard errors are conservative.
"""


from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from hessop._array import check_finite, make_rng
from hessop._checkpoint import Checkpoint, restore_rng, rng_state
from hessop._probes import DEFAULT_BLOCK, block_sizes, probe_block
from hessop._progress import Progress
from hessop._validate import check_choice, check_int
from hessop.estimators._deflation import _Deflation
from hessop.estimators._estimates import DiagonalEstimate
from hessop.estimators._exact import _exact_diagonal
from hessop.estimators._stats import (
    MIN_RTOL_SAMPLES,
    _check_samples,
    _t_quantile,
    _target_rule,
    _warn_not_converged,
)
from hessop.estimators._trace import DEFAULT_MAX_RANK, TRY_DEFLATION_BLOCKS, VARIANCE_GAIN
from hessop.estimators._xdiag import _xdiag
from hessop.operator import as_operator


def diagonal(
    H: Any,
    n_samples: int | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_samples: int = 10_000,
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

    XDiag (``method="xdiag"``, a fixed budget ``n_samples`` of products, no target): see :func:`_xdiag`.  At a
    fixed budget on the test suite's outlier matrix (n = 400, 100 products, 100 seeds) its root-mean-square error
    was 20x smaller than Hutchinson's; on a flat spectrum 2.8x larger.  Its jackknife standard errors are
    conservative (1.2-2.3x the true error), so with a target, Diag++, whose standard errors are exact, is used.

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    n_samples : int, optional
        A fixed number of Rademacher probes, >= 1 (Hutchinson; for ``method="xdiag"``: the product budget, >= 4,
        as ``n_hvp`` of :func:`xtrace`).  Give either ``n_samples`` or a target (``rtol`` and/or ``atol``).
    rtol, atol : float, optional
        Target root-mean-square 95% half-width, relative to the diagonal's root mean square and absolute.
    max_samples : int
        With a target, the most products to spend (sketch included); default 10,000 (a ``RuntimeWarning`` if the
        target is not met).
    seed : int, numpy Generator or None
        Seed of the host-drawn probes; default 0.
    block_size : int
        Probes per block product, and the first sketch's rank; default 16.
    method : {"auto", "hutchinson", "diag++", "xdiag"}
        Default "auto": with a target, chosen as above; with ``n_samples``, Hutchinson.  "diag++" needs a target
        and deflates from the start; "xdiag" takes ``n_samples`` only.
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
    ``rank``) and three running means and variances; XDiag about ``8 * n_samples`` n-vectors.

    Returns
    -------
    DiagonalEstimate
        ``diagonal`` and ``std_error`` as native arrays; for a PyTorch operator ``per_parameter`` maps each
        parameter name to its diagonal entries shaped like the parameter; ``method``, ``choice``, ``rank`` and
        ``stop_reason`` say how it was computed.
    """
    op = as_operator(H)
    method = check_choice(method, "method", ("auto", "hutchinson", "diag++", "xdiag"))
    targeted = rtol is not None or atol is not None
    if (n_samples is None) == (not targeted):
        raise ValueError("give exactly one of n_samples (a fixed number of probes) or a target: rtol (relative "
                         "root-mean-square 95% half-width, e.g. rtol=0.05) and/or atol")
    if method == "xdiag":
        if targeted:
            raise ValueError("method='xdiag' takes a budget of products n_samples only; for a target use the "
                             "default method='auto' (Diag++ where it pays)")
        if checkpoint is not None:
            raise ValueError("method='xdiag' has no checkpoint (its sketch is one block of products); use "
                             "method='hutchinson' for a resumable run")
        return _xdiag(op, check_int(n_samples, "n_samples", 4), seed)
    if method == "diag++" and not targeted:
        raise ValueError("method='diag++' needs a target (rtol= and/or atol=); for a fixed budget of products use "
                         "method='xdiag' or 'hutchinson'")
    block_size = check_int(block_size, "block_size", 1 if not targeted else 2)
    unflatten = getattr(op.backend, "unflatten", None)
    if targeted:
        budget = check_int(max_samples, "max_samples", MIN_RTOL_SAMPLES)
        max_rank = min(check_int(max_rank, "max_rank", 1), op.n // 2)
        ck = Checkpoint(checkpoint, "diagonal", op, seed, {"n_samples": None, "rtol": rtol, "atol": atol,
                                                           "max_samples": budget, "block_size": block_size,
                                                           "method": method, "max_rank": max_rank})
        bar = Progress(progress, op, "diagonal", budget, "HVP")
        try:
            result = _diagonal_adaptive(op, method, _target_rule(rtol, atol), budget, block_size, max_rank, seed,
                                        bar, ck)
        finally:
            bar.close()
        if not result.converged:
            xp = op.xp
            half = _t_quantile(0.95, max(result.n_samples - 1, 1)) * math.sqrt(float(xp.mean(result.std_error**2)))
            _warn_not_converged("diagonal", rtol, atol, f"max_samples={budget}",
                                math.sqrt(float(xp.mean(result.diagonal**2))), half)
        return dataclasses.replace(result, per_parameter=unflatten(result.diagonal) if callable(unflatten) else None)

    n_samples = check_int(n_samples, "n_samples", 1)
    rng = make_rng(seed)
    hvp0 = op.n_hvp
    acc = _Moments(op)
    ck = Checkpoint(checkpoint, "diagonal", op, seed, {"n_samples": n_samples, "block_size": block_size,
                                                       "method": "hutchinson"})
    state = ck.load()
    if state is not None:
        acc.restore(state, "acc")
        rng, hvp0 = restore_rng(state["rng"]), hvp0 - state["n_hvp"]
    bar = Progress(progress, op, "diagonal", n_samples, "sample")
    bar.update(acc.count)
    for k in block_sizes(n_samples - acc.count, block_size):
        _hutchinson_block(op, rng, k, acc)
        ck.save(**acc.state("acc"), rng=rng_state(rng), n_hvp=op.n_hvp - hvp0)
        bar.update(k)
    bar.close()
    return DiagonalEstimate(diagonal=acc.mean, std_error=acc.std_error(),
                            per_parameter=unflatten(acc.mean) if callable(unflatten) else None,
                            n_hvp=op.n_hvp - hvp0, n_samples=acc.count, method="hutchinson",
                            choice="a fixed number of probes" if method == "auto" else "method='hutchinson' asked for")


class _Moments:
    """Running entrywise mean and sum of squared deviations of n x k sample blocks, on the backend (the pairwise
    update of Chan, Golub, LeVeque, Amer. Statist. 37(3), 1983, stable for large means)."""

    def __init__(self, op: Any) -> None:
        self.op, self.xp = op, op.xp
        self.mean: Any = None
        self.m2: Any = None
        self.count = 0

    def add(self, X: Any, what: str | None = None) -> None:
        """Add the columns of ``X``; with ``what``, first check their sum is finite (one scalar to the host)."""
        xp, k = self.xp, int(X.shape[1])
        if what is not None:
            check_finite(float(self.op.to_numpy(xp.sum(X))), what, self.count + 1)
        bmean = xp.mean(X, axis=1)
        bm2 = xp.sum((X - bmean[:, None]) ** 2, axis=1)
        if self.mean is None:
            self.mean, self.m2 = bmean, bm2
        else:
            total = self.count + k
            delta = bmean - self.mean
            self.mean = self.mean + delta * (k / total)
            self.m2 = self.m2 + bm2 + delta**2 * (self.count * k / total)
        self.count += k

    def copy(self) -> _Moments:
        other = _Moments(self.op)
        other.mean, other.m2, other.count = self.mean, self.m2, self.count
        return other

    def summary(self, offset: Any = 0.0) -> tuple[float, float]:
        """Two scalars in one transfer to the host: the entries' mean per-sample variance and the root mean square
        of ``offset + mean``."""
        xp = self.xp
        v = self.op.to_numpy(xp.stack([xp.mean(self.m2), xp.mean((offset + self.mean) ** 2)]))
        return float(v[0]) / max(self.count - 1, 1), math.sqrt(float(v[1]))

    def state(self, name: str) -> dict[str, Any]:
        return {f"{name}_mean": self.mean, f"{name}_m2": self.m2, f"{name}_count": self.count} if self.count else {}

    def restore(self, state: dict[str, Any], name: str) -> None:
        if f"{name}_count" in state:
            self.mean, self.m2 = self.op.cast(state[f"{name}_mean"]), self.op.cast(state[f"{name}_m2"])
            self.count = int(state[f"{name}_count"])

    def std_error(self) -> Any:
        """Each entry's standard error of the mean (NaN for a single sample)."""
        if self.count > 1:
            return self.xp.sqrt(self.m2 / (self.count - 1) / self.count)
        return self.xp.full_like(self.mean, float("nan"))


def _hutchinson_block(op: Any, rng: np.random.Generator, k: int, acc: _Moments) -> Any:
    """Draw ``k`` Rademacher probes, add their samples ``v * (H v)`` to ``acc``; return the products ``H V``."""
    V = probe_block(op, rng, k)
    Y = op.hvp_block(V)
    acc.add(V * Y, "the sum of v * (H v)")
    return Y


def _diagonal_adaptive(op: Any, method: str, target: Any, budget: int, b: int, max_rank: int, seed: Any,
                       bar: Any, ck: Any) -> DiagonalEstimate:
    """``diagonal`` with a target: Hutchinson or Diag++, chosen and stopped as :func:`diagonal` describes (the
    loop of :func:`trace`, with n-vectors of samples in place of scalars)."""
    xp = op.xp
    hvp0 = op.n_hvp
    rng = make_rng(seed)
    defl = _Deflation(op)
    plain, since, batch = _Moments(op), _Moments(op), _Moments(op)  # plain; residual since Q; residual batch
    pending: list[Any] = []
    exact: Any = 0.0
    last_var, plan, planned = math.inf, MIN_RTOL_SAMPLES, False

    def spent() -> int:
        return op.n_hvp - hvp0

    def exact_part() -> Any:  # diag(P H + H P - P H P), P = Q Q^T
        return 2 * xp.sum(defl.Q * defl.Z, axis=1) - xp.sum((defl.Q @ defl.B) * defl.Q, axis=1)

    def save() -> None:
        if ck:
            ck.save(n_hvp=spent(), rng=rng_state(rng), mode=mode, choice=choice, last_var=last_var, plan=plan,
                    planned=planned, pending=xp.concat(pending, axis=1) if pending else np.empty((op.n, 0)),
                    **plain.state("plain"), **since.state("since"), **batch.state("batch"),
                    **({"Q": defl.Q, "Z": defl.Z, "B": defl.B} if defl.Q is not None else {}))

    state = ck.load() or {}
    if "result" in state:  # finished with the exact diagonal
        d = op.cast(state["diagonal"])
        return DiagonalEstimate(diagonal=d, std_error=op.cast(state["std_error"]), per_parameter=None,
                                **state["result"])
    if state:
        hvp0 -= state["n_hvp"]
        rng, mode, choice, last_var = restore_rng(state["rng"]), state["mode"], state["choice"], state["last_var"]
        plan, planned = int(state["plan"]), bool(state["planned"])
        pending = [op.cast(state["pending"])] if state["pending"].shape[1] else []
        for acc, name in ((plain, "plain"), (since, "since"), (batch, "batch")):
            acc.restore(state, name)
        if "Q" in state:
            defl.Q, defl.Z, defl.B = (op.cast(state[key]) for key in "QZB")
            exact = exact_part()
    else:
        k = min(b, budget)
        Y = _hutchinson_block(op, rng, k, plain)
        mode, choice = method, f"method={method!r} asked for"
        first = plain.summary() if method != "hutchinson" else None
        if method == "auto":
            var, rms = first
            goal = target(rms)
            need = math.inf if goal <= 0 else _t_quantile(0.95, k - 1) ** 2 * var / goal**2
            if not (2 * k <= max_rank and spent() + 2 * k < budget):
                mode, choice = "hutchinson", "no room for a sketch in the budget or size"
            elif need < TRY_DEFLATION_BLOCKS * b:
                mode = "hutchinson"
                choice = (f"the first {k} products predict ~{need:.0f} for plain Hutchinson (< {TRY_DEFLATION_BLOCKS} "
                          "blocks): deflation not tried")
            else:
                mode = "test"
        if mode != "hutchinson":
            last_var = first[0]
            defl.grow(Y)
            exact = exact_part()
            plan = max(MIN_RTOL_SAMPLES, defl.rank)
        save()

    converged, stop_reason = False, ""
    while True:
        if mode == "test" and since.count >= min(b, budget - spent() + since.count):
            var_r, var_x = since.summary()[0], plain.summary()[0]
            gain = var_x / var_r if var_r > 0 else math.inf
            if gain >= VARIANCE_GAIN:
                mode, last_var, batch = "diag++", var_x, since.copy()
                choice = f"deflating {defl.rank} directions cut the entries' mean variance {gain:.3g}x"
            else:
                mode = "hutchinson"
                choice = (f"deflating {defl.rank} directions cut the entries' mean variance only {gain:.3g}x "
                          f"(< {VARIANCE_GAIN:g}x): plain Hutchinson")
                since, batch, pending, exact = _Moments(op), _Moments(op), [], 0.0
                continue
        current, offset = (plain, 0.0) if mode == "hutchinson" else (batch, exact)
        enough = current.count >= (MIN_RTOL_SAMPLES if mode == "hutchinson" else plan) and mode != "test"
        fields: dict[str, Any] = {"method": mode, "rank": defl.rank}
        if enough:
            var, rms = current.summary(offset)
            half = _t_quantile(0.95, current.count - 1) * math.sqrt(var / current.count)
            fields["half95 (rms)"] = half
            if (planned or mode == "hutchinson") and half <= target(rms):
                bar.to(spent(), fields)
                converged, stop_reason = True, f"target met: root-mean-square 95% half-width {half:.3g}"
                break
        bar.to(spent(), fields)
        if spent() >= budget:
            stop_reason = f"budget of {budget} products spent"
            break
        if enough:
            goal = target(rms)
            more = math.inf if goal <= 0 else _t_quantile(0.95, current.count - 1) ** 2 * var / goal**2 - current.count
            if more >= op.n and budget - spent() >= op.n:
                diag = _exact_diagonal(op, b)
                _check_samples(diag, "a diagonal entry e_i^T H e_i", 0)
                se = op.n * float(np.finfo(op.dtype).eps) * np.abs(diag)
                result = {"n_hvp": spent(), "n_samples": op.n, "method": "exact", "converged": True,
                          "choice": f"{mode}: ~{more:.0f} more products predicted, exact costs n = {op.n}",
                          "stop_reason": f"exact: {op.n} identity columns", "rank": 0}
                ck.save(diagonal=diag, std_error=se, result=result)
                return DiagonalEstimate(diagonal=op.cast(diag), std_error=op.cast(se), per_parameter=None, **result)
            if mode == "diag++":
                cols = since.count
                var_r = since.summary()[0] if cols >= defl.rank else math.inf
                if (var_r * VARIANCE_GAIN <= last_var and more > 3 * defl.rank and defl.rank + cols <= max_rank
                        and spent() + cols + b <= budget):
                    last_var = var_r
                    defl.grow(xp.concat(pending, axis=1))
                    exact = exact_part()
                    since, batch, pending = _Moments(op), _Moments(op), []
                    plan, planned = max(MIN_RTOL_SAMPLES, defl.rank), False
                    choice += f"; rank doubled to {defl.rank}"
                    continue
                # a fresh batch, its size fixed now, gives the result
                plan, planned, batch = max(MIN_RTOL_SAMPLES, math.ceil(current.count + more)), True, _Moments(op)
        k = min(b, budget - spent())
        if mode == "hutchinson":
            _hutchinson_block(op, rng, k, plain)
        else:
            G = probe_block(op, rng, k)
            C = defl.Q.T @ G
            Gp = G - defl.Q @ C
            W = op.hvp_block(Gp)
            X = G * (W - defl.Q @ (defl.Z.T @ Gp))  # g * ((I - P) H (I - P) g)
            since.add(X, "the sum of the residual samples")
            if mode == "diag++":
                batch.add(X)
            else:  # the plain samples of the same probes, from the same product: g * (H g' + Z Q^T g)
                plain.add(G * (W + defl.Z @ C))
            pending.append(W)
        save()
    if mode == "test":
        mode, batch = "diag++", since
    current, offset = (plain, 0.0) if mode == "hutchinson" else ((batch if batch.count >= 2 else since), exact)
    return DiagonalEstimate(diagonal=offset + current.mean, std_error=current.std_error(), per_parameter=None,
                            n_hvp=spent(), n_samples=current.count, method=mode, converged=converged, choice=choice,
                            stop_reason=stop_reason, rank=defl.rank if mode == "diag++" else 0)
