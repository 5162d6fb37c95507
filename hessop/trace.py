"""Trace of a Hessian from Hessian-vector products: Hutchinson, Hutch++, XTrace, and `trace` choosing among them.

Every estimator reports a standard error next to its estimate, takes a ``seed`` (probes are drawn on the host, so
one seed gives the same answer on every backend), pushes its probes through ``H.hvp_block`` in blocks and counts
the products it used in ``n_hvp``.

Which one to use
----------------
* :func:`trace` is the entry point for a target accuracy: it chooses Hutchinson or adaptive Hutch++ from the first
  products, grows the budget until the 95% interval meets ``max(rtol * |estimate|, atol)``, and says what it chose
  and why it stopped.
* :func:`hutchinson` is unbiased for any symmetric H, needs no memory beyond one block, and can stop on a
  confidence-interval rule (``rtol``).  Its variance with Rademacher probes is ``2 (||H||_F^2 - sum_i H_ii^2)``
  per sample: large when a few eigenvalues dominate (trained networks).
* :func:`hutchpp` and :func:`xtrace` spend part of the budget capturing the dominant eigen-directions exactly
  and use random probes only for the rest; on spectra with outliers they are several times more accurate at the
  same number of products.  On flat spectra Hutch++ is up to sqrt(3) less accurate than Hutchinson (two thirds
  of its budget build a sketch that captures nothing special) and XTrace up to sqrt(2) (each probe serves twice,
  so it averages n_hvp / 2 probes).  Both need ``n x (n_hvp / 2)`` memory.

The diagonal, ``diag(H)``, is in :mod:`hessop.diagonal`; it shares this module's stopping rule and deflation.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg

from hessop._array import check_finite, make_rng
from hessop._checkpoint import Checkpoint, restore_rng, rng_state
from hessop._probes import DEFAULT_BLOCK, DISTRIBUTIONS, block_sizes, column_dots, probe_block
from hessop._progress import Progress
from hessop._validate import check_choice, check_int, check_tol
from hessop.operator import as_operator

__all__ = ["TraceEstimate", "hutchinson", "hutchpp", "trace", "xtrace"]

MIN_RTOL_SAMPLES = 32
"""A target is never declared met on fewer samples.  Stopping when the sample standard deviation happens to be small
biases a sequential interval; with fewer samples (10 was tried) the 95% interval covered the trace in only 90% of
200 seeds on a flat spectrum and the reported standard error was 0.79x the spread of the estimates."""


MIN_SE_SAMPLES = 10
"""Fewest samples behind a fixed-budget standard error before :func:`hutchpp` warns.  Its residual samples are
heavy-tailed on spectra with outliers: with 4 of them (12 products) the standard error is right in mean square (the
root mean square of the reported standard errors was 0.93-0.97x the root-mean-square error over 1,000 seeds), but the
Student-t interval covered the trace in only 89% of seeds on an outlier spectrum (n = 20); with 10 (30 products)
in 92-96%."""


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


def _bar_fields(samples: np.ndarray, offset: float = 0.0, **extra: Any) -> dict[str, Any]:
    """A progress bar's postfix: ``extra``, the running estimate and its 95% half-width (from host samples)."""
    fields = dict(extra)
    if samples.size:
        fields["estimate"] = offset + float(np.mean(samples))
    if samples.size > 1:
        _, se = _mean_se(samples)
        fields["half95"] = _t_quantile(0.95, samples.size - 1) * se
    return fields


def _check_samples(values: np.ndarray, what: str, start: int) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        check_finite(float(values[bad[0]]), what, start + int(bad[0]) + 1)


def _target_rule(rtol: float | None, atol: float | None) -> Any:
    """The half-width a target asks for, as a function of the estimate: ``max(rtol * |estimate|, atol)``."""
    r = 0.0 if rtol is None else check_tol(rtol, "rtol")
    a = 0.0 if atol is None else check_tol(atol, "atol")
    return lambda estimate: max(r * abs(estimate), a)


