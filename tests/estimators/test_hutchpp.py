"""Hutch++ (hessop.hutchpp) against its definition and exact answers, and its error estimate's calibration (with
XTrace's).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import hessop
from hessop._array import make_rng
from hessop._probes import draw
from hessop.testing import matrix_with_spectrum, outlier_spectrum

SEEDS = range(50)


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


def test_hutchpp_is_exact_for_low_rank():
    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((100, 5)))[0]
    A = (U * np.array([9.0, 4.0, -2.0, 1.0, 0.5])) @ U.T
    r = hessop.hutchpp(A, 30)
    assert r.estimate == pytest.approx(12.5, abs=1e-10)
    assert r.std_error < 1e-10


@pytest.mark.parametrize("seed", range(5))
def test_rounding_is_in_the_interval_when_the_sketch_spans_the_range(seed):
    """Issue 26 class 6 for Hutch++: a float32 operator of rank 5 (n = 2e5) is captured by the sketch, so the
    residual samples are rounding noise with a standard error of about 1e-11 while tr(Q^T H Q) is a float32 sum
    off by about 1e-4: the interval missed the exact trace in 10 of 10 seeds by millions of half-widths.  The
    quadratic forms of both parts now carry their rounding bounds (as Hutchinson's), added to the interval."""
    n = 200_000
    d = np.zeros(n, dtype=np.float32)
    d[:5] = np.float32([1000.1, 700.3, 500.7, 300.9, 100.3])
    op = hessop.HessianOperator.from_function(lambda v: d * v, n, dtype=np.float32, check_symmetric=False,
                                              hvp_block=lambda V: d[:, None] * V)
    exact = float(np.sum(d.astype(np.float64)))
    r = hessop.hutchpp(op, 30, seed=seed)
    lo, hi = r.interval()
    assert lo <= exact <= hi
    assert r.rounding > 0 and hi - lo < 1e-3 * exact  # a rounding bound, not a vacuous interval
