"""Property-based tests (hypothesis): the solvers' claims hold on random symmetric operators of every shape.

Operators are ``U diag(lambda) U^T`` from :func:`hessop.testing.family_spectrum` (families: uniform, outliers,
clusters, exact multiplicities, zeros and negatives, exactly low rank), sizes 2 .. 300 (``k < n`` needs n >= 2),
scales ``10**e`` over the whole range of the dtype, ``e`` in [-300, 300] for float64 and [-33, 36] for float32 (issue
26, class 4: the norms are scale-safe; before, the range stopped at 1e+-150 and 1e+-15 where squares over- or
underflow).  The ends keep the products themselves representable: the outlier family reaches ``100 * scale``, and at
the bottom the subnormal rounding of the ``n**2`` terms of a dense product, ``n**1.5 * 2**-149`` (float32) or
``n**1.5 * 2**-1074`` (float64) in norm, stays below a tenth of the precision floor ``sqrt(n) eps ||H||``.  In
float32 and float64.  The truth is ``numpy.linalg.eigh`` of the stored matrix in float64, and the reference residual
``||A v - theta v||`` is computed on ``A`` and ``theta`` divided by a power of two near ``||A||`` (exactly) and
multiplied back, so the reference itself neither under- nor overflows.

The default profile ("ci", derandomised: a fixed set of examples) keeps the suite fast; the larger one runs with
``HESSOP_PROPERTY_PROFILE=thorough bash benchmarks/property_tests.sh`` (see docs/reliability.md).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as sla
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import hessop
from hessop import HessianOperator
from hessop.testing import FAMILIES, family_spectrum, matrix_with_spectrum

PROFILES = {
    "ci": settings(max_examples=15, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck)),
    "thorough": settings(max_examples=int(os.environ.get("HESSOP_PROPERTY_EXAMPLES", "200")), deadline=None,
                         suppress_health_check=list(HealthCheck)),
}
PROFILE = PROFILES[os.environ.get("HESSOP_PROPERTY_PROFILE", "ci")]
MAX_N = int(os.environ.get("HESSOP_PROPERTY_MAX_N", "300"))
SCALE_EXPONENTS = {"float64": (-300, 300), "float32": (-33, 36)}
"""Decimal exponents of the operators' scale: the whole range of each dtype (see the module notes)."""


def pow2_exponent(x: float) -> int:
    """``e`` with ``2**e`` near ``x`` (0 for 0): the exact scaling that keeps a reference computation in range."""
    return int(np.frexp(x)[1]) if x > 0 and np.isfinite(x) else 0


@st.composite
def problems(draw, max_n: int = MAX_N):
    """(A, exact eigenvalues of A descending, family, dtype name)."""
    dtype = draw(st.sampled_from(["float64", "float32"]))
    family = draw(st.sampled_from(FAMILIES))
    n = draw(st.integers(2, max_n))
    low, high = SCALE_EXPONENTS[dtype]
    scale = 10.0 ** draw(st.integers(low, high))
    seed = draw(st.integers(0, 2**16))
    return build(family, n, seed, scale, dtype)


class Problem(tuple):
    """(A, exact eigenvalues descending, family, dtype), shown by how it was made."""

    def __repr__(self) -> str:
        return self.label


def build(family: str, n: int, seed: int, scale: float, dtype: str) -> Problem:
    A = matrix_with_spectrum(family_spectrum(family, n, seed, scale), seed=seed + 1, dtype=np.dtype(dtype))
    e = pow2_exponent(float(np.max(np.abs(A))))
    truth = np.ldexp(np.linalg.eigvalsh(np.ldexp(A.astype(np.float64), -e)), e)[::-1]
    p = Problem((A, truth, family, dtype))
    p.label = f"build({family!r}, {n}, {seed}, {scale:g}, {dtype!r})"
    return p


def wanted(truth: np.ndarray, which: str, k: int) -> np.ndarray:
    if which == "LA":
        return truth[:k]
    if which == "SA":
        return truth[::-1][:k]
    return truth[np.argsort(-np.abs(truth), kind="stable")][:k]


