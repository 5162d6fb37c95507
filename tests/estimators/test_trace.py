"""hessop.trace (the adaptive engine: choice, rank doubling, two-stage stop, exact fallback) against exact answers,
the PyTorch operator against the dense Hessian, and bad input to the trace estimators.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import hessop
from hessop.testing import flat_spectrum, matrix_with_spectrum


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


# -------------------------------------------------------------------------------------------- issue 26, class 8
def test_out_of_reach_target_stops_early_and_says_what_would_do():
    """An indefinite spectrum (-8.2 .. 9.5) whose trace is 1, n = 20,000 (2 x 2 blocks rotated by 45 degrees:
    matrix-free and cheap): rtol=0.05 needs ~10^8 samples; from ~1,000 samples on even an optimistic projection
    (|trace| at the top of its 95% interval) is over twice the budget left.  Such a run
    spent the whole 10,000-product budget (issue 26, a BERT-sized model: 12 minutes) and advised "use hessop.trace",
    the function running; now the pilot
    shows the target out of reach and the run stops, naming a budget and an atol that would do."""
    n = 20_000
    lam = np.random.default_rng(0).permutation(np.linspace(-8.2, 9.5, n))
    lam += (1.0 - lam.sum()) / n
    a, b = lam[0::2], lam[1::2]
    mean, half = (a + b) / 2, (a - b) / 2

    def block(V):
        out = np.empty_like(V)
        out[0::2] = mean[:, None] * V[0::2] + half[:, None] * V[1::2]
        out[1::2] = half[:, None] * V[0::2] + mean[:, None] * V[1::2]
        return out

    op = hessop.HessianOperator.from_function(lambda v: block(v[:, None])[:, 0], n, hvp_block=block)
    with pytest.warns(RuntimeWarning, match=r"out of reach.*max_hvp >= .*atol=") as w:
        r = hessop.trace(op, rtol=0.05, seed=0)
    message = str(w[0].message)
    assert "use hessop.trace" not in message
    assert not r.converged and r.stop_reason == "target out of reach" and r.n_hvp <= 2_000
    atol = float(message.rsplit("atol=", 1)[1].rstrip(").").rstrip(")"))
    ok = hessop.trace(op, atol=atol, seed=1)  # the atol it names is reached within the default budget
    lo, hi = ok.interval()
    assert ok.converged and ok.n_hvp <= 10_000 and ok.half_width() <= atol
