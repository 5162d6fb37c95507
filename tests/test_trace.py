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
def flat():
    lam = flat_spectrum(400, seed=3)
    return matrix_with_spectrum(lam, seed=4), float(lam.sum())


@pytest.fixture(scope="module")
def outlier():
    lam = outlier_spectrum(400, seed=3)
    return matrix_with_spectrum(lam, seed=4), float(lam.sum())


@pytest.fixture(scope="module")
def outlier32():
    """The outlier matrix stored in float32 (products and probes in float32); the truth is the exact trace of the
    stored matrix."""
    A = matrix_with_spectrum(outlier_spectrum(400, seed=3), seed=4).astype(np.float32)
    return A, float(np.trace(A.astype(np.float64)))


@pytest.fixture(scope="module")
def outlier_small():
    """n = 200: rtol=0.01 needs ~10^4 samples on this spectrum; a small n keeps 50 such runs cheap."""
    lam = outlier_spectrum(200, seed=5)
    return matrix_with_spectrum(lam, seed=6), float(lam.sum())


@pytest.fixture(scope="module")
def network(torch_problem):
    A = torch_problem["hessian"]
    return A, float(np.trace(A))


@pytest.fixture(scope="module")
def torch_op(torch_problem):
    p = torch_problem
    return hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]))


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
        r = hessop.hutchinson(A, n_samples=n_samples, seed=seed)
        assert r.n_hvp == n_samples and r.samples.shape == (n_samples,) and r.converged
        assert r.estimate == pytest.approx(np.mean(r.samples))
        hits += abs(r.estimate - tr) <= 2 * r.std_error
    assert hits >= 0.85 * len(SEEDS), f"{hits}/50 seeds within 2 standard errors"


def test_hutchinson_gaussian_probes_within_two_standard_errors(flat):
    A, tr = flat
    results = [hessop.hutchinson(A, n_samples=100, seed=s, distribution="gaussian") for s in SEEDS]
    assert sum(abs(r.estimate - tr) <= 2 * r.std_error for r in results) >= 0.85 * len(SEEDS)
    assert results[0].method == "hutchinson(gaussian)"
    # Gaussian probes have variance 2 ||A||_F^2, Rademacher 2 (||A||_F^2 - sum A_ii^2): visibly larger here
    assert np.var(results[0].samples) > 2 * np.var(hessop.hutchinson(A, n_samples=100).samples)


@pytest.mark.parametrize("name, rtol", [("flat", 0.01), ("outlier_small", 0.01), ("network", 0.1)])
def test_rtol_stops_with_small_true_error(request, name, rtol):
    """rtol stops when the 95% half-width is below rtol * |estimate|: the true error is then below 2 rtol in at
    least 90% of seeds.  On the network rtol=0.1: its Rademacher variance 2(||H||_F^2 - sum H_ii^2) = 58.7 against
    tr H = 14.0 needs ~11,500 samples per run at rtol=0.01 (more than max_samples), too many for 50 runs here."""
    A, tr = request.getfixturevalue(name)
    good = 0
    for seed in SEEDS:
        r = hessop.hutchinson(A, rtol=rtol, max_samples=20_000, block_size=64, seed=seed)
        assert r.converged
        lo, hi = r.interval(0.95)
        assert (hi - lo) / 2 <= rtol * abs(r.estimate) * (1 + 1e-12)
        good += abs(r.estimate - tr) < 2 * rtol * abs(tr)
    assert good >= 0.9 * len(SEEDS), f"{good}/50 seeds with true error below {2 * rtol}"


def test_rtol_reports_failure_to_converge(outlier):
    A, _ = outlier
    with pytest.warns(RuntimeWarning, match="did not reach rtol"):
        r = hessop.hutchinson(A, rtol=1e-4, max_samples=64)
    assert not r.converged and r.n_hvp == 64 and r.n_samples == 64


def test_rtol_needs_no_more_than_it_must():
    """A diagonal matrix has zero Rademacher variance: rtol is met at the first check (32 samples, two blocks)."""
    A = np.diag(np.linspace(1.0, 2.0, 50))
    r = hessop.hutchinson(A, rtol=1e-6, block_size=16)
    assert r.converged and r.n_hvp == 32 and r.std_error == 0.0
    assert r.estimate == pytest.approx(np.trace(A), rel=1e-14)


