"""CuPy backend: the checks the NumPy, PyTorch and JAX backends pass, on a GPU.

Every GPU test is skipped, with the reason, where CuPy is not installed or cannot reach a GPU (CI has none); run
them wherever one is available.  One test runs only where CuPy is missing: ``from_cupy`` then fails with an
install hint.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import hessop
from hessop import HessianOperator
from hessop.testing import matrix_with_spectrum


def _gpu_status() -> tuple[object, object, str | None]:
    """(cupy, cupyx.scipy.sparse, None) when a GPU is usable, else (module or None, None, reason)."""
    try:
        import cupy
        import cupyx.scipy.sparse as cupy_sparse
    except ImportError as e:
        return None, None, f"CuPy is not installed ({e}); pip install cupy-cuda12x on a machine with a CUDA GPU"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return cupy, None, "CuPy is installed but sees no GPU"
        float(cupy.arange(3.0).sum())  # a kernel actually runs
    except Exception as e:  # CUDARuntimeError, missing driver or libraries
        return cupy, None, f"CuPy cannot reach a GPU: {type(e).__name__}: {e}"
    return cupy, cupy_sparse, None


cp, cpsp, NO_GPU = _gpu_status()
needs_gpu = pytest.mark.skipif(NO_GPU is not None, reason=str(NO_GPU))


@pytest.mark.skipif(cp is not None, reason="CuPy is installed: the missing-CuPy message cannot be tested here")
def test_from_cupy_without_cupy_is_a_clear_error():
    with pytest.raises(ImportError, match="pip install cupy"):
        HessianOperator.from_cupy(np.eye(3))


# ---------------------------------------------------------------------------------------------------- problems
@pytest.fixture(scope="module")
def small():
    """(A, eigenvalues descending): n = 300 with a gap at the top and 2 negative eigenvalues."""
    lam = np.sort(np.r_[np.linspace(-0.5, 1.0, 295), 3.0, 4.0, 5.0, -2.0, -3.0])[::-1]
    return matrix_with_spectrum(lam, seed=4), lam


def sparse_symmetric(n: int = 500, seed: int = 0) -> sp.csr_matrix:
    S = sp.random(n, n, density=0.01, random_state=seed, format="csr")
    return (S + S.T + sp.diags(np.linspace(0, 2, n))).tocsr()


# ---------------------------------------------------------------------------------------------------- dense
@needs_gpu
def test_dense_matrix_eigenpairs_on_gpu(outlier_matrix):
    A, lam = outlier_matrix
    H = HessianOperator.from_cupy(cp.asarray(A))
    assert H.backend.name == "cupy" and H.dtype == np.float64 and H.n == 2000
    top = hessop.lanczos(H, k=5, tol=1e-10)
    assert top.all_converged
    np.testing.assert_allclose(top.eigenvalues, lam[:5], rtol=1e-10)
    assert isinstance(top.eigenvectors, cp.ndarray) and top.eigenvectors.shape == (2000, 5)
    V = cp.asnumpy(top.eigenvectors)
    assert np.linalg.norm(A @ V - V * top.eigenvalues, axis=0).max() < 1e-8 * lam[0]
    low = hessop.lanczos(H, k=3, which="SA", tol=1e-10)
    np.testing.assert_allclose(low.eigenvalues, lam[::-1][:3], rtol=1e-9)
    pw = hessop.power_iteration(H, k=2, tol=1e-8)
    assert isinstance(pw.eigenvectors, cp.ndarray)
    np.testing.assert_allclose(pw.eigenvalues, lam[:2], rtol=1e-6)


@needs_gpu
def test_same_seed_same_numbers_as_numpy(small):
    A, _ = small
    Hc, Hn = HessianOperator.from_cupy(cp.asarray(A)), HessianOperator.from_matrix(A)
    draw = np.random.default_rng(0).standard_normal((A.shape[0], 3))
    moved = Hc.asarray(draw)
    assert isinstance(moved, cp.ndarray) and moved.dtype == cp.float64
    np.testing.assert_array_equal(Hc.to_numpy(moved), draw)
    rc, rn = hessop.lanczos(Hc, k=3, tol=1e-10, seed=5), hessop.lanczos(Hn, k=3, tol=1e-10, seed=5)
    np.testing.assert_allclose(rc.eigenvalues, rn.eigenvalues, rtol=1e-11)
    assert rc.n_iter == rn.n_iter


@needs_gpu
def test_float32_stays_float32(small):
    A, lam = small
    H = HessianOperator.from_cupy(cp.asarray(A, dtype=cp.float32))
    assert H.dtype == np.float32
    v = H.asarray(np.ones(H.n, H.dtype))
    assert v.dtype == cp.float32 and H.hvp(v).dtype == cp.float32
    res = hessop.lanczos(H, k=2, tol=1e-5)
    assert res.eigenvectors.dtype == cp.float32
    np.testing.assert_allclose(res.eigenvalues, lam[:2], rtol=1e-4)
    with pytest.raises(TypeError, match="down-cast"):
        H @ np.ones(H.n)  # SciPy face: no silent float64 -> float32


@needs_gpu
def test_integer_matrix_becomes_float64():
    B = np.arange(16).reshape(4, 4)
    H = HessianOperator.from_cupy(cp.asarray(B + B.T))
    assert H.dtype == np.float64
    np.testing.assert_allclose(H @ np.ones(4), (B + B.T) @ np.ones(4))


@needs_gpu
def test_scipy_face(small):
    from scipy.sparse.linalg import eigsh

    A, lam = small
    H = HessianOperator.from_cupy(cp.asarray(A))
    x = np.random.default_rng(1).standard_normal(H.n)
    y = H @ x
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y, A @ x, rtol=1e-12, atol=1e-12)
    vals = eigsh(H, k=2, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(vals)[::-1], lam[:2], rtol=1e-9)


# ---------------------------------------------------------------------------------------------------- sparse
@needs_gpu
def test_sparse_matrix_eigenpairs_on_gpu():
    S = sparse_symmetric()
    lam = np.linalg.eigvalsh(S.toarray())[::-1]
    for fmt in ("csr", "csc", "coo"):
        M = cpsp.csr_matrix(S).asformat(fmt)
        H = HessianOperator.from_cupy(M)
        assert "sparse" in repr(H)
        res = hessop.lanczos(H, k=3, tol=1e-10)
        np.testing.assert_allclose(res.eigenvalues, lam[:3], rtol=1e-10, err_msg=fmt)
        assert isinstance(res.eigenvectors, cp.ndarray)
    X = cp.asarray(np.random.default_rng(0).standard_normal((S.shape[0], 4)))
    np.testing.assert_allclose(cp.asnumpy(H.hvp_block(X)), S @ cp.asnumpy(X), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------- callable
@needs_gpu
def test_callable_hvp(small):
    A, lam = small
    Ad = cp.asarray(A)
    calls = []

    def hvp(v):
        calls.append(v.shape)
        return Ad @ v

    H = HessianOperator.from_cupy(hvp, A.shape[0])
    assert H.dtype == np.float64 and len(calls) == 2 and H.n_hvp == 0  # the symmetry check's two products
    calls.clear()
    res = hessop.lanczos(H, k=3, tol=1e-10)
    np.testing.assert_allclose(res.eigenvalues, lam[:3], rtol=1e-10)
    assert isinstance(res.eigenvectors, cp.ndarray) and len(calls) == res.n_hvp
    # block products: the user's block callable when given, else column by column
    V = H.asarray(np.random.default_rng(2).standard_normal((H.n, 4)).astype(H.dtype))
    blocks = []
    Hb = HessianOperator.from_cupy(hvp, A.shape[0], hvp_block=lambda X: blocks.append(X.shape) or Ad @ X)
    assert blocks == [(H.n, 2)]  # the symmetry check: one block of two
    blocks.clear()
    np.testing.assert_allclose(cp.asnumpy(Hb.hvp_block(V)), A @ cp.asnumpy(V), rtol=1e-12, atol=1e-12)
    assert blocks == [(H.n, 4)] and Hb.n_hvp == 4
    calls.clear()
    np.testing.assert_allclose(cp.asnumpy(H.hvp_block(V)), A @ cp.asnumpy(V), rtol=1e-12, atol=1e-12)
    assert len(calls) == 4


# ---------------------------------------------------------------------------------------------------- host traffic
@needs_gpu
def test_solvers_make_no_host_roundtrip(small, monkeypatch):
    """As in tests/test_no_host_roundtrip.py: length-n conversions to NumPy fail while the solvers run.  CuPy
    itself refuses implicit conversion (numpy.asarray of a cupy array raises TypeError); the explicit ways
    (H.to_numpy, cupy.asnumpy) are guarded here."""
    from test_no_host_roundtrip import HostGuard, run_solvers  # tests/ is on sys.path (its conftest.py)

    A, _ = small
    H = HessianOperator.from_cupy(cp.asarray(A))
    guard = HostGuard(monkeypatch, H, cp.ndarray)
    monkeypatch.setattr(cp, "asnumpy", guard.wrap(cp.asnumpy, "cupy.asnumpy"))
    v = H.asarray(np.ones(H.n, H.dtype))
    guard.moved_in = 0
    for convert in (lambda: H.to_numpy(v), lambda: cp.asnumpy(v), lambda: np.asarray(v)):
        with pytest.raises(AssertionError, match="host round-trip"):
            convert()
    guard.blocked.clear()
    run_solvers(H, guard, cp.ndarray)


# ---------------------------------------------------------------------------------------------------- parity
@needs_gpu
def test_hutchinson_same_as_numpy(small):
    A, _ = small
    a = hessop.hutchinson(HessianOperator.from_cupy(cp.asarray(A)), max_hvp=50, seed=0)
    b = hessop.hutchinson(HessianOperator.from_matrix(A), max_hvp=50, seed=0)
    assert abs(a.estimate - b.estimate) <= 1e-9 * abs(b.estimate)


# ---------------------------------------------------------------------------------------------------- bad input
@needs_gpu
def test_bad_matrices(small):
    A, _ = small
    with pytest.raises(ValueError, match="square"):
        HessianOperator.from_cupy(cp.asarray(A[:, :10]))
    with pytest.raises(ValueError, match="square"):
        HessianOperator.from_cupy(cp.ones(5))
    with pytest.raises(ValueError, match="square"):
        HessianOperator.from_cupy(cpsp.csr_matrix(cp.ones((3, 4))))
    B = A.copy()
    B[0, 7] += 1e-3
    with pytest.raises(ValueError, match="not symmetric"):
        HessianOperator.from_cupy(cp.asarray(B))
    with pytest.raises(ValueError, match="not symmetric"):
        HessianOperator.from_cupy(cpsp.csr_matrix(cp.asarray(B)))
    B = A.copy()
    B[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        HessianOperator.from_cupy(cp.asarray(B))
    with pytest.raises(TypeError, match="complex"):
        HessianOperator.from_cupy(cp.asarray(A, dtype=cp.complex128))
    with pytest.raises(TypeError, match="cupy.asarray"):
        HessianOperator.from_cupy(A)
    with pytest.raises(TypeError, match="host"):
        HessianOperator.from_cupy(sp.csr_matrix(A))
    with pytest.raises(TypeError, match="callable"):
        HessianOperator.from_cupy(cp.asarray(A), n=300)
    with pytest.raises(TypeError, match="expects a cupy.ndarray"):
        HessianOperator.from_cupy([[1.0, 0.0], [0.0, 1.0]])


@needs_gpu
def test_symmetry_check_by_row_blocks(small, monkeypatch):
    """The dense check runs in row blocks on the device; an asymmetry in the last block is found."""
    import hessop.backends.cupy as hc

    A, _ = small
    monkeypatch.setattr(hc, "_BLOCK_ELEMENTS", 1000)  # 3 rows per block
    B = A.copy()
    B[-1, 2] += 1e-3
    with pytest.raises(ValueError, match="not symmetric"):
        HessianOperator.from_cupy(cp.asarray(B))
    assert HessianOperator.from_cupy(cp.asarray(A)).n == A.shape[0]


@needs_gpu
def test_bad_callables(small):
    A, _ = small
    Ad = cp.asarray(A)
    with pytest.raises(TypeError, match="give n"):
        HessianOperator.from_cupy(lambda v: Ad @ v)
    with pytest.raises(ValueError, match="n .* must be an integer"):
        HessianOperator.from_cupy(lambda v: Ad @ v, 1)
    # wrong results are found by the symmetry check's products at construction, or by the solver without it
    for check in (True, False):
        with pytest.raises(TypeError, match="cupy.ndarray"):  # returns NumPy: a host round-trip
            hessop.lanczos(HessianOperator.from_cupy(lambda v: A @ cp.asnumpy(v), 300, check_symmetric=check), k=1)
        with pytest.raises(ValueError, match="shape"):
            hessop.lanczos(HessianOperator.from_cupy(lambda v: (Ad @ v)[:-1], 300, check_symmetric=check), k=1)
        with pytest.raises(TypeError, match="down-cast"):
            hessop.lanczos(HessianOperator.from_cupy(lambda v: Ad @ v.astype(cp.float64), 300, np.float32,
                                                     check_symmetric=check), k=1)
    B = cp.asarray(np.triu(A))
    with pytest.raises(ValueError, match="the product is not symmetric"):
        HessianOperator.from_cupy(lambda v: B @ v, 300)
    H = HessianOperator.from_cupy(lambda v: Ad @ v * cp.nan, 300)
    with pytest.raises(FloatingPointError):
        hessop.lanczos(H, k=1)
