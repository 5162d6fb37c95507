"""Lanczos against prescribed spectra: accuracy, HVP budget, SA/LM, thick restart, seeds, errors."""

from __future__ import annotations

import numpy as np
import pytest

import hessop
from hessop import HessianOperator
from hessop.testing import matrix_with_spectrum


def rel_err(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b)))


def test_top10_to_1e10_within_60_hvps(outlier_matrix):
    A, lam = outlier_matrix
    r = hessop.lanczos(HessianOperator.from_matrix(A), 10, tol=1e-10)
    assert r.all_converged
    assert rel_err(r.eigenvalues, lam[:10]) <= 1e-10
    assert r.n_hvp <= 60
    # orthonormal vectors and true residuals as reported
    V = r.eigenvectors
    np.testing.assert_allclose(V.T @ V, np.eye(10), atol=1e-12)
    true_res = np.linalg.norm(A @ V - V * r.eigenvalues, axis=0)
    assert np.all(true_res <= 1e-10 * np.abs(r.eigenvalues) + 1e-12)


def test_no_ghost_copies_of_the_top_eigenvalue(outlier_matrix):
    """Without reorthogonalisation a second copy of lambda_max appears within ~20 steps; with it, never."""
    A, lam = outlier_matrix
    r = hessop.lanczos(A, 12, tol=1e-12, max_basis=120)
    assert np.sum(np.abs(r.eigenvalues - lam[0]) < 1e-6 * lam[0]) == 1
    assert rel_err(r.eigenvalues, lam[:12]) <= 1e-8


def test_smallest_algebraic_finds_most_negative(outlier_matrix):
    A, lam = outlier_matrix
    r = hessop.lanczos(A, 3, which="SA")
    assert r.all_converged
    np.testing.assert_allclose(r.eigenvalues, lam[::-1][:3], rtol=1e-10)
    assert np.all(r.eigenvalues < 0) and np.all(np.diff(r.eigenvalues) > 0)


def test_largest_magnitude():
    lam = np.concatenate([[-10.0, 9.0, -8.0], np.linspace(-1, 1, 200)])
    r = hessop.lanczos(matrix_with_spectrum(lam, seed=2), 3, which="LM")
    np.testing.assert_allclose(r.eigenvalues, [-10.0, 9.0, -8.0], rtol=1e-10)


@pytest.mark.parametrize("max_basis", [30, 14])
def test_thick_restart_still_finds_top10(outlier_matrix, max_basis):
    A, lam = outlier_matrix
    r = hessop.lanczos(A, 10, tol=1e-10, max_basis=max_basis)
    assert r.all_converged
    assert rel_err(r.eigenvalues, lam[:10]) <= 1e-10
    if max_basis == 14:
        assert r.n_restarts >= 1


def test_thick_restart_on_a_flat_spectrum():
    lam = np.sort(np.random.default_rng(0).uniform(0.0, 1.0, 400))[::-1]
    A = matrix_with_spectrum(lam, seed=4)
    r = hessop.lanczos(A, 4, tol=1e-8, max_basis=20)
    assert r.n_restarts >= 1 and r.all_converged
    np.testing.assert_allclose(r.eigenvalues, lam[:4], rtol=1e-7)


def test_same_seed_same_answer_and_v0(outlier_matrix):
    A, _ = outlier_matrix
    a = hessop.lanczos(A, 3, seed=7)
    b = hessop.lanczos(A, 3, seed=7)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    np.testing.assert_array_equal(a.eigenvectors, b.eigenvectors)
    v0 = np.random.default_rng(1).standard_normal(A.shape[0])
    c = hessop.lanczos(A, 3, v0=v0)
    np.testing.assert_allclose(c.eigenvalues, a.eigenvalues, rtol=1e-10)


def test_invariant_subspace_breakdown_is_handled():
    """A matrix with 3 distinct eigenvalues: the Krylov space closes after 3 steps."""
    lam = np.repeat([5.0, 2.0, -1.0], [2, 40, 8])
    A = matrix_with_spectrum(lam, seed=5)
    r = hessop.lanczos(A, 2)
    assert r.all_converged
    np.testing.assert_allclose(r.eigenvalues, [5.0, 5.0], rtol=1e-10)
    # a low-rank operator (rank 5, eigenvalue 3 five times) and a multiple of the identity
    r = hessop.lanczos(np.diag(np.r_[np.full(5, 3.0), np.zeros(45)]), 4)
    np.testing.assert_allclose(r.eigenvalues, [3.0] * 4, rtol=1e-12)
    r = hessop.lanczos(2.0 * np.eye(30), 3)
    np.testing.assert_allclose(r.eigenvalues, [2.0] * 3, rtol=1e-12)


def test_nonconverged_pairs_are_flagged(outlier_matrix):
    A, _ = outlier_matrix
    r = hessop.lanczos(A, 10, tol=1e-12, max_iter=12, max_basis=12)
    assert not r.all_converged and r.n_iter == 12 and r.n_hvp == 12 + 10  # + one verification block of k


def test_nan_in_hvp_is_reported_with_iteration():
    A = np.diag(np.arange(1.0, 31.0))
    calls = {"n": 0}

    def hvp(v):
        calls["n"] += 1
        return A @ v * (np.nan if calls["n"] == 4 else 1.0)

    H = HessianOperator.from_function(hvp, 30, check_symmetric=False)
    H.product_error = 0.0  # no measurement: its products would take calls 2-5 (a NaN there raises too)
    with pytest.raises(FloatingPointError, match="iteration 4"):
        hessop.lanczos(H, 2)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"k": 0}, ValueError, "1 <= k < n"),
        ({"k": 50}, ValueError, "1 <= k < n"),
        ({"k": 2.5}, TypeError, "integer"),
        ({"k": 2, "tol": 0.0}, ValueError, "positive"),
        ({"k": 2, "tol": -1e-3}, ValueError, "positive"),
        ({"k": 2, "which": "BE"}, ValueError, "which"),
        ({"k": 4, "max_basis": 4}, ValueError, "max_basis"),
        ({"k": 2, "max_iter": 0}, ValueError, "max_iter"),
        ({"k": 2, "seed": "x"}, TypeError, "seed"),
        ({"k": 2, "v0": np.ones(49)}, ValueError, r"v0 must have shape \(50,\), got \(49,\)"),
        ({"k": 2, "v0": np.ones(50, dtype=np.complex128)}, TypeError, "is complex"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    A = matrix_with_spectrum(np.linspace(1, 2, 50))
    with pytest.raises(exc, match=match):
        hessop.lanczos(A, **kwargs)
