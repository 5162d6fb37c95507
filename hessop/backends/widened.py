"""A backend seen through vectors of a wider dtype than its products: ``solver_dtype`` and half-precision models.

Depends only on :mod:`hessop.backends.base` and the array API: the products stay on the wrapped backend's device.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

from hessop.backends.base import Backend, WrapperFacts, from_wrapped

__all__ = ["HALF_PRODUCT_ACCURACY", "WidenedBackend", "half_precision_face"]

HALF_PRODUCT_ACCURACY = 10
"""A half-precision product ``H v`` is accurate to about this many units of its dtype's eps, relative to
``||H v||`` (measured on the test CNN in float16: 4.2 eps at most over 8 random vectors;
tests/test_solver_dtype.py checks it)."""


class WidenedBackend(WrapperFacts, Backend):
    """Vectors held in a wider floating ``dtype`` than the products of ``inner`` (a backend or an operator).

    ``H v`` casts ``v`` to ``inner``'s native dtype on the device, takes ``inner``'s product and casts it back, so
    a solver in float64 (``solver_dtype=float64``) runs over a float32 model, and a float16 / bfloat16 torch model
    is seen through float32 vectors.  ``product_eps``, ``product_dtype`` and ``half_precision`` stay ``inner``'s:
    the products are no more accurate than its dtype (:class:`~hessop.backends.base.WrapperFacts`).  The parameter
    layout, the model backend and the communicator are the wrapped backend's.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_matrix(np.diag([1.0, 2.0]).astype(np.float32))
    >>> W = HessianOperator(WidenedBackend(H, np.float64))
    >>> W.dtype, W.backend.product_dtype, W @ np.ones(2)
    (dtype('float64'), 'float32', array([1., 2.]))
    """

    def __init__(self, inner: Any, dtype: Any) -> None:
        self.inner, self.n, self.dtype = inner, int(inner.n), np.dtype(dtype)
        self.wrapped: Backend = inner if isinstance(inner, Backend) else inner.backend
        probe = self.wrapped.asarray(np.zeros(1))
        self._xp, self._narrow, self._device = array_namespace(probe), probe.dtype, device(probe)
        self._wide = getattr(self._xp, self.dtype.name)
        self.name = self.wrapped.name

    comm = from_wrapped("comm")
    model_backend = from_wrapped("model_backend")

    def hvp(self, v: Any) -> Any:
        return self._xp.astype(self.inner.hvp(self._xp.astype(v, self._narrow)), self._wide)

    def hvp_block(self, V: Any) -> Any:
        return self._xp.astype(self.inner.hvp_block(self._xp.astype(V, self._narrow)), self._wide)

    def asarray(self, x: np.ndarray) -> Any:
        out = self._xp.asarray(np.asarray(x, dtype=self.dtype), device=self._device)
        if out.dtype != self._wide:  # JAX without jax_enable_x64 silently gives float32
            raise TypeError(f"the backend cannot hold {self.dtype} arrays (for JAX: jax.config.update("
                            "'jax_enable_x64', True) before creating arrays).")
        return out

    def to_numpy(self, x: Any) -> np.ndarray:
        return self.inner.to_numpy(x)

    @property
    def namespace(self) -> Any:
        return self._xp

    def describe(self) -> str:
        return f"{self.wrapped.describe()}, vectors in {self.dtype.name}, products in {self._narrow}"


def half_precision_face(backend: Backend, *, warn: bool = True) -> Backend:
    """A half-precision backend (``backend.half_precision``: a float16 / bfloat16 torch model) seen through
    float32 vectors (solvers need float32 or wider), with a warning (unless ``warn=False``) that states how
    accurate its products are; any other backend unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.backends.numpy import MatrixBackend
    >>> backend = MatrixBackend(np.eye(2))
    >>> half_precision_face(backend) is backend  # not half precision: unchanged
    True
    """
    if not backend.half_precision:
        return backend
    if warn:
        eps = backend.product_eps
        warnings.warn(
            f"the model is {backend.product_dtype}: each Hessian-vector product is computed in it and is accurate to "
            f"about {HALF_PRODUCT_ACCURACY} eps = {HALF_PRODUCT_ACCURACY * eps:.0e} relative to ||H v||, so "
            "eigenvalues, traces and densities carry errors of that order times ||H|| (the reported residuals "
            "include it). The solvers run in float32 (vectors cast on the device); pass solver_dtype=numpy.float64 "
            "for a float64 solve, or use a float32 model for accurate products.",
            UserWarning,
            stacklevel=4,
        )
    return WidenedBackend(backend, np.float32)
