"""Array-API helpers shared by every solver.

The solvers never import a framework: they reach the backend's arrays through the array API standard
(``array_api_compat.array_namespace``).  The few operations the standard leaves open (writing one column of a
basis in place, which JAX arrays cannot do) are written once here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_jax_array

from hessop._validate import check_seed

__all__ = ["array_namespace", "check_finite", "make_rng", "set_column"]


def set_column(Q: Any, j: int | slice, v: Any) -> Any:
    """Return ``Q`` with column(s) ``j`` set to ``v`` (in place where the array library allows it; JAX arrays are
    immutable, so for them a functional update is returned)."""
    if is_jax_array(Q):
        return Q.at[:, j].set(v)
    Q[:, j] = v
    return Q


def check_finite(value: float, what: str, iteration: int) -> float:
    """Raise a clear error if a scalar computed from a Hessian-vector product is NaN or infinite.

    A NaN or Inf anywhere in ``H v`` propagates into every inner product taken with it, so checking the scalars a
    solver already brings to the host catches it without an extra device synchronisation.
    """
    if not math.isfinite(value):
        raise FloatingPointError(
            f"{what} is {value} at iteration {iteration}: the Hessian-vector product returned NaN or Inf. "
            "Check the loss for overflow (e.g. log of 0), the data for NaN, or use a smaller learning rate / "
            "float64 parameters."
        )
    return value


def make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """NumPy generator from a seed.  Probes are drawn on the host so one seed gives the same vectors on every
    backend; they are moved to the device once per block, never once per product."""
    if isinstance(seed, np.random.Generator):
        return seed
    check_seed(seed)
    return np.random.default_rng(seed)