def check_claims(A, truth, r, tol, which):
    """The claims of an EigenResult against the stored matrix (float64 arithmetic)."""
    A64 = A.astype(np.float64)
    V = np.asarray(r.eigenvectors, dtype=np.float64)
    theta = r.eigenvalues
    eps = np.finfo(A.dtype).eps
    hnorm = max(np.max(np.abs(truth)), np.finfo(np.float64).tiny)
    k = theta.size
    # 1. every reported residual bounds the true one, and so the distance to the spectrum
    e = pow2_exponent(hnorm)  # scale-safe reference: A / 2**e and theta / 2**e are exact
    true_res = np.ldexp(np.linalg.norm(np.ldexp(A64, -e) @ V - V * np.ldexp(theta, -e), axis=0), e)
    assert np.all(true_res <= r.residuals * (1 + 1e-6)), (true_res, r.residuals, r.converged)
    dist = np.min(np.abs(theta[:, None] - truth[None, :]), axis=1)
    assert np.all(dist <= r.residuals * (1 + 1e-6) + 4 * eps * np.abs(theta)), (dist, r.residuals)
    # 2. orthonormal vectors (each thick restart's Q S adds rounding: the loss grows with the restarts)
    assert np.max(np.abs(V.T @ V - np.eye(k))) <= 100 * np.sqrt(A.shape[0]) * eps * (1 + r.n_restarts)
    # 3. converged exactly when the residual meets the rule (the rule's floor term uses an estimate of ||H||
    #    within [max|theta|, 3 ||H||])
    #    and, with the default tol, a residual within 10 floors, floor = sqrt(n) eps ||H|| (results.residual_threshold)
    n = A.shape[0]
    scale_hi = np.maximum(np.abs(theta), eps ** (2 / 3) * 3 * hnorm)
    assert np.all(~r.converged | (r.residuals <= np.maximum(tol * scale_hi, 10 * np.sqrt(n) * eps * 3 * hnorm)))
    assert np.all(r.converged | (r.residuals > tol * np.abs(theta)))
    assert np.all(r.converged | (r.residuals > 10 * np.sqrt(n) * eps * np.max(np.abs(theta))))
    return dist


@PROFILE
@given(problem=problems(), which=st.sampled_from(["LA", "SA", "LM"]), restart=st.booleans(),
       data=st.data())
@example(problem=build("multiplicity", 40, 3, 1e-150, "float64"), which="SA", restart=True, data=None)
# found by hypothesis: a near-breakdown (beta = 128 eps ||H||) hid a multiple eigenvalue
@example(problem=build("multiplicity", 14, 0, 1.0, "float64"), which="LA", restart=False, data=2)
@example(problem=build("outliers", 300, 0, 1.0, "float32"), which="LA", restart=False, data=None)
@example(problem=build("low_rank", 120, 5, 1e12, "float32"), which="LM", restart=True, data=None)
@example(problem=build("uniform", 109, 1, 1.0, "float64"), which="LM", restart=True, data=3)  # 124 restarts
@example(problem=build("uniform", 66, 239, 1.0, "float64"), which="LM", restart=True, data=3)  # partly converged
@example(problem=build("clusters", 2, 0, 1.0, "float64"), which="LA", restart=False, data=1)  # stopped after 1 step
# the ends of each dtype's range (issue 26, class 4: before, norms over- or underflowed here)
@example(problem=build("outliers", 120, 2, 1e-33, "float32"), which="LA", restart=True, data=3)
@example(problem=build("zero_negative", 90, 4, 1e36, "float32"), which="SA", restart=False, data=2)
@example(problem=build("uniform", 150, 7, 1e-300, "float64"), which="LM", restart=True, data=2)
@example(problem=build("clusters", 80, 9, 1e300, "float64"), which="LA", restart=False, data=1)
def test_lanczos_claims_hold(problem, which, restart, data):
    A, truth, family, dtype = problem
    n = A.shape[0]
    k = data if isinstance(data, int) else 1 if data is None else data.draw(st.integers(1, min(5, n - 1)), label="k")
    max_basis = min(n, k + 3) if restart and n > k + 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default tol must be reachable: no warning
        warnings.filterwarnings("ignore", message="lanczos: pair")  # pairs returned unconverged (max_iter=600)
        r = hessop.lanczos(HessianOperator.from_matrix(A), k, which=which, max_basis=max_basis, max_iter=600)
    tol = max(1e-8, 10 * np.sqrt(n) * np.finfo(A.dtype).eps)
    dist = check_claims(A, truth, r, tol, which)
    assert np.all(dist <= r.residuals * (1 + 1e-6) + 4 * np.finfo(A.dtype).eps * np.abs(r.eigenvalues))
    # when all pairs converged they are the wanted eigenvalues (within their bounds); a converged pair among
    # unconverged ones is an eigenpair to its residual but may not be the i-th wanted one
    # (a multiple eigenvalue at the precision floor may be found once only: the documented limit of single-vector
    #  Lanczos, so wanted sets with one are left out of this claim)
    want = wanted(truth, which, k)
    close = 10 * np.sqrt(n) * np.finfo(A.dtype).eps * np.max(np.abs(truth))
    multiple = any(np.sum(np.abs(truth - w) <= close) > 1 for w in want)
    if r.all_converged and not multiple:
        slack = 4 * np.finfo(A.dtype).eps * np.abs(want)
        assert np.all(np.abs(r.eigenvalues - want) <= r.residuals * (1 + 1e-6) + slack)


