"""Array-API helpers shared by every solver (the argument and value checks are in :mod:`hessop._validate`).

The solvers never import a framework: they reach the backend's arrays through the array API standard
(``array_api_compat.array_namespace``).  The few operations the standard leaves open (writing one column of a
basis in place, which JAX arrays cannot do), the host random generator and the scale-safe norms are written once
here.

Scale-safe norms
----------------
``||x|| = sqrt(sum x_i^2)`` squares every entry: in float32 the squares overflow once ``|x_i| > 1.8e19`` and
underflow (lose every term below ``1.2e-38``, or all of them on backends that flush subnormals, as JAX does) once
``|x_i| < 1.1e-19``; in float64 at ``1.3e154`` and ``1.5e-154``.  None of NumPy's ``linalg.norm``, torch's
``linalg.vector_norm`` or JAX's ``linalg.vector_norm`` scales (measured: a float32 vector of 1e-20s has a norm 0 in
JAX and 2.7e-6 relative off in NumPy and torch; one of 1e20s has an infinite norm in all three).  :func:`vector_norm`
therefore takes the backend's own norm (one reduction) and accepts it when it is provably accurate: when it is
finite (no partial sum overflowed) and ``||x||^2 >= count * smallest_normal / eps`` (the squares lost to underflow,
each below ``smallest_normal``, change the sum by less than ``eps`` relative).  Otherwise, which only happens for
vectors near the ends of the dtype's range, it recomputes ``m * ||x / m||`` with ``m`` the power of two nearest
above ``max |x_i|`` (so the scaling is exact), at the cost of a second reduction and a second transfer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device, is_jax_array

from hessop._validate import check_seed, norm_overflow

__all__ = ["array_namespace", "host_norm", "make_rng", "norm_is_exact", "pow2_scale", "set_column", "vector_norm"]


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


def _finfo(dtype: Any, xp: Any = np) -> tuple[float, float, float]:
    """(max, smallest normal, eps) of a floating dtype of the namespace ``xp``."""
    fi = xp.finfo(dtype)
    return float(fi.max), float(fi.smallest_normal), float(fi.eps)


def norm_is_exact(plain: Any, count: int, dtype: Any, xp: Any = np) -> np.ndarray:
    """Whether norms ``plain`` (host values) computed as ``sqrt(sum x_i^2)`` over ``count`` entries of ``dtype``
    are accurate to the dtype's rounding: finite (no partial sum overflowed; a NaN is left to the caller) and
    ``plain^2 >= count * smallest_normal / eps`` (the squares lost to underflow change the sum by less than eps).

    Examples
    --------
    >>> norm_is_exact(np.array([1.0, 1e-160, np.inf]), 10, np.float64).tolist()
    [True, False, False]
    """
    _, tiny, eps = _finfo(dtype, xp)
    plain = np.asarray(plain, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isinf(plain) & ~(plain < math.sqrt(count * tiny / eps))


def pow2_scale(amax: Any, dtype: Any = np.float64, xp: Any = np) -> np.ndarray:
    """Powers of two ``m`` near ``amax`` (``amax <= m < 2 amax`` where possible) such that ``m`` and ``1/m`` are
    normal numbers of ``dtype``, so that ``x / m`` is exact and its entries are at most about 1; 1 where ``amax`` is
    0 or not finite.

    Examples
    --------
    >>> pow2_scale(np.array([3.0, 1e-300, 0.0, np.inf])).tolist() == [4.0, 2.0 ** -996, 1.0, 1.0]
    True
    """
    fmax, tiny, _ = _finfo(dtype, xp)
    amax = np.asarray(amax, dtype=np.float64)
    ok = np.isfinite(amax) & (amax > 0)
    e = np.frexp(np.where(ok, amax, 1.0))[1]  # amax = f 2^e, f in [0.5, 1)
    hi, lo = math.frexp(fmax)[1] - 1, math.frexp(tiny)[1] - 1  # 2^hi and 2^lo: the largest and smallest normal powers
    e = np.clip(e, -hi, -lo)  # m = 2^e and 1/m both normal
    return np.where(ok, np.ldexp(1.0, e), 1.0)


def vector_norm(op: Any, x: Any, axis: int | None = None, plain: Any = None) -> Any:
    """The 2-norm of a native vector (``axis=None``), or of each column of a native (n, k) block (``axis=0``), on the
    host in float64, accurate over the whole range of the dtype (see the module notes): the backend's own norm when
    it is provably accurate, else ``m * ||x / m||`` with ``m`` an exact power of two near ``max |x_i|``.

    ``op`` gives the namespace and the host transfer (``op.xp``, ``op.to_numpy``).  ``plain``, if given, is the
    backend's norm already brought to the host (e.g. together with other scalars in one transfer); it is then not
    computed again.  Entries that are NaN or Inf give a NaN or Inf norm (the caller reports them); finite entries
    whose norm exceeds float64's range raise ``FloatingPointError`` saying so.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_matrix(np.eye(3, dtype=np.float32))
    >>> x = H.asarray(np.array([3.0, 4.0, 0.0], dtype=np.float32) * 2.0 ** -100)
    >>> float(np.linalg.norm(x)), vector_norm(H, x) == 5 * 2.0 ** -100
    (0.0, True)
    >>> X = H.asarray(np.array([[3.0, 0.0], [4.0, 2.0 ** -100]], dtype=np.float32) * 2.0 ** 100)
    >>> vector_norm(H, X, axis=0).tolist() == [5 * 2.0 ** 100, 1.0]
    True
    """
    xp = op.xp
    if plain is None:
        with np.errstate(over="ignore", under="ignore"):  # NumPy's warnings; the result is checked below
            plain = op.to_numpy(xp.linalg.vector_norm(x, axis=axis))
    plain = np.asarray(plain, dtype=np.float64)
    count = int(x.shape[0]) if axis is not None or x.ndim == 1 else int(np.prod(x.shape))
    exact = norm_is_exact(plain, count, x.dtype, xp)
    if np.all(exact | np.isnan(plain)):
        return float(plain) if axis is None else plain
    amax = np.asarray(op.to_numpy(xp.max(xp.abs(x), axis=axis)), dtype=np.float64)
    m = pow2_scale(amax, x.dtype, xp)
    inv = xp.asarray(1.0 / m, dtype=x.dtype, device=device(x))
    scaled = np.asarray(op.to_numpy(xp.linalg.vector_norm(x * inv, axis=axis)), dtype=np.float64)
    with np.errstate(over="ignore"):
        out = np.where(exact, plain, scaled * m)
    if np.any(np.isinf(out) & np.isfinite(amax)):
        raise norm_overflow(float(np.max(np.where(np.isfinite(amax), amax, 0.0))))
    return float(out) if axis is None else out


def host_norm(x: np.ndarray, axis: int | None = None) -> Any:
    """:func:`vector_norm` for a host NumPy array (float64 arithmetic): ``np.linalg.norm`` scaled by an exact power
    of two when its squares would over- or underflow.

    Examples
    --------
    >>> x = np.ldexp([3.0, 4.0], 700)
    >>> host_norm(x) == 5 * 2.0 ** 700, host_norm(np.ldexp(x, -1400)) == 5 * 2.0 ** -700
    (True, True)
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore"):
        plain = np.linalg.norm(x, axis=axis)
    count = x.shape[0] if axis is not None else x.size
    exact = norm_is_exact(plain, max(count, 1), np.float64)
    if np.all(exact | np.isnan(plain)):
        return float(plain) if axis is None else plain
    with np.errstate(invalid="ignore"):
        amax = np.max(np.abs(x), axis=axis, initial=0.0)
    m = pow2_scale(amax)
    with np.errstate(over="ignore"):
        out = np.where(exact, plain, np.linalg.norm(x / (m if axis is None else np.expand_dims(m, axis)), axis=axis)
                       * m)
    if np.any(np.isinf(out) & np.isfinite(amax)):
        raise norm_overflow(float(np.max(np.where(np.isfinite(amax), amax, 0.0))))
    return float(out) if axis is None else out
