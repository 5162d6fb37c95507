"""The interface a backend implements: Hessian-vector products on native arrays, plus host transfers."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np


class Backend(abc.ABC):
    """Supplies ``H v`` for one fixed Hessian on a backend's own arrays.

    Attributes
    ----------
    n : int
        Dimension (number of parameters).
    dtype : numpy.dtype
        The parameters' dtype; products are computed and returned in it.
    name : str
        Short backend name ("numpy", "torch", "jax", "cupy").
    """

    n: int
    dtype: np.dtype
    name: str

    @abc.abstractmethod
    def hvp(self, v: Any) -> Any:
        """``H v`` for a native vector of shape (n,)."""

    def hvp_block(self, V: Any) -> Any:
        """``H V`` for a native block of shape (n, k).  Backends override this when they can batch."""
        xp = self.namespace
        cols = [self.hvp(V[:, j]) for j in range(V.shape[1])]
        return xp.stack(cols, axis=1)

    @abc.abstractmethod
    def asarray(self, x: np.ndarray) -> Any:
        """Move a host array into the backend (its dtype and device).  Used once per probe block."""

    @abc.abstractmethod
    def to_numpy(self, x: Any) -> np.ndarray:
        """Copy a native array to the host."""

    @property
    def namespace(self) -> Any:
        """The array-API namespace of this backend's arrays."""
        from array_api_compat import array_namespace

        return array_namespace(self.asarray(np.zeros(1, dtype=self.dtype)))

    def describe(self) -> str:
        """One line for ``repr``."""
        return self.name
