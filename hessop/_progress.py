"""Progress bars (tqdm) for the long loops: Lanczos, SLQ, the trace and diagonal estimators, per-block tables and
the tracker.

``progress=None`` (every public function's default) draws a bar only when stderr is an interactive terminal;
``True`` / ``False`` force it on / off.  Under MPI only rank 0 of the operator's communicator draws.  A bar shows
only scalars its loop has on the host already (or, through a callable, computes them only when it is drawn): it
adds no Hessian-vector product and no host copy of a length-n vector.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["Progress"]


def communicator(op: Any) -> Any:
    """The MPI communicator an operator's products are reduced over (:attr:`hessop.backends.base.Backend.comm`,
    through any ``solver_dtype`` face), or None."""
    return None if op is None else op.backend.comm


def _rank(op: Any) -> int:
    """This process's rank in the operator's communicator (0 without MPI)."""
    comm = communicator(op)
    return 0 if comm is None else int(comm.Get_rank())


def enabled(progress: bool | None, op: Any = None) -> bool:
    """Whether to draw: ``progress`` if given, else whether stderr is a terminal; never on an MPI rank other
    than 0."""
    if progress is None:
        isatty = getattr(sys.stderr, "isatty", None)
        progress = bool(isatty()) if callable(isatty) else False
    elif not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None (on when stderr is a terminal), got {progress!r}")
    return progress and (op is None or _rank(op) == 0)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """A tqdm bar, or nothing when it is off.

    ``update(n, fields, *args, **kwargs)`` advances by ``n`` and shows ``fields`` after the counter: a dict of
    name -> scalar, or a callable returning one, called as ``fields(*args, **kwargs)`` only when the bar is drawn;
    ``close()`` ends the line.
    """

    def __init__(self, progress: bool | None, op: Any, desc: str, total: int | None = None,
                 unit: str = "it") -> None:
        self.on = enabled(progress, op)
        self._bar = None
        if self.on:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1, fields: dict[str, Any] | Callable[..., dict[str, Any]] | None = None,
               *args: Any, **kwargs: Any) -> None:
        if self._bar is None:
            return
        if fields is not None:
            values = fields(*args, **kwargs) if callable(fields) else fields
            self._bar.set_postfix_str(", ".join(f"{k}={_format(v)}" for k, v in values.items()), refresh=False)
        self._bar.update(n)

    def to(self, position: int, fields: dict[str, Any] | Callable[..., dict[str, Any]] | None = None,
           *args: Any, **kwargs: Any) -> None:
        """Advance to ``position`` (e.g. the products spent so far)."""
        if self._bar is not None:
            self.update(position - self._bar.n, fields, *args, **kwargs)

    def grow(self, total: int) -> None:
        """Raise the bar's total (a run that decided to go on)."""
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
