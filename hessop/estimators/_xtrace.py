"""XTrace: every product serves as a sketch and as a probe (leave-one-out), with a jackknife error."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import scipy.linalg

from hessop._array import host_norm, make_rng
from hessop._probes import column_dots, probe_block
from hessop._validate import check_finite
from hessop.estimators._deflation import orthonormal_range
from hessop.estimators._estimates import TraceEstimate
from hessop.estimators._exact import exact_trace
from hessop.estimators._run import Run, check_budget
from hessop.estimators._stats import bar_fields, jackknife_se, pair_inverse, skewness
from hessop.operator import as_operator


def xtrace(H: Any, max_hvp: int, *, seed: int | np.random.Generator | None = 0, progress: bool | None = None,
           checkpoint: str | os.PathLike | None = None) -> TraceEstimate:
    """XTrace estimate of ``tr(H)`` (Epperly, Tropp, Webber, SIAM J. Matrix Anal. Appl. 45(1), 2024), with an
    error estimate.

    Maths
    -----
    With ``m = max_hvp // 2`` Gaussian probes ``Omega = [w_1 .. w_m]`` and ``Y = H Omega = Q R``, each probe in turn
    is left out of the low-rank part and used as the (normalised) Hutchinson probe for the rest:

        t_i = tr(P_i H) + (n - m + 1) u_i^T H u_i / ||u_i||^2,   u_i = (I - P_i) w_i,

    with ``P_i`` the projector onto the range of Y without column i.  Because ``w_i`` is Gaussian and independent
    of ``P_i``, ``u_i / ||u_i||`` is uniform on the unit sphere of ``range(I - P_i)`` (dimension ``n - m + 1``), so
    each ``t_i`` is unbiased; the normalisation (the paper's "improved" estimator) removes the variance that the
    length of ``u_i`` would add, which matters on flat spectra.  The estimate is ``mean(t_i)``.

    All ``m`` leave-one-out projectors come from one QR: ``P_i = Q (I - s_i s_i^T) Q^T`` with
    ``s_i = R^{-T} e_i / ||R^{-T} e_i||`` (``s_i`` is orthogonal to every column of R but the i-th).  With
    ``Z = H Q`` (m more products), ``B = Q^T Z``, ``W = Q^T Omega``, ``c_i = s_i^T W e_i`` and
    ``a_i = W e_i - c_i s_i`` (so ``u_i = w_i - Q a_i``):

        tr(P_i H)       = tr(B) - s_i^T B s_i,
        u_i^T H u_i     = w_i^T y_i - 2 a_i^T R e_i + a_i^T B a_i,
        ||u_i||^2       = ||w_i||^2 - ||W e_i||^2 + c_i^2,

    so beyond the 2m products only m x m matrices are handled on the host.  Every product serves both as a sketch
    and as a probe, which is why XTrace beats Hutch++ at equal budget on spectra with outliers.

    Standard error: the jackknife (see :func:`jackknife_se`) over the m XTrace estimates ``T_(j)`` on the m - 1
    probes left after dropping probe j, each from the same m x m matrices: leaving out probes i and j projects onto
    ``range(Y)`` less the span of ``Q s_i`` and ``Q s_j`` (see :func:`pair_inverse`), so the m(m-1) pairs cost
    O(m^3) host work and no product.  The paper's estimate ``std(t) / sqrt(m)`` ignores that the ``t_i`` share
    their sketch and is optimistic: over 300 seeds it was 0.74-0.94x the true error on the tests' outlier matrix
    and 0.77x on a flat one at 200 products (its 95% intervals covered 84-89%).  The jackknife was 1.0-1.5x the
    true error at 20-200 products (2.7x at 20 on the outlier matrix, where 10 probes do not yet capture the
    outliers) and its intervals covered 96-100%: conservative, as the Efron-Stein inequality says it is in
    expectation.

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    max_hvp : int
        The most Hessian-vector products to spend, ``max_hvp >= 4``; an odd budget leaves one product unused.
        With ``max_hvp >= n`` (so
        ``2 m >= n - 1``) the trace is taken exactly from the ``n`` identity columns instead.
    seed : int, numpy Generator or None
        Seed of the host-drawn probes; default 0.
    progress : bool, optional
        Show a tqdm bar (products; the estimate and its 95% half-width at the end); default None: only when stderr
        is a terminal.
    checkpoint : str or Path, optional
        Resumable run (as :func:`hutchinson`): the probes and their products ``H Omega`` are saved after the first
        block product, the small host matrices after the second; default None.

    Notes
    -----
    Memory: about ``2 * max_hvp`` n-vectors (``Omega``, ``Y``, ``Q``, ``Z`` of ``max_hvp / 2`` columns each).

    Returns
    -------
    TraceEstimate
        ``samples`` are the ``m`` leave-one-out estimates ``t_i``; ``std_error`` the jackknife's.

    No sketch smaller than ``n`` is taken as exact.  A numerically rank-deficient ``H Omega`` was once read as
    "the sketch spans the range of H" (``exact=True``), which is not proved: ``u u^T + 5e-6 (I - u u^T)`` in
    float32 at n = 2e5 got ``exact=True`` and 1.00025 for a trace of 2.0 (issue 26).  The leave-one-out formulas
    are used instead (on an operator of rank below m - 1 every leave-one-out sketch still spans its range, so they
    return its trace to rounding with a jackknife error at rounding level); only where ``R`` is singular in
    float64 are the probes' quadratic forms averaged (Hutchinson).

    Examples
    --------
    >>> import hessop, hessop.testing as ht
    >>> H = ht.matrix_with_spectrum(ht.outlier_spectrum(200, seed=0), seed=1)  # 10 outliers, tr(H) = 379.98
    >>> r = hessop.xtrace(H, 60, seed=0)
    >>> round(r.estimate, 1), round(float(r.std_error), 1), r.n_hvp
    (379.8, 0.8, 60)
    """
    op = as_operator(H)
    max_hvp = check_budget(max_hvp, 4, "XTrace (two probes and their sketch)")
    m = max_hvp // 2
    n = op.n
    if max_hvp >= n:
        return exact_trace(op)
    with Run(op, "xtrace", seed, {"max_hvp": max_hvp}, checkpoint, progress, 2 * m) as run:
        run.bar.update(run.spent)
        small = run.saved.get("small")  # resumed after both products: only host arithmetic is left
        if small is None:
            small = _sketch(op, run, make_rng(seed), m)
        result = _estimate(small, m, n, op.dtype)
        run.bar.update(0, bar_fields, result.samples)
    return dataclasses.replace(result, n_hvp=run.spent)


def _sketch(op: Any, run: Run, rng: np.random.Generator, m: int) -> np.ndarray:
    """The products of XTrace (``Y = H Omega`` for ``m`` Gaussian probes, ``Z = H Q``) reduced to the small host
    matrices ``[R; Q^T Z; Q^T Omega; omega_i^T y_i; ||omega_i||^2]``, saved after each block product."""
    xp = op.xp
    if "Y" in run.saved:
        Om, Y = op.cast(run.saved["Om"]), op.cast(run.saved["Y"])
    else:
        Om = probe_block(op, rng, m, "gaussian")
        Y = op.hvp_block(Om)
        run.save(Om=Om, Y=Y)
        run.bar.update(m)
    Q, R = orthonormal_range(xp, Y)
    Z = op.hvp_block(Q)
    dots = xp.stack([column_dots(xp, Om, Y), column_dots(xp, Om, Om)], axis=0)
    small = np.asarray(op.to_numpy(xp.concat([R, Q.T @ Z, Q.T @ Om, dots], axis=0)), dtype=np.float64)
    run.save(small=small)
    run.bar.update(m)
    return small


def _estimate(small: np.ndarray, m: int, n: int, dtype: Any) -> TraceEstimate:
    """XTrace and its jackknife standard error from the small matrices of :func:`_sketch` (``n_hvp`` left 0)."""
    if not np.all(np.isfinite(small)):
        check_finite(float("nan"), "a product H v", 1)
    R, B, W, d, norm2 = small[:m], small[m: 2 * m], small[2 * m: 3 * m], small[3 * m], small[3 * m + 1]
    B = (B + B.T) / 2
    with np.errstate(all="ignore"):
        result = _xtrace_formulas(R, B, W, d, norm2, m, n)
    if result is not None and np.linalg.cond(R) * m * float(np.finfo(dtype).eps) < 1:
        return result
    # R singular (even in float64) or ill-conditioned at the operator's precision: a rank-deficient sketch proves
    # nothing about the rest of H, and the leave-one-out formulas lose the bulk's share of the trace to rounding
    # (they gave 528 +- 527 for u u^T + 5e-6 (I - u u^T), trace 1.1, in float32).  Hutchinson on the same Gaussian
    # probes (omega^T H omega, unbiased) is also available; the one with the smaller error is returned.
    samples = d.copy()
    mean, se = float(np.mean(samples)), float(np.std(samples, ddof=1) / np.sqrt(m))
    if result is not None and result.std_error <= se:
        return result
    return TraceEstimate(estimate=mean, std_error=se, samples=samples, n_hvp=0, converged=True, method="xtrace",
                         stop_reason="ill-conditioned sketch: Hutchinson on its probes", skewness=skewness(samples))


def _xtrace_formulas(R: np.ndarray, B: np.ndarray, W: np.ndarray, d: np.ndarray, norm2: np.ndarray, m: int,
                     n: int) -> TraceEstimate | None:
    """XTrace and its jackknife from the small matrices (see :func:`_estimate`); None where ``R`` is singular."""
    if not np.all(np.isfinite(R)) or np.min(np.abs(np.diag(R))) == 0:
        return None
    X = scipy.linalg.solve_triangular(R, np.eye(m), trans="T", lower=False)  # X = R^{-T}
    S = X / host_norm(X, axis=0)
    c = np.sum(S * W, axis=0)
    A = W - S * c
    low_rank = np.trace(B) - np.sum(S * (B @ S), axis=0)
    quad = d - 2 * np.sum(A * R, axis=0) + np.sum(A * (B @ A), axis=0)
    unorm2 = norm2 - np.sum(W * W, axis=0) + c**2
    t = low_rank + (n - m + 1) * quad / unorm2
    # the jackknife: XTrace on the m - 1 probes left after dropping probe j, for every j (see pair_inverse)
    g00, g01, g11 = pair_inverse(S)
    c_ji = S.T @ W  # [j, i] = s_j^T W e_i
    sbw = S.T @ (B @ W)
    bss = S.T @ (B @ S)
    p0 = g00 * c[:, None] + g01 * c_ji.T  # [i, j]: G_ij^{-1} (c_i, s_j^T W e_i), first and second entries
    p1 = g01 * c[:, None] + g11 * c_ji.T
    bii, bjj = np.diag(bss)[:, None], np.diag(bss)[None, :]
    low_ij = np.trace(B) - (g00 * bii + 2 * g01 * bss + g11 * bjj)
    a_r = np.sum(W * R, axis=0)[:, None] - p0 * np.sum(S * R, axis=0)[:, None]  # s_j^T R e_i = 0 for j != i
    a_b_a = (np.sum(W * (B @ W), axis=0)[:, None] - 2 * (p0 * np.diag(sbw)[:, None] + p1 * sbw.T)
             + p0**2 * bii + 2 * p0 * p1 * bss + p1**2 * bjj)
    u2_ij = (norm2 - np.sum(W * W, axis=0))[:, None] + c[:, None] * p0 + c_ji.T * p1
    np.fill_diagonal(u2_ij, 1.0)  # i = j is no pair (and ||(I - Q Q^T) w_i|| may be 0 there, for H = c I)
    t_ij = low_ij + (n - m + 2) * (d[:, None] - 2 * a_r + a_b_a) / u2_ij
    np.fill_diagonal(t_ij, 0.0)
    se = jackknife_se(t_ij.sum(axis=0) / (m - 1))
    if not (np.all(np.isfinite(t)) and np.isfinite(se)):
        return None
    return TraceEstimate(estimate=float(np.mean(t)), std_error=float(se), samples=t, n_hvp=0, converged=True,
                         method="xtrace")
