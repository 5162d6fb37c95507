"""Trace and diagonal estimators against exact answers: prescribed spectra and the small network's dense Hessian.

The 50-seed statistics on the network run on its dense float64 Hessian (from the ``torch_problem`` fixture, computed
independently of hessop's products); ``test_torch_operator_gives_the_dense_answers`` shows that the PyTorch
operator gives the same samples for the same seed (probes are host-drawn), so the statistics hold for it too
without spending thousands of network products.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import hessop
from hessop._array import make_rng
from hessop._probes import draw
from hessop.testing import flat_spectrum, matrix_with_spectrum, outlier_spectrum

SEEDS = range(50)


# ---------------------------------------------------------------------------------------------------- problems
@pytest.fixture(scope="module")
def outlier_small():
    """n = 200: rtol=0.01 needs ~10^4 samples on this spectrum; a small n keeps 50 such runs cheap."""
    lam = outlier_spectrum(200, seed=5)
    return matrix_with_spectrum(lam, seed=6), float(lam.sum())


def counting_operator(A: np.ndarray):
    """Operator whose single-vector product refuses to run: every product must come through ``hvp_block``."""
    calls = []

    def single(v):
        raise AssertionError("a single-vector product was used where a block product was expected")

    def block(V):
        calls.append(V.shape[1])
        return A @ V

    op = hessop.HessianOperator.from_function(single, A.shape[0], hvp_block=block)
    assert calls == [2] and op.n_hvp == 0  # the symmetry check at construction: one uncounted block of two
    calls.clear()
    return op, calls


# ---------------------------------------------------------------------------------------------------- Hutchinson
@pytest.mark.parametrize("name, n_samples", [("flat", 100), ("outlier", 100), ("network", 50)])
def test_hutchinson_within_two_standard_errors(request, name, n_samples):
    A, tr = request.getfixturevalue(name)
    hits = 0
    for seed in SEEDS:
        r = hessop.hutchinson(A, max_hvp=n_samples, seed=seed)
        assert r.n_hvp == n_samples and r.samples.shape == (n_samples,) and r.converged
        assert r.estimate == pytest.approx(np.mean(r.samples))
        hits += abs(r.estimate - tr) <= 2 * r.std_error
    assert hits >= 0.85 * len(SEEDS), f"{hits}/50 seeds within 2 standard errors"


def test_hutchinson_gaussian_probes_within_two_standard_errors(flat):
    A, tr = flat
    results = [hessop.hutchinson(A, max_hvp=100, seed=s, distribution="gaussian") for s in SEEDS]
    assert sum(abs(r.estimate - tr) <= 2 * r.std_error for r in results) >= 0.85 * len(SEEDS)
    assert results[0].method == "hutchinson(gaussian)"
    # Gaussian probes have variance 2 ||A||_F^2, Rademacher 2 (||A||_F^2 - sum A_ii^2): visibly larger here
    assert np.var(results[0].samples) > 2 * np.var(hessop.hutchinson(A, max_hvp=100).samples)


@pytest.mark.parametrize("name, rtol", [("flat", 0.01), ("outlier_small", 0.01), ("network", 0.1)])
def test_rtol_stops_with_small_true_error(request, name, rtol):
    """rtol stops when the 95% half-width is below rtol * |estimate|: the true error is then below 2 rtol in at
    least 90% of seeds.  On the network rtol=0.1: its Rademacher variance 2(||H||_F^2 - sum H_ii^2) = 58.7 against
    tr H = 14.0 needs ~11,500 samples per run at rtol=0.01 (more than max_hvp), too many for 50 runs here."""
    A, tr = request.getfixturevalue(name)
    good = 0
    for seed in SEEDS:
        r = hessop.hutchinson(A, rtol=rtol, max_hvp=20_000, block_size=64, seed=seed)
        assert r.converged
        lo, hi = r.interval(0.95)
        assert (hi - lo) / 2 <= rtol * abs(r.estimate) * (1 + 1e-12)
        good += abs(r.estimate - tr) < 2 * rtol * abs(tr)
    assert good >= 0.9 * len(SEEDS), f"{good}/50 seeds with true error below {2 * rtol}"


def test_rtol_reports_failure_to_converge(outlier):
    A, _ = outlier
    with pytest.warns(RuntimeWarning, match="did not reach rtol"):
        r = hessop.hutchinson(A, rtol=1e-4, max_hvp=64)
    assert not r.converged and r.n_hvp == 64 and r.n_samples == 64


def test_rtol_needs_no_more_than_it_must():
    """A diagonal matrix has zero Rademacher variance: rtol is met at the first check (32 samples, two blocks)."""
    A = np.diag(np.linspace(1.0, 2.0, 50))
    r = hessop.hutchinson(A, rtol=1e-6, block_size=16)
    assert r.converged and r.n_hvp == 32 and r.std_error == 0.0
    assert r.estimate == pytest.approx(np.trace(A), rel=1e-14)


def test_block_size_does_not_change_probes(outlier):
    A, _ = outlier
    a = hessop.hutchinson(A, max_hvp=40, block_size=7, seed=3)
    b = hessop.hutchinson(A, max_hvp=40, block_size=40, seed=3)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-12)
    assert a.estimate == pytest.approx(b.estimate, rel=1e-12)


def test_probes_go_through_block_products(outlier):
    A, _ = outlier
    op, calls = counting_operator(A)
    r = hessop.hutchinson(op, max_hvp=40, block_size=16)
    assert calls == [16, 16, 8] and r.n_hvp == 40 == op.n_hvp
    calls.clear()
    hessop.hutchpp(op, 30)
    assert calls == [10, 10, 10]
    calls.clear()
    hessop.xtrace(op, 30)
    assert calls == [15, 15]
    calls.clear()
    hessop.diagonal(op, 20, block_size=16)
    assert calls == [16, 4]


def test_interval_uses_student_t():
    r = hessop.hutchinson(np.diag([1.0, -3.0, 2.0, 5.0]) + 0.1, max_hvp=5)
    lo, hi = r.interval(0.95)
    assert (hi - lo) / 2 == pytest.approx(2.776445105 * r.std_error, rel=1e-8)  # t_{0.975, 4}
    single = hessop.hutchinson(np.eye(3) + 0.1, max_hvp=1)
    assert math.isnan(single.std_error) and single.interval() == (-math.inf, math.inf)
    assert "hutchinson" in repr(r) and "std_error" in repr(r)


# ---------------------------------------------------------------------------------------------------- Hutch++ / XTrace
def test_xtrace_and_hutchpp_beat_hutchinson_on_outliers(outlier):
    A, tr = outlier
    err = {name: np.median([abs(f(A, s).estimate - tr) for s in SEEDS]) for name, f in [
        ("hutchinson", lambda A, s: hessop.hutchinson(A, max_hvp=100, seed=s)),
        ("hutchpp", lambda A, s: hessop.hutchpp(A, 100, seed=s)),
        ("xtrace", lambda A, s: hessop.xtrace(A, 100, seed=s)),
    ]}
    assert err["hutchpp"] * 3 <= err["hutchinson"], err
    assert err["xtrace"] * 3 <= err["hutchinson"], err


@pytest.mark.parametrize("method", ["hutchpp", "xtrace"])
@pytest.mark.parametrize("name", ["flat", "outlier", "outlier32"])
def test_error_estimates_are_calibrated(request, method, name):
    """Unbiased over 50 seeds, and the reported standard error is the size of the actual error (within 1.5x);
    XTrace's jackknife standard error is not optimistic (measured 1.24x / 1.21x over 300 seeds, where the
    leave-one-out spread it replaced gave 0.94x / 0.85x and 0.77x at 200 products on the flat spectrum)."""
    A, tr = request.getfixturevalue(name)
    f = getattr(hessop, method)
    rs = [f(A, 100, seed=s) for s in SEEDS]
    err = np.array([r.estimate - tr for r in rs])
    assert all(r.n_hvp == 100 for r in rs)
    assert abs(err.mean()) <= 3 * err.std(ddof=1) / math.sqrt(len(err))
    ratio = math.sqrt(np.mean([r.std_error**2 for r in rs])) / math.sqrt(np.mean(err**2))
    assert (0.95 if method == "xtrace" else 2 / 3) <= ratio <= 1.5, ratio


def test_hutchpp_matches_its_definition():
    """Recompute Hutch++ from its definition with the same host-drawn probes."""
    A = matrix_with_spectrum(outlier_spectrum(60, n_outliers=4, n_negative=1, seed=2), seed=3)
    r = hessop.hutchpp(A, 20, seed=7)  # s = 6 sketch vectors, g = 8 residual probes
    rng = make_rng(7)
    S, G = draw(rng, 60, 6), draw(rng, 60, 8)
    Q = np.linalg.qr(A @ S)[0]
    Gp = G - Q @ (Q.T @ G)
    resid = np.einsum("ij,ij->j", Gp, A @ Gp)
    np.testing.assert_allclose(r.samples, resid, rtol=1e-10, atol=1e-10)
    assert r.estimate == pytest.approx(np.trace(Q.T @ A @ Q) + resid.mean(), rel=1e-12)
    assert r.std_error == pytest.approx(resid.std(ddof=1) / math.sqrt(8), rel=1e-10)


def test_xtrace_matches_its_definition():
    """Every leave-one-out sample recomputed with explicit projectors from the same host-drawn probes."""
    n, m = 50, 6
    A = matrix_with_spectrum(outlier_spectrum(n, n_outliers=4, n_negative=1, seed=2), seed=3)
    r = hessop.xtrace(A, 2 * m, seed=11)
    Om = draw(make_rng(11), n, m, "gaussian")
    expect = xtrace_samples_by_definition(A, Om)
    np.testing.assert_allclose(r.samples, expect, rtol=1e-9)
    assert r.estimate == pytest.approx(np.mean(expect), rel=1e-10)
    # the jackknife standard error: XTrace on the m - 1 probes left after dropping each probe j in turn
    loo = [np.mean(xtrace_samples_by_definition(A, np.delete(Om, j, axis=1))) for j in range(m)]
    assert r.std_error == pytest.approx(math.sqrt((m - 1) / m * np.sum((loo - np.mean(loo)) ** 2)), rel=1e-8)


def xtrace_samples_by_definition(A, Om):
    """XTrace's leave-one-out samples ``t_i`` from the probes ``Om``, with explicit projectors."""
    n, m = Om.shape
    t = []
    for i in range(m):
        Qi = np.linalg.qr(A @ np.delete(Om, i, axis=1))[0]
        P = Qi @ Qi.T
        u = Om[:, i] - P @ Om[:, i]
        t.append(np.trace(P @ A) + (n - m + 1) * (u @ A @ u) / (u @ u))
    return np.array(t)


