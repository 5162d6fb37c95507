"""The exact trace and diagonal from the ``n`` identity columns: what the estimators fall back to when the products
a target still needs reach ``n``."""

from __future__ import annotations

import math

import numpy as np

from hessop._probes import DEFAULT_BLOCK, column_dots
from hessop.estimators._estimates import DiagonalEstimate, TraceEstimate
from hessop.estimators._stats import check_samples
from hessop.operator import HessianOperator


def exact_trace(op: HessianOperator, block_size: int = DEFAULT_BLOCK) -> TraceEstimate:
    """``tr(H) = sum_i e_i^T H e_i`` from the ``n`` identity columns, in blocks; ``std_error`` is the rounding bound
    ``n eps sum_i |H_ii| + sqrt(n) * product_error`` (the interval is ``estimate -+ std_error``).

    The second term covers the products' own error ``E = fl(H) - H``: the trace is off by
    ``sum_i (E e_i)_i``, and ``|sum_i E_ii| <= sqrt(n) ||E||_F``, which :attr:`HessianOperator.product_error`
    bounds (it estimates ``||E||_F`` with a safety factor, :mod:`hessop._product_error`).  At a saturated float32
    network that term is what makes the interval true: without it ``exact=True`` with +-2.6e-8 missed by 222
    half-widths (issue 26).

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_function(lambda v: 2.0 * v, 4)
    >>> H.product_error = 1e-3  # a bound measured elsewhere
    >>> est = exact_trace(H)
    >>> est.estimate, est.exact, bool(est.std_error >= 2 * 1e-3)  # sqrt(4) * 1e-3
    (8.0, True, True)
    """
    hvp0 = op.n_hvp
    diag = _exact_diagonal(op, block_size)
    check_samples(diag, "a diagonal entry e_i^T H e_i", 0)
    eps = float(np.finfo(op.dtype).eps)
    products = math.sqrt(op.n) * float(op.product_error)
    return TraceEstimate(estimate=float(np.sum(diag)),
                         std_error=op.n * eps * float(np.sum(np.abs(diag))) + products,
                         samples=diag, n_hvp=op.n_hvp - hvp0, converged=True, method="exact",
                         stop_reason=f"exact: {op.n} identity columns cost no more than the budget", exact=True)


def _exact_diagonal(op: HessianOperator, block_size: int = DEFAULT_BLOCK) -> np.ndarray:
    """``diag(H)`` on the host from the ``n`` identity columns, in blocks."""
    diag = np.empty(op.n)
    for start in range(0, op.n, block_size):
        k = min(block_size, op.n - start)
        E = op.cast(np.eye(op.n, k, -start))
        diag[start: start + k] = np.asarray(op.to_numpy(column_dots(op.xp, E, op.hvp_block(E))), dtype=np.float64)
    return diag


def exact_diagonal_estimate(op: HessianOperator, block_size: int = DEFAULT_BLOCK) -> DiagonalEstimate:
    """``diag(H)`` from the ``n`` identity columns as a :class:`DiagonalEstimate` (native arrays); ``std_error`` is
    the rounding bound ``n eps |H_ii| + product_error``: entry ``i`` is off by ``(E e_i)_i`` with
    ``E = fl(H) - H``, and ``|(E e_i)_i| <= ||E e_i|| <= ||E||_2 <=`` :attr:`HessianOperator.product_error` (0
    for a stored matrix).

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_function(lambda v: 2.0 * v, 3)
    >>> H.product_error = 1e-3
    >>> est = exact_diagonal_estimate(H)
    >>> est.diagonal.tolist(), bool(np.all(est.std_error >= 1e-3))
    ([2.0, 2.0, 2.0], True)
    """
    hvp0 = op.n_hvp
    diag = _exact_diagonal(op, block_size)
    check_samples(diag, "a diagonal entry e_i^T H e_i", 0)
    se = op.n * float(np.finfo(op.dtype).eps) * np.abs(diag) + float(op.product_error)
    return DiagonalEstimate(diagonal=op.cast(diag), std_error=op.cast(se), per_parameter=None,
                            n_hvp=op.n_hvp - hvp0, n_samples=op.n, method="exact",
                            stop_reason=f"exact: {op.n} identity columns")
