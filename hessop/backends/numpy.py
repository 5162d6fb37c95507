"""NumPy/SciPy backend: explicit symmetric matrices (the reference used throughout the tests) and HVP callables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from hessop._validate import check_product, check_square, check_symmetry, float_dtype
from hessop.backends.base import Backend


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