def test_hutchpp_is_exact_for_low_rank():
    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((100, 5)))[0]
    A = (U * np.array([9.0, 4.0, -2.0, 1.0, 0.5])) @ U.T
    r = hessop.hutchpp(A, 30)
    assert r.estimate == pytest.approx(12.5, abs=1e-10)
    assert r.std_error < 1e-10


def test_xtrace_is_exact_on_rank_deficient_operator():
    """rank(H) = 3 < m = 10: the sketch spans the range of H and XTrace returns tr(Q^T H Q), the exact trace."""
    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((100, 3)))[0]
    r = hessop.xtrace((U * np.array([3.0, 2.0, 1.0])) @ U.T, 20)
    assert r.exact and r.n_hvp == 20 and "spans the range" in r.stop_reason
    assert r.estimate == pytest.approx(6.0, abs=1e-12) and r.std_error < 1e-10
    lo, hi = r.interval()
    assert lo <= 6.0 <= hi


def test_xtrace_is_exact_when_the_budget_covers_n():
    A = scipy.linalg.toeplitz(np.arange(30, 0, -1.0))
    r = hessop.xtrace(A, 30)
    assert r.exact and r.method == "exact" and r.n_hvp == 30
    assert r.estimate == pytest.approx(np.trace(A), rel=1e-14)

