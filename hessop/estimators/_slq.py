"""Eigenvalue spectral density by stochastic Lanczos quadrature (SLQ).

Maths
-----
For a unit start vector ``q``, ``m`` Lanczos steps give ``T_m = U diag(theta) U^T``; the nodes ``theta_i`` and
weights ``w_i = U_{0i}^2`` (real, summing to 1) form the m-point Gauss quadrature rule of the spectral measure
``mu_q = sum_k (q . u_k)^2 delta_{lambda_k}`` of H seen from ``q``: ``q^T f(H) q ~ sum_i w_i f(theta_i)``, exact
for polynomials of degree < 2m (Golub & Meurant, *Matrices, Moments and Quadrature*, 2010).  For a random ``q``
(isotropic, normalised) ``E[mu_q]`` is the eigenvalue density ``(1/n) sum_k delta_{lambda_k}``, so averaging the
rules of a few draws estimates the density (Lin, Saad, Yang, SIAM Rev. 58(1), 2016) and
``tr f(H) ~ n * mean_draws sum_i w_i f(theta_i)`` (Ubaru, Chen, Saad, SIAM J. Matrix Anal. Appl. 38(4), 2017).

The density is shown Gaussian-smoothed, following Ghorbani, Krishnan, Xiao (ICML 2019): on a grid of 10,000
points over [mean of the draws' smallest node - 0.01, mean of their largest node + 0.01], with Gaussian
*variance* ``1e-5 * max(1, grid range)``, renormalised to integrate to 1, plotted on a log y-axis.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from hessop._array import make_rng
from hessop._memory import slq_block
from hessop._probes import DISTRIBUTIONS, block_sizes, probe_block
from hessop._validate import check_choice, check_int
from hessop.estimators._density import SpectralDensity
from hessop.estimators._run import Run, check_budget
from hessop.estimators._stats import (
    REACH_MARGIN,
    Samples,
    batch_size,
    target_rule,
    warn_not_converged,
)
from hessop.krylov import Krylov
from hessop.operator import as_operator

__all__ = ["SpectralDensity", "slq"]

DRAWS = 10
"""Default draws of :func:`slq` (and, with a target, its first round)."""
MAX_DRAWS = 100
"""Default cap on the draws of :func:`slq` with a target."""


def slq(
    H: Any,
    *,
    n_iter: int = 90,
    max_hvp: int | None = None,
    seed: int | np.random.Generator | None = 0,
    block_size: int | None = None,
    distribution: str = "gaussian",
    memory: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    f: Callable[[np.ndarray], np.ndarray] | None = None,
    solver_dtype: Any = None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> SpectralDensity:
    """Eigenvalue spectral density of H by stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao, ICML 2019;
    Lin, Saad, Yang 2016).

    Maths
    -----
    Independent start vectors (draws, as many as the budget buys) ``q = v / ||v||`` (``v`` Gaussian by default, as
    in the recipe; or Rademacher), each followed by ``n_iter`` Lanczos steps with full reorthogonalisation (block
    Gram-Schmidt, a second pass where the first lost orthogonality, :class:`hessop.krylov.Krylov`: without it
    ghost copies of the outliers distort the density within ~20 steps).  Each draw's projected matrix
    ``T = U diag(theta) U^T`` gives nodes ``theta`` and weights ``U[0, :]**2``.  A draw whose ``beta_j`` vanishes
    (its Krylov space is invariant: the start vector meets only ``j`` eigen-directions) stops there cleanly; its
    j-point rule is then exact.

    The draws of a block advance in lockstep, so each Lanczos step is one block product ``H.hvp_block`` of
    ``block_size`` vectors (cheaper per vector than single products on framework backends).

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    n_iter : int
        Lanczos steps per draw, ``1 <= n_iter <= n``; default 90 (80-90 resolve the outliers of a network Hessian
        to high accuracy and the bulk at the recipe's kernel width).
    max_hvp : int, optional
        The most Hessian-vector products to spend: a draw costs ``n_iter`` products, so it buys
        ``max_hvp // n_iter`` draws.  Default: 10 draws (``10 * n_iter``: 900 products at the default 90 steps),
        or with a target a cap of 100 draws (9,000 products; the two-stage rule usually stops far earlier).  The
        progress bar's total is the planned cost in products, shown before the first product (with a target it
        grows when a batch is planned).
    seed : int, numpy Generator or None
        Seed of the host-drawn start vectors; default 0.
    block_size : int, optional
        Draws run together; default as many as ``memory`` allows (at most the first round's draws).
    distribution : {"gaussian", "rademacher"}
        Distribution of the start vectors before normalisation; default Gaussian.
    rtol, atol : float, optional
        Stop adding draws once ``tr f(H)`` is known to a 95% half-width of ``max(rtol * |estimate|, atol)``, by
        the two-stage rule of :func:`hessop.hutchinson` (valid together with its interval): a pilot of
        ``min(10, max_hvp // n_iter)`` draws fixes the size ``N = max(32, c (t s / goal)^2)`` of a fresh batch
        (:func:`hessop.estimators._stats.batch_size`: ``s`` the pilot's per-draw standard deviation, ``c`` its
        95% upper confidence factor); the batch is drawn, and its interval is the one :meth:`SpectralDensity.trace`
        reports: if its half-width meets the goal the run stops (``converged=True``), else all draws so far plan a
        second batch, which ends the run whatever its half-width (``converged`` says whether it met the goal).
        Neither a batch's size nor whether it is reported depends on its own draws, so its interval is a fixed-size
        one: 93.4-95.1% coverage over 1000 seeds on 1/i, 1/i^2, 1/i^3 spectra (stopping on the draws that build
        the interval covered 89-90%, and stopping at the first batch that met the goal 91.8%; see
        ``benchmarks/coverage.py``).  When the next batch needs more than twice the draws the budget has left, the
        run stops at once; then, or when the budget is spent, ``converged=False`` and a ``RuntimeWarning`` says
        how many products would do.  The density uses every draw.
    f : callable, optional
        The function whose trace the rule watches (default the identity; e.g. ``numpy.log`` for log det).
    memory : int, optional
        Budget in bytes for the draws' vectors.  A block of b draws holds ``b * (n_iter + 4)`` vectors of
        ``n * itemsize`` bytes (b bases of ``n_iter + 1`` vectors, the probe, input and product blocks).  Default
        (None): a quarter of the memory free, at call time, on the device holding the vectors
        (:meth:`hessop.backends.base.Backend.free_memory`; 400 vectors where it cannot be read).  The default
        ``block_size`` is as many draws as fit; ``ValueError`` naming ``memory`` if one draw does not fit.  The
        results do not depend on the blocking (draw j is the same vector whatever the blocks).

    solver_dtype : numpy dtype, optional
        Dtype of the probes, bases and recurrences (default: the operator's).  ``numpy.float64`` over a float32
        model keeps the Lanczos runs in float64 while each product is taken in float32 (cast on the device, see
        :meth:`HessianOperator.with_solver_dtype`): better resolved small nodes and density tails.
    progress : bool, optional
        Show a tqdm bar in products (its total the planned cost: draws planned x ``n_iter``; the Lanczos step of
        the running block beside it); default None: only when stderr is a terminal.
    checkpoint : str or Path, optional
        Resumable run: after every block of draws the quadrature rules so far and the generator's state are saved
        to this file (atomically); the same call with the same ``seed`` resumes from it (a block cut short is
        redone) and returns the result of an uninterrupted run bit for bit, and once finished returns it at once
        (no product).  Needs an integer ``seed``; another call's file raises ``ValueError`` naming the field that
        differs.  Default None.

    Notes
    -----
    Memory: ``block_size * (n_iter + 4)`` n-vectors, at most ``memory`` bytes.

    Returns
    -------
    SpectralDensity
        Nodes and weights per draw, ``n``, ``n_hvp``, ``blocks`` (the blocking used) and ``memory`` (its peak in
        n-vectors); ``.density()``, ``.trace(f)``, ``.plot()``.

    Examples
    --------
    >>> import hessop, hessop.testing as ht
    >>> H = ht.matrix_with_spectrum(ht.outlier_spectrum(200, seed=0), seed=1)  # 10 outliers, tr(H) = 379.98
    >>> d = hessop.slq(H, n_iter=30, max_hvp=150, seed=0)   # 5 draws of 30 steps
    >>> d.n_vectors, d.n_hvp, round(d.trace().estimate, 1)
    (5, 150, 415.3)
    """
    op = as_operator(H).with_solver_dtype(solver_dtype)
    n_iter = check_int(n_iter, "n_iter", 1)
    if n_iter > op.n:
        raise ValueError(f"n_iter = {n_iter} exceeds n = {op.n}: Lanczos spans the whole space in at most n steps; "
                         f"use n_iter <= {op.n}.")
    targeted = rtol is not None or atol is not None
    least = 2 if targeted else 1  # a target needs two draws for an interval
    if max_hvp is None:
        draws = MAX_DRAWS if targeted else DRAWS
    else:
        draws = check_budget(max_hvp, least * n_iter, f"{least} draw(s) of n_iter = {n_iter} Lanczos steps") // n_iter
    n_vectors, max_vectors = (min(DRAWS, draws), draws) if targeted else (draws, draws)
    target = target_rule(rtol, atol) if targeted else None
    block_size, per_draw = slq_block(op, n_iter, n_vectors, block_size, memory)
    distribution = check_choice(distribution, "distribution", DISTRIBUTIONS)
    xp = op.xp
    nodes: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    pending, blocks = list(block_sizes(n_vectors, block_size)), []
    settings = {"n_iter": n_iter, "n_vectors": n_vectors, "block_size": block_size, "distribution": distribution,
                "rtol": rtol, "atol": atol, "f": None if f is None else getattr(f, "__name__", repr(f)),
                "max_vectors": max_vectors if targeted else None,
                "solver_dtype": None if solver_dtype is None else np.dtype(solver_dtype).name}
    run = Run(op, "slq", seed, settings, checkpoint, progress, n_vectors * n_iter, "HVP")
    rng, state = run.rng(make_rng(seed)), run.saved
    if state:
        splits = np.cumsum(state["steps"])[:-1]
        nodes, weights = np.split(state["nodes"], splits), np.split(state["weights"], splits)
        pending, blocks = state["pending"], state["blocks"]
    converged = bool(state.get("converged", True))
    plan = {"start": int(state.get("batch_start", 0)), "round": int(state.get("round", 0))}
    bar = run.bar
    done = sum(x.size for x in nodes)  # products of the finished draws

    def replan() -> None:
        bar.grow(done + sum(pending) * n_iter)

    replan()
    bar.update(done)
    while pending:
        b = pending.pop(0)
        blocks.append(b)
        V0 = probe_block(op, rng, b, distribution)
        runs = [Krylov(op, V0[:, i], n_iter) for i in range(b)]
        active = runs
        while active:
            W = op.hvp_block(xp.stack([r.Q[:, r.j] for r in active], axis=1))
            for c, r in enumerate(active):
                r.step(W[:, c])
            bar.update(len(active), {"step": f"{max(r.j for r in runs)}/{n_iter}"})
            active = [r for r in active if not r.breakdown and r.j < n_iter]
        for r in runs:
            theta, U = r.ritz()
            w = U[0, :] ** 2
            nodes.append(np.asarray(theta, dtype=np.float64))
            weights.append(w / np.sum(w))
            done += nodes[-1].size
        if targeted and not pending:
            converged = _two_stage(nodes, weights, op.n, f, target, plan, pending, block_size, max_vectors, n_iter,
                                   rtol, atol)
        replan()
        run.save(nodes=np.concatenate(nodes), weights=np.concatenate(weights), steps=[x.size for x in nodes],
                 pending=pending, blocks=blocks, rng=rng, converged=converged, batch_start=plan["start"],
                 round=plan["round"])
    bar.close()
    return SpectralDensity(nodes=nodes, weights=weights, n=op.n, n_hvp=run.spent, n_iter=n_iter,
                           blocks=tuple(blocks), memory=max(blocks) * per_draw, converged=converged,
                           interval_draws=len(nodes) - plan["start"] if targeted and plan["round"] else 0)


def _two_stage(nodes: list[np.ndarray], weights: list[np.ndarray], n: int, f: Any, target: Any,
               plan: dict[str, Any], pending: list[int], block_size: int, max_vectors: int, n_iter: int,
               rtol: float | None, atol: float | None) -> bool:
    """The two-stage stop of :func:`slq` with a target, after each batch of draws (the first is the pilot).

    The current batch (draws ``plan["start"]`` on) gives ``tr f(H)`` with its 95% half-width (the skewness-corrected
    interval of :class:`hessop.estimators._stats.Samples`).  A planned batch that meets the goal ends the run
    (True).  Otherwise the draws so far plan a fresh batch (:func:`batch_size`: at least ``MIN_RTOL_SAMPLES`` = 32
    draws, sized for the 95% rather than the 80% upper confidence bound of the variance, at most the draws left),
    queued in ``pending`` in blocks of ``block_size``; ``plan`` moves to it.  The second planned batch ends the run
    whatever its half-width: a batch is reported only when the decision to report it was taken before it was drawn
    (stopping at the first batch that meets the goal selects batches of small spread, which on right-skewed draws
    come out low: 91.8% coverage over 1000 seeds on 1/i^2, against 95% for the rule here).  With no draw left, or
    when the fresh batch needs over ``REACH_MARGIN`` times the draws left, the run ends unconverged (False) with a
    ``RuntimeWarning`` that says what would reach the target."""
    batch = Samples()
    est = SpectralDensity(nodes=nodes[plan["start"]:], weights=weights[plan["start"]:], n=n, n_hvp=0).trace(f)
    batch.add(est.samples)
    half, estimate, _ = batch.interval()
    goal = target(estimate)
    if plan["round"] and half <= goal:
        return True
    left = max_vectors - len(nodes)
    pilot = Samples()
    pilot.add(SpectralDensity(nodes=nodes, weights=weights, n=n, n_hvp=0).trace(f).samples)
    _, pooled, half_one = pilot.interval()
    size = batch_size(half_one, target(pooled), pilot.count)
    if plan["round"] < 2 and left > 0 and size <= REACH_MARGIN * left:
        plan["start"], plan["round"] = len(nodes), plan["round"] + 1
        pending.extend(block_sizes(min(size, left), block_size))
        return False
    more = "" if plan["round"] >= 2 else (
        f"The next batch needs about {size:,} draws ({size * n_iter:,} products) and {left} are left, so the run "
        f"stopped{' early' if left else ''}; max_hvp >= {(len(nodes) + size) * n_iter:,} would reach the target."
        if goal > 0 else "")
    if plan["round"] >= 2:
        more = (f"Its second planned batch of {len(nodes) - plan['start']} draws missed the target (the pilot "
                f"under-estimated the spread); a run with max_hvp >= {(len(nodes) + size) * n_iter:,} and "
                "another seed would likely reach it.")
    warn_not_converged("slq", rtol, atol, f"max_hvp={max_vectors * n_iter}", estimate, half, stacklevel=4,
                       reach=more)
    return False
