"""hessop/krylov.py: the Lanczos basis against dense float64 references, in float32 and float64.

The basis stays orthonormal to working precision (the block Gram-Schmidt with its second pass), the Ritz values of
a full run are a diagonal matrix's eigenvalues, and :meth:`Krylov.residual_bounds` bounds the true residual
``||H y - theta y||`` of every Ritz pair, computed here in float64 from the dense matrix.
"""

from __future__ import annotations

import numpy as np
import pytest

from hessop import HessianOperator
from hessop.krylov import Krylov, qnorm_bound, start_vector
from hessop.results import residual_floor
from hessop.testing import matrix_with_spectrum

DTYPES = [np.float32, np.float64]


def run(A: np.ndarray, steps: int, seed: int = 0) -> Krylov:
    """``steps`` Lanczos steps on ``A`` (dtype of ``A``) from a seeded random start."""
    H = HessianOperator.from_matrix(A)
    kry = Krylov(H, start_vector(H, None, np.random.default_rng(seed)), steps)
    for _ in range(steps):
        kry.step()
        assert not kry.breakdown
    return kry


def basis(kry: Krylov) -> np.ndarray:
    return kry.op.to_numpy(kry.Q[:, : kry.j]).astype(np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_basis_orthonormal_to_working_precision(dtype):
    # a spectrum with well separated extremes: Ritz pairs converge early, which is when plain Lanczos loses
    # orthogonality (Paige 1971); without reorthogonalisation ||Q^T Q - I|| grows to O(1) here
    n, steps = 300, 80
    lam = np.concatenate([[100.0, 50.0, 20.0], np.linspace(-1.0, 1.0, n - 3)])
    kry = run(matrix_with_spectrum(lam, seed=1, dtype=dtype), steps)
    Q = basis(kry)
    eps = float(np.finfo(dtype).eps)
    loss = np.linalg.norm(Q.T @ Q - np.eye(steps), 2)
    assert loss <= 10 * np.sqrt(n) * eps, loss
    # and the bound the solvers use for ||Q_{j+1}|| holds
    Q1 = kry.op.to_numpy(kry.Q[:, : kry.j + 1]).astype(np.float64)
    assert np.linalg.norm(Q1, 2) <= qnorm_bound(kry)


@pytest.mark.parametrize("dtype", DTYPES)
def test_projected_matrix_is_the_basis_rayleigh_quotient(dtype):
    # T_j = Q_j^T H Q_j, to the rounding of the products
    A = matrix_with_spectrum(np.linspace(1.0, 10.0, 60), seed=2, dtype=dtype)
    kry = run(A, 15)
    Q = basis(kry)
    eps = float(np.finfo(dtype).eps)
    T_dense = Q.T @ A.astype(np.float64) @ Q
    assert np.max(np.abs(kry.T[:15, :15] - T_dense)) <= 100 * np.sqrt(60) * eps * 10.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_ritz_values_of_a_diagonal_matrix(dtype):
    # n steps span the whole space: the Ritz values are the eigenvalues; fewer steps give values inside the
    # spectrum, the largest approaching it from below (Cauchy interlacing)
    n = 12
    lam = np.arange(1.0, n + 1.0)
    A = np.diag(lam).astype(dtype)
    eps = float(np.finfo(dtype).eps)
    H = HessianOperator.from_matrix(A)
    kry = Krylov(H, H.asarray(np.ones(n, dtype=dtype)), n)
    for _ in range(n):
        kry.step()
    theta, S = kry.ritz()
    np.testing.assert_allclose(theta, lam, rtol=0, atol=100 * n * eps)
    assert S.shape == (n, n)

    part = run(A, 5)
    theta5, _ = part.ritz()
    assert np.all(theta5 >= lam[0] - 10 * eps * n) and np.all(theta5 <= lam[-1] + 10 * eps * n)
    assert np.all(np.diff(theta5) > 0)
    # interlacing: the i-th largest Ritz value is at most the i-th largest eigenvalue
    assert np.all(theta5[::-1] <= lam[::-1][:5] + 10 * eps * n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("steps", [6, 25])
def test_residual_bounds_bound_the_true_residual(dtype, steps):
    n = 150
    lam = np.concatenate([np.linspace(5.0, 8.0, 4), np.linspace(-1.0, 1.0, n - 4)])
    A = matrix_with_spectrum(lam, seed=3, dtype=dtype)
    kry = run(A, steps, seed=4)
    theta, S = kry.ritz()
    anorm = kry.anorm
    unit = residual_floor(kry.op, anorm)
    bound, floor_part = kry.residual_bounds(S, theta, unit, anorm, qnorm_bound(kry))
    # the true residual of y = fl(Q s), in float64 against the dense matrix
    Y = kry.op.to_numpy(kry.Q[:, : kry.j] @ kry.op.cast(S)).astype(np.float64)
    true = np.linalg.norm(A.astype(np.float64) @ Y - Y * theta, axis=0)
    assert np.all(bound >= true), (bound, true)
    assert np.all(floor_part <= bound) and np.all(floor_part > 0)
    # not vacuous: the converged extreme pair's bound is small next to ||H|| where the run has converged it
    if steps == 25:
        assert bound[-1] <= 1e3 * np.sqrt(n) * float(np.finfo(dtype).eps) * np.max(np.abs(lam))


def test_zero_start_vector_is_refused():
    H = HessianOperator.from_matrix(np.eye(3))
    with pytest.raises(ValueError, match="start vector is zero"):
        Krylov(H, H.asarray(np.zeros(3)), 2)