# ---------------------------------------------------------------------------------------------------- PyTorch
def test_torch_operator_gives_the_dense_answers(torch_op, network, torch_problem):
    """Same seed, same probes: the network operator's samples equal those of its dense Hessian to rounding."""
    A, tr = network
    before = torch_op.n_hvp
    pairs = [
        (hessop.hutchinson(torch_op, max_hvp=24, seed=5).samples, hessop.hutchinson(A, max_hvp=24, seed=5).samples),
        (hessop.hutchpp(torch_op, 24, seed=5).samples, hessop.hutchpp(A, 24, seed=5).samples),
        (hessop.xtrace(torch_op, 24, seed=5).samples, hessop.xtrace(A, 24, seed=5).samples),
    ]
    for got, want in pairs:
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    assert torch_op.n_hvp - before == 24 + 24 + 24


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call", [
    lambda H: hessop.hutchinson(H, max_hvp=4),
    lambda H: hessop.hutchinson(H, rtol=0.1),
    lambda H: hessop.hutchpp(H, 9),
    lambda H: hessop.xtrace(H, 8),
    lambda H: hessop.diagonal(H, 4),
    lambda H: hessop.trace(H, rtol=0.1),
])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_product_raises(call, nan_operator):
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        call(nan_operator)


@pytest.mark.parametrize("call, error, match", [
    (lambda A: hessop.hutchinson(A, max_hvp=0), ValueError, "max_hvp = 0 is too small for one sample"),
    (lambda A: hessop.hutchinson(A, max_hvp=2.5), TypeError, "max_hvp must be an integer"),
    (lambda A: hessop.hutchinson(A), ValueError, "give a budget max_hvp="),
    (lambda A: hessop.hutchinson(A, max_hvp=5, rtol=0.1), ValueError, "too small for a target"),
    (lambda A: hessop.hutchinson(A, rtol=0.0), ValueError, "rtol must be a positive"),
    (lambda A: hessop.hutchinson(A, rtol=0.1, max_hvp=3), ValueError, "max_hvp must be >= 32"),
    (lambda A: hessop.hutchinson(A, atol=-1.0), ValueError, "atol must be a positive"),
    (lambda A: hessop.trace(A), ValueError, "give a budget max_hvp="),
    (lambda A: hessop.trace(A, rtol=0.1, method="xtrace"), ValueError, "budget max_hvp only"),
    (lambda A: hessop.trace(A, rtol=0.1, method="magic"), ValueError, "method must be one of"),
    (lambda A: hessop.trace(A, rtol=0.1, block_size=1), ValueError, "block_size must be >= 2"),
    (lambda A: hessop.trace(A, max_hvp=0), ValueError, "max_hvp must be >= 1"),
    (lambda A: hessop.hutchinson(A, max_hvp=5, distribution="uniform"), ValueError, "distribution must be one"),
    (lambda A: hessop.hutchinson(A, max_hvp=5, block_size=0), ValueError, "block_size must be >= 1"),
    (lambda A: hessop.hutchpp(A, 3), ValueError, "max_hvp = 3 is too small for Hutch"),
    (lambda A: hessop.hutchpp(A, 90), ValueError, "too large"),
    (lambda A: hessop.xtrace(A, 3), ValueError, "max_hvp must be >= 4"),
    (lambda A: hessop.diagonal(A, 0), ValueError, "max_hvp = 0 is too small for one sample"),
    (lambda A: hessop.hutchinson("not a matrix", max_hvp=3), TypeError, "expected a HessianOperator"),
])
def test_bad_input_raises(call, error, match):
    A = scipy.linalg.toeplitz(np.arange(30, 0, -1.0))
    with pytest.raises(error, match=match):
        call(A)


