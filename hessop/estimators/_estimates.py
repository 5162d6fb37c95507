"""The results of the trace and diagonal estimators."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hessop.estimators._stats import _t_quantile

__all__ = ["DiagonalEstimate", "TraceEstimate"]


@dataclass(frozen=True)
class TraceEstimate:
    """An estimate of ``tr(H)`` (or ``tr f(H)``) with its statistical error.

    Attributes
    ----------
    estimate : float
        The estimate.
    std_error : float
        Its estimated standard error (NaN when it cannot be estimated from a single sample).
    samples : numpy.ndarray
        The independent (or, for XTrace, exchangeable) values averaged into the estimate: ``v^T H v`` for
        Hutchinson, the residual quadratic forms for Hutch++ (added to the exact part ``tr(Q^T H Q)``), the
        leave-one-out estimates for XTrace, the per-draw values ``n sum_i w_i f(theta_i)`` for SLQ.
    n_hvp : int
        Hessian-vector products used.
    converged : bool
        For ``hutchinson(rtol=...)``: whether the confidence-interval rule was met before ``max_samples``.
        Estimators with a fixed budget report True.
    method : str
        Which estimator produced it.
    """

    estimate: float
    std_error: float
    samples: np.ndarray = field(repr=False)
    n_hvp: int
    converged: bool
    method: str
    stop_reason: str = ""
    choice: str = ""
    rank: int = 0
    exact: bool = False

    @property
    def n_samples(self) -> int:
        """Number of values in :attr:`samples`."""
        return int(self.samples.size)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Confidence interval ``estimate -+ t * std_error`` with the Student-t quantile for ``n_samples - 1``
        degrees of freedom (it allows for the standard error itself being estimated).  For an exact result
        (``exact=True``: the trace from identity columns, or a sketch spanning the range of H) ``std_error`` is a
        rounding bound and the interval is ``estimate -+ std_error``."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if self.exact:
            return (self.estimate - self.std_error, self.estimate + self.std_error)
        if self.n_samples < 2 or not math.isfinite(self.std_error):
            return (float("-inf"), float("inf"))
        half = _t_quantile(level, self.n_samples - 1) * self.std_error
        return (self.estimate - half, self.estimate + half)

    def half_width(self, level: float = 0.95) -> float:
        """Half-width of :meth:`interval`."""
        lo, hi = self.interval(level)
        return (hi - lo) / 2

    def __repr__(self) -> str:
        extra = f", stop_reason={self.stop_reason!r}" if self.stop_reason else ""
        return (f"TraceEstimate(method={self.method!r}, estimate={self.estimate:.6g}, "
                f"std_error={self.std_error:.3g}, n_samples={self.n_samples}, n_hvp={self.n_hvp}, "
                f"converged={self.converged}{extra})")


@dataclass(frozen=True)
class DiagonalEstimate:
    """An estimate of ``diag(H)``.

    Attributes
    ----------
    diagonal : array, shape (n,)
        The estimate, in the backend's array type and device.
    std_error : array, shape (n,)
        Standard error of each entry (same array type; NaN for a single sample).
    per_parameter : dict or None
        For an operator whose backend can split a flat vector (PyTorch: ``backend.unflatten``):
        ``{parameter name: diagonal entries shaped like the parameter}``; otherwise None.
    n_hvp : int
        Hessian-vector products used.
    n_samples : int
        Probes averaged.
    method : str
        "hutchinson", "diag++", "xdiag" or "exact" (identity columns, when they cost less than the target needs).
    converged : bool
        With a target: whether it was met before ``max_samples`` (True for a fixed number of samples).
    choice : str
        Why that method.
    stop_reason : str
        With a target: why it stopped.
    rank : int
        Directions deflated by Diag++ (0 otherwise).
    """

    diagonal: Any = field(repr=False)
    std_error: Any = field(repr=False)
    per_parameter: dict[str, Any] | None = field(repr=False)
    n_hvp: int
    n_samples: int
    method: str = "hutchinson"
    converged: bool = True
    choice: str = ""
    stop_reason: str = ""
    rank: int = 0
