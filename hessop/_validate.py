"""The argument and value checks of hessop, in one place: one clear message per mistake (a ``TypeError`` for a
wrong type, a ``ValueError`` for a wrong value, a ``FloatingPointError`` for a NaN or Inf computed from products)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from array_api_compat import device

__all__ = ["check_cast", "check_choice", "check_finite", "check_int", "check_k", "check_native", "check_product",
           "check_real", "check_seed", "check_shape", "check_square", "check_symmetric_product", "check_symmetry",
           "check_tol", "float_dtype", "norm_overflow"]


def check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; TypeError / ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return value


def check_k(k: object, n: int) -> int:
    """Number of eigenpairs: 1 <= k < n (for k >= n use a dense eigensolver on the explicit matrix)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {k!r}")
    if not 1 <= k < n:
        raise ValueError(
            f"k must satisfy 1 <= k < n = {n}, got k = {k}; for all eigenvalues of a small operator form the "
            "dense matrix and use numpy.linalg.eigh."
        )
    return int(k)


def check_tol(tol: object, name: str = "tol") -> float:
    """A positive finite tolerance."""
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {tol!r}")
    tol = float(tol)
    if not (tol > 0 and tol < float("inf")):
        raise ValueError(f"{name} must be a positive finite number, got {tol}")
    return tol


