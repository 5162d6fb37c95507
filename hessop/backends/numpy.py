"""NumPy/SciPy backend: explicit symmetric matrices (the reference used throughout the tests) and HVP callables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from hessop.backends.base import Backend


def float_dtype(dtype: Any, what: str) -> np.dtype:
    """The floating dtype a matrix or callable works in: float32/float64 kept, integers and bools promoted to
    float64 (exact for them), anything else refused.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.backends.numpy import float_dtype
    >>> float_dtype(np.float32, "A"), float_dtype(np.int64, "A")
    (dtype('float32'), dtype('float64'))
    """
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64):
        return dtype
    if dtype.kind in "iub":
        return np.dtype(np.float64)
    raise TypeError(
        f"{what} has dtype {dtype}; hessop works with real float32 or float64 operators "
        "(a Hessian of a real loss is real symmetric). Convert it with .astype(numpy.float64)."
    )


def check_square(shape: tuple[int, ...], what: str = "the matrix") -> None:
    """Raise ValueError unless ``shape`` is that of a square matrix of at least 2 x 2.

    Examples
    --------
    >>> from hessop.backends.numpy import check_square
    >>> check_square((3, 3))
    >>> check_square((2, 3))
    Traceback (most recent call last):
    ...
    ValueError: the matrix must be square (n, n); got shape (2, 3).
    """
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{what} must be square (n, n); got shape {tuple(shape)}.")
    if shape[0] < 2:
        raise ValueError(f"{what} must be at least 2 x 2; got shape {tuple(shape)}.")


def check_symmetry(scale: float, asym: float, dtype: Any, what: str = "the matrix") -> None:
    """Raise ValueError unless ``asym = max |A - A^T|`` is within ``sqrt(eps) * scale``, ``scale = max |A|``
    (both host floats, computed wherever ``A`` lives; eps of ``dtype``, float64 for non-float dtypes).

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.backends.numpy import check_symmetry
    >>> check_symmetry(1.0, 1e-9, np.float64)
    >>> check_symmetry(1.0, 1e-3, np.float64)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the matrix is not symmetric: max |A - A.T| = 1.000e-03 exceeds 1.490e-08. ...
    """
    if not (np.isfinite(scale) and np.isfinite(asym)):
        raise ValueError(f"{what} contains NaN or Inf.")
    dtype = np.dtype(dtype)
    tol = float(np.sqrt(np.finfo(dtype if dtype.kind == "f" else np.float64).eps)) * scale
    if asym > tol:
        raise ValueError(
            f"{what} is not symmetric: max |A - A.T| = {asym:.3e} exceeds {tol:.3e}. A Hessian is symmetric; "
            "if the asymmetry is rounding, pass (A + A.T) / 2."
        )


def check_symmetric_matrix(A: Any, what: str = "the matrix") -> None:
    """Raise ValueError unless the NumPy / SciPy sparse ``A`` is square and symmetric to ``sqrt(eps)`` relative to
    its largest entry.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from hessop.backends.numpy import check_symmetric_matrix
    >>> check_symmetric_matrix(sp.identity(3, format="csr"))
    >>> check_symmetric_matrix(np.array([[1.0, 2.0], [0.0, 1.0]]), "H")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: H is not symmetric: max |A - A.T| = 2.000e+00 exceeds ...
    """
    check_square(tuple(A.shape), what)
    if sp.issparse(A):
        scale = float(abs(A).max()) if A.nnz else 0.0
        asym = float(abs(A - A.T).max()) if A.nnz else 0.0
    else:
        scale = float(np.max(np.abs(A)))
        asym = float(np.max(np.abs(A - A.T)))
    check_symmetry(scale, asym, A.dtype, what)


def check_product(y: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """The result ``y`` of a user's hvp callable, checked: shape ``shape``, dtype ``dtype`` or a lower precision
    (promoted; never down-cast, never complex).  Works on any array with ``.shape``, ``.dtype`` and ``.astype``.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.backends.numpy import check_product
    >>> check_product(np.ones(2, dtype=np.float32), (2,), np.dtype(np.float64)).dtype
    dtype('float64')
    >>> check_product(np.ones(3), (2,), np.dtype(np.float64))
    Traceback (most recent call last):
    ...
    ValueError: the hvp callable returned shape (3,), expected (2,)
    """
    if tuple(y.shape) != shape:
        raise ValueError(f"the hvp callable returned shape {tuple(y.shape)}, expected {shape}")
    if y.dtype != dtype:
        if y.dtype.kind == "c" or not np.can_cast(y.dtype, dtype, casting="safe"):
            raise TypeError(
                f"the hvp callable returned {y.dtype} but the operator was declared {dtype}; "
                f"declare dtype={y.dtype} or return {dtype} (hessop does not down-cast silently)."
            )
        y = y.astype(dtype)
    return y


class MatrixBackend(Backend):
    """``H v = A v`` for a dense NumPy array or a SciPy sparse matrix ``A``.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.backends.numpy import MatrixBackend
    >>> backend = MatrixBackend(np.array([[2, 1], [1, 2]]))
    >>> backend.dtype, backend.n, backend.hvp(np.array([1.0, -1.0])).tolist(), backend.describe()
    (dtype('float64'), 2, [1.0, -1.0], 'numpy (dense matrix)')
    """

    name = "numpy"

    def __init__(self, A: Any) -> None:
        if not (isinstance(A, np.ndarray) or sp.issparse(A)):
            A = np.asarray(A)
        self.dtype = float_dtype(A.dtype, "the matrix")
        check_symmetric_matrix(A)
        self.A = A.astype(self.dtype, copy=False)
        self.n = A.shape[0]

    def hvp(self, v: np.ndarray) -> np.ndarray:
        return self.A @ v

    def hvp_block(self, V: np.ndarray) -> np.ndarray:
        return self.A @ V

    def asarray(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=self.dtype)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def describe(self) -> str:
        kind = "sparse" if sp.issparse(self.A) else "dense"
        return f"numpy ({kind} matrix)"


class FunctionBackend(Backend):
    """``H v = hvp(v)`` for a user callable on NumPy vectors (and optionally ``hvp_block(V)`` on (n, k) blocks).

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.backends.numpy import FunctionBackend
    >>> backend = FunctionBackend(lambda v: np.array([3.0, 1.0]) * v, 2)
    >>> backend.hvp(np.ones(2)).tolist(), backend.hvp_block(np.eye(2)).tolist(), backend.describe()
    ([3.0, 1.0], [[3.0, 0.0], [0.0, 1.0]], 'numpy (callable)')
    """

    name = "numpy"

    def __init__(self, hvp: Callable[[np.ndarray], np.ndarray], n: int, dtype: Any = np.float64,
                 hvp_block: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """The arguments of :meth:`hessop.HessianOperator.from_function`, which builds this backend (and adds the
        symmetry check)."""
        if not callable(hvp):
            raise TypeError(f"hvp must be callable, got {type(hvp).__name__}")
        if not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"n must be an integer >= 2, got {n!r}")
        self.n = int(n)
        self.dtype = float_dtype(dtype, "dtype")
        self._hvp = hvp
        self._hvp_block = hvp_block

    def _check(self, y: Any, shape: tuple[int, ...]) -> np.ndarray:
        return check_product(np.asarray(y), shape, self.dtype)

    def hvp(self, v: np.ndarray) -> np.ndarray:
        return self._check(self._hvp(v), (self.n,))

    def hvp_block(self, V: np.ndarray) -> np.ndarray:
        if self._hvp_block is None:
            return super().hvp_block(V)
        return self._check(self._hvp_block(V), V.shape)

    def asarray(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=self.dtype)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def describe(self) -> str:
        return "numpy (callable)"
