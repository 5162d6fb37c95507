"""Bad input gets one clear message: the exception type and the words that name the problem and the fix.

Backend-free cases (solver arguments, seeds, matrices, vectors given to ``hvp``, non-symmetric products).  The
PyTorch cases live in tests/backends/torch/, the MPI ones in tests/test_mpi.py; docs/reliability.md lists
them all.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.linalg import aslinearoperator

import hessop
from hessop import HessianOperator
from hessop.testing import matrix_with_spectrum

N = 40
A = matrix_with_spectrum(np.linspace(-1.0, 3.0, N))

SOLVERS = {
    "lanczos": lambda H, **kw: hessop.lanczos(H, 2, **kw),
    "power_iteration": lambda H, **kw: hessop.power_iteration(H, 1, max_iter=5, **kw),
    "hutchinson": lambda H, **kw: hessop.hutchinson(H, max_hvp=3, **kw),
    "hutchpp": lambda H, **kw: hessop.hutchpp(H, 6, **kw),
    "xtrace": lambda H, **kw: hessop.xtrace(H, 6, **kw),
    "diagonal": lambda H, **kw: hessop.diagonal(H, 3, **kw),
    "slq": lambda H, **kw: hessop.slq(H, n_iter=5, max_hvp=5, **kw),
    "sketch": lambda H, **kw: hessop.sketch(H, 5, **kw),
}


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize(("seed", "error", "words"), [
    (1.5, TypeError, "seed must be an int >= 0, a numpy.random.Generator or None, got float"),
    ("0", TypeError, "got str '0'"),
    (True, TypeError, "got bool True"),
    (-1, ValueError, "seed must be >= 0"),
])
def test_seeds_that_are_not_integers_are_refused(solver, seed, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        SOLVERS[solver](A, seed=seed)


@pytest.mark.parametrize("solver", ["lanczos", "power_iteration"])
@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"k": N}, ValueError, f"k must satisfy 1 <= k < n = {N}, got k = {N}; .* numpy.linalg.eigh"),
    ({"k": N + 5}, ValueError, "1 <= k < n"),
    ({"k": 0}, ValueError, "1 <= k < n"),
    ({"k": -2}, ValueError, "1 <= k < n"),
    ({"k": 1, "tol": 0.0}, ValueError, "tol must be a positive finite number, got 0.0"),
    ({"k": 1, "tol": -1e-6}, ValueError, "tol must be a positive finite number"),
    ({"k": 1, "tol": float("nan")}, ValueError, "tol must be a positive finite number, got nan"),
    ({"k": 1, "tol": float("inf")}, ValueError, "tol must be a positive finite number, got inf"),
    ({"k": 1, "tol": "1e-6"}, TypeError, "tol must be a positive number"),
])
def test_k_and_tol(solver, kwargs, error, words):
    call = hessop.lanczos if solver == "lanczos" else hessop.power_iteration
    with pytest.raises(error, match=words):
        call(A, **kwargs)


def test_max_basis_and_shift():
    with pytest.raises(ValueError, match="max_basis must be >= 4, got 3"):
        hessop.lanczos(A, 3, max_basis=3)
    with pytest.raises(ValueError, match="max_basis must be >= 4, got 2"):
        hessop.lanczos(A, 3, max_basis=2)
    with pytest.raises(ValueError, match="shift must be a finite number, got nan"):
        hessop.power_iteration(A, 1, shift=float("nan"))


@pytest.mark.parametrize(("matrix", "error", "words"), [
    (np.ones((3, 4)), ValueError, r"the matrix must be square \(n, n\); got shape \(3, 4\)"),
    (np.ones(5), ValueError, "must be square"),
    (np.array([[1.0, 2.0], [0.0, 1.0]]), ValueError, r"not symmetric: max \|A - A.T\| = 2.000e\+00"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), ValueError, "contains NaN or Inf"),
    (np.array([[1.0, np.inf], [np.inf, 1.0]]), ValueError, "contains NaN or Inf"),
    (np.array([[-np.inf, 0.0], [0.0, 1.0]]), ValueError, "contains NaN or Inf"),
    (np.ones((2, 2), dtype=complex), TypeError, "real float32 or float64"),
])
def test_bad_matrices(matrix, error, words):
    with pytest.raises(error, match=words):
        HessianOperator.from_matrix(matrix)
    with pytest.raises(error, match=words):
        hessop.lanczos(matrix, 1)  # the solvers accept arrays through as_operator: the same message


def test_vectors_of_the_wrong_length_dtype_or_kind_given_to_hvp():
    H = HessianOperator.from_matrix(A)
    with pytest.raises(ValueError, match=rf"hvp expects a vector of shape \({N},\), got \({N + 1},\)"):
        H.hvp(np.ones(N + 1))
    with pytest.raises(ValueError, match=rf"hvp_block expects a block of shape \({N}, k\)"):
        H.hvp_block(np.ones((N - 1, 2)))
    with pytest.raises(TypeError, match="the vector given to hvp must have dtype float64 .* got float32; hessop "
                                        "does not cast silently"):
        H.hvp(np.ones(N, dtype=np.float32))
    with pytest.raises(TypeError, match="the block given to hvp_block must have dtype float64"):
        H.hvp_block(np.ones((N, 2), dtype=np.int64))
    with pytest.raises(TypeError, match=r"must be a numpy array \(ndarray\) like this operator's, got list; move a "
                                        r"NumPy array in with H.asarray\(x\)"):
        H.hvp([1.0] * N)


def _nonsymmetric(n: int, asym: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    S = matrix_with_spectrum(np.linspace(1.0, 2.0, n), seed=seed)
    K = rng.standard_normal((n, n))
    K = (K - K.T) / 2
    return S + asym * np.linalg.norm(S) / np.linalg.norm(K) * K


@pytest.mark.parametrize("seed", range(5))
def test_a_non_symmetric_product_is_refused(seed):
    """``H = S + K``, ``||K||_F = 1e-4 ||S||_F``: the two-product randomised check finds it on every seed."""
    B = _nonsymmetric(200, 1e-4, seed)
    words = r"the product is not symmetric: for two random vectors u \. \(H w\) = .* check_symmetric=False"
    with pytest.raises(ValueError, match=words):
        HessianOperator.from_function(lambda v: B @ v, 200)
    with pytest.raises(ValueError, match=words):
        HessianOperator.from_function(lambda v: B @ v, 200, hvp_block=lambda V: B @ V)
    with pytest.raises(ValueError, match=words):
        hessop.lanczos(aslinearoperator(B), 2)  # a SciPy LinearOperator goes through the same check
    H = HessianOperator.from_function(lambda v: B @ v, 200, check_symmetric=False)  # the user's explicit choice
    assert H.n_hvp == 0


def test_the_symmetry_check_accepts_symmetric_products_in_float32_and_float64():
    """No false alarm from rounding: float32 and float64 products of symmetric matrices with spread spectra pass,
    and the check's two products are not counted in ``n_hvp``."""
    for dtype in (np.float32, np.float64):
        for seed in range(5):
            S = matrix_with_spectrum(np.geomspace(1e-6, 1e3, 300) * np.where(np.arange(300) % 3, 1, -1), seed=seed,
                                     dtype=dtype)
            H = HessianOperator.from_function(lambda v, S=S: S @ v, 300, dtype)
            assert H.n_hvp == 0


def test_a_nan_product_is_left_to_the_solver_that_names_the_step():
    H = HessianOperator.from_function(lambda v: v * np.nan, 10)  # the symmetry check skips non-finite products
    with pytest.raises(FloatingPointError, match="at iteration 1: the Hessian-vector product returned NaN or Inf"):
        hessop.lanczos(H, 1)
