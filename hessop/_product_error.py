"""The measured rounding error of an operator's products, ``||fl(H v) - H v||`` for unit ``v``.

A product's rounding error is not ``eps * ||H||``.  Autograd computes ``H v`` from intermediate terms that can be
far larger than the result: at a well-fit classifier (softmax saturated, the usual state after training) the
logit Hessian ``diag(p) - p p^T`` is formed from ``p ~ 1`` by cancellation, and a float32 product of a 884-parameter
MLP at loss 1e-8 is wrong by 5% of ``||H||`` (``eps * ||H||`` would be 1e-7 of it).  The precision floor of every
residual (:func:`hessop.results.residual_floor`) and the half-width of every exact result therefore use this
measurement, once per operator, instead of assuming ``eps * ||H||``.

What is measured, on three seeded random unit vectors ``u_1, u_2, u_3``:

* **a wider product** (PyTorch models in float32 or half precision): ``H u_i`` again through float64 copies of
  the parameters, buffers and data (:func:`hessop.backends.torch._products.reference_products`), so
  ``e_i = fl(H u_i) - H_64 u_i`` is the error itself, systematic part included (the Hessian of slightly wrong
  forward values, e.g. a softmax probability rounded to 1).  3 products in the model's dtype and 3 in float64.
* **the backend's own estimate** (products that are not exact up to rounding: PyTorch's
  ``hvp_method="finite_difference"``): the error norms it measures for ``u_1, u_2, u_3``
  (:func:`hessop.backends.torch._products.finite_difference_error`: the differences at steps ``h`` and ``2 h``),
  taken into ``delta`` and ``rayleigh`` as the larger of theirs and the others'; ``4 * 3`` gradients, counted
  as 6 products.
* **witnesses** (every other operator, and in addition for the above): the symmetry defects
  ``u_i . fl(H u_j) - u_j . fl(H u_i)`` (zero in exact arithmetic; about ``sqrt(2/n)`` times the error of one
  product when its direction is random) and the linearity defect ``fl(H s) / c - sum_i fl(H u_i)`` of
  ``s = c (u_1 + u_2 + u_3)``, ``c = 0.7`` (about ``sqrt(6)`` times the error of one product): 4 products.
  They see the part of the error that changes with the vector (the rounding of the products' own
  arithmetic), not an error that is a fixed symmetric linear map (a Hessian evaluated at slightly wrong forward
  values): for that only a wider product helps, and a float64 model has none (there the bound rests on the
  safety factor; measured below).

From the per-vector error ``delta`` (the rms of the three vectors' errors, or of the witnesses' estimates, the
larger of the two) the bound is ``SAFETY * sqrt(n) * delta``: ``sqrt(n) * rms ||E u||`` estimates ``||E||_F``, which
bounds ``||E||_2 = sup ||E v||`` over unit ``v`` (the same step that turns ``eps ||H||`` into today's
``sqrt(n) eps ||H||``), and ``SAFETY = 4`` covers the spread of a three-vector rms (for an error of rank one the
rms of three draws falls below a quarter of its mean with probability under 2%).

Measured (tests/test_product_error.py; docs/reliability.md, class 1) against a cancellation-free float64 Hessian,
as ``bound / ||fl(H) - H||_2`` with ``||fl(H) - H||_2`` from all ``n`` identity columns: the 884-parameter MLP at
loss 1e-8 in float32 6-12 (3 seeds), at loss 1e-4 in float32 about 5, in float64 (witnesses only) 2-4; the
per-vector bound ``bound / max ||fl(H u) - H u||`` over 8 random unit vectors 60-120.

An operator seen in a wider ``solver_dtype`` takes the measurement of the operator it widens (measured there
once).  Products of a stored matrix (:meth:`HessianOperator.from_matrix`) are not measured: a matrix-vector product's
rounding is bounded by the classical ``sqrt(n) eps ||A||`` floor already (the bound is 0).  The measurement's
products go to the backend directly and are not counted in ``n_hvp`` (as the constructors' checks are not); they
are recorded in :attr:`ProductError.n_hvp`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessop._array import host_norm, vector_norm

__all__ = ["SAFETY", "ProductError", "ProductPrecision", "measure_product_error"]

SAFETY = 4.0
"""Factor between the measured per-vector error, scaled by ``sqrt(n)``, and the reported bound (module docs)."""

_SEED = 0x9E1A  # the measurement's random vectors: the same on every MPI rank and every run
_C = 0.7  # scale of the linearity witness (not a power of two, so its products round differently)


@dataclass(frozen=True)
class ProductError:
    """What :func:`measure_product_error` found for an operator.

    Attributes
    ----------
    bound : float
        Absolute bound on ``||fl(H v) - H v||`` for unit ``v`` (``SAFETY * sqrt(n) * per_vector``); 0 when not
        measured (a stored matrix, or set to 0).
    per_vector : float
        The measured error of the product of one random unit vector (rms of three).
    rayleigh : float
        The measured rounding of a Rayleigh quotient ``v . fl(H v)`` of a random unit vector (the largest symmetry
        defect, or the largest ``|u . (fl(H u) - H_64 u)|``): a change of a Rayleigh quotient below a few of these
        is noise.
    method : str
        ``"float64 products"``, ``"witnesses"`` (symmetry and linearity defects), ``"stored matrix"`` or
        ``"given"``.
    n_hvp : int
        Products the measurement took (not counted in the operator's ``n_hvp``).

    Examples
    --------
    >>> ProductError(bound=1e-6, per_vector=1e-8, rayleigh=1e-10, method="given", n_hvp=0).bound
    1e-06
    """

    bound: float
    per_vector: float
    rayleigh: float
    method: str
    n_hvp: int

    def __str__(self) -> str:
        return f"{self.bound:.2g} ({self.method}, {self.n_hvp} products)"


def measure_product_error(op: Any) -> ProductError:
    """Measure the rounding error of ``op``'s products (module docs: what it sees and what it cannot).

    Parameters
    ----------
    op : HessianOperator

    Returns
    -------
    ProductError
        ``bound`` is an absolute bound on ``||fl(H v) - H v||`` for unit ``v``.

    Raises
    ------
    FloatingPointError
        A product was NaN or Inf.

    Examples
    --------
    A function operator whose products carry a random error of norm about ``1e-5 * sqrt(100) = 1e-4``:

    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> rng = np.random.default_rng(0)
    >>> H = HessianOperator.from_function(lambda v: v + 1e-5 * rng.standard_normal(v.shape), 100,
    ...                                   check_symmetric=False)
    >>> pe = measure_product_error(H)
    >>> pe.method, pe.n_hvp, 1e-4 < pe.bound < 1e-4 * 100
    ('witnesses', 4, True)
    >>> measure_product_error(HessianOperator.from_matrix(np.eye(3))).method
    'stored matrix'
    """
    from hessop.backends.numpy import MatrixBackend
    from hessop.backends.widened import WidenedBackend

    if isinstance(op.backend, WidenedBackend) and hasattr(op.backend.inner, "product_error_info"):
        return op.backend.inner.product_error_info  # solver_dtype: the products are the inner operator's
    if isinstance(op.backend, MatrixBackend):
        return ProductError(0.0, 0.0, 0.0, "stored matrix", 0)
    n, xp = op.n, op.xp
    rng = np.random.default_rng(_SEED)
    U = rng.standard_normal((n, 3))
    U /= np.linalg.norm(U, axis=0)
    S = _C * U.sum(axis=1, keepdims=True)
    X = op.cast(np.concatenate([U, S], axis=1))  # one move to the device; its first 3 columns are the vectors
    Y = op.backend.hvp_block(X)                  # as the products saw them
    # Everything below stays on the device (in float64 where the namespace has it; JAX without x64 keeps float32)
    # and only scalars come back, in one transfer: the 3 x 3 Gram matrix, the witness's norm, the wider products'
    # error norms and Rayleigh defects, and a count of non-finite products.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX without x64 warns that float64 is not available
        X64, Y64 = xp.astype(X, xp.float64), xp.astype(Y, xp.float64)
    Uc, Y3 = X64[:, :3], Y64[:, :3]
    lin = Y64[:, 3] / _C - xp.sum(Y3, axis=1)
    parts = [xp.reshape(xp.matrix_transpose(Uc) @ Y3, (9,)), xp.reshape(xp.linalg.vector_norm(lin), (1,)),
             xp.reshape(xp.astype(xp.sum(xp.astype(~xp.isfinite(Y64), xp.int32)), Y64.dtype), (1,))]
    wide = _reference_products(op, U)
    if wide is not None:
        err = Y3 - wide
        parts += [xp.linalg.vector_norm(err, axis=0), xp.sum(Uc * err, axis=0)]
    small = np.asarray(op.to_numpy(xp.concat(parts)), dtype=np.float64)
    norms = [9, 11, 12, 13] if wide is not None else [9]  # plain norms: their squares may overflow (rescaled below)
    if small[10] > 0 or not np.all(np.isfinite(np.delete(small, norms))) or np.any(np.isnan(small[norms])):
        raise FloatingPointError(
            "a Hessian-vector product returned NaN or Inf while hessop measured the operator's product error (its "
            "first use of the precision floor). Check the loss for overflow (e.g. log of 0), the data for NaN, or "
            "use float64 parameters.")
    G = small[:9].reshape(3, 3)
    sym = np.abs(G - G.T)[np.triu_indices(3, 1)]
    rayleigh = float(np.max(sym))
    delta_sym = math.sqrt(n / 2) * host_norm(sym) / math.sqrt(sym.size)  # rms; squares would under/overflow
    delta_lin = vector_norm(op, lin, plain=small[9]) / math.sqrt(6)
    delta = max(delta_sym, delta_lin)
    method, n_hvp = "witnesses", 4
    if wide is not None:
        err_norms = vector_norm(op, err, axis=0, plain=small[11:14])
        delta = max(delta, host_norm(err_norms) / math.sqrt(err_norms.size))  # rms, scale-safe
        rayleigh = max(rayleigh, float(np.max(np.abs(small[14:17]))))
        method, n_hvp = "float64 products", 7
    estimate = _backend_estimate(op, U)
    if estimate is not None:  # products that are not exact up to rounding (finite differences): their own measure
        delta = max(delta, host_norm(estimate) / math.sqrt(estimate.size))
        rayleigh = max(rayleigh, float(np.max(estimate)))
        method, n_hvp = method + " + finite-difference steps h, 2h", n_hvp + 2 * estimate.size
    return ProductError(SAFETY * math.sqrt(n) * delta, delta, rayleigh, method, n_hvp)


def _backend_estimate(op: Any, U: np.ndarray) -> np.ndarray | None:
    """The model backend's own measured error norms of its products of the columns of ``U``
    (``product_error_estimate``: finite-difference products), or None where it has none."""
    backend = op.backend.model_backend
    estimate = getattr(backend, "product_error_estimate", None)
    return None if estimate is None else estimate(U)


def _reference_products(op: Any, U: np.ndarray) -> Any:
    """``H U`` in float64 through a widened copy of the model, for a PyTorch model whose products are narrower
    than float64, on the model's device; None where there is none (other backends, float64 models, a loss that
    cannot be widened)."""
    backend = op.backend.model_backend
    if type(backend).__name__ != "TorchBackend" or op.product_eps <= float(np.finfo(np.float64).eps):
        return None
    from hessop.backends.torch._products import reference_products

    return reference_products(backend, U, host=False)


class ProductPrecision:
    """The precision of an operator's products, as :class:`hessop.HessianOperator` shows it: :attr:`product_eps`
    (the products' unit roundoff) and :attr:`product_error` (their measured rounding error, with
    :attr:`product_error_info`).  A mixin: it needs ``backend`` (for ``product_eps``) and ``n``."""

    backend: Any
    n: int
    _product_error: ProductError | None = None

    @property
    def product_eps(self) -> float:
        """Unit roundoff of the products (the model's dtype; float16's for a half-precision model even though its
        vectors are float32).  It sets the accuracy floor of every residual a solver reports.

        Examples
        --------
        >>> import numpy as np
        >>> from hessop import HessianOperator
        >>> HessianOperator.from_matrix(np.eye(2, dtype=np.float32)).product_eps == float(np.finfo(np.float32).eps)
        True
        """
        return float(self.backend.product_eps)

    @property
    def product_error(self) -> float:
        """Absolute bound on the rounding error ``||fl(H v) - H v||`` of one product of a unit vector, measured
        once (lazily, on first use; cached) by :func:`hessop._product_error.measure_product_error`: float64
        products of the same model for a float32 / half-precision PyTorch model, symmetry and linearity witnesses
        otherwise, 0 for a stored matrix (whose rounding the ``sqrt(n) eps ||H||`` floor covers).  It is part of
        every residual's precision floor (:func:`hessop.results.residual_floor`) and of the half-width of every
        exact trace or diagonal.  The measurement's products (4, or 7 with float64 products) are not counted in
        :attr:`n_hvp`; :attr:`product_error_info` says how it was measured.  Assign a float to set it (0 skips
        the measurement: the floor is then ``sqrt(n) eps ||H||`` alone), None to measure again.

        Examples
        --------
        >>> from hessop import HessianOperator
        >>> H = HessianOperator.from_function(lambda v: 2.0 * v, 50)
        >>> H.product_error < 1e-13, H.product_error_info.method, H.n_hvp
        (True, 'witnesses', 0)
        >>> H.product_error = 1e-3
        >>> H.product_error, H.product_error_info.method
        (0.001, 'given')
        """
        return self.product_error_info.bound

    @product_error.setter
    def product_error(self, value: float | None) -> None:
        if value is not None:
            value = float(value)
            if not value >= 0:  # also refuses NaN
                raise ValueError(f"product_error must be a bound >= 0 (or None to measure it), got {value}")
            value = ProductError(value, value / max(self.n, 1) ** 0.5, 0.0, "given", 0)
        self._product_error = value

    @property
    def product_error_info(self) -> ProductError:
        """The :class:`ProductError` behind :attr:`product_error` (bound, per-vector error, Rayleigh-quotient
        rounding, method, products spent), measuring it if needed.

        Examples
        --------
        >>> import numpy as np
        >>> from hessop import HessianOperator
        >>> str(HessianOperator.from_matrix(np.eye(3)).product_error_info)
        '0 (stored matrix, 0 products)'
        """
        if self._product_error is None:
            self._product_error = measure_product_error(self)
        return self._product_error
