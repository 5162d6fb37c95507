"""HessianOperator: the SciPy face, the native face, constructors and their errors (NumPy backend)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator, eigsh

import hessop
from hessop import HessianOperator
from hessop.testing import matrix_with_spectrum


@pytest.fixture
def small():
    lam = np.linspace(-1.0, 3.0, 50)
    return matrix_with_spectrum(lam, seed=3), lam


def test_is_a_linear_operator_with_shape_and_dtype(small):
    A, _ = small
    H = HessianOperator.from_matrix(A)
    assert isinstance(H, LinearOperator)
    assert H.shape == (50, 50) and H.dtype == np.float64
    x = np.random.default_rng(0).standard_normal(50)
    np.testing.assert_allclose(H @ x, A @ x, rtol=1e-14)
    np.testing.assert_allclose(H.matmat(np.eye(50)[:, :3]), A[:, :3], rtol=1e-14)
    np.testing.assert_allclose(H.T @ x, A @ x, rtol=1e-14)


def test_counts_products_block_counts_k(small):
    H = HessianOperator.from_matrix(small[0])
    H @ np.ones(50)
    H.matmat(np.ones((50, 4)))
    H.hvp(np.ones(50))
    assert H.n_hvp == 6


def test_float32_stays_float32_and_refuses_silent_downcast(small):
    A = small[0].astype(np.float32)
    H = HessianOperator.from_matrix(A)
    assert H.dtype == np.float32
    y = H @ np.ones(50, dtype=np.float32)
    assert y.dtype == np.float32
    with pytest.raises(TypeError, match="down-cast"):
        H @ np.ones(50, dtype=np.float64)


def test_scipy_eigsh_on_the_operator(small):
    A, lam = small
    vals = eigsh(HessianOperator.from_matrix(A), k=3, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(vals)[::-1], lam[::-1][:3], rtol=1e-10)


def test_sparse_matrix_and_function_and_linear_operator(small):
    A, lam = small
    S = sp.csr_matrix(np.where(np.abs(A) > 0.05, A, 0.0))
    r = hessop.lanczos(HessianOperator.from_matrix(S), 2)
    np.testing.assert_allclose(r.eigenvalues, np.linalg.eigvalsh(S.toarray())[::-1][:2], rtol=1e-10)
    F = HessianOperator.from_function(lambda v: A @ v, 50)
    np.testing.assert_allclose(hessop.lanczos(F, 2).eigenvalues, lam[::-1][:2], rtol=1e-10)
    np.testing.assert_allclose(hessop.lanczos(aslinearoperator(A), 2).eigenvalues, lam[::-1][:2], rtol=1e-10)
    np.testing.assert_allclose(hessop.lanczos(A, 2).eigenvalues, lam[::-1][:2], rtol=1e-10)


def test_integer_matrix_becomes_float64():
    H = HessianOperator.from_matrix(np.array([[2, 1], [1, 2]]))
    assert H.dtype == np.float64


@pytest.mark.parametrize(
    "A, match",
    [
        (np.ones((3, 4)), "square"),
        (np.array([[1.0, 2.0], [0.0, 1.0]]), "not symmetric"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), "NaN"),
        (np.ones((2, 2), dtype=complex), "float32 or float64"),
    ],
)
def test_from_matrix_rejects_bad_matrices(A, match):
    with pytest.raises((ValueError, TypeError), match=match):
        HessianOperator.from_matrix(A)


def test_from_function_checks_its_callable():
    with pytest.raises(TypeError, match="callable"):
        HessianOperator.from_function(3, 5)
    with pytest.raises(ValueError, match="shape"):  # found by the symmetry check's products at construction
        HessianOperator.from_function(lambda v: np.ones(4), 5)
    H = HessianOperator.from_function(lambda v: np.ones(4), 5, check_symmetric=False)
    with pytest.raises(ValueError, match="shape"):
        H @ np.ones(5)
    H32 = HessianOperator.from_function(lambda v: v.astype(np.float64), 5, np.float32, check_symmetric=False)
    with pytest.raises(TypeError, match="declared float32"):
        H32 @ np.ones(5, dtype=np.float32)


def test_as_operator_rejects_other_things():
    with pytest.raises(TypeError, match="HessianOperator"):
        hessop.as_operator("matrix")
    with pytest.raises(ValueError, match="square"):
        hessop.as_operator(aslinearoperator(np.ones((3, 4))))


def test_native_face_checks_shapes(small):
    H = HessianOperator.from_matrix(small[0])
    with pytest.raises(ValueError, match="shape"):
        H.hvp(np.ones(49))
    with pytest.raises(ValueError, match="shape"):
        H.hvp_block(np.ones((49, 2)))


def test_model_backend_names_the_problem_and_the_fix(tiny_torch_problem):
    _, H = tiny_torch_problem
    assert H.model_backend("landscape") is H.backend
    assert H.with_solver_dtype(np.float64).model_backend("landscape") is H.backend  # through the solver_dtype face
    M = HessianOperator.from_matrix(np.eye(3))
    with pytest.raises(TypeError, match=r"landscape needs an operator built from a model \(HessianOperator"
                                        r".from_torch or from_jax\), which has parameter names, .*; this one was "
                                        r"built from numpy \(dense"):
        M.model_backend("landscape")
    assert M.backend.model_backend is None and M.backend.layout is None
    M.backend.comm = object()  # as an operator reduced over a communicator declares it
    with pytest.raises(ValueError, match=r"by_block does not support operators reduced over a communicator \(MPI, "
                                         r"torch.distributed or JAX processes\) yet .* this rank's shard"):
        M.model_backend("by_block")
