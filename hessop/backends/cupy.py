"""CuPy backend: Hessians whose data live on a GPU as CuPy arrays.

Three kinds of operator, all with every vector on the GPU:

* an explicit symmetric dense ``cupy.ndarray`` (products by cuBLAS),
* an explicit symmetric ``cupyx.scipy.sparse`` matrix (products by cuSPARSE),
* a user callable ``hvp(v) -> H v`` on CuPy vectors (and optionally ``hvp_block(V) -> H V`` on (n, k) blocks).

The symmetry check of an explicit matrix runs on the device and brings two scalars to the host
(``max |A - A^T|`` and ``max |A|``).  Nothing else crosses to the host except what a solver asks for through
:meth:`to_numpy` (its small projected matrices and scalars).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cupy as cp
import cupyx.scipy.sparse as cpsp
import numpy as np

from hessop._validate import check_product, check_square, check_symmetry, float_dtype
from hessop.backends.base import Backend

__all__ = ["CupyFunctionBackend", "CupyMatrixBackend", "check_symmetric_device", "cupy_backend"]

_BLOCK_ELEMENTS = 1 << 24  # rows of a dense matrix compared per pass in the symmetry check (bounds the temporary)


def _matrix_device(A: Any) -> Any:
    return A.data.device if cpsp.issparse(A) else A.device


def check_symmetric_device(A: Any, what: str = "the matrix") -> None:
    """Raise ValueError unless the CuPy matrix ``A`` is square and symmetric to ``sqrt(eps) * max|A|``.

    The comparison runs on the GPU (dense: by row blocks, so the temporary stays below ``2**24`` entries; sparse:
    ``A - A^T`` by cuSPARSE); only ``max |A - A^T|`` and ``max |A|`` come to the host.

    Examples
    --------
    Skipped here (they need a GPU and CuPy):

    >>> import cupy as cp  # doctest: +SKIP
    >>> check_symmetric_device(cp.eye(3))  # doctest: +SKIP
    >>> check_symmetric_device(cp.asarray([[1.0, 2.0], [0.0, 1.0]]))  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    ValueError: the matrix is not symmetric: max |A - A.T| = 2.000e+00 exceeds 2.980e-08. ...
    """
    check_square(tuple(A.shape), what)
    n = int(A.shape[0])
    zero = cp.zeros((), dtype=A.dtype)
    if cpsp.issparse(A):
        D = A - A.T
        scale = cp.max(cp.abs(A.data)) if A.nnz else zero
        asym = cp.max(cp.abs(D.data)) if D.nnz else zero
    else:
        scale = cp.max(cp.abs(A))
        asym = zero
        rows = max(1, _BLOCK_ELEMENTS // n)
        for i in range(0, n, rows):
            asym = cp.maximum(asym, cp.max(cp.abs(A[i: i + rows, :] - A[:, i: i + rows].T)))
    scale_h, asym_h = (float(x) for x in cp.stack([scale, asym]).astype(cp.float64).get())
    check_symmetry(scale_h, asym_h, A.dtype, what)


class _CupyBackend(Backend):
    """Host transfers shared by the CuPy backends: into the operator's dtype on its GPU, and back."""

    name = "cupy"
    device: Any

    def asarray(self, x: np.ndarray) -> Any:
        x = np.asarray(x)
        if x.dtype.kind == "c":
            raise TypeError("the operator is real; got a complex array")
        with self.device:
            return cp.asarray(np.asarray(x, dtype=self.dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        return cp.asnumpy(x)

    def free_memory(self) -> int | None:
        """Bytes free on the GPU: the driver's free memory plus what CuPy's memory pool holds unused."""
        with self.device:
            return int(cp.cuda.runtime.memGetInfo()[0]) + int(cp.get_default_memory_pool().free_bytes())


class CupyMatrixBackend(_CupyBackend):
    """``H v = A v`` for a symmetric dense ``cupy.ndarray`` or ``cupyx.scipy.sparse`` matrix ``A`` on a GPU.

    float32 and float64 keep their dtype; integer and bool matrices become float64; complex is refused.  A sparse
    matrix is stored as CSR (canonical format) for the products.

    Examples
    --------
    Skipped here (it needs a GPU and CuPy):

    >>> import cupy as cp  # doctest: +SKIP
    >>> backend = CupyMatrixBackend(cp.diag(cp.asarray([2.0, 1.0])))  # doctest: +SKIP
    >>> backend.n, backend.dtype, backend.to_numpy(backend.hvp(backend.asarray([1.0, 1.0]))).tolist()  # doctest: +SKIP
    (2, dtype('float64'), [2.0, 1.0])
    """

    def __init__(self, A: Any) -> None:
        if cpsp.issparse(A):
            self.dtype = float_dtype(A.dtype, "the sparse matrix")
            A = A.tocsr().astype(self.dtype)  # a copy: the user's matrix is left as it was
            A.sum_duplicates()
        elif isinstance(A, cp.ndarray):
            if A.ndim != 2:
                raise ValueError(f"the matrix must be square (n, n); got shape {tuple(A.shape)}.")
            self.dtype = float_dtype(A.dtype, "the matrix")
            A = A.astype(self.dtype, copy=False)
        else:
            raise TypeError(f"expected a cupy.ndarray or a cupyx.scipy.sparse matrix, got {type(A).__name__}")
        check_symmetric_device(A)
        self.A = A
        self.n = int(A.shape[0])
        self.device = _matrix_device(A)

    def hvp(self, v: Any) -> Any:
        return self.A @ v

    def hvp_block(self, V: Any) -> Any:
        return self.A @ V

    def describe(self) -> str:
        kind = "sparse CSR" if cpsp.issparse(self.A) else "dense"
        return f"cupy ({kind} matrix on GPU {self.device.id})"


class CupyFunctionBackend(_CupyBackend):
    """``H v = hvp(v)`` for a user callable on CuPy vectors of length ``n`` (on the current GPU, or ``device``).

    Each result is checked for type, shape and dtype (metadata only, no synchronisation); a result of a lower
    precision is promoted, never the reverse.  The callable must represent a symmetric matrix: hessop cannot check
    that without forming it.

    Examples
    --------
    Skipped here (it needs a GPU and CuPy):

    >>> import cupy as cp  # doctest: +SKIP
    >>> backend = CupyFunctionBackend(lambda v: 3.0 * v, 2)  # doctest: +SKIP
    >>> backend.to_numpy(backend.hvp(backend.asarray([1.0, 2.0]))).tolist()  # doctest: +SKIP
    [3.0, 6.0]
    """


    def __init__(
        self,
        hvp: Callable[[Any], Any],
        n: int,
        dtype: Any = np.float64,
        hvp_block: Callable[[Any], Any] | None = None,
        device: Any = None,
    ) -> None:
        if not callable(hvp):
            raise TypeError(f"hvp must be callable, got {type(hvp).__name__}")
        if hvp_block is not None and not callable(hvp_block):
            raise TypeError(f"hvp_block must be callable or None, got {type(hvp_block).__name__}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"n (the dimension of the callable's vectors) must be an integer >= 2, got {n!r}")
        self.n = int(n)
        self.dtype = float_dtype(np.float64 if dtype is None else dtype, "dtype")
        self._hvp, self._hvp_block = hvp, hvp_block
        self.device = cp.cuda.Device(device) if device is not None else cp.cuda.Device()

    def _check(self, y: Any, shape: tuple[int, ...]) -> Any:
        if not isinstance(y, cp.ndarray):
            raise TypeError(f"the hvp callable returned {type(y).__name__}; it must return a cupy.ndarray on the "
                            "GPU (a NumPy result would mean a host round-trip at every product).")
        return check_product(y, shape, self.dtype)

    def hvp(self, v: Any) -> Any:
        return self._check(self._hvp(v), (self.n,))

    def hvp_block(self, V: Any) -> Any:
        if self._hvp_block is None:
            return super().hvp_block(V)
        return self._check(self._hvp_block(V), tuple(V.shape))

    def describe(self) -> str:
        return f"cupy (callable on GPU {self.device.id})"


def cupy_backend(
    A: Any,
    n: int | None = None,
    dtype: Any = None,
    *,
    hvp_block: Callable[[Any], Any] | None = None,
) -> Backend:
    """The backend for :meth:`hessop.HessianOperator.from_cupy`: a matrix backend for a CuPy dense or sparse matrix,
    a function backend for a callable.  Host (NumPy / SciPy) matrices are refused with the constructor to use.

    Examples
    --------
    Skipped here (it needs a GPU and CuPy):

    >>> import cupy as cp  # doctest: +SKIP
    >>> type(cupy_backend(cp.eye(2))).__name__, type(cupy_backend(lambda v: v, 2)).__name__  # doctest: +SKIP
    ('CupyMatrixBackend', 'CupyFunctionBackend')
    """
    if isinstance(A, cp.ndarray) or cpsp.issparse(A):
        if n is not None or dtype is not None or hvp_block is not None:
            raise TypeError("n, dtype and hvp_block are for a callable; a matrix carries its own size and dtype "
                            "(convert it with A.astype(...) first).")
        return CupyMatrixBackend(A)
    if isinstance(A, np.ndarray) or hasattr(A, "tocsr"):
        raise TypeError(
            f"from_cupy takes GPU data, got a host {type(A).__name__}. Move it with cupy.asarray(A) (dense) or "
            "cupyx.scipy.sparse.csr_matrix(A) (sparse), or keep it on the host with HessianOperator.from_matrix(A)."
        )
    if callable(A):
        if n is None:
            raise TypeError("from_cupy(hvp, n): give n, the length of the vectors the callable takes.")
        return CupyFunctionBackend(A, n, dtype, hvp_block)
    raise TypeError(
        f"from_cupy expects a cupy.ndarray, a cupyx.scipy.sparse matrix or a callable hvp(v), got {type(A).__name__}"
    )
