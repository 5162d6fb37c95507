"""The result of stochastic Lanczos quadrature: :class:`SpectralDensity` (the draws' Gauss rules, the smoothed
density, ``tr f(H)`` with its interval).

The density is shown Gaussian-smoothed, following Ghorbani, Krishnan, Xiao (ICML 2019): on a grid of 10,000
points over [mean of the draws' smallest node - 0.01, mean of their largest node + 0.01], with Gaussian
*variance* ``1e-5 * max(1, grid range)``, renormalised to integrate to 1, plotted on a log y-axis.  The rules
themselves come from :func:`hessop.estimators.slq`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hessop._validate import check_int
from hessop.estimators._estimates import TraceEstimate
from hessop.estimators._stats import mean_se, skewness

__all__ = ["SpectralDensity"]

GRID_POINTS = 10_000
VARIANCE_SCALE = 1e-5
MARGIN = 0.01
KERNEL_CUTOFF = 9.0  # kernel evaluated within 9 standard deviations of a node: exp(-40.5) < 3e-18 of the peak
NODE_CHUNK = 256  # nodes per (grid x nodes) block: bounds memory for rules with many nodes


def _integrate(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal rule on a (possibly non-uniform) grid."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


@dataclass(frozen=True)
class SpectralDensity:
    """The Gauss quadrature rules of an SLQ run: an estimate of the eigenvalue density of H.

    Attributes
    ----------
    nodes : list of numpy.ndarray
        One array per draw: the Ritz values ``theta_i`` (ascending).  A draw whose Krylov space became invariant
        early (Lanczos breakdown) has fewer nodes than ``n_iter``; its rule is then exact for that start vector.
    weights : list of numpy.ndarray
        One array per draw: ``w_i = U_{0i}^2``, non-negative and summing to 1.
    n : int
        Dimension of H (the density of ``n`` eigenvalues; traces scale with it).
    n_hvp : int
        Hessian-vector products used.
    n_iter : int
        Lanczos steps requested per draw.
    blocks : tuple of int
        How the draws were run: the number of draws advanced together in each consecutive block.
    memory : int
        Peak memory of the run in vectors of length n (``max(blocks) * (n_iter + 4)``).
    converged : bool
        With a target (``rtol`` / ``atol``): whether the 95% half-width of ``trace(f)`` met it within the budget
        (False after the ``RuntimeWarning`` that says it was missed); True without one.  :meth:`trace` carries it.
    interval_draws : int
        With a target: the draws of the last fresh batch of the two-stage rule (the last ``interval_draws`` draws),
        from which :meth:`trace` builds its estimate and interval (a batch whose size, and whether it is reported,
        were fixed before it was drawn, so its interval is a fixed-size one); 0 (default): every draw.  The density
        uses every draw.

    Examples
    --------
    >>> import numpy as np, hessop
    >>> d = hessop.slq(np.diag(np.arange(1.0, 101.0)), n_iter=20, max_hvp=40, seed=0)  # tr = 5050
    >>> len(d.nodes), d.n_iter, round(d.trace().estimate)
    (2, 20, 5355)
    """

    nodes: list[np.ndarray] = field(repr=False)
    weights: list[np.ndarray] = field(repr=False)
    n: int
    n_hvp: int
    n_iter: int = 0
    blocks: tuple[int, ...] = ()
    memory: int = 0
    converged: bool = True
    interval_draws: int = 0

    @property
    def n_vectors(self) -> int:
        """Number of draws.

        Examples
        --------
        >>> d = SpectralDensity([np.r_[1.0, 3.0], np.r_[2.0, 4.0]], [np.r_[0.5, 0.5], np.r_[0.25, 0.75]], n=2, n_hvp=4)
        >>> d.n_vectors
        2
        """
        return len(self.nodes)

    @property
    def steps(self) -> list[int]:
        """Lanczos steps each draw took (below ``n_iter`` where it broke down on an invariant subspace).

        Examples
        --------
        >>> import hessop
        >>> hessop.slq(np.diag([1.0, 2.0, 3.0, 4.0, 5.0]), n_iter=4, max_hvp=8, seed=0).steps
        [4, 4]
        >>> hessop.slq(np.diag([1.0, 1.0, 1.0, 1.0, 5.0]), n_iter=4, max_hvp=8, seed=0).steps  # two eigenvalues
        [2, 2]
        """
        return [len(x) for x in self.nodes]

    def support(self) -> tuple[float, float]:
        """Default grid ends: mean of the draws' smallest node - 0.01 and mean of their largest node + 0.01.

        Examples
        --------
        >>> d = SpectralDensity([np.r_[1.0, 3.0], np.r_[2.0, 4.0]], [np.r_[0.5, 0.5], np.r_[0.25, 0.75]], n=2, n_hvp=4)
        >>> d.support()  # (mean(1, 2) - 0.01, mean(3, 4) + 0.01)
        (1.49, 3.51)
        """
        lo = float(np.mean([np.min(x) for x in self.nodes])) - MARGIN
        hi = float(np.mean([np.max(x) for x in self.nodes])) + MARGIN
        return lo, hi

    def default_variance(self) -> float:
        """Kernel variance of the recipe: ``1e-5 * max(1, hi - lo)`` over the default grid's ends.

        Examples
        --------
        >>> d = SpectralDensity([np.r_[1.0, 3.0], np.r_[2.0, 4.0]], [np.r_[0.5, 0.5], np.r_[0.25, 0.75]], n=2, n_hvp=4)
        >>> round(d.default_variance(), 12)  # 1e-5 * (3.51 - 1.49)
        2.02e-05
        """
        lo, hi = self.support()
        return VARIANCE_SCALE * max(1.0, hi - lo)

    def density(self, grid: Any = None, variance: float | None = None, *,
                normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian-smoothed density ``phi(t) = mean_draws sum_i w_i N(t; theta_i, variance)`` on a grid.

        Parameters
        ----------
        grid : None, int or array
            None: 10,000 points over :meth:`support`; an int: that many points over it; an increasing array: those
            points.
        variance : float, optional
            Kernel variance (not standard deviation); default :meth:`default_variance`.
        normalize : bool
            Rescale so that the trapezoidal integral over the grid is 1 (default True, as in the recipe).

        Returns
        -------
        (grid, values) : two numpy arrays of the grid's length.

        Examples
        --------
        >>> d = SpectralDensity([np.r_[1.0, 3.0], np.r_[2.0, 4.0]], [np.r_[0.5, 0.5], np.r_[0.25, 0.75]], n=2, n_hvp=4)
        >>> grid, values = d.density(np.linspace(0.0, 5.0, 501), variance=0.01)
        >>> round(float(values.sum() * 0.01), 6), float(grid[np.argmax(values)])  # mass 1; the heaviest node
        (1.0, 4.0)
        """
        if grid is None or isinstance(grid, (int, np.integer)):
            points = GRID_POINTS if grid is None else check_int(grid, "grid", 2)
            grid = np.linspace(*self.support(), points)
        else:
            grid = np.asarray(grid, dtype=np.float64)
            if grid.ndim != 1 or grid.size < 2 or not np.all(np.isfinite(grid)) or np.any(np.diff(grid) <= 0):
                raise ValueError("grid must be None, a number of points, or an increasing 1-D array of at least 2 "
                                 "finite values")
        if variance is None:
            variance = self.default_variance()
        variance = float(variance)
        if not (variance > 0 and math.isfinite(variance)):
            raise ValueError(f"variance must be a positive finite number, got {variance}")
        values = np.zeros_like(grid)
        reach = KERNEL_CUTOFF * math.sqrt(variance)
        for theta, w in zip(self.nodes, self.weights, strict=True):
            order = np.argsort(theta)
            theta, w = theta[order], w[order]
            for start in range(0, theta.size, NODE_CHUNK):
                t, wc = theta[start: start + NODE_CHUNK], w[start: start + NODE_CHUNK]
                # grid points within reach of this chunk's nodes (the kernel is below 1e-17 of its peak beyond)
                i0, i1 = np.searchsorted(grid, [t[0] - reach, t[-1] + reach])
                z = (grid[i0:i1, None] - t[None, :]) ** 2 / (2 * variance)
                values[i0:i1] += np.exp(-z) @ wc
        values /= self.n_vectors * math.sqrt(2 * math.pi * variance)
        if normalize:
            total = _integrate(grid, values)
            if total <= 0:
                raise ValueError("the density is zero on this grid: the grid misses the spectrum; use grid=None")
            values /= total
        return grid, values

    def trace(self, f: Callable[[np.ndarray], np.ndarray] | None = None) -> TraceEstimate:
        """Estimate ``tr f(H)`` from the same quadrature rules (no further products).

        Each draw gives ``n * sum_i w_i f(theta_i)``, an estimate of ``n q^T f(H) q``; their mean estimates
        ``tr f(H)`` and their standard deviation over ``sqrt(n_vectors)`` its standard error; ``.interval()`` is the
        skewness-corrected Student-t 95% interval over the draws (Hall 1992: the per-draw values of a decaying
        spectrum are right-skewed, and the plain t interval covered 89-90% at 10 draws); it covers the sampling
        error (the quadrature error of ``n_iter``
        steps, zero for polynomials of degree < 2 n_iter such as the identity, is not in it).  ``f=None`` is the
        identity (the trace); ``numpy.log`` gives ``log det H`` for a positive definite H.  ``f`` must accept and
        return NumPy arrays elementwise.  After ``slq(rtol=...)`` met its target, the estimate and interval are
        those of the fresh batch of draws (:attr:`interval_draws`): the two-stage rule's valid interval.

        Examples
        --------
        >>> d = SpectralDensity([np.r_[1.0, 3.0], np.r_[2.0, 4.0]], [np.r_[0.5, 0.5], np.r_[0.25, 0.75]], n=2, n_hvp=4)
        >>> d.trace()  # draws 2 (0.5 * 1 + 0.5 * 3) = 4 and 2 (0.25 * 2 + 0.75 * 4) = 7
        TraceEstimate(method='slq(f=identity)', estimate=5.5, std_error=1.5, n_samples=2, n_hvp=4, converged=True)
        >>> d.trace(np.square).samples  # tr H^2 from the same rules, no products
        array([10., 26.])
        """
        keep = self.interval_draws if 0 < self.interval_draws <= self.n_vectors else self.n_vectors
        nodes, weights = self.nodes[self.n_vectors - keep:], self.weights[self.n_vectors - keep:]
        values = np.empty(keep)
        for d, (theta, w) in enumerate(zip(nodes, weights, strict=True)):
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # reported below, clearly
                fx = theta if f is None else np.asarray(f(theta), dtype=np.float64)
            if fx.shape != theta.shape:
                raise ValueError(f"f must work elementwise on an array of nodes; it returned shape {fx.shape} for "
                                 f"input shape {theta.shape}")
            if not np.all(np.isfinite(fx)):
                raise ValueError(
                    f"f is not finite at some nodes (between {theta.min():.6g} and {theta.max():.6g}); e.g. log "
                    "needs a positive definite H (log det of an indefinite Hessian is undefined)."
                )
            values[d] = self.n * float(np.dot(w, fx))
        mean, se = mean_se(values)
        name = "identity" if f is None else getattr(f, "__name__", "f")
        return TraceEstimate(estimate=mean, std_error=se, samples=values, n_hvp=self.n_hvp, converged=self.converged,
                             method=f"slq(f={name})", skewness=skewness(values))

    def plot(self, path: Any = None, ax: Any = None, *, grid: Any = None, variance: float | None = None) -> Any:
        """Draw the smoothed density on a log y-axis (bottom at 1e-10) and return the matplotlib Axes.

        With ``ax`` the curve goes into it.  Otherwise a new figure is made; with ``path`` it is saved there (and
        closed, so no pyplot state is left), without ``path`` it is made with pyplot for ``plt.show()``.
        matplotlib is imported only here.

        Examples
        --------
        >>> import pathlib, pytest, tempfile
        >>> _ = pytest.importorskip("matplotlib")
        >>> d = SpectralDensity([np.r_[1.0, 3.0], np.r_[2.0, 4.0]], [np.r_[0.5, 0.5], np.r_[0.25, 0.75]], n=2, n_hvp=4)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     ax = d.plot(pathlib.Path(tmp) / "density.png", grid=200, variance=0.01)
        ...     saved = (pathlib.Path(tmp) / "density.png").exists()
        >>> saved, ax.get_yscale(), len(ax.lines[0].get_xdata())
        (True, 'log', 200)
        """
        x, y = self.density(grid, variance)
        fig = None
        if ax is None:
            if path is not None:
                from matplotlib.figure import Figure

                fig = Figure(figsize=(6, 4))
                ax = fig.add_subplot()
            else:
                import matplotlib.pyplot as plt

                _, ax = plt.subplots(figsize=(6, 4))
        ax.semilogy(x, np.maximum(y, 1e-300), lw=1)
        ax.set_ylim(1e-10, max(1e2, 2 * float(np.max(y))))
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (Gaussian-smoothed)")
        ax.set_title(f"SLQ: n = {self.n}, {self.n_vectors} draws x {self.n_iter} steps")
        if path is not None:
            (fig if fig is not None else ax.figure).savefig(path, dpi=120, bbox_inches="tight")
        return ax

    def __repr__(self) -> str:
        lo = min(float(np.min(x)) for x in self.nodes)
        hi = max(float(np.max(x)) for x in self.nodes)
        return (f"SpectralDensity(n={self.n}, n_vectors={self.n_vectors}, n_iter={self.n_iter}, "
                f"n_hvp={self.n_hvp}, blocks={self.blocks}, memory={self.memory} n-vectors, "
                f"nodes in [{lo:.6g}, {hi:.6g}])")
