"""The contract of a report section: :class:`Section` (its key, title, command-line flags, and the run that returns
a :class:`SectionOutput`) and :class:`Flag`, one command-line flag checked when read.  The sections themselves are
in :mod:`hessop.report.sections`, which exports these three too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hessop._validate import check_int, check_real
from hessop.operator import HessianOperator

__all__ = ["Flag", "Section", "SectionOutput"]


@dataclass(frozen=True)
class Flag:
    """One command-line flag of a section.  Its kind follows from its default: a bool is a ``--x / --no-x`` switch,
    a string one of ``choices``, an int or a float a number shown as ``metavar`` and, when the section reads it
    (:meth:`read`), checked to lie in ``[low, high]`` (an int, :func:`hessop._validate.check_int`) or in
    ``(low, high)`` (a float, :func:`hessop._validate.check_real`).

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> steps = Flag("--steps", 80, "Lanczos steps (default 80)", metavar="M", low=1)
    >>> steps.add_to(parser)
    >>> steps.read(parser.parse_args(["--steps", "20"]))
    20
    >>> steps.read(parser.parse_args(["--steps", "0"]))
    Traceback (most recent call last):
    ...
    ValueError: --steps must be >= 1, got 0
    """

    name: str
    default: bool | str | int | float
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add the flag to ``parser``.

        Examples
        --------
        >>> parser = argparse.ArgumentParser()
        >>> Flag("--density", True, "the spectral density (default on)").add_to(parser)
        >>> parser.parse_args([]).density, parser.parse_args(["--no-density"]).density
        (True, False)
        """
        kind = ({"action": argparse.BooleanOptionalAction} if isinstance(self.default, bool) else
                {"choices": self.choices} if self.choices is not None else
                {"type": type(self.default), "metavar": self.metavar})
        parser.add_argument(self.name, default=self.default, help=self.help, **kind)

    def read(self, args: argparse.Namespace) -> Any:
        """The flag's parsed value, a number checked against its bounds (``ValueError`` naming the flag).

        Examples
        --------
        >>> parser = argparse.ArgumentParser()
        >>> rtol = Flag("--trace-rtol", 0.01, "relative target", metavar="R", low=0.0, high=1.0)
        >>> rtol.add_to(parser)
        >>> rtol.read(parser.parse_args(["--trace-rtol", "0.05"]))
        0.05
        >>> rtol.read(parser.parse_args(["--trace-rtol", "2"]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --trace-rtol must be ...
        """
        value = getattr(args, self.name.removeprefix("--").replace("-", "_"))
        if isinstance(self.default, (bool, str)):
            return value
        if isinstance(self.default, int):
            return check_int(value, self.name, self.low, self.high)
        return check_real(value, self.name, self.low, self.high)


@dataclass
class SectionOutput:
    """What a section adds to the report: JSON-ready ``data``, an HTML fragment and matplotlib figures
    (``{file stem: Figure}``, saved as ``DIR/<stem>.png`` and embedded in the page), and whether every estimate
    in it met its stopping rule.

    Examples
    --------
    >>> from hessop.report import SectionOutput
    >>> SectionOutput({"lambda_max": 2.0}, "<p>2</p>")
    SectionOutput(data={'lambda_max': 2.0}, html='<p>2</p>', figures={}, converged=True)
    """

    data: dict[str, Any]
    html: str
    figures: dict[str, Any] = field(default_factory=dict)
    converged: bool = True