def test_no_warning_for_fixed_budget(outlier):
    A, _ = outlier
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hessop.hutchinson(A, max_hvp=3)


# ---------------------------------------------------------------------------------------------------- hessop.trace
def coverage_and_se_ratio(A, tr, seeds, **kw):
    """Fraction of seeds whose 95% interval covers ``tr``, and RMS reported standard error / spread of estimates."""
    rs = [hessop.trace(A, seed=s, **kw) for s in seeds]
    est = np.array([r.estimate for r in rs])
    covered = np.mean([r.interval()[0] <= tr <= r.interval()[1] for r in rs])
    ratio = math.sqrt(np.mean([r.std_error**2 for r in rs])) / np.std(est, ddof=1)
    return covered, ratio, rs


@pytest.mark.parametrize("name, rtol, method", [
    ("flat", 0.01, "hutchinson"), ("outlier", 0.01, "hutch++"), ("outlier32", 0.01, "hutch++"),
    ("network", 0.01, "hutch++"), ("network", 0.003, "hutch++"),
])
def test_trace_interval_is_true(request, name, rtol, method):
    """Over 40 seeds (the 200-seed version is marked slow): the 95% interval covers the exact trace in >= 88% of
    seeds (36/40; a true 95% interval fails this with probability 0.05) and the reported standard error is the
    spread of the estimates within 30%; the method chosen is the expected one and the target is met."""
    A, tr = request.getfixturevalue(name)
    covered, ratio, rs = coverage_and_se_ratio(A, tr, range(40), rtol=rtol)
    assert covered >= 0.88, covered
    assert 0.7 <= ratio <= 1.3, ratio
    assert all(r.converged and r.method == method and "target met" in r.stop_reason for r in rs)
    assert all(r.half_width() <= rtol * abs(r.estimate) * (1 + 1e-12) for r in rs)


@pytest.mark.slow
@pytest.mark.parametrize("name, rtol", [
    ("flat", 0.01), ("flat", 0.003), ("outlier", 0.01), ("outlier", 0.002), ("outlier32", 0.01), ("network", 0.01),
    ("network", 0.003)])
def test_trace_interval_is_true_over_200_seeds(request, name, rtol):
    """The issue's acceptance test.  A true 95% interval fails ">= 93% of 200 seeds" with probability ~7% (the
    binomial standard deviation is 1.5 points); the cases here were measured at 0.95-0.96 over 1,000 seeds."""
    A, tr = request.getfixturevalue(name)
    covered, ratio, _ = coverage_and_se_ratio(A, tr, range(200), rtol=rtol)
    assert covered >= 0.93, covered
    assert 0.75 <= ratio <= 1.25, ratio


