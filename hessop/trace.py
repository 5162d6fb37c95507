"""Trace and diagonal of a Hessian from Hessian-vector products: Hutchinson, Hutch++, XTrace, Hutchinson diagonal.

Every estimator reports a standard error next to its estimate, takes a ``seed`` (probes are drawn on the host, so
one seed gives the same answer on every backend), pushes its probes through ``H.hvp_block`` in blocks and counts
the products it used in ``n_hvp``.

Which one to use
----------------
* :func:`hutchinson` is unbiased for any symmetric H, needs no memory beyond one block, and can stop on a
  confidence-interval rule (``rtol``).  Its variance with Rademacher probes is ``2 (||H||_F^2 - sum_i H_ii^2)``
  per sample: large when a few eigenvalues dominate (trained networks).
* :func:`hutchpp` and :func:`xtrace` spend part of the budget capturing the dominant eigen-directions exactly
  and use random probes only for the rest; on spectra with outliers they are several times more accurate at the
  same number of products.  On flat spectra Hutch++ is up to sqrt(3) less accurate than Hutchinson (two thirds
  of its budget build a sketch that captures nothing special) and XTrace up to sqrt(2) (each probe serves twice,
  so it averages n_hvp / 2 probes).  Both need ``n x (n_hvp / 2)`` memory.
* :func:`diagonal` estimates ``diag(H)`` (Bekas, Kokiopoulou, Saad 2007).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg

from hessop._array import check_finite, make_rng
from hessop._probes import DEFAULT_BLOCK, DISTRIBUTIONS, block_sizes, column_dots, probe_block
from hessop._validate import check_choice, check_int, check_tol
from hessop.operator import as_operator

__all__ = ["DiagonalEstimate", "TraceEstimate", "diagonal", "hutchinson", "hutchpp", "xtrace"]

MIN_RTOL_SAMPLES = 10
"""``hutchinson(rtol=...)`` never stops on fewer samples: below this the sample standard deviation is too noisy to
trust the interval."""


def _t_quantile(level: float, dof: int) -> float:
    """Two-sided Student-t quantile: ``t`` with ``P(|T_dof| <= t) = level``."""
    from scipy.special import stdtrit

    return float(stdtrit(dof, 0.5 + level / 2))


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    """Sample mean and its standard error ``std(x, ddof=1) / sqrt(len(x))`` (NaN for a single sample)."""
    mean = float(np.mean(x))
    if x.size < 2:
        return mean, float("nan")
    return mean, float(np.std(x, ddof=1) / math.sqrt(x.size))


def _check_samples(values: np.ndarray, what: str, start: int) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        check_finite(float(values[bad[0]]), what, start + int(bad[0]) + 1)


@dataclass(frozen=True)
class TraceEstimate:
    """An estimate of ``tr(H)`` (or ``tr f(H)``) with its statistical error.

    Attributes
    ----------
    estimate : float
        The estimate.
    std_error : float
        Its estimated standard error (NaN when it cannot be estimated from a single sample).
    samples : numpy.ndarray
        The independent (or, for XTrace, exchangeable) values averaged into the estimate: ``v^T H v`` for
        Hutchinson, the residual quadratic forms for Hutch++ (added to the exact part ``tr(Q^T H Q)``), the
        leave-one-out estimates for XTrace, the per-draw values ``n sum_i w_i f(theta_i)`` for SLQ.
    n_hvp : int
        Hessian-vector products used.
    converged : bool
        For ``hutchinson(rtol=...)``: whether the confidence-interval rule was met before ``max_samples``.
        Estimators with a fixed budget report True.
    method : str
        Which estimator produced it.
    """

    estimate: float
    std_error: float
    samples: np.ndarray = field(repr=False)
    n_hvp: int
    converged: bool
    method: str

    @property
    def n_samples(self) -> int:
        """Number of values in :attr:`samples`."""
        return int(self.samples.size)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Confidence interval ``estimate -+ t * std_error`` with the Student-t quantile for ``n_samples - 1``
        degrees of freedom (it allows for the standard error itself being estimated)."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if self.n_samples < 2 or not math.isfinite(self.std_error):
            return (float("-inf"), float("inf"))
        half = _t_quantile(level, self.n_samples - 1) * self.std_error
        return (self.estimate - half, self.estimate + half)

    def __repr__(self) -> str:
        return (f"TraceEstimate(method={self.method!r}, estimate={self.estimate:.6g}, "
                f"std_error={self.std_error:.3g}, n_samples={self.n_samples}, n_hvp={self.n_hvp}, "
                f"converged={self.converged})")


@dataclass(frozen=True)
class DiagonalEstimate:
    """An estimate of ``diag(H)``.

    Attributes
    ----------
    diagonal : array, shape (n,)
        The estimate, in the backend's array type and device.
    std_error : array, shape (n,)
        Standard error of each entry (same array type; NaN for a single sample).
    per_parameter : dict or None
        For an operator whose backend can split a flat vector (PyTorch: ``backend.unflatten``):
        ``{parameter name: diagonal entries shaped like the parameter}``; otherwise None.
    n_hvp : int
        Hessian-vector products used.
    n_samples : int
        Probes averaged.
    method : str
    """

    diagonal: Any = field(repr=False)
    std_error: Any = field(repr=False)
    per_parameter: dict[str, Any] | None = field(repr=False)
    n_hvp: int
    n_samples: int
    method: str = "hutchinson-diagonal"


def hutchinson(
    H: Any,
    *,
    n_samples: int | None = None,
    rtol: float | None = None,
    max_samples: int = 10_000,
    block_size: int = DEFAULT_BLOCK,
    seed: int | np.random.Generator | None = 0,
    distribution: str = "rademacher",
) -> TraceEstimate:
    """Hutchinson's estimate of ``tr(H)``, with its standard error, for a fixed budget or a target accuracy.

    Maths
    -----
    For probes with ``E[v v^T] = I``, ``E[v^T H v] = tr(H)`` (Hutchinson 1989; Avron & Toledo, J. ACM 58(2),
    2011).  The estimate is the mean of ``N`` samples ``x_j = v_j^T H v_j`` and its standard error is
    ``s / sqrt(N)`` with ``s`` the sample standard deviation.  Per-sample variance: ``2 (||H||_F^2 - sum_i H_ii^2)``
    for Rademacher probes (entries +-1, the default, minimal among i.i.d. probes), ``2 ||H||_F^2`` for Gaussian.

    Stopping rule with ``rtol``: after each block (and from ``MIN_RTOL_SAMPLES = 10`` samples on), stop when the
    95% confidence half-width ``t_{0.975, N-1} s / sqrt(N)`` is at most ``rtol * |estimate|``.  This bounds the
    error with 95% confidence, unlike stopping when the running mean stops changing (which does not control the
    error).  If ``max_samples`` is reached first, the estimate is returned with ``converged=False`` and a
    ``RuntimeWarning``.

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    n_samples : int, optional
        Fixed number of probes (>= 1).  Give exactly one of ``n_samples`` and ``rtol``.
    rtol : float, optional
        Target relative half-width of the 95% confidence interval.
    max_samples : int
        Most probes with ``rtol``; default 10,000.
    block_size : int
        Probes per block product ``H.hvp_block``; default 16.  The result does not depend on it (probe ``j`` is the
        same whatever the blocks), except that ``rtol`` is checked only between blocks.
    seed : int, numpy Generator or None
        Seed of the host-drawn probes; default 0.
    distribution : {"rademacher", "gaussian"}
        Probe entries: +-1 (default) or standard normal.

    Memory: ``3 * block_size`` n-vectors (one probe block, its product, temporaries).

    Returns
    -------
    TraceEstimate
        ``estimate``, ``std_error``, ``samples`` (the ``v^T H v``), ``n_hvp`` (= number of samples),
        ``converged``, ``method``; ``.interval(level)`` gives a confidence interval.
    """
    op = as_operator(H)
    if (n_samples is None) == (rtol is None):
        raise ValueError("give exactly one of n_samples (a fixed number of probes) or rtol (a target relative "
                         "95% confidence half-width, e.g. rtol=0.01)")
    distribution = check_choice(distribution, "distribution", DISTRIBUTIONS)
    block_size = check_int(block_size, "block_size", 1)
    if n_samples is not None:
        total = check_int(n_samples, "n_samples", 1)
    else:
        rtol = check_tol(rtol, "rtol")
        total = check_int(max_samples, "max_samples", MIN_RTOL_SAMPLES)
    rng = make_rng(seed)
    xp = op.xp
    hvp0 = op.n_hvp

    samples = np.empty(total)
    count = 0
    converged = rtol is None
    for k in block_sizes(total, block_size):
        V = probe_block(op, rng, k, distribution)
        vals = np.asarray(op.to_numpy(column_dots(xp, V, op.hvp_block(V))), dtype=np.float64).reshape(-1)
        _check_samples(vals, "the quadratic form v^T H v", count)
        samples[count: count + k] = vals
        count += k
        if rtol is not None and count >= MIN_RTOL_SAMPLES:
            mean, se = _mean_se(samples[:count])
            if _t_quantile(0.95, count - 1) * se <= rtol * abs(mean):
                converged = True
                break
    samples = samples[:count]
    mean, se = _mean_se(samples)
    if not converged:
        warnings.warn(
            f"hutchinson did not reach rtol={rtol} within max_samples={total}: the 95% half-width is "
            f"{_t_quantile(0.95, count - 1) * se / max(abs(mean), 1e-300):.3g} of the estimate. Raise max_samples, "
            "loosen rtol, or use hutchpp / xtrace, which need far fewer products when a few eigenvalues dominate.",
            RuntimeWarning,
            stacklevel=2,
        )
    return TraceEstimate(estimate=mean, std_error=se, samples=samples, n_hvp=op.n_hvp - hvp0,
                         converged=converged, method=f"hutchinson({distribution})")


def _orthonormal_range(xp: Any, Y: Any) -> tuple[Any, Any]:
    """Reduced QR ``Y = Q R`` on the backend (Householder: ``Q`` orthonormal to working precision)."""
    return xp.linalg.qr(Y)


def hutchpp(H: Any, n_hvp: int, *, seed: int | np.random.Generator | None = 0) -> TraceEstimate:
    """Hutch++ estimate of ``tr(H)`` (Meyer, Musco, Musco, Woodruff, SOSA 2021), with a standard error.

    Maths
    -----
    With ``s = n_hvp // 3`` and ``g = n_hvp - 2 s``: draw Rademacher ``S`` (n x s), take ``Q = orth(H S)`` (s
    products); the trace on ``range(Q)`` is computed exactly as ``tr(Q^T H Q)`` (s products) and the rest by
    Hutchinson with ``g`` Rademacher probes projected off ``Q``:

        tr(H) ~ tr(Q^T H Q) + (1/g) sum_j g_j^T (I - Q Q^T) H (I - Q Q^T) g_j.

    The dominant eigen-directions, which carry most of Hutchinson's variance, are captured by ``Q``, so the error
    falls like ``1/n_hvp`` rather than ``1/sqrt(n_hvp)`` on spectra with decay.  ``std_error`` is the standard
    error of the residual Hutchinson part, ``std(residual samples) / sqrt(g)`` (the exact part adds none given Q).

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    n_hvp : int
        Product budget, ``4 <= n_hvp`` and ``n_hvp // 3 < n``; all of it is used.
    seed : int, numpy Generator or None
        Seed of the host-drawn probes; default 0.

    Memory: about ``n_hvp`` n-vectors (``S``, ``Q``, ``H Q``, ``G`` and ``H G``, a third of the budget each).

    Returns
    -------
    TraceEstimate
        ``samples`` are the ``g`` residual quadratic forms; ``estimate = tr(Q^T H Q) + mean(samples)``.
    """
    op = as_operator(H)
    n_hvp = check_int(n_hvp, "n_hvp", 4)
    s = n_hvp // 3
    g = n_hvp - 2 * s
    if s >= op.n:
        raise ValueError(f"n_hvp = {n_hvp} is too large for n = {op.n}: Hutch++ needs n_hvp // 3 < n. With that many "
                         "products form the matrix and take its trace exactly.")
    rng = make_rng(seed)
    xp = op.xp
    hvp0 = op.n_hvp

    S = probe_block(op, rng, s)
    Q, _ = _orthonormal_range(xp, op.hvp_block(S))
    exact = float(op.to_numpy(xp.sum(column_dots(xp, Q, op.hvp_block(Q)))))
    check_finite(exact, "tr(Q^T H Q)", 1)
    G = probe_block(op, rng, g)
    G = G - Q @ (Q.T @ G)
    resid = np.asarray(op.to_numpy(column_dots(xp, G, op.hvp_block(G))), dtype=np.float64).reshape(-1)
    _check_samples(resid, "the residual quadratic form", 0)
    mean, se = _mean_se(resid)
    return TraceEstimate(estimate=exact + mean, std_error=se, samples=resid, n_hvp=op.n_hvp - hvp0,
                         converged=True, method="hutch++")


def xtrace(H: Any, n_hvp: int, *, seed: int | np.random.Generator | None = 0) -> TraceEstimate:
    """XTrace estimate of ``tr(H)`` (Epperly, Tropp, Webber, SIAM J. Matrix Anal. Appl. 45(1), 2024), with an
    error estimate.

    Maths
    -----
    With ``m = n_hvp // 2`` Gaussian probes ``Omega = [w_1 .. w_m]`` and ``Y = H Omega = Q R``, each probe in turn
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

    so beyond the 2m products only m x m matrices are handled on the host.  ``std_error = std(t) / sqrt(m)``, the
    paper's error estimate.  Every product serves both as a sketch and as a probe, which is why XTrace beats
    Hutch++ at equal budget on spectra with outliers.

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    n_hvp : int
        Product budget, ``4 <= n_hvp < 2 n``; an odd budget leaves one product unused.
    seed : int, numpy Generator or None
        Seed of the host-drawn probes; default 0.

    Memory: about ``2 * n_hvp`` n-vectors (``Omega``, ``Y``, ``Q``, ``Z`` of ``n_hvp / 2`` columns each).

    Returns
    -------
    TraceEstimate
        ``samples`` are the ``m`` leave-one-out estimates ``t_i``.

    Raises
    ------
    ValueError
        If ``H Omega`` is numerically rank deficient (H has rank below ``m``): then use :func:`hutchpp`, which is
        exact in that case.
    """
    op = as_operator(H)
    n_hvp = check_int(n_hvp, "n_hvp", 4)
    m = n_hvp // 2
    n = op.n
    if m >= n:
        raise ValueError(f"n_hvp = {n_hvp} is too large for n = {n}: XTrace needs n_hvp < 2 n. With that many "
                         "products form the matrix and take its trace exactly.")
    rng = make_rng(seed)
    xp = op.xp
    hvp0 = op.n_hvp

    Om = probe_block(op, rng, m, "gaussian")
    Y = op.hvp_block(Om)
    Q, R = _orthonormal_range(xp, Y)
    Z = op.hvp_block(Q)
    dots = xp.stack([column_dots(xp, Om, Y), column_dots(xp, Om, Om)], axis=0)
    small = np.asarray(op.to_numpy(xp.concat([R, Q.T @ Z, Q.T @ Om, dots], axis=0)), dtype=np.float64)
    if not np.all(np.isfinite(small)):
        check_finite(float("nan"), "a product H v", 1)
    R, B, W, d, norm2 = small[:m], small[m: 2 * m], small[2 * m: 3 * m], small[3 * m], small[3 * m + 1]
    B = (B + B.T) / 2
    eps = float(np.finfo(op.dtype).eps)
    if np.linalg.cond(R) * m * eps >= 1:
        raise ValueError(f"H Omega has numerical rank below m = {m}: H appears to have rank < {m}. Use hutchpp, "
                         "which is exact when the rank is below n_hvp // 3, or a smaller n_hvp.")
    X = scipy.linalg.solve_triangular(R, np.eye(m), trans="T", lower=False)  # X = R^{-T}
    S = X / np.linalg.norm(X, axis=0)
    c = np.sum(S * W, axis=0)
    A = W - S * c
    low_rank = np.trace(B) - np.sum(S * (B @ S), axis=0)
    quad = d - 2 * np.sum(A * R, axis=0) + np.sum(A * (B @ A), axis=0)
    unorm2 = norm2 - np.sum(W * W, axis=0) + c**2
    t = low_rank + (n - m + 1) * quad / unorm2
    mean, se = _mean_se(t)
    return TraceEstimate(estimate=mean, std_error=se, samples=t, n_hvp=op.n_hvp - hvp0, converged=True,
                         method="xtrace")


def diagonal(
    H: Any,
    n_samples: int,
    *,
    seed: int | np.random.Generator | None = 0,
    block_size: int = DEFAULT_BLOCK,
) -> DiagonalEstimate:
    """Hutchinson's estimate of ``diag(H)`` (Bekas, Kokiopoulou, Saad, Appl. Numer. Math. 57, 2007).

    Maths
    -----
    For Rademacher probes ``v`` (entries +-1, so ``v * v = 1``), ``E[v * (H v)] = diag(H)`` entrywise, with
    per-sample variance ``sum_{j != i} H_ij^2`` for entry ``i``.  The estimate is the mean of ``v_j * (H v_j)``
    over ``n_samples`` probes and each entry's standard error is its sample standard deviation over
    ``sqrt(n_samples)``.  Means and variances are accumulated on the backend block by block (Chan et al.'s pairwise
    update, stable for large means), so nothing of length n goes to the host.

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    n_samples : int
        Number of probes, >= 1.
    seed : int, numpy Generator or None
        Seed of the host-drawn probes; default 0.
    block_size : int
        Probes per block product; default 16.

    Memory: ``3 * block_size + 4`` n-vectors (one probe block, its product, the running mean and variance).

    Returns
    -------
    DiagonalEstimate
        ``diagonal`` and ``std_error`` as native arrays; for a PyTorch operator ``per_parameter`` maps each
        parameter name to its diagonal entries shaped like the parameter.
    """
    op = as_operator(H)
    n_samples = check_int(n_samples, "n_samples", 1)
    block_size = check_int(block_size, "block_size", 1)
    rng = make_rng(seed)
    xp = op.xp
    hvp0 = op.n_hvp

    mean = m2 = None
    count = 0
    for k in block_sizes(n_samples, block_size):
        V = probe_block(op, rng, k)
        X = V * op.hvp_block(V)
        bmean = xp.mean(X, axis=1)
        bm2 = xp.sum((X - bmean[:, None]) ** 2, axis=1)
        check_finite(float(op.to_numpy(xp.sum(bmean))), "the sum of v * (H v)", count + 1)
        if mean is None:
            mean, m2 = bmean, bm2
        else:
            delta = bmean - mean
            total = count + k
            mean = mean + delta * (k / total)
            m2 = m2 + bm2 + delta**2 * (count * k / total)
        count += k
    if count > 1:
        se = xp.sqrt(m2 / (count - 1) / count)
    else:
        se = xp.full_like(mean, float("nan"))
    unflatten = getattr(op.backend, "unflatten", None)
    per_parameter = unflatten(mean) if callable(unflatten) else None
    return DiagonalEstimate(diagonal=mean, std_error=se, per_parameter=per_parameter, n_hvp=op.n_hvp - hvp0,
                            n_samples=count)
