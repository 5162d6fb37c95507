"""hessop/backends/numpy.py: the matrix and callable backends give the exact products, keep their dtype and refuse
bad matrices and bad callables with a message naming the problem."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from hessop.backends.numpy import FunctionBackend, MatrixBackend, check_symmetric_matrix
from hessop.testing import matrix_with_spectrum


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sparse", [False, True])
def test_matrix_backend_products_are_the_matrix_products(dtype, sparse):
    A = matrix_with_spectrum(np.linspace(-2.0, 3.0, 30), seed=0, dtype=dtype)
    A = (A + A.T) / 2  # exactly symmetric in its own dtype
    M = sp.csr_matrix(A) if sparse else A
    backend = MatrixBackend(M)
    rng = np.random.default_rng(0)
    v, V = rng.standard_normal(30).astype(dtype), rng.standard_normal((30, 4)).astype(dtype)
    y, Y = backend.hvp(backend.asarray(v)), backend.hvp_block(backend.asarray(V))
    assert backend.dtype == np.dtype(dtype) and y.dtype == np.dtype(dtype) and Y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(backend.to_numpy(y), M @ v)
    np.testing.assert_array_equal(backend.to_numpy(Y), M @ V)
    assert backend.n == 30 and backend.name == "numpy"
    assert backend.describe() == f"numpy ({'sparse' if sparse else 'dense'} matrix)"


def test_matrix_backend_takes_lists_and_integers_as_float64():
    backend = MatrixBackend([[2, 1], [1, 2]])
    assert backend.dtype == np.float64
    assert backend.hvp(np.array([1.0, 2.0])).tolist() == [4.0, 5.0]


@pytest.mark.parametrize("bad, error, match", [
    (np.ones((2, 3)), ValueError, "square"),
    (np.array([[1.0, 2.0], [0.0, 1.0]]), ValueError, "not symmetric"),
    (sp.csr_matrix(np.array([[1.0, 2.0], [0.0, 1.0]])), ValueError, "not symmetric"),
    (np.eye(2, dtype=np.complex128), TypeError, "complex"),
])
def test_matrix_backend_refuses_bad_matrices(bad, error, match):
    with pytest.raises(error, match=match):
        MatrixBackend(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_symmetry_tolerance_is_sqrt_eps_of_the_largest_entry(dtype):
    tol = np.sqrt(np.finfo(dtype).eps)
    scale = 1e3
    for asym, ok in ((0.1 * tol, True), (10 * tol, False)):
        A = np.array([[scale, 1.0], [1.0 + asym * scale, 1.0]], dtype=dtype)
        if ok:
            check_symmetric_matrix(A)
        else:
            with pytest.raises(ValueError, match="not symmetric"):
                check_symmetric_matrix(A)
    check_symmetric_matrix(sp.csr_matrix((3, 3)))  # an empty sparse matrix is symmetric


def test_function_backend_products_and_default_block():
    d = np.array([3.0, 1.0, -2.0])
    calls = []

    def hvp(v):
        calls.append(v.shape)
        return d * v

    backend = FunctionBackend(hvp, 3)
    V = np.arange(6.0).reshape(3, 2)
    assert backend.hvp(np.ones(3)).tolist() == d.tolist()
    np.testing.assert_array_equal(backend.hvp_block(V), d[:, None] * V)  # column by column without hvp_block
    assert calls == [(3,), (3,), (3,)]
    block = FunctionBackend(hvp, 3, hvp_block=lambda W: d[:, None] * W)
    np.testing.assert_array_equal(block.hvp_block(V), d[:, None] * V)
    assert calls == [(3,), (3,), (3,)]  # the block callable is used, not the single one
    assert backend.describe() == "numpy (callable)"


def test_function_backend_promotes_never_downcasts():
    backend = FunctionBackend(lambda v: v.astype(np.float32), 2, dtype=np.float64)
    assert backend.hvp(np.ones(2)).dtype == np.float64  # float32 -> float64: exact
    narrow = FunctionBackend(lambda v: v.astype(np.float64), 2, dtype=np.float32)
    with pytest.raises(TypeError, match="does not down-cast"):
        narrow.hvp(np.ones(2, dtype=np.float32))
    with pytest.raises(ValueError, match="returned shape"):
        FunctionBackend(lambda v: v[:1], 2).hvp(np.ones(2))
    with pytest.raises(ValueError, match="returned shape"):
        FunctionBackend(lambda v: v, 2, hvp_block=lambda V: V[:, :1]).hvp_block(np.ones((2, 2)))


@pytest.mark.parametrize("args, error, match", [
    (("not callable", 3), TypeError, "hvp must be callable"),
    ((abs, 1), ValueError, "n must be an integer >= 2"),
    ((abs, 2.5), ValueError, "n must be an integer >= 2"),
])
def test_function_backend_refuses_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        FunctionBackend(*args)
