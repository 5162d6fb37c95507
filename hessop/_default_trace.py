"""The trace with the default product budget, shared by :func:`hessop.by_block` (each block's trace) and
:class:`hessop.Tracker` (the trace at each record)."""

from __future__ import annotations

from typing import Any

from hessop.operator import HessianOperator
from hessop.trace import TraceEstimate, trace

__all__ = ["DEFAULT_TRACE_HVP", "default_trace"]

DEFAULT_TRACE_HVP = 64
"""Products per trace by default; an operator with at most this many parameters gets its exact trace."""


def default_trace(H: HessianOperator, *, seed: int = 0, **options: Any) -> TraceEstimate:
    """The trace of ``H`` with its 95% interval by :func:`hessop.trace` (``method="auto"``: Hutchinson or adaptive
    Hutch++, chosen from the first products; the exact trace from unit vectors when the budget reaches n).

    ``options`` (``rtol``, ``atol``, ``n_hvp``, ``method``) are passed on; with none of ``rtol``, ``atol``,
    ``n_hvp`` the budget is ``DEFAULT_TRACE_HVP`` products.
    """
    if all(options.get(key) is None for key in ("rtol", "atol", "n_hvp")):
        options["n_hvp"] = DEFAULT_TRACE_HVP
    return trace(H, seed=seed, **options)
