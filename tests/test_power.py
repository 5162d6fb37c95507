"""Deflated power iteration against prescribed spectra."""

from __future__ import annotations

import numpy as np
import pytest

import hessop
from hessop import HessianOperator
from hessop.testing import matrix_with_spectrum, outlier_spectrum


def test_top10_to_1e6(outlier_matrix):
    A, lam = outlier_matrix
    r = hessop.power_iteration(HessianOperator.from_matrix(A), 10, tol=1e-6)
    assert r.all_converged
    assert np.max(np.abs(r.eigenvalues - lam[:10]) / lam[:10]) <= 1e-6
    V = r.eigenvectors
    np.testing.assert_allclose(V.T @ V, np.eye(10), atol=1e-10)
    true_res = np.linalg.norm(A @ V - V * r.eigenvalues, axis=0)
    np.testing.assert_allclose(true_res, r.residuals, rtol=1e-6, atol=1e-12)
    assert np.all(np.diff(np.abs(r.eigenvalues)) < 0)


def test_power_iteration_costs_more_than_lanczos(outlier_matrix):
    A, _ = outlier_matrix
    p = hessop.power_iteration(A, 5, tol=1e-6)
    lz = hessop.lanczos(A, 5, tol=1e-6)
    assert p.n_hvp > 3 * lz.n_hvp


def test_shift_gives_the_most_negative():
    lam = outlier_spectrum(300, n_outliers=3, n_negative=3, seed=1)
    lam[-3:] = [-20.0, -30.0, -40.0]
    A = matrix_with_spectrum(lam, seed=2)
    r = hessop.power_iteration(A, 2, tol=1e-8, shift=lam[0], max_iter=5000)
    assert r.all_converged
    np.testing.assert_allclose(r.eigenvalues, [-40.0, -30.0], rtol=1e-8)


def test_largest_magnitude_is_what_it_finds():
    lam = np.concatenate([[-10.0, 6.0], np.linspace(-1, 1, 100)])
    r = hessop.power_iteration(matrix_with_spectrum(lam, seed=0), 2, tol=1e-9)
    np.testing.assert_allclose(r.eigenvalues, [-10.0, 6.0], rtol=1e-9)


def test_seeded_and_flags_nonconvergence(outlier_matrix):
    A, _ = outlier_matrix
    a, b = hessop.power_iteration(A, 2, seed=3), hessop.power_iteration(A, 2, seed=3)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    r = hessop.power_iteration(A, 3, tol=1e-12, max_iter=5)
    assert not r.all_converged and r.n_hvp == 15


def test_nan_is_reported():
    H = HessianOperator.from_function(lambda v: v * np.inf, 10)
    with pytest.raises(FloatingPointError, match="iteration 1"):
        hessop.power_iteration(H, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"k": 0}, "1 <= k"), ({"k": 10}, "1 <= k"), ({"tol": 0}, "positive"), ({"max_iter": 0}, "max_iter")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hessop.power_iteration(np.eye(10) * np.arange(1, 11), **kwargs)


def test_unconverged_pairs_are_returned_with_a_warning(outlier_matrix):
    A, _ = outlier_matrix
    with pytest.warns(UserWarning, match=r"pairs 1, 2 of 2 are returned unconverged .*raise max_iter"):
        r = hessop.power_iteration(A, 2, tol=1e-12, max_iter=5)
    assert not r.converged.any()


def test_a_floor_above_every_tolerance_keeps_iterating():
    """Issue 26, class 9: when the product error puts the floor above every residual (a bfloat16 model), the
    residual test passes at once; power iteration used to stop after 2 products.  It now runs until the Rayleigh
    quotient settles, flags the pair precision-limited and warns with the remedies."""
    lam = np.concatenate([[10.0, 9.0], np.linspace(0.0, 5.0, 98)])
    H = HessianOperator.from_matrix(matrix_with_spectrum(lam, seed=0))
    H.product_error = 5.0  # as measured for a half-precision model: half the top eigenvalue
    with pytest.warns(UserWarning, match="precision of the products.*gradient differences"):
        r = hessop.power_iteration(H, 1)
    assert r.n_hvp > 20 and r.precision_limited.all() and r.all_converged
    assert abs(r.eigenvalues[0] - 10.0) <= 1e-3 and r.residuals[0] >= 5.0


def test_ordinary_results_are_not_flagged(outlier_matrix):
    A, lam = outlier_matrix
    r = hessop.power_iteration(A, 1)
    assert r.all_converged and not r.precision_limited.any()