def _warn_not_converged(who: str, rtol: float | None, atol: float | None, limit: str, estimate: float,
                        half: float) -> None:
    """Say why a target was missed: near-zero traces need ``atol``; otherwise more products or a better method."""
    asked = ", ".join(f"{k}={v}" for k, v in (("rtol", rtol), ("atol", atol)) if v is not None)
    if atol is None and abs(estimate) <= half:
        advice = (f"the trace appears to be near zero (|estimate| = {abs(estimate):.3g} is within the 95% "
                  f"half-width {half:.3g}), so no relative target can be met: give atol= (an absolute half-width).")
    else:
        advice = (f"the 95% half-width is {half:.3g} (estimate {estimate:.6g}). Raise the limit, loosen the target, "
                  "or use hessop.trace, which needs far fewer products when a few eigenvalues dominate.")
    warnings.warn(f"{who} did not reach {asked} within {limit}: {advice}", RuntimeWarning, stacklevel=3)


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
    stop_reason: str = ""
    choice: str = ""
    rank: int = 0
    exact: bool = False

    @property
    def n_samples(self) -> int:
        """Number of values in :attr:`samples`."""
        return int(self.samples.size)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Confidence interval ``estimate -+ t * std_error`` with the Student-t quantile for ``n_samples - 1``
        degrees of freedom (it allows for the standard error itself being estimated).  For an exact result
        (``exact=True``: the trace from identity columns, or a sketch spanning the range of H) ``std_error`` is a
        rounding bound and the interval is ``estimate -+ std_error``."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if self.exact:
            return (self.estimate - self.std_error, self.estimate + self.std_error)
        if self.n_samples < 2 or not math.isfinite(self.std_error):
            return (float("-inf"), float("inf"))
        half = _t_quantile(level, self.n_samples - 1) * self.std_error
        return (self.estimate - half, self.estimate + half)

    def half_width(self, level: float = 0.95) -> float:
        """Half-width of :meth:`interval`."""
        lo, hi = self.interval(level)
        return (hi - lo) / 2

    def __repr__(self) -> str:
        extra = f", stop_reason={self.stop_reason!r}" if self.stop_reason else ""
        return (f"TraceEstimate(method={self.method!r}, estimate={self.estimate:.6g}, "
                f"std_error={self.std_error:.3g}, n_samples={self.n_samples}, n_hvp={self.n_hvp}, "
                f"converged={self.converged}{extra})")


