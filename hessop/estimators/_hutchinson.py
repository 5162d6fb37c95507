"""Hutchinson's estimate of ``tr(H)``, for a fixed budget or a target accuracy."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from hessop._array import make_rng
from hessop._probes import DEFAULT_BLOCK, DISTRIBUTIONS, probe_block
from hessop._validate import check_choice, check_int
from hessop.estimators import _stats as st
from hessop.estimators._estimates import TraceEstimate
from hessop.estimators._run import MAX_HVP, Run, check_budget
from hessop.operator import as_operator


def hutchinson(
    H: Any,
    *,
    max_hvp: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    block_size: int = DEFAULT_BLOCK,
    seed: int | np.random.Generator | None = 0,
    distribution: str = "rademacher",
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of ``tr(H)``, with its standard error, for a fixed budget or a target accuracy.

    Maths
    -----
    For probes with ``E[v v^T] = I``, ``E[v^T H v] = tr(H)`` (Hutchinson 1989; Avron & Toledo, J. ACM 58(2),
    2011).  The estimate is the mean of ``N`` samples ``x_j = v_j^T H v_j`` and its standard error is
    ``s / sqrt(N)`` with ``s`` the sample standard deviation.  Per-sample variance: ``2 (||H||_F^2 - sum_i H_ii^2)``
    for Rademacher probes (entries +-1, the default, minimal among i.i.d. probes), ``2 ||H||_F^2`` for Gaussian.

    Interval: the Student-t interval corrected for the samples' skewness (Hall 1992; the quadratic forms of a
    decaying spectrum are right-skewed, and the plain t interval covered 87-93% at 10-64 samples; see
    ``docs/reliability.md``) and widened by a bound on the samples' rounding (summed in float64 where the backend
    has it; see :func:`hessop.estimators._stats.quadratic_forms`).

    Stopping rule with ``rtol`` and/or ``atol`` (two stages, as :func:`hessop.trace`): a pilot of
    ``MIN_RTOL_SAMPLES = 32`` samples fixes the size ``N = max(32, (t s / goal)^2)`` of a fresh batch
    (``goal = max(rtol * |estimate|, atol)``); that batch's interval is returned, and stops the run if its
    half-width is at most the goal (else it is the pilot of the next batch).  Its samples are independent of the
    decision to draw them, so the interval is a fixed-size one; stopping on the samples that build the interval
    (as before) covered 89-91% on decaying spectra.  If ``max_hvp`` probes are spent first, or the samples show
    that even an optimistic projection needs over twice the products left (then early, with the budget and the
    ``atol`` that would do), the estimate is returned with ``converged=False`` and a ``RuntimeWarning``.

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    max_hvp : int, optional
        The most Hessian-vector products to spend (one per probe, >= 1): without a target, exactly that many probes
        (then it is required); with one, the cap (default 10,000, at least 32).  :func:`hessop.trace` needs far
        fewer products when a few eigenvalues dominate.
    rtol : float, optional
        Target relative half-width of the 95% confidence interval.
    atol : float, optional
        Target absolute half-width (use it when the trace may be near zero, where no relative target is reachable).
    block_size : int
        Probes per block product ``H.hvp_block``; default 16.  The result does not depend on it (probe ``j`` is the
        same whatever the blocks), except that ``rtol`` is checked only between blocks.
    seed : int, numpy Generator or None
        Seed of the host-drawn probes; default 0.
    distribution : {"rademacher", "gaussian"}
        Probe entries: +-1 (default) or standard normal.
    progress : bool, optional
        Show a tqdm bar (samples, estimate, 95% half-width); default None: only when stderr is a terminal.
    checkpoint : str or Path, optional
        Resumable run: after every block the samples and the probe generator's state are saved to this file
        (atomically); the same call with the same ``seed`` resumes from it and returns the result of an
        uninterrupted run bit for bit, and once finished returns the saved result at once (no product).  Needs
        an integer ``seed``; another call's file raises ``ValueError`` naming the field that differs.  Default
        None.  See the user guide's "Long runs".

    Notes
    -----
    Memory: ``3 * block_size`` n-vectors (one probe block, its product, temporaries).

    Returns
    -------
    TraceEstimate
        ``estimate``, ``std_error``, ``samples`` (the ``v^T H v`` behind the interval: with a target met, those of
        the last batch), ``n_hvp`` (every sample drawn),
        ``converged``, ``method``; ``.interval(level)`` gives a confidence interval.

    Examples
    --------
    >>> import hessop, hessop.testing as ht
    >>> H = ht.matrix_with_spectrum(ht.outlier_spectrum(200, seed=0), seed=1)  # 10 outliers, tr(H) = 379.98
    >>> r = hessop.hutchinson(H, max_hvp=100, seed=0)
    >>> round(r.estimate, 1), round(r.std_error, 1), r.n_hvp
    (370.6, 16.3, 100)
    """
    op = as_operator(H)
    targeted = rtol is not None or atol is not None
    distribution = check_choice(distribution, "distribution", DISTRIBUTIONS)
    block_size = check_int(block_size, "block_size", 1)
    if targeted:
        total = check_budget(max_hvp, st.MIN_RTOL_SAMPLES, "a target (never met on fewer samples)", MAX_HVP)
    else:
        total = check_budget(max_hvp, 1, "one sample")
    target = st.target_rule(rtol, atol) if targeted else None
    settings = {"rtol": rtol, "atol": atol, "max_hvp": total, "block_size": block_size, "distribution": distribution}
    samples, batch = st.Samples(), st.Samples()  # every sample; with a target, the current batch
    plan = {"size": st.MIN_RTOL_SAMPLES, "planned": False}
    reach = ""
    with Run(op, "hutchinson", seed, settings, checkpoint, progress, total, "sample") as run:
        rng = run.rng(make_rng(seed))
        run.restore(samples=samples, batch=batch)
        converged = run.saved.get("converged", not targeted)
        plan = {"size": int(run.saved.get("plan", plan["size"])), "planned": bool(run.saved.get("planned", False))}
        reach = str(run.saved.get("reach", ""))
        run.bar.update(samples.count)
        while not (targeted and (converged or reach)) and samples.count < total:
            k = min(block_size, total - samples.count)
            V = probe_block(op, rng, k, distribution)
            x, bound = st.quadratic_forms(op, V, op.hvp_block(V))
            samples.add(x, "the quadratic form v^T H v", bound)
            if targeted:
                batch.add(x, None, bound)
                if plan["planned"] and batch.count < plan["size"]:
                    # while a batch fills, every sample may show the target out of reach (no interval is then
                    # reported as met, so looking does not bias one)
                    reach = st.out_of_reach(samples, target, samples.count, total, have=batch.count)
                    if reach:
                        run.save(samples=samples, batch=batch, converged=converged, rng=rng, plan=plan["size"],
                                 planned=plan["planned"], reach=reach)
                        break
                if batch.count >= plan["size"]:  # two stages: a pilot plans a fresh batch whose interval stops
                    half, estimate, half_one = batch.interval()
                    converged = plan["planned"] and half <= target(estimate)
                    if not converged:
                        reach = st.out_of_reach(batch, target, samples.count, total)
                        size = st.batch_size(half_one, target(estimate), batch.count, total)
                        plan = {"size": size, "planned": True}
                        batch = st.Samples()
            run.save(samples=samples, batch=batch, converged=converged, rng=rng, plan=plan["size"],
                     planned=plan["planned"], reach=reach)
            run.bar.update(k, st.bar_fields, samples.values)
    used = batch if targeted and converged else samples
    mean, se = st.mean_se(used.values)
    half = used.interval()[0] if used.count > 1 else math.inf
    if not converged:
        st.warn_not_converged("hutchinson", rtol, atol, f"max_hvp={total}", mean, half, reach=reach)
    return TraceEstimate(estimate=mean, std_error=se, samples=used.values, n_hvp=run.spent, converged=converged,
                         method=f"hutchinson({distribution})",
                         stop_reason=(f"target met: 95% half-width {half:.3g}" if converged else
                                      "target out of reach" if reach else "max_hvp reached") if targeted
                         else "fixed budget", skewness=used.skewness(), rounding=used.rounding())
