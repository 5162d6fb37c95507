"""Issue 26, class 4: norms, dot products and variances over the whole exponent range of each dtype.

The operators are ``2**e * A0`` for a fixed float64 ``A0`` (``diag(spectrum)`` for the eigensolvers, a rotated
``U diag(spectrum) U^T`` for the estimators, so that their samples differ), for ``e`` across the range of the
dtype.  Scaling by a power of two is exact, so wherever no product under- or overflows every figure a solver reports
must be ``2**e`` times the one at ``e = 0`` up to rounding, and the reported residuals must bound the true ones.
The true residual is computed scale-safely: in float64 on the unscaled spectrum (``||A0 v - 2**-e theta v||``,
the division by ``2**e`` exact) and multiplied back by ``2**e``.

The exponent ranges (``||H|| = 2**e``; the spectrum lies in [0.01, 1]) are the whole range where the products
themselves are representable:

* float32: ``e`` in [-100, 127] for the eigensolvers (below ``2**-103 = smallest_normal / eps`` the products lose
  whole digits to underflow; ``||H|| < 2**128``), [-90, 119] for the estimators (their probes have entries +-1 and
  norm ``sqrt(n)``, so ``v^T H v`` is about ``n ||H||``; with n = 40 it exceeds float32's range beyond
  ``2**122``, where it is only representable because the samples are summed in float64);
* float64: ``e`` in [-965, 1021] for the eigensolvers (``2**-970 = smallest_normal / eps``; ``3 ||H||`` must be
  finite), [-955, 1015] for the estimators.

Before the fix (the backends' own norms, ``sqrt(sum x^2)``), at float32 ``e <= -60`` and float64 ``e <= -505`` the
true residuals were up to 6e5 (float32) and 3.2e14 (float64) times the reported ones, at float32 ``e >= 64`` and
float64 ``e >= 512`` Lanczos failed with "the Hessian-vector product returned NaN or Inf" (beta's norm overflowed)
and power iteration reported an infinite residual, and the trace's standard error was 0 below 1e-154 and infinite
above 1e154 (float64): see docs/reliability.md, class 4.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from array_api_compat import array_namespace

import hessop
from hessop import HessianOperator
from hessop._array import host_norm, pow2_scale, vector_norm
from hessop.estimators._stats import Moments, Samples, jackknife_se, mean_se
from hessop.testing import matrix_with_spectrum

N = 40
SPEC = np.r_[1.0, 0.9, 0.8, np.linspace(0.5, 0.01, N - 3)]
A0 = matrix_with_spectrum(SPEC, seed=3)  # float64, the estimators' operator at e = 0
EIG_RANGE = {np.float32: (-100, 127), np.float64: (-965, 1021)}
EST_RANGE = {np.float32: (-90, 119), np.float64: (-955, 1015)}


def exponents(lo: int, hi: int) -> list[int]:
    """Both ends, zero, and points between them (a few per factor 2**100)."""
    inner = np.linspace(lo, hi, 9).round().astype(int).tolist()
    return sorted(set(inner + [lo, lo + 1, 0, hi - 1, hi]))


CASES_EIG = [(dt, e) for dt in (np.float32, np.float64) for e in exponents(*EIG_RANGE[dt])]
CASES_EST = [(dt, e) for dt in (np.float32, np.float64) for e in exponents(*EST_RANGE[dt])]


def diag_op(dtype, e: int) -> HessianOperator:
    return HessianOperator.from_matrix(np.diag(np.ldexp(SPEC, e)).astype(dtype))


def dense_op(dtype, e: int) -> HessianOperator:
    return HessianOperator.from_matrix(np.ldexp(A0, e).astype(dtype))


def true_residuals(V, theta, e: int) -> np.ndarray:
    """``||H v - theta v||`` for ``H = diag(2**e SPEC)`` in float64, scale-safely (see the module notes)."""
    V = np.asarray(V, dtype=np.float64)
    R = SPEC[:, None] * V - V * np.ldexp(np.asarray(theta, dtype=np.float64), -e)
    return np.ldexp(np.linalg.norm(R, axis=0), e)


def same_up_to_scale(scaled, base, e: int, rtol: float) -> bool:
    scaled, base = np.asarray(scaled, dtype=np.float64), np.asarray(base, dtype=np.float64)
    return bool(np.all(np.abs(np.ldexp(scaled, -e) - base) <= rtol * np.max(np.abs(base))))


@pytest.mark.parametrize(("dtype", "e"), CASES_EIG, ids=lambda x: getattr(x, "__name__", str(x)))
def test_eigensolvers_report_true_bounds_over_the_whole_range(dtype, e):
    """lanczos and power_iteration: finite results, residuals that bound the true ones (before the fix up to 3e14
    times below them), and the same answer as at ``e = 0`` scaled by ``2**e``."""
    eps = float(np.finfo(dtype).eps)
    for run in (lambda H: hessop.lanczos(H, 2), lambda H: hessop.power_iteration(H, 1, max_iter=2000)):
        r, r0 = run(diag_op(dtype, e)), run(diag_op(dtype, 0))
        assert np.all(np.isfinite(r.eigenvalues)) and np.all(np.isfinite(r.residuals)), (r.eigenvalues, r.residuals)
        true = true_residuals(r.eigenvectors, r.eigenvalues, e)
        assert np.all(true <= r.residuals * (1 + 1e-9)), (true, r.residuals)
        assert np.all(r.residuals > 0)
        assert bool(np.all(r.converged)) == bool(np.all(r0.converged))
        assert same_up_to_scale(r.eigenvalues, r0.eigenvalues, e, 10 * eps)
        assert same_up_to_scale(r.residuals, r0.residuals, e, 1e-6)  # a rescaled norm rounds differently


@pytest.mark.parametrize(("dtype", "e"), CASES_EST, ids=lambda x: getattr(x, "__name__", str(x)))
def test_estimators_keep_their_intervals_over_the_whole_range(dtype, e):
    """hutchinson, trace, diagonal and slq: estimates and standard errors ``2**e`` times those at ``e = 0``; a
    standard error of zero width never appears where the samples differ (before: 0 below 1e-154 and inf above
    1e154 in float64, 0 below 1e-19 in float32)."""
    eps = float(np.finfo(dtype).eps)
    H, H0 = dense_op(dtype, e), dense_op(dtype, 0)
    rtol = 1e3 * eps  # the products' rounding differs once subnormal entries appear
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # budget warnings, the same at every scale
        runs = [(lambda H: hessop.hutchinson(H, max_hvp=24)), (lambda H: hessop.trace(H, max_hvp=24)),
                (lambda H: hessop.slq(H, n_iter=8, max_hvp=32).trace())]
        for run in runs:
            r, r0 = run(H), run(H0)
            assert np.isfinite(r.estimate) and np.isfinite(r.std_error) and r.std_error > 0, (r.estimate, r.std_error)
            assert same_up_to_scale(r.estimate, r0.estimate, e, rtol)
            assert same_up_to_scale(r.std_error, r0.std_error, e, 10 * rtol)
        d, d0 = hessop.diagonal(H, max_hvp=24), hessop.diagonal(H0, max_hvp=24)
    se, se0 = (np.asarray(x.std_error, dtype=np.float64) for x in (d, d0))
    assert np.all(np.isfinite(se)) and np.all((se > 0) == (se0 > 0)) and np.any(se0 > 0)
    assert same_up_to_scale(np.asarray(d.diagonal, dtype=np.float64), np.asarray(d0.diagonal), e, rtol)
    assert same_up_to_scale(se, se0, e, 10 * rtol)


def test_products_that_overflow_get_a_clear_error():
    """Past the range: an infinite product is blamed on the product; a sum of finite products that overflows
    (``v^T H v`` of size ``n ||H||``) says so instead of blaming the products.

    The estimators sum float32 samples in float64 (``quadratic_forms``), so a float32 ``v^T H v`` beyond float32's
    range (``||H|| = 2**126``, trace ``11 * 2**126``; before, this raised) is now computed and correct; the sum
    still overflows where it exceeds float64's range (``||H|| = 2**1021``, float64 products)."""
    with pytest.raises(FloatingPointError, match="product returned NaN or Inf"), np.errstate(all="ignore"):
        hessop.lanczos(HessianOperator.from_function(lambda v: v * np.float32(2.0**127) * 4, N, np.float32), 1)
    r = hessop.hutchinson(diag_op(np.float32, 126), max_hvp=8)
    exact = np.ldexp(float(np.sum(SPEC.astype(np.float32), dtype=np.float64)), 126)
    assert exact > float(np.finfo(np.float32).max) and np.isfinite(r.estimate)
    lo, hi = r.interval()
    assert lo <= exact <= hi and abs(r.estimate - exact) <= r.rounding, (r.estimate, exact, r.rounding)
    with pytest.raises(FloatingPointError, match="the products are finite and a sum of them"), \
            np.errstate(all="ignore"):
        hessop.hutchinson(diag_op(np.float64, 1021), max_hvp=8)


