"""The trace with the default product budget, shared by :func:`hessop.by_block` (each block's trace) and
:class:`hessop.Tracker` (the trace at each record)."""

from __future__ import annotations

from typing import Any

from hessop.estimators import TraceEstimate, trace
from hessop.operator import HessianOperator

__all__ = ["DEFAULT_TRACE_HVP", "default_trace"]

DEFAULT_TRACE_HVP = 64
"""Products per trace by default; an operator with at most this many parameters gets its exact trace."""


def default_trace(H: HessianOperator, *, seed: int = 0, **options: Any) -> TraceEstimate:
    """The trace of ``H`` with its 95% interval by :func:`hessop.trace` (``method="auto"``: Hutchinson or adaptive
    Hutch++, chosen from the first products; the exact trace from unit vectors when the budget reaches n).

    ``options`` (``rtol``, ``atol``, ``max_hvp``, ``method``) are passed on; with none of ``rtol``, ``atol``,
    ``max_hvp`` the budget is ``DEFAULT_TRACE_HVP`` products.
    """
    if all(options.get(key) is None for key in ("rtol", "atol", "max_hvp")):
        options["max_hvp"] = DEFAULT_TRACE_HVP
    return trace(H, seed=seed, **options)