def check_real(value: object, name: str, low: float | None = None, high: float | None = None) -> float:
    """A finite real number, in the open interval ``(low, high)`` when bounds are given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if (low is not None and not value > low) or (high is not None and not value < high):
        rng = f"> {low:g}" if high is None else f"< {high:g}" if low is None else f"in ({low:g}, {high:g})"
        raise ValueError(f"{name} must be {rng}, got {value:g}")
    return value


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return str(value)


def check_seed(seed: object) -> None:
    """A seed is ``None``, a non-negative integer or a ``numpy.random.Generator``; anything else (a float, a string,
    a bool, a torch/JAX generator) is refused rather than silently turned into some other stream."""
    if seed is None or isinstance(seed, np.random.Generator):
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int >= 0, a numpy.random.Generator or None, got {type(seed).__name__} "
                        f"{seed!r}; e.g. seed=0 or seed=numpy.random.default_rng(0).")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (NumPy seeds are non-negative), got {seed}.")


def check_shape(x: Any, shape: tuple[int, ...], name: str) -> None:
    """``x`` (any array) must have ``shape``: a ValueError naming ``name`` otherwise."""
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


def check_native(x: Any, ref: Any, what: str) -> None:
    """``x`` must be an array of the same type, dtype and device as ``ref`` (an array the operator made): a
    TypeError saying how to fix it otherwise.  Cheap: no data is read."""
    if not isinstance(x, type(ref)):
        raise TypeError(f"{what} must be a {type(ref).__module__.split('.')[0]} array ({type(ref).__name__}) like "
                        f"this operator's, got {type(x).__name__}; move a NumPy array in with H.asarray(x).")
    if x.dtype != ref.dtype:
        raise TypeError(f"{what} must have dtype {ref.dtype} (the operator's), got {x.dtype}; hessop does not cast "
                        "silently: convert it (H.asarray(x) for a NumPy array) or build the operator in that dtype.")
    if device(x) != device(ref):
        raise TypeError(f"{what} is on device {device(x)} but the operator computes on {device(ref)}; move it there "
                        "(e.g. x.to(device) in torch, jax.device_put in JAX) or use H.asarray(numpy_array).")


def check_symmetric_product(u: np.ndarray, w: np.ndarray, hu: np.ndarray, hw: np.ndarray, dtype: Any) -> None:
    """Randomised symmetry test of a product: ``u . (H w)`` must equal ``w . (H u)`` to ``sqrt(eps)`` relative to
    ``||u|| ||H w|| + ||w|| ||H u||``.  For ``H = S + K`` (S symmetric, K antisymmetric) the two sides differ by
    ``2 u^T K w``, of size ``||K||_F`` for Gaussian u, w.  Skipped (no error) when a product is NaN or Inf: the
    solvers report that with the step it happens at."""
    u, w, hu, hw = (np.asarray(x, dtype=np.float64) for x in (u, w, hu, hw))
    if not (np.all(np.isfinite(hu)) and np.all(np.isfinite(hw))):
        return
    from hessop._array import host_norm  # scale-safe (norms of 1e-200s are not 0); imported here: _array needs us

    a, b = float(u @ hw), float(w @ hu)
    try:
        scale = float(host_norm(u) * host_norm(hw) + host_norm(w) * host_norm(hu))
    except FloatingPointError:  # a norm beyond float64: the solvers report it with the step
        return
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(scale)):
        return
    tol = math.sqrt(np.finfo(dtype).eps) * scale
    if abs(a - b) > tol:
        raise ValueError(
            f"the product is not symmetric: for two random vectors u . (H w) = {a:.6e} but w . (H u) = {b:.6e} "
            f"(difference {abs(a - b):.2e} > {tol:.2e}). A Hessian is symmetric and hessop's solvers rely on it; "
            "check the product (e.g. H v = A v for a non-symmetric A: use (A + A.T) / 2). Pass check_symmetric=False "
            "to skip this check."
        )


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


def check_finite(value: float, what: str, iteration: int, products_finite: bool | None = None) -> float:
    """Raise a clear error if a scalar computed from Hessian-vector products is NaN or infinite.

    A NaN or Inf anywhere in ``H v`` propagates into every inner product taken with it, so checking the scalars a
    solver already brings to the host catches it without an extra device synchronisation.  A sum of finite products
    (a quadratic form ``v^T H v``, a trace) can also overflow the dtype's range: ``products_finite`` says which
    happened when the caller knows (True: the products were finite, the value overflowed; False: a product was NaN
    or Inf); left None, the message names both causes.  (Norms never overflow on their own: they are scaled, see
    :func:`hessop._array.vector_norm`, and raise :func:`norm_overflow` when the norm itself is out of range.)

    Examples
    --------
    >>> check_finite(1.0, "x", 1)  # doctest: +ELLIPSIS
    1.0
    >>> check_finite(float("inf"), "the quadratic form v^T H v", 3, products_finite=True)
    Traceback (most recent call last):
    ...
    FloatingPointError: the quadratic form v^T H v is inf at iteration 3 although the Hessian-vector products are ...
    """
    if math.isfinite(value):
        return value
    overflow = ("it overflowed the dtype's range. The operator is too large for its dtype: scale the loss down by a "
                "power of two (every eigenvalue, trace and diagonal scales with it) or use float64.")
    products = ("the Hessian-vector product returned NaN or Inf. Check the loss for overflow (e.g. log of 0), the data "
                "for NaN, or use a smaller learning rate / float64 parameters.")
    head = f"{what} is {value} at iteration {iteration}"
    if products_finite:
        raise FloatingPointError(f"{head} although the Hessian-vector products are finite: {overflow}")
    if products_finite is None and math.isinf(value):
        raise FloatingPointError(f"{head}: either {products} Or the products are finite and a sum of them (such as "
                                 f"v^T H v, of size about n ||H||) {overflow}")
    raise FloatingPointError(f"{head}: {products}")


def norm_overflow(largest: float) -> FloatingPointError:
    """The error for a vector of finite entries (the largest ``largest`` in magnitude) whose 2-norm exceeds float64's
    range, so that no scaling can represent it.

    Examples
    --------
    >>> str(norm_overflow(1e308)).startswith("the norm of a vector overflowed float64")
    True
    """
    return FloatingPointError(
        f"the norm of a vector overflowed float64 although its entries are finite (the largest is {largest:.3g}); the "
        "products are not NaN, but their size is beyond what the solvers can represent. Scale the loss down by a power "
        "of two (every eigenvalue, residual and trace scales with it exactly).")


def float_dtype(dtype: Any, what: str) -> np.dtype:
    """The floating dtype a matrix or callable works in: float32/float64 kept, integers and bools promoted to
    float64 (exact for them), anything else refused.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop._validate import float_dtype
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
    >>> from hessop._validate import check_square
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
    >>> from hessop._validate import check_symmetry
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


def check_product(y: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """The result ``y`` of a user's hvp callable, checked: shape ``shape``, dtype ``dtype`` or a lower precision
    (promoted; never down-cast, never complex).  Works on any array with ``.shape``, ``.dtype`` and ``.astype``.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop._validate import check_product
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