def test_a_norm_beyond_float64_says_so():
    """Finite entries whose norm exceeds float64's range: the error names the norm, not NaN products."""
    H = HessianOperator.from_matrix(np.eye(N))
    with pytest.raises(FloatingPointError, match="norm of a vector overflowed float64 although its entries are"):
        hessop.lanczos(H, 1, v0=np.full(N, 1e308))
    # the same start vector scaled into range gives the same answer
    assert hessop.lanczos(H, 1, v0=np.full(N, 1e300)).eigenvalues[0] == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_norm_is_exact_to_rounding_over_the_range(dtype):
    """``vector_norm`` against the float64 norm of the unscaled vector, times ``2**e``, from the smallest normal
    to the largest finite value; NumPy's own norm is shown to fail at both ends (so the test can fail)."""
    fi = np.finfo(dtype)
    H = HessianOperator.from_matrix(np.eye(5, dtype=dtype))
    x0 = np.array([[3.0, 1.0], [4.0, -2.0], [0.0, 0.5], [1.0, 0.0], [0.25, 2.0]])
    ref = np.linalg.norm(x0, axis=0)
    lo, hi = int(np.log2(fi.smallest_normal)) + 2, int(np.log2(fi.max)) - 3
    with np.errstate(over="ignore", under="ignore"):
        assert np.linalg.norm(np.ldexp(x0, lo).astype(dtype)[:, 0]) != np.ldexp(ref[0], lo).astype(dtype)
        assert not np.isfinite(np.linalg.norm(np.ldexp(x0, hi).astype(dtype)[:, 0]))
    for e in range(lo, hi + 1, 7):
        X = H.asarray(np.ldexp(x0, e).astype(dtype))
        got = np.ldexp(vector_norm(H, X, axis=0), -e)
        assert np.all(np.abs(got - ref) <= 4 * fi.eps * ref), (e, got, ref)
        assert abs(np.ldexp(vector_norm(H, X[:, 0]), -e) - ref[0]) <= 4 * fi.eps * ref[0]
        assert np.all(np.abs(np.ldexp(host_norm(np.ldexp(x0, e), axis=0), -e) - ref) <= 4e-16 * ref)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_vector_norm_on_framework_arrays(backend):
    """The same scale-safe norms on torch and JAX arrays, whose own norms fail at both ends (JAX flushes
    subnormals: its norm of a float32 vector of 1e-20s is 0)."""
    mod = pytest.importorskip(backend)
    if backend == "jax":
        mod = pytest.importorskip("jax.numpy")
    x0 = np.array([[3.0, 0.0], [4.0, 1.0], [0.0, -2.0], [1e-3, 0.5]])
    ref = np.linalg.norm(x0, axis=0)
    eps = float(np.finfo(np.float32).eps)
    for e in (-120, -70, 0, 70, 120):
        X = mod.asarray(np.ldexp(x0, e).astype(np.float32))
        op = SimpleNamespace(xp=array_namespace(X), to_numpy=np.asarray)
        if e in (-120, 120):  # the framework's own norm is wrong here, so the test can fail
            own = np.ldexp(np.asarray(op.xp.linalg.vector_norm(X, axis=0), dtype=np.float64), -e)
            assert not np.all(np.abs(own - ref) <= 4 * eps * ref)
        assert np.all(np.abs(np.ldexp(vector_norm(op, X, axis=0), -e) - ref) <= 4 * eps * ref), e
        assert abs(np.ldexp(vector_norm(op, X[:, 0]), -e) - ref[0]) <= 4 * eps * ref[0], e


