"""SciPy's face of :class:`hessop.operator.HessianOperator`: the hooks of ``scipy.sparse.linalg.LinearOperator``
(``H @ x``, ``H.matvec``, ``H.matmat``, the adjoint) answered through the native face.  A host vector is checked
against the operator's dtype (no silent down-cast: :func:`hessop._validate.check_cast`), moved to the backend
(``asarray``), multiplied (``hvp`` / ``hvp_block``, so counted) and copied back (``to_numpy``).  A Hessian is
symmetric: the adjoint and the transpose are the operator itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hessop._validate import check_cast

__all__ = ["SciPyFace"]


class SciPyFace:
    """The ``LinearOperator`` hooks of an operator with ``dtype``, ``hvp``, ``hvp_block``, ``asarray`` and
    ``to_numpy`` (a mixin placed before ``LinearOperator``).

    Examples
    --------
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_matrix(np.diag([1.0, 2.0]))
    >>> H @ np.ones(2), H.matmat(np.eye(2))[1], H.rmatvec(np.ones(2)), H.H is H
    (array([1., 2.]), array([0., 2.]), array([1., 2.]), True)
    """

    dtype: Any

    def _host_input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        check_cast(x.dtype, self.dtype, f"the vector given to a {self.dtype} operator")
        return x

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        x = self._host_input(x)
        y = self.hvp(self.asarray(x.reshape(-1)))
        return self.to_numpy(y).reshape(x.shape)

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        X = self._host_input(X)
        return self.to_numpy(self.hvp_block(self.asarray(X)))

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._matvec(x)

    def _rmatmat(self, X: np.ndarray) -> np.ndarray:
        return self._matmat(X)

    def _adjoint(self) -> SciPyFace:
        return self

    def _transpose(self) -> SciPyFace:
        return self
