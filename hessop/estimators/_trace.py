"""``trace``: ``tr(H)`` to a target accuracy, Hutchinson or adaptive Hutch++ chosen from the first products."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from hessop._array import make_rng
from hessop._checkpoint import Checkpoint, restore_rng, rng_state
from hessop._probes import DEFAULT_BLOCK, column_dots, probe_block
from hessop._progress import Progress
from hessop._validate import check_choice, check_int
from hessop.estimators._deflation import _Deflation
from hessop.estimators._estimates import TraceEstimate
from hessop.estimators._exact import _exact_trace
from hessop.estimators._stats import (
    MIN_RTOL_SAMPLES,
    _bar_fields,
    _check_samples,
    _mean_se,
    _more_needed,
    _t_quantile,
    _target_rule,
    _warn_not_converged,
)
from hessop.estimators._xtrace import xtrace
from hessop.operator import as_operator

MAX_HVP = 10_000
"""Default cap on the products of :func:`trace` with a target."""

TRY_DEFLATION_BLOCKS = 8
"""``trace(method="auto")`` tries deflation only when plain Hutchinson is predicted to need at least this many blocks
(so that the one block of products the try costs is at most 1/8 of Hutchinson's)."""

BUDGET_TRY_BLOCKS = 4
"""With a fixed budget and no target, ``trace(method="auto")`` tries deflation when the budget holds at least this
many blocks: on a flat spectrum the try then costs at most a quarter of the samples (standard error up to about
1.15x Hutchinson's at the same budget); on an outlier spectrum it gains orders of magnitude."""

VARIANCE_GAIN = 2.0
"""Deflation (and each doubling of its rank) is kept only if it cuts the per-sample variance at least this much: a
doubling of the rank pays for itself exactly when it halves the variance (see :func:`trace`)."""

DEFAULT_MAX_RANK = 512
"""Most directions :func:`trace` deflates (memory: two n x rank blocks)."""


def trace(
    H: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    n_hvp: int | None = None,
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
    n_hvp : int, optional
        Budget: with a target, the most products to spend (default 10,000); without one, the products to spend.
    method : {"auto", "hutchinson", "hutch++", "xtrace"}
        ``"auto"`` (default) chooses as above; ``"hutchinson"`` and ``"hutch++"`` force one (Hutch++ still grows
        its rank adaptively); ``"xtrace"`` runs :func:`xtrace` on the budget ``n_hvp`` (no target: its
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
    """
    op = as_operator(H)
    method = check_choice(method, "method", ("auto", "hutchinson", "hutch++", "xtrace"))
    targeted = rtol is not None or atol is not None
    if not targeted and n_hvp is None:
        raise ValueError("give a target (rtol=, e.g. rtol=0.01, and/or atol=) or a budget of products n_hvp=")
    target = _target_rule(rtol, atol) if targeted else None
    budget = MAX_HVP if n_hvp is None else check_int(n_hvp, "n_hvp", 1)
    b = check_int(block_size, "block_size", 2)
    max_rank = min(check_int(max_rank, "max_rank", 1), op.n // 2)
    if method == "xtrace":
        if targeted:
            raise ValueError("method='xtrace' takes a budget n_hvp only (its leave-one-out error estimate is not a "
                             "confidence interval to stop on); for a target use method='auto' or 'hutch++'")
        return xtrace(op, budget, seed=seed, progress=progress, checkpoint=checkpoint)
    if not targeted and budget >= op.n:
        return _exact_trace(op, b)
    rng = make_rng(seed)
    xp = op.xp
    hvp0 = op.n_hvp

    ck = Checkpoint(checkpoint, "trace", op, seed, {"rtol": rtol, "atol": atol, "n_hvp": budget, "method": method,
                                                    "block_size": b, "max_rank": max_rank})
    state = ck.load() or {}
    if "result" in state:  # finished with the exact trace
        return TraceEstimate(samples=state["samples"], **state["result"])
    hvp0 -= state.get("n_hvp", 0)
    bar = Progress(progress, op, "trace", budget, "HVP")

    def spent() -> int:
        return op.n_hvp - hvp0

    def save() -> None:  # the loop's state after a block
        if not ck:
            return
        ck.save(n_hvp=spent(), rng=rng_state(rng), mode=mode, choice=choice, last_var=last_var, start=start,
                plan=plan, planned=planned,
                plain=np.concatenate(plain), resid=np.concatenate(resid) if resid else np.empty(0),
                pending=xp.concat(pending, axis=1) if pending else np.empty((op.n, 0)),
                **({"Q": defl.Q, "Z": defl.Z, "B": defl.B, "exact": defl.exact} if defl.Q is not None else {}))

    defl = _Deflation(op)
    plain: list[np.ndarray] = []
    resid: list[np.ndarray] = []
    pending: list[Any] = []
    last_var = math.inf
    start, plan, planned = 0, MIN_RTOL_SAMPLES, False  # the current batch of samples: where, how many, planned?
    if state:  # resumed: the loop's state after the last saved block
        rng, mode, choice, last_var = restore_rng(state["rng"]), state["mode"], state["choice"], state["last_var"]
        plain, resid = [state["plain"]], [state["resid"]] if state["resid"].size else []
        pending = [op.cast(state["pending"])] if state["pending"].shape[1] else []
        if "Q" in state:
            defl.Q, defl.Z, defl.B = (op.cast(state[key]) for key in "QZB")
            defl.exact = state["exact"]
        start, plan, planned = int(state["start"]), int(state["plan"]), bool(state["planned"])
    else:
        k = min(b, budget if method != "hutch++" else max(budget // 3, 1))
        S = probe_block(op, rng, k)
        Y = op.hvp_block(S)
        plain.append(np.asarray(op.to_numpy(column_dots(xp, S, Y)), dtype=np.float64).reshape(-1))
        _check_samples(plain[0], "the quadratic form v^T H v", 0)
        mode = method
        choice = f"method={method!r} asked for"
        if method == "auto":
            need = k + _more_needed(plain[0], 0.0, target) if targeted else budget
            room = 2 * k <= max_rank and spent() + 2 * k < budget
            worth = need >= TRY_DEFLATION_BLOCKS * b if targeted else budget >= BUDGET_TRY_BLOCKS * b
            if worth and room:
                mode = "test"
            elif not room:
                mode, choice = "hutchinson", "no room for a sketch in the budget or size"
            elif targeted:
                mode = "hutchinson"
                choice = (f"the first {k} products predict ~{need:.0f} for plain Hutchinson (< {TRY_DEFLATION_BLOCKS} "
                          f"blocks): deflation not tried")
            else:
                mode = "hutchinson"
                choice = f"a budget of {budget} products (< {BUDGET_TRY_BLOCKS} blocks): deflation not tried"
        if mode != "hutchinson":
            last_var = float(np.var(plain[0], ddof=1))
            defl.grow(Y)
        save()

    converged = False
    stop_reason = ""
    while True:
        samples = np.concatenate(resid if mode != "hutchinson" else plain) if (resid or mode == "hutchinson") \
            else np.empty(0)
        if mode == "test" and samples.size >= min(b, budget - spent() + samples.size):
            var_r, var_x = float(np.var(samples, ddof=1)), float(np.var(np.concatenate(plain), ddof=1))
            gain = var_x / var_r if var_r > 0 else math.inf
            if gain >= VARIANCE_GAIN:
                mode, last_var, plan = "hutch++", var_x, max(MIN_RTOL_SAMPLES, defl.rank)
                choice = f"deflating {defl.rank} directions cut the per-sample variance {gain:.3g}x"
            else:
                mode = "hutchinson"
                choice = (f"deflating {defl.rank} directions cut the per-sample variance only {gain:.3g}x "
                          f"(< {VARIANCE_GAIN:g}x): plain Hutchinson")
                resid, pending = [], []
                continue
        offset = defl.exact if mode != "hutchinson" else 0.0
        bar.to(spent(), _bar_fields, samples, offset, method=mode, rank=defl.rank)
        two_stage = targeted and mode == "hutch++"
        batch = samples[start:]
        enough = batch.size >= plan if two_stage else samples.size >= MIN_RTOL_SAMPLES
        if targeted and enough and (planned or not two_stage):
            mean, se = _mean_se(batch)
            half = _t_quantile(0.95, batch.size - 1) * se
            if half <= target(offset + mean):
                converged, stop_reason = True, f"target met: 95% half-width {half:.3g}"
                break
        left = budget - spent()
        if left <= 0:
            stop_reason = f"budget of {budget} products spent"
            break
        if enough and (targeted or mode == "hutch++"):
            more = _more_needed(batch, offset, target) if targeted else left
            if targeted and more >= op.n and left >= op.n:
                result = _exact_trace(op, b)
                result = dataclasses.replace(result, n_hvp=spent(), choice=f"{mode}: ~{more:.0f} more products "
                                             f"predicted, exact costs n = {op.n}")
                ck.save(samples=result.samples, result={f.name: getattr(result, f.name) for f in
                                                        dataclasses.fields(result) if f.name != "samples"})
                bar.close()
                return result
            if mode == "hutch++" and samples.size >= defl.rank:
                var_r = float(np.var(samples, ddof=1))
                cols = samples.size
                if (var_r * VARIANCE_GAIN <= last_var and more > 3 * defl.rank and defl.rank + cols <= max_rank
                        and spent() + cols + b <= budget):
                    defl.grow(xp.concat(pending, axis=1))
                    resid, pending, last_var = [], [], var_r
                    start, plan, planned = 0, max(MIN_RTOL_SAMPLES, defl.rank), False
                    choice += f"; rank doubled to {defl.rank}"
                    continue
            if two_stage:  # a fresh batch, its size fixed now, gives the interval
                start, plan, planned = samples.size, max(MIN_RTOL_SAMPLES, math.ceil(batch.size + more)), True
        k = min(b, budget - spent())
        G = probe_block(op, rng, k)
        if mode == "hutchinson":
            x = np.asarray(op.to_numpy(column_dots(xp, G, op.hvp_block(G))), dtype=np.float64).reshape(-1)
            _check_samples(x, "the quadratic form v^T H v", sum(p.size for p in plain))
            plain.append(x)
        else:
            r, x, W = defl.probe(G, mode == "test")
            _check_samples(r, "the residual quadratic form", 0)
            resid.append(r)
            pending.append(W)
            if x is not None:
                plain.append(x)
        save()
    bar.close()
    if mode == "test":
        mode = "hutch++"
    if targeted and planned and batch.size >= 2:
        samples = batch
    mean, se = _mean_se(samples) if samples.size else (float("nan"), float("nan"))
    estimate = offset + mean
    if targeted and not converged:
        half = _t_quantile(0.95, samples.size - 1) * se if samples.size > 1 else math.inf
        _warn_not_converged("trace", rtol, atol, f"n_hvp={budget}", estimate, half)
    return TraceEstimate(estimate=estimate, std_error=se, samples=samples, n_hvp=spent(),
                         converged=converged or not targeted, method=mode, stop_reason=stop_reason, choice=choice,
                         rank=defl.rank if mode == "hutch++" else 0)