@pytest.mark.parametrize("e", [-1000, -700, -200, 0, 200, 700, 1000])
def test_host_statistics_are_scale_safe(e):
    """mean_se, Samples and jackknife_se on float64 samples ``2**e x``: ``2**e`` times the unscaled figures
    (before: a standard error of 0 below 2**-511 and inf above 2**511)."""
    x = np.random.default_rng(0).standard_normal(50) + 3.0
    m0, s0 = mean_se(x)
    m, s = mean_se(np.ldexp(x, e))
    assert (np.ldexp(m, -e), np.ldexp(s, -e)) == pytest.approx((m0, s0), rel=1e-14)
    samples = Samples()
    samples.add(np.ldexp(x, e))
    half, est, one = samples.interval()
    assert np.ldexp(half, -e) == pytest.approx(1.9 * s0, rel=0.1) and np.ldexp(est, -e) == pytest.approx(m0)
    loo = (x.sum() - x) / (x.size - 1)
    assert np.ldexp(jackknife_se(np.ldexp(loo, e)), -e) == pytest.approx(jackknife_se(loo), rel=1e-12)
    assert pow2_scale(np.ldexp(3.0, e)) == np.ldexp(4.0, e) or abs(e) > 1000


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_moments_are_scale_safe(dtype):
    """The diagonal estimators' running moments (on the backend, in the operator's dtype): blocks at ``2**e``
    give ``2**e`` times the unscaled standard errors, including when a later block is far larger."""
    fi = np.finfo(dtype)
    H = HessianOperator.from_matrix(np.eye(6, dtype=dtype))
    rng = np.random.default_rng(1)
    blocks = [rng.standard_normal((6, 4)) + 1.0 for _ in range(3)]
    lo, hi = int(np.log2(fi.smallest_normal)) + 30, int(np.log2(fi.max)) - 5
    base = Moments(H)
    for b in blocks:
        base.add(H.asarray(b.astype(dtype)))
    se0 = np.asarray(base.std_error(), dtype=np.float64)
    for e in (lo, lo // 2, hi // 2, hi):
        acc = Moments(H)
        for b in blocks:
            acc.add(H.asarray(np.ldexp(b, e).astype(dtype)), "x")
        se = np.ldexp(np.asarray(acc.std_error(), dtype=np.float64), -e)
        assert np.all(np.abs(se - se0) <= 100 * fi.eps * se0), (e, se, se0)
        half, rms, _ = acc.interval()
        half0, rms0, _ = base.interval()
        assert np.ldexp(half, -e) == pytest.approx(half0, rel=1e-4) and np.ldexp(rms, -e) == pytest.approx(rms0,
                                                                                                           rel=1e-4)
    # a first block of zeros, then blocks at the top of the range: the scale follows the largest samples
    acc = Moments(H)
    acc.add(H.asarray(np.zeros((6, 4), dtype=dtype)))
    for b in blocks:
        acc.add(H.asarray(np.ldexp(b, hi).astype(dtype)))
    assert np.all(np.isfinite(np.asarray(acc.std_error(), dtype=np.float64)))


@pytest.mark.parametrize("e", [-100, 100])
def test_a_torch_model_at_either_end_of_float32(e):
    """A float32 torch model whose loss is scaled by ``2**e``: the same eigenpairs times ``2**e``.  Before, at
    ``2**100`` the determinism check at construction blamed "NaN or Inf" products (its norm overflowed), and at
    ``2**-100`` lanczos returned 3.317 and 2.707 (times ``2**-100``) for eigenvalues 4.871 and 3.523, reported
    converged with residuals of 1e-6: the squares in its norms had underflowed."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    X, y = torch.randn(16, 5), torch.randn(16, 1)
    model = torch.nn.Linear(5, 1)
    runs = {}
    for s in (0, e):
        H = HessianOperator.from_torch(model, lambda out, t, s=s: torch.nn.functional.mse_loss(out, t) * 2.0**s,
                                       [(X, y)])
        runs[s] = hessop.lanczos(H, 2)
    r, r0 = runs[e], runs[0]
    assert np.all(r.converged) and same_up_to_scale(r.eigenvalues, r0.eigenvalues, e, 1e-6)
    assert same_up_to_scale(r.residuals, r0.residuals, e, 1e-3)
    exact = np.linalg.eigvalsh(2 * np.c_[X.numpy(), np.ones(16)].T.astype(np.float64)
                               @ np.c_[X.numpy(), np.ones(16)] / 16)[::-1][:2]
    assert np.all(np.abs(np.ldexp(r.eigenvalues, -e) - exact) <= np.ldexp(r.residuals, -e))


@pytest.mark.parametrize("s", [1e-300, 1e-200, 1e200, 1e300])
def test_the_symmetry_check_works_at_every_scale(s):
    """``from_function``'s symmetry check: before, at 1e-200 its norms underflowed to a tolerance of 0 and a
    symmetric operator was refused as "not symmetric"; a non-symmetric one is still refused at every scale."""
    A = matrix_with_spectrum(np.linspace(1.0, 2.0, 30), seed=1) * s
    H = HessianOperator.from_function(lambda v: A @ v, 30)
    assert H.n == 30
    K = A + np.triu(np.full((30, 30), 0.1 * s), 1)  # a non-symmetric part of size 0.1 ||A||
    with pytest.raises(ValueError, match="not symmetric"):
        HessianOperator.from_function(lambda v: K @ v, 30)
