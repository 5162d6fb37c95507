"""The exact trace and diagonal from the ``n`` identity columns: what the estimators fall back to when the products
a target still needs reach ``n``."""

from __future__ import annotations

from typing import Any

import numpy as np

from hessop._probes import DEFAULT_BLOCK, column_dots
from hessop.estimators._estimates import DiagonalEstimate, TraceEstimate
from hessop.estimators._stats import check_samples


def exact_trace(op: Any, block_size: int = DEFAULT_BLOCK) -> TraceEstimate:
    """``tr(H) = sum_i e_i^T H e_i`` from the ``n`` identity columns, in blocks; ``std_error`` is the rounding bound
    ``n eps sum_i |H_ii|``."""
    hvp0 = op.n_hvp
    diag = _exact_diagonal(op, block_size)
    check_samples(diag, "a diagonal entry e_i^T H e_i", 0)
    eps = float(np.finfo(op.dtype).eps)
    return TraceEstimate(estimate=float(np.sum(diag)), std_error=op.n * eps * float(np.sum(np.abs(diag))),
                         samples=diag, n_hvp=op.n_hvp - hvp0, converged=True, method="exact",
                         stop_reason=f"exact: {op.n} identity columns cost no more than the budget", exact=True)


def _exact_diagonal(op: Any, block_size: int = DEFAULT_BLOCK) -> np.ndarray:
    """``diag(H)`` on the host from the ``n`` identity columns, in blocks."""
    diag = np.empty(op.n)
    for start in range(0, op.n, block_size):
        k = min(block_size, op.n - start)
        E = op.cast(np.eye(op.n, k, -start))
        diag[start: start + k] = np.asarray(op.to_numpy(column_dots(op.xp, E, op.hvp_block(E))), dtype=np.float64)
    return diag


def exact_diagonal_estimate(op: Any, block_size: int = DEFAULT_BLOCK) -> DiagonalEstimate:
    """``diag(H)`` from the ``n`` identity columns as a :class:`DiagonalEstimate` (native arrays); ``std_error`` is
    the rounding bound ``n eps |H_ii|``."""
    hvp0 = op.n_hvp
    diag = _exact_diagonal(op, block_size)
    check_samples(diag, "a diagonal entry e_i^T H e_i", 0)
    se = op.n * float(np.finfo(op.dtype).eps) * np.abs(diag)
    return DiagonalEstimate(diagonal=op.cast(diag), std_error=op.cast(se), per_parameter=None,
                            n_hvp=op.n_hvp - hvp0, n_samples=op.n, method="exact",
                            stop_reason=f"exact: {op.n} identity columns")