def hutchinson(
    H: Any,
    *,
    n_samples: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_samples: int = 10_000,
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

    Stopping rule with ``rtol`` and/or ``atol``: after each block (and from ``MIN_RTOL_SAMPLES = 32`` samples on),
    stop when the 95% confidence half-width ``t_{0.975, N-1} s / sqrt(N)`` is at most
    ``max(rtol * |estimate|, atol)``.  This bounds the
    error with 95% confidence, unlike stopping when the running mean stops changing (which does not control the
    error).  If ``max_samples`` is reached first, the estimate is returned with ``converged=False`` and a
    ``RuntimeWarning``.

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    n_samples : int, optional
        Fixed number of probes (>= 1).  Give either ``n_samples`` or a target (``rtol`` and/or ``atol``).
    rtol : float, optional
        Target relative half-width of the 95% confidence interval.
    atol : float, optional
        Target absolute half-width (use it when the trace may be near zero, where no relative target is reachable).
    max_samples : int
        Most probes with a target; default 10,000.  :func:`hessop.trace` needs far fewer products when a few
        eigenvalues dominate.
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
        ``estimate``, ``std_error``, ``samples`` (the ``v^T H v``), ``n_hvp`` (= number of samples),
        ``converged``, ``method``; ``.interval(level)`` gives a confidence interval.
    """
    op = as_operator(H)
    targeted = rtol is not None or atol is not None
    if (n_samples is None) == (not targeted):
        raise ValueError("give exactly one of n_samples (a fixed number of probes) or a target: rtol (relative "
                         "95% confidence half-width, e.g. rtol=0.01) and/or atol (absolute half-width)")
    distribution = check_choice(distribution, "distribution", DISTRIBUTIONS)
    block_size = check_int(block_size, "block_size", 1)
    if n_samples is not None:
        total = check_int(n_samples, "n_samples", 1)
    else:
        target = _target_rule(rtol, atol)
        total = check_int(max_samples, "max_samples", MIN_RTOL_SAMPLES)
    rng = make_rng(seed)
    xp = op.xp
    hvp0 = op.n_hvp

    samples = np.empty(total)
    count = 0
    converged = not targeted
    ck = Checkpoint(checkpoint, "hutchinson", op, seed, {"n_samples": n_samples, "rtol": rtol, "atol": atol,
                                                         "max_samples": total, "block_size": block_size,
                                                         "distribution": distribution})
    state = ck.load()
    if state is not None:
        count, converged, hvp0 = state["count"], state["converged"], hvp0 - state["n_hvp"]
        samples[:count], rng = state["samples"], restore_rng(state["rng"])
    bar = Progress(progress, op, "hutchinson", total, "sample")
    bar.update(count)
    for k in block_sizes(0 if targeted and converged else total - count, block_size):
        V = probe_block(op, rng, k, distribution)
        vals = np.asarray(op.to_numpy(column_dots(xp, V, op.hvp_block(V))), dtype=np.float64).reshape(-1)
        _check_samples(vals, "the quadratic form v^T H v", count)
        samples[count: count + k] = vals
        count += k
        if targeted and count >= MIN_RTOL_SAMPLES:
            mean, se = _mean_se(samples[:count])
            if _t_quantile(0.95, count - 1) * se <= target(mean):
                converged = True
        ck.save(samples=samples[:count], count=count, converged=converged, rng=rng_state(rng),
                n_hvp=op.n_hvp - hvp0)
        bar.update(k, _bar_fields, samples[:count])
        if targeted and converged:
            break
    bar.close()
    samples = samples[:count]
    mean, se = _mean_se(samples)
    if not converged:
        _warn_not_converged("hutchinson", rtol, atol, f"max_samples={total}", mean,
                            _t_quantile(0.95, count - 1) * se)
    return TraceEstimate(estimate=mean, std_error=se, samples=samples, n_hvp=op.n_hvp - hvp0,
                         converged=converged, method=f"hutchinson({distribution})",
                         stop_reason=("target met" if converged else "max_samples reached") if targeted
                         else "fixed budget")


def _orthonormal_range(xp: Any, Y: Any) -> tuple[Any, Any]:
    """Reduced QR ``Y = Q R`` on the backend (Householder: ``Q`` orthonormal to working precision)."""
    return xp.linalg.qr(Y)


def hutchpp(H: Any, n_hvp: int, *, seed: int | np.random.Generator | None = 0, progress: bool | None = None,
            checkpoint: str | os.PathLike | None = None) -> TraceEstimate:
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
    With fewer than ``MIN_SE_SAMPLES = 10`` residual samples (``n_hvp < 28``) a ``UserWarning`` says that this
    standard error and its interval are unreliable.

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    n_hvp : int
        Product budget, ``4 <= n_hvp`` and ``n_hvp // 3 < n``; all of it is used.
    seed : int, numpy Generator or None
        Seed of the host-drawn probes; default 0.
    progress : bool, optional
        Show a tqdm bar (products; the estimate at the end); default None: only when stderr is a terminal.
    checkpoint : str or Path, optional
        Resumable run (as :func:`hutchinson`): the state after each of the three block products (the basis ``Q``,
        ``tr(Q^T H Q)``, the residual samples) is saved to this file; default None.

    Notes
    -----
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
    ck = Checkpoint(checkpoint, "hutchpp", op, seed, {"n_hvp": n_hvp})
    state = ck.load() or {}
    bar = Progress(progress, op, "hutch++", n_hvp, "HVP")

    if g < MIN_SE_SAMPLES:
        warnings.warn(f"hutchpp with n_hvp = {n_hvp} has {g} residual samples: its standard error rests on {g - 1} "
                      "degrees of freedom and its interval can be too short on spectra with outliers; give "
                      "n_hvp >= 28, or use hessop.trace(H, rtol=...) for an interval one can rely on.", UserWarning,
                      stacklevel=2)
    if "Q" in state:  # resumed: the sketch (and maybe tr(Q^T H Q)) of the interrupted run
        Q, rng, hvp0 = op.cast(state["Q"]), restore_rng(state["rng"]), hvp0 - state["n_hvp"]
        bar.update(state["n_hvp"])
    else:
        S = probe_block(op, rng, s)
        Q, _ = _orthonormal_range(xp, op.hvp_block(S))
        ck.save(Q=Q, rng=rng_state(rng), n_hvp=op.n_hvp - hvp0)
        bar.update(s)
    if "exact" in state:
        exact = state["exact"]
    else:
        exact = float(op.to_numpy(xp.sum(column_dots(xp, Q, op.hvp_block(Q)))))
        check_finite(exact, "tr(Q^T H Q)", 1)
        ck.save(Q=Q, exact=exact, rng=rng_state(rng), n_hvp=op.n_hvp - hvp0)
        bar.update(s, {"exact part": exact})
    if "resid" in state:
        resid = state["resid"]
    else:
        G = probe_block(op, rng, g)
        G = G - Q @ (Q.T @ G)
        resid = np.asarray(op.to_numpy(column_dots(xp, G, op.hvp_block(G))), dtype=np.float64).reshape(-1)
        _check_samples(resid, "the residual quadratic form", 0)
        ck.save(Q=Q, exact=exact, resid=resid, n_hvp=op.n_hvp - hvp0, rng=rng_state(rng))
        bar.update(g, _bar_fields, resid, exact)
    bar.close()
    mean, se = _mean_se(resid)
    return TraceEstimate(estimate=exact + mean, std_error=se, samples=resid, n_hvp=op.n_hvp - hvp0,
                         converged=True, method="hutch++")


def xtrace(H: Any, n_hvp: int, *, seed: int | np.random.Generator | None = 0, progress: bool | None = None,
           checkpoint: str | os.PathLike | None = None) -> TraceEstimate:
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

    so beyond the 2m products only m x m matrices are handled on the host.  Every product serves both as a sketch
    and as a probe, which is why XTrace beats Hutch++ at equal budget on spectra with outliers.

    Standard error: the jackknife (see :func:`_jackknife_se`) over the m XTrace estimates ``T_(j)`` on the m - 1
    probes left after dropping probe j, each from the same m x m matrices: leaving out probes i and j projects onto
    ``range(Y)`` less the span of ``Q s_i`` and ``Q s_j`` (see :func:`_pair_inverse`), so the m(m-1) pairs cost
    O(m^3) host work and no product.  The paper's estimate ``std(t) / sqrt(m)`` ignores that the ``t_i`` share
    their sketch and is optimistic: over 300 seeds it was 0.74-0.94x the true error on the tests' outlier matrix
    and 0.77x on a flat one at 200 products (its 95% intervals covered 84-89%).  The jackknife was 1.0-1.5x the
    true error at 20-200 products (2.7x at 20 on the outlier matrix, where 10 probes do not yet capture the
    outliers) and its intervals covered 96-100%: conservative, as the Efron-Stein inequality says it is in
    expectation.

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    n_hvp : int
        Product budget, ``n_hvp >= 4``; an odd budget leaves one product unused.  With ``n_hvp >= n`` (so
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
    Memory: about ``2 * n_hvp`` n-vectors (``Omega``, ``Y``, ``Q``, ``Z`` of ``n_hvp / 2`` columns each).

    Returns
    -------
    TraceEstimate
        ``samples`` are the ``m`` leave-one-out estimates ``t_i``; ``std_error`` the jackknife's.

    If ``H Omega`` is numerically rank deficient (H has rank below ``m``), the sketch spans the range of H and
    ``tr(H) = tr(Q^T H Q)`` exactly: that value is returned with ``exact=True`` and a rounding bound
    ``n eps ||B||_F`` as ``std_error`` (no leave-one-out samples exist then).
    """
    op = as_operator(H)
    n_hvp = check_int(n_hvp, "n_hvp", 4)
    m = n_hvp // 2
    n = op.n
    if n_hvp >= n:
        return _exact_trace(op)
    rng = make_rng(seed)
    xp = op.xp
    hvp0 = op.n_hvp
    ck = Checkpoint(checkpoint, "xtrace", op, seed, {"n_hvp": n_hvp})
    state = ck.load() or {}
    hvp0 -= state.get("n_hvp", 0)
    bar = Progress(progress, op, "xtrace", 2 * m, "HVP")
    bar.update(state.get("n_hvp", 0))

    if "small" in state:  # resumed after both products: only host arithmetic is left
        small = state["small"]
    else:
        if "Y" in state:
            Om, Y = op.cast(state["Om"]), op.cast(state["Y"])
        else:
            Om = probe_block(op, rng, m, "gaussian")
            Y = op.hvp_block(Om)
            ck.save(Om=Om, Y=Y, n_hvp=op.n_hvp - hvp0)
            bar.update(m)
        Q, R = _orthonormal_range(xp, Y)
        Z = op.hvp_block(Q)
        dots = xp.stack([column_dots(xp, Om, Y), column_dots(xp, Om, Om)], axis=0)
        small = np.asarray(op.to_numpy(xp.concat([R, Q.T @ Z, Q.T @ Om, dots], axis=0)), dtype=np.float64)
        ck.save(small=small, n_hvp=op.n_hvp - hvp0)
        bar.update(m)
    if not np.all(np.isfinite(small)):
        check_finite(float("nan"), "a product H v", 1)
    R, B, W, d, norm2 = small[:m], small[m: 2 * m], small[2 * m: 3 * m], small[3 * m], small[3 * m + 1]
    B = (B + B.T) / 2
    eps = float(np.finfo(op.dtype).eps)
    if np.linalg.cond(R) * m * eps >= 1:  # rank(H) < m: Q spans range(H) and tr(Q^T H Q) is the trace
        bar.close()
        return TraceEstimate(estimate=float(np.trace(B)), std_error=n * eps * float(np.linalg.norm(B)),
                             samples=np.array([np.trace(B)]), n_hvp=op.n_hvp - hvp0, converged=True,
                             method="xtrace", stop_reason="exact: the sketch spans the range of H", rank=m,
                             exact=True)
    X = scipy.linalg.solve_triangular(R, np.eye(m), trans="T", lower=False)  # X = R^{-T}
    S = X / np.linalg.norm(X, axis=0)
    c = np.sum(S * W, axis=0)
    A = W - S * c
    low_rank = np.trace(B) - np.sum(S * (B @ S), axis=0)
    quad = d - 2 * np.sum(A * R, axis=0) + np.sum(A * (B @ A), axis=0)
    unorm2 = norm2 - np.sum(W * W, axis=0) + c**2
    t = low_rank + (n - m + 1) * quad / unorm2
    # the jackknife: XTrace on the m - 1 probes left after dropping probe j, for every j (see _pair_inverse)
    g00, g01, g11 = _pair_inverse(S)
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
    bar.update(0, _bar_fields, t)
    bar.close()
    return TraceEstimate(estimate=float(np.mean(t)), std_error=_jackknife_se(t_ij.sum(axis=0) / (m - 1)), samples=t,
                         n_hvp=op.n_hvp - hvp0, converged=True, method="xtrace")


def _pair_inverse(S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of ``G_ij^{-1}`` for every pair of columns ``i != j`` of ``S`` (unit columns), where
    ``G_ij = [s_i s_j]^T [s_i s_j] = [[1, g], [g, 1]]``, ``g = s_i^T s_j``: three m x m arrays (the (1,1), (1,2) and
    (2,2) entries; zero on the diagonal ``i = j``).

    With ``S`` the normalised columns of ``R^{-T}`` (``Y = Q R``), ``Q [s_i s_j]`` spans the part of ``range(Y)``
    orthogonal to every column but ``y_i`` and ``y_j``, so the projector onto the range of ``Y`` without those two
    columns is ``Q (I - [s_i s_j] G_ij^{-1} [s_i s_j]^T) Q^T``: the jackknife of :func:`xtrace` and XDiag needs
    this for every pair, from m x m arrays only."""
    g = S.T @ S
    det = 1.0 - g**2
    np.fill_diagonal(det, 1.0)
    off = 1.0 - np.eye(S.shape[1])
    return off / det, -g * off / det, off / det


def _jackknife_se(loo: Any, axis: int = 0) -> Any:
    """Jackknife standard error ``sqrt((m - 1) / m * sum_j (T_(j) - mean_j T_(j))^2)`` from the estimates
    ``T_(j)`` on the m - 1 probes left after dropping probe j (along ``axis``; numpy or backend arrays).

    By the Efron-Stein inequality (Efron, Stein, Ann. Statist. 9(3), 1981) its square is, in expectation, at least
    the variance of the estimator on m - 1 probes; for XTrace and XDiag, whose variance falls at least as fast as
    ``1/m``, it is therefore a conservative estimate of the variance on m probes."""
    m = loo.shape[axis]
    dev = loo - loo.mean(axis=axis, keepdims=True)
    return ((m - 1) / m * (dev**2).sum(axis=axis)) ** 0.5


def _exact_trace(op: Any, block_size: int = DEFAULT_BLOCK) -> TraceEstimate:
    """``tr(H) = sum_i e_i^T H e_i`` from the ``n`` identity columns, in blocks; ``std_error`` is the rounding bound
    ``n eps sum_i |H_ii|``."""
    hvp0 = op.n_hvp
    diag = _exact_diagonal(op, block_size)
    _check_samples(diag, "a diagonal entry e_i^T H e_i", 0)
    eps = float(np.finfo(op.dtype).eps)
    return TraceEstimate(estimate=float(np.sum(diag)), std_error=op.n * eps * float(np.sum(np.abs(diag))),
                         samples=diag, n_hvp=op.n_hvp - hvp0, converged=True, method="exact",
                         stop_reason=f"exact: {op.n} identity columns cost no more than the budget", exact=True)


def _exact_diagonal(op: Any, block_size: int = DEFAULT_BLOCK) -> np.ndarray:
    """``diag(H)`` on the host from the ``n`` identity columns, in blocks."""
    diag = np.empty(op.n)
    for start in range(0, op.n, block_size):
        k = min(block_size, op.n - start)
        E = op.cast(np.eye(op.n, k, -start))
        diag[start: start + k] = np.asarray(op.to_numpy(column_dots(op.xp, E, op.hvp_block(E))), dtype=np.float64)
    return diag


class _Deflation:
    """Hutch++'s exact part: an orthonormal basis ``Q`` of sketched directions of H, ``Z = H Q``, ``B = Q^T H Q``."""

    def __init__(self, op: Any) -> None:
        self.op = op
        self.Q: Any = None
        self.Z: Any = None
        self.B: Any = None
        self.exact = 0.0

    @property
    def rank(self) -> int:
        return 0 if self.Q is None else int(self.Q.shape[1])

    def grow(self, Y: Any) -> None:
        """Add the range of the sketch block ``Y`` (columns ``H omega``) to ``Q``: one product per new column."""
        xp = self.op.xp
        if self.Q is not None:
            for _ in range(2):  # two block Gram-Schmidt passes: the new columns orthogonal to Q to working precision
                Y = Y - self.Q @ (self.Q.T @ Y)
        Qn, _ = _orthonormal_range(xp, Y)
        if self.Q is not None:
            Qn, _ = _orthonormal_range(xp, Qn - self.Q @ (self.Q.T @ Qn))
        Zn = self.op.hvp_block(Qn)
        self.Q = Qn if self.Q is None else xp.concat([self.Q, Qn], axis=1)
        self.Z = Zn if self.Z is None else xp.concat([self.Z, Zn], axis=1)
        B = self.Q.T @ self.Z
        self.B = (B + B.T) / 2
        self.exact = check_finite(float(self.op.to_numpy(xp.sum(column_dots(xp, self.Q, self.Z)))),
                                  "tr(Q^T H Q)", self.rank)

    def probe(self, G: Any, plain: bool) -> tuple[np.ndarray, np.ndarray | None, Any]:
        """Products of the probes ``G`` projected off ``Q``: the residual samples ``g'^T H g'`` with
        ``g' = (I - Q Q^T) g``, optionally the plain samples ``g^T H g`` of the same probes (from ``H g' `` and
        ``Z``, no further product), and ``H g'`` (a sketch block for the next growth)."""
        xp = self.op.xp
        C = self.Q.T @ G
        Gp = G - self.Q @ C
        W = self.op.hvp_block(Gp)
        r = column_dots(xp, Gp, W)
        rows = [r]
        if plain:
            rows.append(r + column_dots(xp, C, self.B @ C) + 2 * column_dots(xp, C, self.Z.T @ Gp))
        vals = np.asarray(self.op.to_numpy(xp.stack(rows, axis=0)), dtype=np.float64).reshape(len(rows), -1)
        return vals[0], (vals[1] if plain else None), W


def _more_needed(samples: np.ndarray, offset: float, target: Any) -> float:
    """Further samples the t-interval rule predicts it needs: ``(t s / target)^2 - N`` (inf if target is 0)."""
    mean, se = _mean_se(samples)
    half_one = _t_quantile(0.95, samples.size - 1) * se * math.sqrt(samples.size)  # half-width for one sample
    goal = target(offset + mean)
    return math.inf if goal <= 0 else (half_one / goal) ** 2 - samples.size


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