def test_block_size_does_not_change_probes(outlier):
    A, _ = outlier
    a = hessop.hutchinson(A, n_samples=40, block_size=7, seed=3)
    b = hessop.hutchinson(A, n_samples=40, block_size=40, seed=3)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-12)
    assert a.estimate == pytest.approx(b.estimate, rel=1e-12)


def test_probes_go_through_block_products(outlier):
    A, _ = outlier
    op, calls = counting_operator(A)
    r = hessop.hutchinson(op, n_samples=40, block_size=16)
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
    r = hessop.hutchinson(np.diag([1.0, -3.0, 2.0, 5.0]) + 0.1, n_samples=5)
    lo, hi = r.interval(0.95)
    assert (hi - lo) / 2 == pytest.approx(2.776445105 * r.std_error, rel=1e-8)  # t_{0.975, 4}
    single = hessop.hutchinson(np.eye(3) + 0.1, n_samples=1)
    assert math.isnan(single.std_error) and single.interval() == (-math.inf, math.inf)
    assert "hutchinson" in repr(r) and "std_error" in repr(r)


# ---------------------------------------------------------------------------------------------------- Hutch++ / XTrace
def test_xtrace_and_hutchpp_beat_hutchinson_on_outliers(outlier):
    A, tr = outlier
    err = {name: np.median([abs(f(A, s).estimate - tr) for s in SEEDS]) for name, f in [
        ("hutchinson", lambda A, s: hessop.hutchinson(A, n_samples=100, seed=s)),
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
    expect = []
    for i in range(m):
        Qi = np.linalg.qr(A @ np.delete(Om, i, axis=1))[0]
        P = Qi @ Qi.T
        u = Om[:, i] - P @ Om[:, i]
        expect.append(np.trace(P @ A) + (n - m + 1) * (u @ A @ u) / (u @ u))
    np.testing.assert_allclose(r.samples, expect, rtol=1e-9)
    assert r.estimate == pytest.approx(np.mean(expect), rel=1e-10)
    # the jackknife standard error: XTrace on the m - 1 probes left after dropping each probe j in turn
    loo = [xtrace_by_definition(A, np.delete(Om, j, axis=1)) for j in range(m)]
    assert r.std_error == pytest.approx(math.sqrt((m - 1) / m * np.sum((loo - np.mean(loo)) ** 2)), rel=1e-8)


def xtrace_by_definition(A, Om):
    """XTrace's estimate from the probes ``Om``, with explicit leave-one-out projectors."""
    n, m = Om.shape
    t = []
    for i in range(m):
        Qi = np.linalg.qr(A @ np.delete(Om, i, axis=1))[0]
        P = Qi @ Qi.T
        u = Om[:, i] - P @ Om[:, i]
        t.append(np.trace(P @ A) + (n - m + 1) * (u @ A @ u) / (u @ u))
    return np.mean(t)


def xdiag_by_definition(A, Om):
    """XDiag's estimate from the Rademacher probes ``Om``, with explicit leave-one-out projectors."""
    D = []
    for i in range(Om.shape[1]):
        Qi = np.linalg.qr(A @ np.delete(Om, i, axis=1))[0]
        P = Qi @ Qi.T
        D.append(np.diag(P @ A) + Om[:, i] * ((A - P @ A) @ Om[:, i]))
    return np.mean(D, axis=0)


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


# ---------------------------------------------------------------------------------------------------- diagonal
@pytest.mark.parametrize("name", ["outlier", "network"])
def test_diagonal_within_two_standard_errors(request, name):
    A, _ = request.getfixturevalue(name)
    d = hessop.diagonal(A, 100, seed=1)
    assert d.n_hvp == 100 and d.n_samples == 100 and d.per_parameter is None
    err = np.abs(d.diagonal - np.diag(A))
    assert np.mean(err <= 2 * d.std_error) >= 0.9
    # the standard error is the size of the error, not a loose bound
    assert 0.7 <= np.sqrt(np.mean(err**2) / np.mean(d.std_error**2)) <= 1.3


def test_diagonal_of_diagonal_matrix_is_exact():
    A = np.diag(np.linspace(-1.0, 3.0, 30))
    d = hessop.diagonal(A, 3, block_size=2)
    np.testing.assert_allclose(d.diagonal, np.diag(A), rtol=1e-15)
    np.testing.assert_allclose(d.std_error, 0.0, atol=1e-15)


def test_diagonal_blocks_agree_with_one_pass(outlier):
    A, _ = outlier
    a = hessop.diagonal(A, 37, block_size=5, seed=2)
    b = hessop.diagonal(A, 37, block_size=37, seed=2)
    np.testing.assert_allclose(a.diagonal, b.diagonal, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(a.std_error, b.std_error, rtol=1e-9)


def test_xdiag_matches_its_definition():
    """The estimate and its jackknife standard errors recomputed with explicit projectors from the same probes."""
    n, m = 50, 6
    A = matrix_with_spectrum(outlier_spectrum(n, n_outliers=4, n_negative=1, seed=2), seed=3)
    r = hessop.diagonal(A, 2 * m, seed=11, method="xdiag")
    Om = draw(make_rng(11), n, m)
    np.testing.assert_allclose(r.diagonal, xdiag_by_definition(A, Om), atol=1e-10)
    loo = np.array([xdiag_by_definition(A, np.delete(Om, j, axis=1)) for j in range(m)])
    np.testing.assert_allclose(r.std_error, np.sqrt((m - 1) / m * np.sum((loo - loo.mean(axis=0)) ** 2, axis=0)),
                               atol=1e-10)
    assert (r.method, r.n_hvp, r.n_samples) == ("xdiag", 2 * m, m)


@pytest.mark.parametrize("name", ["outlier", "flat", "outlier32"])
def test_xdiag_against_the_dense_diagonal(request, name):
    """Over 40 seeds at 100 products: unbiased (every entry's mean error within 4 standard errors of the mean of the
    40 estimates), 5x more accurate than Hutchinson on the outlier matrix, and the jackknife standard errors never
    optimistic: their root mean square 1-1.8x the true root-mean-square error (measured 1.50 / 1.42 over 100
    seeds) and the 95% Student-t intervals cover >= 95% of the entries (measured 0.98)."""
    A, _ = request.getfixturevalue(name)
    d = np.diag(A.astype(np.float64))
    rs = [hessop.diagonal(A, 100, seed=s, method="xdiag") for s in range(40)]
    assert all(r.diagonal.dtype == A.dtype for r in rs)
    err = np.array([r.diagonal - d for r in rs])
    se = np.array([r.std_error for r in rs])
    assert np.all(np.abs(err.mean(axis=0)) <= 4 * err.std(axis=0, ddof=1) / math.sqrt(40) + 1e-5)
    ratio = math.sqrt(np.mean(se**2) / np.mean(err**2))
    assert 1.0 <= ratio <= 1.8, ratio
    assert np.mean(np.abs(err) <= scipy.stats.t.ppf(0.975, 49) * se) >= 0.95
    hutch = np.array([hessop.diagonal(A, 100, seed=s).diagonal - d for s in range(10)])
    if name == "outlier":
        assert 5 * math.sqrt(np.mean(err**2)) <= math.sqrt(np.mean(hutch**2))


def test_xdiag_is_exact_on_a_low_rank_operator_and_refuses_a_target():
    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((100, 3)))[0]
    A = (U * np.array([3.0, 2.0, -1.0])) @ U.T
    r = hessop.diagonal(A, 20, method="xdiag")
    np.testing.assert_allclose(r.diagonal, np.diag(A), atol=1e-13)
    assert np.all(r.std_error < 1e-12) and r.n_samples == 1
    with pytest.raises(ValueError, match="budget of products n_samples only"):
        hessop.diagonal(A, rtol=0.1, method="xdiag")
    with pytest.raises(ValueError, match="method must be one of"):
        hessop.diagonal(A, 10, method="xdiag++")
    with pytest.raises(ValueError, match="method='diag\\+\\+' needs a target"):
        hessop.diagonal(A, 10, method="diag++")


# ---------------------------------------------------------------------------------------------------- PyTorch
def test_torch_operator_gives_the_dense_answers(torch_op, network, torch_problem):
    """Same seed, same probes: the network operator's samples equal those of its dense Hessian to rounding, and
    the diagonal comes back split per parameter."""
    torch = pytest.importorskip("torch")
    A, tr = network
    before = torch_op.n_hvp
    pairs = [
        (hessop.hutchinson(torch_op, n_samples=24, seed=5).samples, hessop.hutchinson(A, n_samples=24, seed=5).samples),
        (hessop.hutchpp(torch_op, 24, seed=5).samples, hessop.hutchpp(A, 24, seed=5).samples),
        (hessop.xtrace(torch_op, 24, seed=5).samples, hessop.xtrace(A, 24, seed=5).samples),
    ]
    for got, want in pairs:
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    d = hessop.diagonal(torch_op, 16, seed=5)
    assert isinstance(d.diagonal, torch.Tensor) and isinstance(d.std_error, torch.Tensor)
    np.testing.assert_allclose(d.diagonal.numpy(), hessop.diagonal(A, 16, seed=5).diagonal, atol=1e-12)
    assert list(d.per_parameter) == torch_problem["names"]
    for (name, piece), p in zip(d.per_parameter.items(), torch_problem["model"].parameters(), strict=True):
        assert piece.shape == p.shape, name
    flat = torch.cat([t.reshape(-1) for t in d.per_parameter.values()])
    assert torch.equal(flat, d.diagonal)
    x = hessop.diagonal(torch_op, 24, seed=5, method="xdiag")
    assert isinstance(x.diagonal, torch.Tensor) and x.per_parameter is not None
    want = hessop.diagonal(A, 24, seed=5, method="xdiag")
    np.testing.assert_allclose(x.diagonal.numpy(), want.diagonal, atol=1e-9 * np.abs(want.diagonal).max())
    assert torch_op.n_hvp - before == 24 + 24 + 24 + 16 + 24


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call", [
    lambda H: hessop.hutchinson(H, n_samples=4),
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
    (lambda A: hessop.hutchinson(A, n_samples=0), ValueError, "n_samples must be >= 1"),
    (lambda A: hessop.hutchinson(A, n_samples=2.5), TypeError, "n_samples must be an integer"),
    (lambda A: hessop.hutchinson(A), ValueError, "exactly one of n_samples"),
    (lambda A: hessop.hutchinson(A, n_samples=5, rtol=0.1), ValueError, "exactly one of n_samples"),
    (lambda A: hessop.hutchinson(A, rtol=0.0), ValueError, "rtol must be a positive"),
    (lambda A: hessop.hutchinson(A, rtol=0.1, max_samples=3), ValueError, "max_samples must be >= 32"),
    (lambda A: hessop.hutchinson(A, atol=-1.0), ValueError, "atol must be a positive"),
    (lambda A: hessop.trace(A), ValueError, "give a target"),
    (lambda A: hessop.trace(A, rtol=0.1, method="xtrace"), ValueError, "budget n_hvp only"),
    (lambda A: hessop.trace(A, rtol=0.1, method="magic"), ValueError, "method must be one of"),
    (lambda A: hessop.trace(A, rtol=0.1, block_size=1), ValueError, "block_size must be >= 2"),
    (lambda A: hessop.trace(A, n_hvp=0), ValueError, "n_hvp must be >= 1"),
    (lambda A: hessop.hutchinson(A, n_samples=5, distribution="uniform"), ValueError, "distribution must be one"),
    (lambda A: hessop.hutchinson(A, n_samples=5, block_size=0), ValueError, "block_size must be >= 1"),
    (lambda A: hessop.hutchpp(A, 3), ValueError, "n_hvp must be >= 4"),
    (lambda A: hessop.hutchpp(A, 90), ValueError, "too large"),
    (lambda A: hessop.xtrace(A, 3), ValueError, "n_hvp must be >= 4"),
    (lambda A: hessop.diagonal(A, 0), ValueError, "n_samples must be >= 1"),
    (lambda A: hessop.hutchinson("not a matrix", n_samples=3), TypeError, "expected a HessianOperator"),
])
def test_bad_input_raises(call, error, match):
    A = scipy.linalg.toeplitz(np.arange(30, 0, -1.0))
    with pytest.raises(error, match=match):
        call(A)


