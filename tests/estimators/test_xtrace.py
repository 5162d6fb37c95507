"""XTrace (hessop.xtrace) against its definition (leave-one-out samples) and its exact cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import hessop
from hessop._array import make_rng
from hessop._probes import draw
from hessop.testing import matrix_with_spectrum, outlier_spectrum


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
