"""The run context of an estimator call: it counts the call's Hessian-vector products, owns its checkpoint file and
its progress bar, so that an estimator's body holds only its algorithm and declares its state once.

An estimator opens a :class:`Run`, reads :attr:`Run.saved` (the state of an interrupted call, empty if none), saves
its state after each block with :meth:`Run.save` and closes the run (a ``with`` block).  A state is a set of named
values: JSON-ready scalars, host or native arrays, NumPy generators (saved as their ``bit_generator.state``) and
*stateful parts*, objects with ``state() -> dict`` and ``restore(dict)`` (running moments, a deflation basis),
whose entries are saved under ``"<name>.<key>"``.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Any

import numpy as np

from hessop._checkpoint import Checkpoint, restore_rng, rng_state
from hessop._progress import Progress
from hessop._validate import check_int

MAX_HVP = 10_000
"""Default budget of an estimator with a target (:func:`hessop.trace`, :func:`hessop.hutchinson`,
:func:`hessop.diagonal`)."""


def check_budget(max_hvp: object, least: int, what: str, default: int | None = None) -> int:
    """The budget ``max_hvp`` (the most Hessian-vector products a call may spend) as an int.

    ``None`` gives ``default``, or a ``ValueError`` asking for a budget or a target where there is none; under
    ``least`` a ``ValueError`` says that ``what`` needs more.
    """
    if max_hvp is None:
        if default is None:
            raise ValueError("give a budget max_hvp= (the most Hessian-vector products to spend) or a target: rtol= "
                             "(e.g. rtol=0.01) and/or atol=")
        return default
    if isinstance(max_hvp, numbers.Integral) and not isinstance(max_hvp, bool) and max_hvp < least:
        raise ValueError(f"max_hvp = {max_hvp} is too small for {what}: that needs at least {least} Hessian-vector "
                         f"products (max_hvp must be >= {least})")
    return check_int(max_hvp, "max_hvp", least)


class Run:
    """Product counting, checkpoint and progress bar of one estimator call.

    Parameters
    ----------
    op : HessianOperator
        The operator; :attr:`spent` counts its products from here on (plus those of the interrupted run resumed).
    name : str
        The estimator's name: the checkpoint's ``function`` and the bar's label.
    seed : int, Generator or None
        The call's seed (a checkpoint needs an integer).
    settings : dict
        Every other argument that changes the result (the checkpoint's fingerprint).
    checkpoint : str or Path or None
        The checkpoint file (None: none).
    progress : bool or None
        Whether to draw a bar (None: when stderr is a terminal).
    total, unit : int, str
        The bar's total and unit.
    """

    def __init__(self, op: Any, name: str, seed: Any, settings: dict[str, Any],
                 checkpoint: str | os.PathLike | None, progress: bool | None, total: int | None,
                 unit: str = "HVP") -> None:
        self.op = op
        self._ck = Checkpoint(checkpoint, name, op, seed, settings)
        self.saved: dict[str, Any] = self._ck.load() or {}
        self._hvp0 = op.n_hvp - self.saved.get("n_hvp", 0)
        self.bar = Progress(progress, op, name, total, unit)

    @property
    def spent(self) -> int:
        """Products spent by this call (those of the interrupted run it resumes included)."""
        return self.op.n_hvp - self._hvp0

    def save(self, **state: Any) -> None:
        """Save ``state`` (see the module docstring) with the products spent; nothing without a checkpoint file."""
        if not self._ck:
            return
        flat: dict[str, Any] = {}
        for name, value in state.items():
            if isinstance(value, np.random.Generator):
                flat[name] = rng_state(value)
            elif hasattr(value, "restore"):
                flat.update({f"{name}.{k}": v for k, v in value.state().items()})
            else:
                flat[name] = value
        self._ck.save(n_hvp=self.spent, **flat)

    def rng(self, rng: np.random.Generator) -> np.random.Generator:
        """The generator of the interrupted run if one is resumed, else ``rng``."""
        return restore_rng(self.saved["rng"]) if "rng" in self.saved else rng

    def restore(self, **parts: Any) -> None:
        """Restore each stateful part from the saved entries under its name (nothing if the run is fresh)."""
        for name, part in parts.items():
            prefix = f"{name}."
            found = {k[len(prefix):]: v for k, v in self.saved.items() if k.startswith(prefix)}
            if found:
                part.restore(found)

    def finish(self, result: Any) -> None:
        """Save a finished result (every field of the dataclass), so that a rerun returns it at once."""
        self.save(**{f"result.{f.name}": getattr(result, f.name) for f in dataclasses.fields(result)})

    def finished(self, cls: type, native: tuple[str, ...] = ()) -> Any:
        """The result saved by :meth:`finish` as a ``cls``, its fields ``native`` cast to the backend; None if the
        run did not finish."""
        if "result.method" not in self.saved:
            return None
        values = {f.name: self.saved[f"result.{f.name}"] for f in dataclasses.fields(cls)}
        values.update({name: self.op.cast(values[name]) for name in native})
        return cls(**values)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()
