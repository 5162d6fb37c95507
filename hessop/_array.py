"""Array-API helpers shared by every solver (the argument and value checks are in :mod:`hessop._validate`).

The solvers never import a framework: they reach the backend's arrays through the array API standard
(``array_api_compat.array_namespace``).  The few operations the standard leaves open (writing one column of a
basis in place, which JAX arrays cannot do) and the host random generator are written once here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_jax_array

from hessop._validate import check_seed

__all__ = ["array_namespace", "make_rng", "set_column"]


def set_column(Q: Any, j: int | slice, v: Any) -> Any:
    """Return ``Q`` with column(s) ``j`` set to ``v`` (in place where the array library allows it; JAX arrays are
    immutable, so for them a functional update is returned)."""
    if is_jax_array(Q):
        return Q.at[:, j].set(v)
    Q[:, j] = v
    return Q


def make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """NumPy generator from a seed.  Probes are drawn on the host so one seed gives the same vectors on every
    backend; they are moved to the device once per block, never once per product."""
    if isinstance(seed, np.random.Generator):
        return seed
    check_seed(seed)
    return np.random.default_rng(seed)