class Section:
    """One part of the report.  Subclasses set ``key`` and ``title`` and implement the three methods.

    Resuming: :func:`run_analysis` sets ``checkpoint_dir`` (``OUT/checkpoints``) before :meth:`run`; a section
    passes ``checkpoint=self.checkpoint()`` to its long estimator (one file per call: give each further call a
    ``name``), so that a killed analysis continues it with ``--resume``.  A finished section's output is kept
    beside and reused as it is.

    Examples
    --------
    A section of one number (append it to :data:`SECTIONS` to have it in ``hessop analyze``):

    >>> import numpy as np
    >>> import hessop
    >>> from hessop.report import Section, SectionOutput
    >>> class NormSection(Section):
    ...     key, title = "norm", "Largest eigenvalue"
    ...
    ...     @classmethod
    ...     def from_args(cls, args):
    ...         return cls()
    ...
    ...     def run(self, H, seed, tol):
    ...         r = hessop.lanczos(H, 1, seed=seed, tol=tol)
    ...         return SectionOutput({"lambda_max": float(r.eigenvalues[0])}, f"<p>{r.eigenvalues[0]:.4g}</p>",
    ...                              converged=r.all_converged)
    >>> out = NormSection().run(hessop.HessianOperator.from_matrix(np.diag([2.0, 1.0, 0.5])), seed=0, tol=None)
    >>> round(out.data["lambda_max"], 6), out.html, out.converged
    (2.0, '<p>2</p>', True)
    """

    key = ""
    title = ""
    checkpoint_dir: Path | None = None
    flags: tuple[Flag, ...] = ()
    """The section's command-line flags, in help order; the first one switches the section on or off, unless
    :meth:`from_args` says otherwise."""

    def checkpoint(self, name: str = "") -> Path | None:
        """The checkpoint file of this section's estimator call ``name`` (None outside :func:`run_analysis`).

        Examples
        --------
        >>> from hessop.report import TraceSection
        >>> section = TraceSection("auto", 0.01, 2000)
        >>> section.checkpoint() is None  # not run by run_analysis
        True
        >>> section.checkpoint_dir = Path("out") / "checkpoints"
        >>> section.checkpoint().as_posix(), section.checkpoint("second").as_posix()
        ('out/checkpoints/trace.npz', 'out/checkpoints/trace-second.npz')
        """
        if self.checkpoint_dir is None:
            return None
        return self.checkpoint_dir / f"{self.key}{'-' + name if name else ''}.npz"

    def settings(self) -> dict[str, Any]:
        """The section's settings (its public attributes): a finished section is reused only if they match.

        Examples
        --------
        >>> from hessop.report import TraceSection
        >>> TraceSection("hutch++", 0.05, 500).settings()
        {'method': 'hutch++', 'rtol': 0.05, 'max_hvp': 500}
        """
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "checkpoint_dir"}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this section's flags (:attr:`flags`) to the ``analyze`` parser.

        Examples
        --------
        >>> from hessop.report import DensitySection
        >>> parser = argparse.ArgumentParser()
        >>> DensitySection.add_arguments(parser)
        >>> vars(parser.parse_args(["--density-steps", "40"]))
        {'density': True, 'density_steps': 40, 'density_draws': 5}
        """
        for flag in cls.flags:
            flag.add_to(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Section | None:
        """The section configured by the parsed flags, or None when it is switched off; ``ValueError`` for bad
        flags.  By default: off when the first of :attr:`flags` is ``False`` or ``"none"``; otherwise the section
        built from the checked values of the others, after the first one's own when it is a choice (a method).

        Examples
        --------
        >>> from hessop.report import TraceSection
        >>> parser = argparse.ArgumentParser()
        >>> TraceSection.add_arguments(parser)
        >>> TraceSection.from_args(parser.parse_args(["--trace", "none"])) is None  # switched off
        True
        >>> TraceSection.from_args(parser.parse_args(["--trace", "hutch++"])).settings()["method"]
        'hutch++'
        """
        if not cls.flags:
            raise NotImplementedError
        switch, *options = cls.flags
        value = switch.read(args)
        if value is False or value == "none":
            return None
        chosen = [] if isinstance(switch.default, bool) else [value]
        return cls(*chosen, *(flag.read(args) for flag in options))

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        """Compute the section on ``H`` (``seed`` for its random draws, ``tol`` the eigensolvers' tolerance or
        None for their default); subclasses implement it (see the class example).

        Examples
        --------
        >>> import numpy as np
        >>> from hessop import HessianOperator
        >>> from hessop.report import TraceSection
        >>> out = TraceSection("auto", 0.01, 2000).run(HessianOperator.from_matrix(np.diag([3.0, 2.0, 1.0])), 0, None)
        >>> round(out.data["estimate"], 6), out.converged
        (6.0, True)
        """
        raise NotImplementedError