@PROFILE
@given(problem=problems(max_n=min(MAX_N, 120)), data=st.data())
@example(problem=build("uniform", 60, 1, 1e3, "float32"), data=None)
@example(problem=build("outliers", 60, 3, 1e-33, "float32"), data=None)
@example(problem=build("uniform", 60, 5, 1e300, "float64"), data=None)
def test_power_iteration_claims_hold(problem, data):
    A, truth, family, dtype = problem
    n = A.shape[0]
    k = 1 if data is None else data.draw(st.integers(1, min(3, n - 1)), label="k")
    r = hessop.power_iteration(A, k, max_iter=300)
    tol = max(1e-6, 10 * np.sqrt(n) * np.finfo(A.dtype).eps)
    check_claims(A, truth, r, tol, "LM")


@PROFILE
@given(problem=problems(max_n=min(MAX_N, 150)), which=st.sampled_from(["LA", "SA", "LM"]))
@example(problem=build("clusters", 60, 1268, 1.0, "float64"), which="LA")  # stops inside a 1.7e-8 cluster
@example(problem=build("uniform", 27, 0, 1e-21, "float64"), which="LA")  # ARPACK 1e-11 off at this scale
def test_eigsh_on_the_operator_agrees(problem, which):
    A, truth, family, dtype = problem
    n = A.shape[0]
    if n < 3:
        return  # ARPACK needs k < n - 1 for its basis
    H = HessianOperator.from_matrix(A)
    v0 = np.random.default_rng(0).standard_normal(n).astype(A.dtype)
    try:
        vals = sla.eigsh(H, k=1, which=which, tol=0, maxiter=5000, v0=v0)[0]
        direct = sla.eigsh(A, k=1, which=which, tol=0, maxiter=5000, v0=v0)[0]
    except sla.ArpackNoConvergence:
        return  # ARPACK's own failure on degenerate spectra, not the operator's
    eps = np.finfo(A.dtype).eps
    hnorm = np.max(np.abs(truth))
    # the SciPy face is the matrix: same ARPACK run, same answer to rounding
    assert abs(vals[0] - direct[0]) <= 10 * np.sqrt(n) * eps * hnorm
    # lanczos's value is an eigenvalue within its residual, and not beyond ARPACK's extreme one by more than the
    # two errors (inside a cluster tighter than the run resolves, either may stop on a neighbour of the extreme
    # eigenvalue: found by hypothesis, clusters n = 60 seed 1268, gap 1.7e-8, residual 7.5e-10)
    r = hessop.lanczos(H, 1, which=which)
    arpack_err = abs(vals[0] - wanted(truth, which, 1)[0])
    slack = r.residuals[0] * (1 + 1e-6) + arpack_err + 4 * eps * hnorm
    assert np.min(np.abs(r.eigenvalues[0] - truth)) <= r.residuals[0] * (1 + 1e-6) + 4 * eps * hnorm
    beyond = {"LA": r.eigenvalues[0] - vals[0], "SA": vals[0] - r.eigenvalues[0],
              "LM": abs(r.eigenvalues[0]) - abs(vals[0])}[which]
    assert beyond <= slack