def test_no_warning_for_fixed_budget(outlier):
    A, _ = outlier
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hessop.hutchinson(A, n_samples=3)


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
        r = hessop.trace(A, n_hvp=150, method=method, seed=1)
        assert r.n_hvp == 150 and r.converged and r.stop_reason.startswith("budget")
        assert abs(r.estimate - tr) <= 5 * r.std_error
    assert hessop.trace(A, n_hvp=150, method="hutch++").rank >= 16
    x = hessop.trace(A, n_hvp=100, method="xtrace", seed=2)
    assert x.method == "xtrace" and x.estimate == hessop.xtrace(A, 100, seed=2).estimate


def test_trace_budget_cap_warns(outlier):
    A, _ = outlier
    with pytest.warns(RuntimeWarning, match="did not reach rtol=1e-05 within n_hvp=96"):
        r = hessop.trace(A, rtol=1e-5, n_hvp=96)
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
        r = hessop.hutchinson(A, rtol=0.01, max_samples=64)
    assert not r.converged
    r = hessop.hutchinson(A, atol=1.0, seed=1)
    assert r.converged and abs(r.estimate) <= r.half_width() + 1e-12 and r.half_width() <= 1.0
    with pytest.warns(RuntimeWarning, match="near zero.*atol="):
        hessop.trace(A, rtol=0.01, n_hvp=60)  # below n = 100, so no exact fallback
    t = hessop.trace(A, atol=1.0, seed=1)
    assert t.converged and t.half_width() <= 1.0 and abs(t.estimate) <= 4 * t.std_error


