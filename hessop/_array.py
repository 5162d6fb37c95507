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

__all__ = ["array_namespace", "check_cast", "check_finite", "make_rng", "set_column"]


def set_column(Q: Any, j: int | slice, v: Any) -> Any:
    """Return ``Q`` with column(s) ``j`` set to ``v`` (in place where the array library allows it; JAX arrays are
    immutable, so for them a functional update is returned)."""
    if is_jax_array(Q):
        return Q.at[:, j].set(v)
    Q[:, j] = v
    return Q


def check_cast(given: Any, target: Any, what: str) -> None:
    """hessop's one casting policy: never down-cast silently.

    An array of a floating dtype wider than the one it is about to be used in (a float64 vector for a float32
    operator, a float64 ``v0``, a float32 ``solver_dtype`` for a float64 operator) raises ``TypeError`` naming the
    two dtypes and the fix; a narrower or equal dtype (and an integer one) is converted exactly.  Used by the
    SciPy face, :meth:`HessianOperator.asarray`, the solvers' ``v0`` and ``solver_dtype``.  hessop's own float64
    draws (start vectors, probes) are rounded to the working dtype on purpose and do not pass through here.
    """
    (gkind, gsize, gname), (_, tsize, tname) = _dtype_info(given), _dtype_info(target)
    if gkind == "c":
        raise TypeError(f"{what} is complex ({gname}); a Hessian of a real loss is real.")
    if gkind == "f" and gsize > tsize:
        raise TypeError(
            f"{what} is {gname} but would be used in {tname}; hessop does not down-cast silently. Convert it "
            f"yourself (x.astype({tname})) or work in {gname} (a {gname} operator, or solver_dtype={gname})."
        )


def _dtype_info(dtype: Any) -> tuple[str, int, str]:
    """(kind, itemsize, name) of a NumPy dtype or a framework dtype object (torch.float32, jnp.float32...)."""
    try:
        d = np.dtype(dtype)
        return d.kind, d.itemsize, d.name
    except TypeError:  # e.g. torch.bfloat16, which NumPy does not know
        name = str(dtype).removeprefix("torch.")
        floating = getattr(dtype, "is_floating_point", False)
        kind = "c" if getattr(dtype, "is_complex", False) else "f" if floating else "i"
        return kind, int(dtype.itemsize), name


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
