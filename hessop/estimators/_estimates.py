"""The results of the trace and diagonal estimators."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hessop.estimators._stats import skew_interval

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
        Hessian-vector products spent (at most the call's ``max_hvp``).
    converged : bool
        With a target (``rtol`` / ``atol``): whether it was met within ``max_hvp``.  Without one: True.
    method : str
        Which estimator produced it: ``"hutchinson(rademacher)"`` / ``"hutchinson(gaussian)"`` from
        :func:`hutchinson`; ``"hutchinson"``, ``"hutch++"``, ``"xtrace"`` or ``"exact"`` from :func:`trace`;
        ``"hutch++"``, ``"xtrace"``, ``"slq"``.
    stop_reason : str
        Why it stopped: ``"target met: 95% half-width ..."``, ``"budget of N products spent"``, ``"fixed budget"``,
        ``"max_hvp reached"``, or ``"exact: ..."``; empty for the fixed-budget Hutch++, XTrace and SLQ.
    choice : str
        From :func:`trace`: why that method ran (``"method='hutch++' asked for"``; with ``method="auto"`` what the
        first products predicted, or the variance cut that deflation achieved on trial, and each doubling of the
        rank); empty otherwise.
    rank : int
        Directions deflated (their trace taken exactly): the final rank of :func:`trace`'s adaptive Hutch++, the
        sketch size of XTrace's exact result; 0 otherwise.
    exact : bool
        True when the estimate is exact up to rounding (the ``n`` identity columns, or an XTrace sketch spanning the
        range of H); ``std_error`` is then a rounding bound and :meth:`interval` uses it as is.
    skewness : float
        The adjusted skewness of :attr:`samples` where the estimate is their mean (Hutchinson, Hutch++'s residual,
        SLQ); :meth:`interval` corrects for it (:func:`skew_interval`).  0 otherwise (XTrace's jackknife).
    rounding : float
        A bound on the rounding in the estimate (the accumulated rounding of the quadratic forms, the products'
        measured error where the operator carries one, the host's sum), added to both ends of :meth:`interval`.

    Examples
    --------
    >>> import numpy as np, hessop
    >>> est = hessop.trace(np.diag(np.arange(1.0, 101.0)), rtol=0.01, seed=0)  # v^T D v = tr D exactly
    >>> est.method, est.converged, round(est.estimate), est.n_samples == est.samples.size
    ('hutchinson', True, 5050, True)
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
    skewness: float = 0.0
    rounding: float = 0.0

    @property
    def n_samples(self) -> int:
        """Number of values in :attr:`samples` (quadratic forms for Hutchinson; for Hutch++ and XTrace the
        residual samples, not the products, which :attr:`n_hvp` counts).

        Examples
        --------
        >>> import hessop
        >>> est = hessop.hutchinson(np.diag([3.0, 2.0, 1.0]), max_hvp=12, seed=0)
        >>> est.n_samples, est.n_hvp, est.n_samples == len(est.samples)
        (12, 12, True)
        """
        return int(self.samples.size)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Confidence interval ``estimate -+ t * std_error`` with the Student-t quantile for ``n_samples - 1``
        degrees of freedom (it allows for the standard error itself being estimated), corrected for the samples'
        :attr:`skewness` (Hall 1992, see :func:`hessop.estimators._stats.skew_interval`: the side of the heavy
        tail is longer) and widened on both sides by :attr:`rounding`.  For an exact result (``exact=True``: the
        trace from identity columns) ``std_error`` is a rounding bound and the interval is
        ``estimate -+ std_error``.

        Examples
        --------
        >>> est = TraceEstimate(estimate=10.0, std_error=1.0, samples=np.array([8.0, 12.0] * 8), n_hvp=16,
        ...                     converged=True, method="hutchinson")
        >>> [round(x, 3) for x in est.interval()], round(est.half_width(0.9), 3), est.n_samples
        ([7.869, 12.131], 1.753, 16)
        """
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if self.exact:
            return (self.estimate - self.std_error, self.estimate + self.std_error)
        if self.n_samples < 2 or not math.isfinite(self.std_error):
            return (float("-inf"), float("inf"))
        sd = self.std_error * math.sqrt(self.n_samples)
        lo, hi = skew_interval(self.estimate, sd, self.n_samples, self.skewness, level)
        return (lo - self.rounding, hi + self.rounding)

    def half_width(self, level: float = 0.95) -> float:
        """Half-width of :meth:`interval`: ``t * std_error`` (plus :attr:`rounding`) for symmetric samples.

        Examples
        --------
        >>> est = TraceEstimate(estimate=10.0, std_error=1.0, samples=np.array([8.0, 12.0] * 8), n_hvp=16,
        ...                     converged=True, method="hutchinson")
        >>> lo, hi = est.interval(0.99)
        >>> est.half_width(0.99) == (hi - lo) / 2, round(est.half_width(0.99), 3)
        (True, 2.947)
        """
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
        Hessian-vector products spent (at most the call's ``max_hvp``).
    n_samples : int
        Probes averaged (for XDiag its ``max_hvp // 2`` probes; ``n`` for the exact diagonal).
    method : str
        "hutchinson", "diag++", "xdiag" or "exact" (identity columns, when they cost less than the target needs).
    converged : bool
        With a target: whether it was met within ``max_hvp`` (True without one).
    choice : str
        Why that method: ``"a fixed number of probes"``, ``"method=... asked for"``, or with ``method="auto"`` and
        a target what the first products predicted or the variance cut deflation achieved on trial (and each
        doubling of the rank).
    stop_reason : str
        With a target: why it stopped (``"target met: ..."``, ``"budget of N products spent"``, ``"exact: ..."``).
    rank : int
        Directions deflated by Diag++ (0 otherwise).

    Examples
    --------
    >>> import numpy as np, hessop
    >>> d = hessop.diagonal(np.diag([1.0, 2.0, 3.0, 4.0]), 8, seed=0)
    >>> np.round(d.diagonal, 6).tolist(), d.n_samples, d.n_hvp, d.method
    ([1.0, 2.0, 3.0, 4.0], 8, 8, 'hutchinson')
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


def per_parameter(op: Any, diagonal: Any) -> Any:
    """``diagonal`` split by parameter (``op.backend.layout.unflatten``) for an operator built from a model, else
    None."""
    layout = op.backend.layout
    return None if layout is None else layout.unflatten(diagonal)