def test_hutchpp_standard_error_small_budget_outliers():
    """Found by hypothesis: hutchpp with 12 HVPs (4 residual samples) reported a mean standard error half the
    spread over 30 seeds.  The mean of a 4-sample standard error is far below its root mean square on heavy-tailed
    samples; the root mean square (the unbiased comparison) is what the test now checks, and hutchpp warns that so
    few samples make an unreliable interval."""
    with pytest.warns(UserWarning, match="4 residual samples"):
        hessop.hutchpp(np.eye(20), 12)
    test_trace_estimators_unbiased_with_true_standard_errors.hypothesis.inner_test(family="outliers", n=20, seed=132)


def test_unreachable_tol_warns_and_is_never_converged():
    """float32 cannot resolve tol=1e-10: a warning gives the reachable value, and no pair claims convergence."""
    A = matrix_with_spectrum(family_spectrum("outliers", 200, 0), seed=1, dtype=np.float32)
    H = HessianOperator.from_matrix(A)
    with pytest.warns(UserWarning, match=r"tol >= "):
        r = hessop.lanczos(H, 3, tol=1e-10)
    assert not r.converged.any() and r.n_iter < 200
    floor = np.sqrt(200) * np.finfo(np.float32).eps * np.max(np.abs(r.eigenvalues))
    assert np.all(r.residuals >= floor)
    with pytest.warns(UserWarning, match=r"tol >= "):
        p = hessop.power_iteration(H, 2, tol=1e-10, max_iter=300)
    assert not p.converged.any()


@PROFILE
@given(family=st.sampled_from([f for f in FAMILIES if f != "low_rank"]), n=st.integers(20, 80),
       seed=st.integers(0, 2**16))
def test_trace_estimators_unbiased_with_true_standard_errors(family, n, seed):
    """Over 30 seeds: the mean estimate is within 4 standard errors of the trace, and the reported standard
    error agrees with the error (ratio within [0.5, 2]).  Both sides are root mean squares, which are unbiased:
    ``sqrt(mean(se^2))`` against ``sqrt(mean((estimate - trace)^2))`` (the mean of the standard errors is not: with
    4 heavy-tailed samples behind each, it is far below their root mean square).  The standard error of the mean
    of 30 estimates is the larger of the reported and the observed one.  XTrace is left out of the low-rank family
    (being fixed separately).  XTrace's jackknife standard error is conservative by design, most at tiny budgets on
    outlier spectra (over 12 examples per family at 12 HVPs: median 1.22-1.31x, up to 2.0x; outliers median 2.25x,
    up to 4.1x), so for it the window is [0.6, 6]: never optimistic, and loose only where 6 probes cannot yet
    capture the outliers."""
    A = matrix_with_spectrum(family_spectrum(family, n, seed) + 0.1, seed=seed)
    tr = float(np.trace(A))
    H = HessianOperator.from_matrix(A)
    for name, run in [("hutchinson", lambda s: hessop.hutchinson(H, max_hvp=12, seed=s)),
                      ("hutchpp", lambda s: hessop.hutchpp(H, 12, seed=s)),
                      ("xtrace", lambda s: hessop.xtrace(H, 12, seed=s))]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # hutchpp's small-budget warning
            runs = [run(s) for s in range(30)]
        est = np.array([x.estimate for x in runs])
        rms_se = np.sqrt(np.mean([x.std_error**2 for x in runs]))
        rms_err = np.sqrt(np.mean((est - tr) ** 2))
        scale = max(rms_se, np.std(est, ddof=1), 1e-12 * max(abs(tr), np.linalg.norm(A)))
        assert abs(np.mean(est) - tr) <= 4 * scale / np.sqrt(est.size), (name, np.mean(est), tr, scale)
        if rms_err > 1e-9 * np.linalg.norm(A):
            low, high = (0.6, 6.0) if name == "xtrace" else (0.5, 2.0)
            assert low <= rms_se / rms_err <= high, (name, rms_se, rms_err)
