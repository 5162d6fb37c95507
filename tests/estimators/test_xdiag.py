"""XDiag (hessop.diagonal(method="xdiag")) against its definition and the dense diagonal; its exact low-rank case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

import hessop
from hessop._array import make_rng
from hessop._probes import draw
from hessop.testing import matrix_with_spectrum, outlier_spectrum


def xdiag_by_definition(A, Om):
    """XDiag's estimate from the Rademacher probes ``Om``, with explicit leave-one-out projectors."""
    D = []
    for i in range(Om.shape[1]):
        Qi = np.linalg.qr(A @ np.delete(Om, i, axis=1))[0]
        P = Qi @ Qi.T
        D.append(np.diag(P @ A) + Om[:, i] * ((A - P @ A) @ Om[:, i]))
    return np.mean(D, axis=0)


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
    r = hessop.diagonal(A, 20, method="xdiag")  # rank 3 < m - 1: every leave-one-out sketch spans the range
    np.testing.assert_allclose(r.diagonal, np.diag(A), atol=1e-13)
    assert np.all(r.std_error < 1e-12) and r.n_samples == 10  # no exact claim (issue 26, class 2)
    with pytest.raises(ValueError, match="budget of products max_hvp only"):
        hessop.diagonal(A, rtol=0.1, method="xdiag")
    with pytest.raises(ValueError, match="method must be one of"):
        hessop.diagonal(A, 10, method="xdiag++")
    with pytest.raises(ValueError, match="method='diag\\+\\+' needs a target"):
        hessop.diagonal(A, 10, method="diag++")