def test_trace_on_the_torch_operator_matches_the_dense_hessian(torch_op, network):
    A, _ = network
    got, want = hessop.trace(torch_op, rtol=0.05, seed=3), hessop.trace(A, rtol=0.05, seed=3)
    assert (got.method, got.n_hvp, got.rank) == (want.method, want.n_hvp, want.rank)
    assert got.estimate == pytest.approx(want.estimate, rel=1e-9)
    assert got.std_error == pytest.approx(want.std_error, rel=1e-6)


def test_diagonal_to_a_target_on_the_torch_operator_matches_the_dense_hessian(torch_op, network):
    """Diag++ on the PyTorch operator (torch arrays throughout) takes the same decisions as on the dense Hessian
    and gives the same diagonal and standard errors, split per parameter."""
    A, _ = network
    got, want = hessop.diagonal(torch_op, rtol=0.1, seed=3), hessop.diagonal(A, rtol=0.1, seed=3)
    assert (got.method, got.n_hvp, got.rank, got.n_samples) == (want.method, want.n_hvp, want.rank, want.n_samples)
    assert got.method == "diag++"
    np.testing.assert_allclose(got.diagonal.numpy(), want.diagonal, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(got.std_error.numpy(), want.std_error, rtol=1e-5, atol=1e-12)
    assert set(got.per_parameter) == {n for n, _ in torch_op.backend.model.named_parameters()}


@pytest.mark.parametrize("name, target, method", [
    ("flat", {"rtol": 0.1}, "hutchinson"), ("outlier", {"atol": 0.5}, "diag++"), ("outlier", {"rtol": 0.1}, "diag++"),
    ("outlier32", {"rtol": 0.1}, "diag++"), ("network", {"rtol": 0.1}, "diag++")])
def test_diagonal_to_a_target(request, name, target, method):
    """diagonal(rtol= / atol=): the method chosen is the expected one, the RMS 95% half-width meets the target, >= 90%
    of the entries' intervals cover them.  On the outlier matrix rtol=0.1 needs ~24,000 Hutchinson probes (its
    entries' variance ||H||_F^2 / n ~ 60 dwarfs diagonal entries ~1); Diag++ needs about 100 products."""
    A, _ = request.getfixturevalue(name)
    d = hessop.diagonal(A, seed=2, **target)
    exact = np.diag(A.astype(np.float64))
    half = scipy.stats.t.ppf(0.975, d.n_samples - 1) * d.std_error
    goal = max(target.get("rtol", 0) * np.sqrt(np.mean(d.diagonal**2)), target.get("atol", 0))
    assert d.converged and d.method == method and d.n_samples >= 32 and "target met" in d.stop_reason
    assert d.diagonal.dtype == A.dtype and d.std_error.dtype == A.dtype
    assert (d.n_hvp == d.n_samples) == (method == "hutchinson")
    if method == "diag++":
        assert d.rank >= 16 and d.n_hvp <= 300 and "cut the entries' mean variance" in d.choice
    assert np.sqrt(np.mean(half**2)) <= goal * (1 + 1e-5)
    assert np.mean(np.abs(d.diagonal - exact) <= half) >= 0.9
    with pytest.warns(RuntimeWarning, match="diagonal did not reach rtol=0.001"):
        assert not hessop.diagonal(A, rtol=1e-3, max_samples=48).converged


def diagonal_coverage(A, seeds, **kw):
    """Over ``seeds``: the fraction of (seed, entry) pairs whose 95% Student-t interval covers the exact entry, the
    root mean square of the reported standard errors over the root-mean-square error, and the runs."""
    exact = np.diag(A.astype(np.float64))
    rs = [hessop.diagonal(A, seed=s, **kw) for s in seeds]
    err = np.array([r.diagonal - exact for r in rs])
    se = np.array([r.std_error for r in rs])
    q = np.array([scipy.stats.t.ppf(0.975, r.n_samples - 1) for r in rs])[:, None]
    return np.mean(np.abs(err) <= q * se), math.sqrt(np.mean(se**2) / np.mean(err**2)), rs


@pytest.mark.parametrize("name, rtol, method", [
    ("flat", 0.03, "hutchinson"), ("outlier", 0.1, "diag++"), ("outlier", 0.03, "diag++"),
    ("outlier32", 0.03, "diag++"), ("network", 0.05, "diag++")])
def test_diagonal_intervals_are_true(request, name, rtol, method):
    """Over 40 seeds (200 in the slow test): the entries' 95% intervals cover the exact diagonal in >= 93% of
    (seed, entry) pairs and the reported standard errors are the true error within 25% (measured 0.95-0.96 and
    0.99-1.00; the outlier matrix at rtol=0.03 doubles the rank to 48)."""
    A, _ = request.getfixturevalue(name)
    covered, ratio, rs = diagonal_coverage(A, range(40), rtol=rtol)
    assert covered >= 0.93, covered
    assert 0.75 <= ratio <= 1.25, ratio
    assert all(r.converged and r.method == method for r in rs)


@pytest.mark.slow
@pytest.mark.parametrize("name, rtol", [("flat", 0.03), ("outlier", 0.03), ("outlier32", 0.1), ("network", 0.05)])
def test_diagonal_intervals_are_true_over_200_seeds(request, name, rtol):
    A, _ = request.getfixturevalue(name)
    covered, ratio, _ = diagonal_coverage(A, range(200), rtol=rtol)
    assert covered >= 0.93, covered
    assert 0.75 <= ratio <= 1.25, ratio


def test_diag_plus_plus_is_exact_on_a_low_rank_operator():
    """rank(H) = 5 <= the sketch's 16 columns: the exact part diag(PH + HP - PHP) is diag(H) and every residual
    sample is 0, so the estimate is exact with zero standard error, from the first planned batch."""
    rng = np.random.default_rng(1)
    U = np.linalg.qr(rng.standard_normal((200, 5)))[0]
    A = (U * np.array([9.0, 4.0, -2.0, 1.0, 0.5])) @ U.T
    d = hessop.diagonal(A, rtol=0.01, method="diag++")
    np.testing.assert_allclose(d.diagonal, np.diag(A), atol=1e-13)
    assert np.all(d.std_error <= 1e-13) and d.method == "diag++" and d.rank == 16
    assert d.n_hvp == 16 + 16 + 2 * 32  # sketch, its products, pilot, batch


def test_diagonal_on_a_flat_spectrum_costs_about_what_hutchinson_does(flat):
    """method="auto" tries deflation (one block) only when Hutchinson is predicted to need >= 8 blocks, and the
    try's plain samples are kept: over 10 seeds at most 1.3x Hutchinson's products."""
    A, _ = flat
    auto = [hessop.diagonal(A, rtol=0.03, seed=s) for s in range(10)]
    plain = [hessop.diagonal(A, rtol=0.03, seed=s, method="hutchinson") for s in range(10)]
    assert all(r.method == "hutchinson" and "only" in r.choice for r in auto)
    assert np.median([r.n_hvp for r in auto]) <= 1.3 * np.median([r.n_hvp for r in plain])