def test_trace_chooses_and_saves(flat, outlier):
    """Outliers: Hutch++ at >= 10x fewer products than hutchinson(rtol) (median of 3 seeds); flat: Hutchinson with
    at most 1.3x its products (the same probes, plus one block spent trying deflation when that could pay)."""
    A, _ = outlier
    auto = np.median([hessop.trace(A, rtol=0.01, seed=s).n_hvp for s in range(3)])
    plain = np.median([hessop.hutchinson(A, rtol=0.01, seed=s).n_hvp for s in range(3)])
    assert auto * 10 <= plain, (auto, plain)
    A, _ = flat
    for rtol in (0.1, 0.004):
        for s in range(3):
            r, h = hessop.trace(A, rtol=rtol, seed=s), hessop.hutchinson(A, rtol=rtol, seed=s)
            assert r.method == "hutchinson" and r.n_hvp <= 1.3 * h.n_hvp, (rtol, r.n_hvp, h.n_hvp, r.choice)
    assert "deflation not tried" in hessop.trace(A, rtol=0.1).choice
    assert "only" in hessop.trace(A, rtol=0.004).choice


def test_trace_fixed_budget_and_forced_methods(outlier):
    A, tr = outlier
    for method in ("auto", "hutchinson", "hutch++"):
        r = hessop.trace(A, max_hvp=150, method=method, seed=1)
        assert r.n_hvp == 150 and r.converged and r.stop_reason.startswith("budget")
        assert abs(r.estimate - tr) <= 5 * r.std_error
    assert hessop.trace(A, max_hvp=150, method="hutch++").rank >= 16
    x = hessop.trace(A, max_hvp=100, method="xtrace", seed=2)
    assert x.method == "xtrace" and x.estimate == hessop.xtrace(A, 100, seed=2).estimate


def test_trace_budget_cap_warns(outlier):
    A, _ = outlier
    with pytest.warns(RuntimeWarning, match="did not reach rtol=1e-05 within max_hvp=96"):
        r = hessop.trace(A, rtol=1e-5, max_hvp=96)
    assert not r.converged and r.n_hvp <= 96


def test_trace_is_exact_when_cheaper():
    """A target that would need >= n more products takes the n identity columns instead; low rank is exact too."""
    A = matrix_with_spectrum(flat_spectrum(60, seed=1), seed=2)
    r = hessop.trace(A, rtol=1e-6)
    assert r.exact and r.estimate == pytest.approx(np.trace(A), rel=1e-13)
    assert r.interval()[0] <= np.trace(A) <= r.interval()[1]
    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((300, 5)))[0]
    r = hessop.trace((U * np.array([90.0, 40.0, -20.0, 10.0, 5.0])) @ U.T, rtol=1e-6, method="hutch++")
    assert r.converged and r.estimate == pytest.approx(125.0, rel=1e-10) and r.n_hvp <= 96  # pilot + fresh batch


def test_near_zero_trace_needs_atol():
    """A traceless H: a relative target cannot be met, the warning says so; atol stops at once."""
    A = matrix_with_spectrum(np.concatenate([np.linspace(1, 2, 50), -np.linspace(1, 2, 50)]), seed=3)
    with pytest.warns(RuntimeWarning, match="near zero.*atol="):
        r = hessop.hutchinson(A, rtol=0.01, max_hvp=64)
    assert not r.converged
    r = hessop.hutchinson(A, atol=1.0, seed=1)
    assert r.converged and abs(r.estimate) <= r.half_width() + 1e-12 and r.half_width() <= 1.0
    with pytest.warns(RuntimeWarning, match="near zero.*atol="):
        hessop.trace(A, rtol=0.01, max_hvp=60)  # below n = 100, so no exact fallback
    t = hessop.trace(A, atol=1.0, seed=1)
    assert t.converged and t.half_width() <= 1.0 and abs(t.estimate) <= 4 * t.std_error


def test_trace_on_the_torch_operator_matches_the_dense_hessian(torch_op, network):
    A, _ = network
    got, want = hessop.trace(torch_op, rtol=0.05, seed=3), hessop.trace(A, rtol=0.05, seed=3)
    assert (got.method, got.n_hvp, got.rank) == (want.method, want.n_hvp, want.rank)
    assert got.estimate == pytest.approx(want.estimate, rel=1e-9)
    assert got.std_error == pytest.approx(want.std_error, rel=1e-6)
