"""The loss along one or two directions through the current parameters: PyHessian's Fig. 1, Li et al.'s plots.

Maths
-----
For a loss ``L`` at the point ``theta`` and directions ``d1`` (and ``d2``) the landscape is

    f(a) = L(theta + a d1)                 on a line   (a in [-radius, radius], n_points values)
    f(a, b) = L(theta + a d1 + b d2)       on a grid   (n_points x n_points values, first axis along d1).

Along a unit eigenvector ``u`` with eigenvalue ``lambda`` Taylor's theorem gives
``f(a) = L(theta) + a g.u + 0.5 lambda a^2 + O(a^3)``: the quadratic model drawn beside the curve.  Directions are

* the top eigenvectors of H (default: Lanczos for the top two, as in Yao et al., "PyHessian", 2020, Fig. 1),
* given vectors (one column: a line; two: a grid), or
* random Gaussian directions with filter normalisation (Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss
  Landscape of Neural Nets", NeurIPS 2018): every filter (output channel / unit of a weight) of the direction is
  rescaled to the norm of the same filter of ``theta``, and one-dimensional parameters (biases, BatchNorm) are set
  to zero, so that the plot does not depend on the scale invariances of the network.

The loss comes from the operator's backend (``H.backend.loss_at(delta)``: the loss over the operator's data, with
its reduction, at ``theta + delta``), which puts the model's parameters back bit-identically after every point, also
when the loss raises.  This module never imports a framework.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hessop._array import make_rng
from hessop._validate import check_int
from hessop.lanczos import lanczos
from hessop.operator import HessianOperator
from hessop.results import EigenResult

__all__ = ["Landscape", "landscape"]


@dataclass(frozen=True)
class Landscape:
    """The loss on a line or a grid through ``theta``.

    Attributes
    ----------
    alphas : numpy.ndarray, shape (n_points,)
        Steps along the first direction.
    betas : numpy.ndarray or None
        Steps along the second direction (a grid), or None (a line).
    losses : numpy.ndarray
        ``losses[i] = L(theta + alphas[i] d1)`` on a line; ``losses[i, j] = L(theta + alphas[i] d1 + betas[j] d2)``
        on a grid.
    eigenvalues : numpy.ndarray, shape (1,) or (2,)
        The curvature of H along each direction, ``d^T H d / d^T d``: the eigenvalue for an eigenvector (taken from
        the Lanczos result, not recomputed), a Rayleigh quotient (one product each) for other directions.
    norms : numpy.ndarray, shape (1,) or (2,)
        ``||d||`` of each direction (1 for eigenvectors); along ``d`` the quadratic term is
        ``0.5 * eigenvalue * norm**2 * a**2``.
    directions : array, shape (n, 1) or (n, 2)
        The directions, native arrays of the operator's backend.
    kind : str
        ``"eigenvectors"``, ``"given"`` or ``"random (filter-normalised)"``.
    loss0 : float
        ``L(theta)``.
    n_hvp : int
        Products used (Lanczos or Rayleigh quotients).

    Examples
    --------
    A least-squares loss whose Hessian is ``diag(4, 1, 0)``: along a given direction the landscape is the parabola
    ``0.5 * 4 * a**2``, and ``curvature()`` recovers its second derivative from the points.

    >>> import numpy as np
    >>> import hessop
    >>> from hessop.models.linear import linear_least_squares
    >>> H = linear_least_squares(bias=False)
    >>> line = hessop.landscape(H, np.array([1.0, 0.0, 0.0]), radius=0.5, n_points=3)
    >>> line.is_grid, line.kind, line.n_hvp
    (False, 'given', 1)
    >>> line.alphas.tolist(), line.losses.round(6).tolist(), line.loss0
    ([-0.5, 0.0, 0.5], [0.5, 0.0, 0.5], 0.0)
    >>> line.eigenvalues.round(6).tolist(), line.curvature().round(6).tolist()
    ([4.0], [4.0])
    """

    alphas: np.ndarray
    betas: np.ndarray | None
    losses: np.ndarray
    eigenvalues: np.ndarray
    norms: np.ndarray
    directions: Any = field(repr=False)
    kind: str
    loss0: float
    n_hvp: int

    @property
    def is_grid(self) -> bool:
        """True for a 2-D grid, False for a 1-D line.

        Examples
        --------
        >>> import numpy as np, hessop
        >>> H = hessop.models.linear.linear_least_squares(bias=False)  # Hessian diag(4, 1, 0)
        >>> hessop.landscape(H, np.array([1.0, 0.0, 0.0]), n_points=3).is_grid  # one direction: a line
        False
        >>> hessop.landscape(H, np.eye(3)[:, :2], n_points=3).is_grid  # two: a grid
        True
        """
        return self.betas is not None

    def curvature(self) -> np.ndarray:
        """Second derivative of the loss at ``theta`` along each direction (per unit length of the direction),
        fitted from the points on the line(s) through the origin: twice the ``a^2`` coefficient of the
        least-squares polynomial of degree ``min(4, n_points - 1)`` in ``a / radius``.  It estimates
        ``d^T H d = eigenvalues * norms**2`` (the eigenvalue itself for eigenvectors), with an error of order
        ``radius**4`` (degree 4) from the higher derivatives.

        Examples
        --------
        >>> import numpy as np
        >>> from hessop import landscape
        >>> from hessop.models.linear import linear_least_squares
        >>> H = linear_least_squares(bias=False)  # Hessian diag(4, 1, 0)
        >>> grid = landscape(H, np.eye(3)[:, :2], radius=0.5, n_points=5)  # along e_1 and e_2
        >>> grid.curvature().round(6).tolist()  # e_1^T H e_1, e_2^T H e_2
        [4.0, 1.0]
        >>> line = landscape(H, np.array([2.0, 0.0, 0.0]), radius=0.5, n_points=5)
        >>> line.curvature().round(6).tolist()  # per unit length of d = 2 e_1: d^T H d = 16
        [16.0]
        """
        mid = len(self.alphas) // 2
        lines = [(self.alphas, self.losses if not self.is_grid else self.losses[:, mid])]
        if self.is_grid:
            lines.append((self.betas, self.losses[mid, :]))
        out = []
        for a, f in lines:
            scale = float(np.max(np.abs(a)))
            coef = np.polynomial.polynomial.polyfit(a / scale, f, min(4, len(a) - 1))
            out.append(2 * coef[2] / scale**2)
        return np.asarray(out)

    def plot(self, path: Any = None, *, title: str | None = None) -> Any:
        """A line: the loss and the quadratic model ``L(theta) + 0.5 lambda a^2`` against ``a`` (``lambda`` is the
        curvature per unit direction).  A grid: a contour plot beside a 3-D surface.  With ``path`` the figure is
        saved there; returns the matplotlib Figure (imported only here).

        Examples
        --------
        >>> import pathlib, pytest, tempfile
        >>> _ = pytest.importorskip("matplotlib")
        >>> import numpy as np, hessop
        >>> H = hessop.models.linear.linear_least_squares(bias=False)
        >>> grid = hessop.landscape(H, np.eye(3)[:, :2], radius=0.5, n_points=5)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     fig = grid.plot(pathlib.Path(tmp) / "landscape.png")
        ...     saved = (pathlib.Path(tmp) / "landscape.png").exists()
        >>> saved, len(fig.axes)  # the contour plot and the surface
        (True, 2)
        """
        from matplotlib.figure import Figure

        if not self.is_grid:
            fig = Figure(figsize=(5, 3.6))
            ax = fig.add_subplot()
            lam = float(self.eigenvalues[0] * self.norms[0] ** 2)
            ax.plot(self.alphas, self.losses, "o-", ms=3, label="loss")
            ax.plot(self.alphas, self.loss0 + 0.5 * lam * self.alphas**2, "--",
                    label=f"L(theta) + 0.5 lambda a^2, lambda = {lam:.4g}")
            ax.set_xlabel("a (step along the direction)")
            ax.set_ylabel("loss")
            ax.legend(fontsize=8)
        else:
            fig = Figure(figsize=(10, 4))
            ax = fig.add_subplot(1, 2, 1)
            A, B = np.meshgrid(self.alphas, self.betas, indexing="ij")
            cs = ax.contour(A, B, self.losses, levels=20, cmap="viridis")
            ax.clabel(cs, fontsize=6)
            ax.plot([0], [0], "r+")
            ax.set_xlabel(f"a (direction 1, curvature {self.eigenvalues[0]:.4g})")
            ax.set_ylabel(f"b (direction 2, curvature {self.eigenvalues[1]:.4g})")
            ax3 = fig.add_subplot(1, 2, 2, projection="3d")
            ax3.plot_surface(A, B, self.losses, cmap="viridis", linewidth=0)
            ax3.set_xlabel("a")
            ax3.set_ylabel("b")
            ax3.set_zlabel("loss")
        along = {"eigenvectors": "the top eigenvectors", "given": "the given directions"}.get(
            self.kind, f"{self.kind} directions")
        fig.suptitle(title or f"loss landscape along {along}")
        if path is not None:
            fig.savefig(path, dpi=90, bbox_inches="tight")
        return fig


def _filter_normalised(op: HessianOperator, rng: np.random.Generator, k: int) -> np.ndarray:
    """``k`` random directions (host, (n, k)) with every filter scaled to the norm of theta's filter and every
    one-dimensional parameter zeroed (Li et al. 2018)."""
    b = op.model_backend("filter-normalised directions")
    theta = np.asarray(op.to_numpy(b.parameters_flat()), dtype=np.float64)
    out = rng.standard_normal((op.n, k))
    for i, shape in enumerate(b.shapes):
        lo, hi = b.offsets[i], b.offsets[i + 1]
        if len(shape) <= 1:
            out[lo:hi] = 0.0
            continue
        axis = b.filter_axis % len(shape)
        w = np.moveaxis(out[lo:hi].reshape(*shape, k), axis, 0)  # a view: (filters, ..., k)
        t = np.moveaxis(theta[lo:hi].reshape(shape), axis, 0)
        inner = tuple(range(1, t.ndim))
        scale = np.sqrt(np.sum(t**2, axis=inner))[:, None] / np.maximum(np.sqrt(np.sum(w**2, axis=inner)), 1e-300)
        w *= scale.reshape((scale.shape[0],) + (1,) * (t.ndim - 1) + (k,))
    if not np.any(out):
        raise ValueError("filter normalisation zeroes every parameter (only one-dimensional parameters): give the "
                         "directions yourself.")
    return out


def _check_loss_operator(H: Any) -> HessianOperator:
    if not isinstance(H, HessianOperator):
        raise TypeError(f"landscape needs a HessianOperator built from a loss (from_torch, from_jax), got "
                        f"{type(H).__name__}")
    H.model_backend("landscape")  # the loss at a point: raises without a model, or reduced over a communicator
    return H


def landscape(
    H: HessianOperator,
    directions: Any = None,
    *,
    radius: float = 1.0,
    n_points: int = 21,
    seed: int | np.random.Generator | None = 0,
) -> Landscape:
    """The loss on a line or a 2-D grid through the operator's point, along eigen-, given or random directions.

    Parameters
    ----------
    H : HessianOperator
        From :meth:`HessianOperator.from_torch` or :meth:`~HessianOperator.from_jax`: its model (parameters),
        loss and data define the loss evaluated (with its reduction).  The parameters are bit-identical afterwards.
    directions :
        ``None`` (default): the top two eigenvectors by :func:`hessop.lanczos` (``k=2``, tol 1e-8), a grid.
        An :class:`EigenResult`: its first one (k = 1: a line) or two eigenvectors (a grid).
        An array (NumPy or native) of shape (n,) or (n, 1) (a line) or (n, 2) (a grid), used as given.
        ``"random"`` or ``"random1"``: two (a grid) or one (a line) filter-normalised Gaussian directions.
    radius : float
        Steps run over ``[-radius, radius]`` (in units of the direction's length); default 1.
    n_points : int
        Odd number of steps per axis (so that ``theta`` itself is a grid point), ``>= 3``; default 21.  A grid
        costs ``n_points**2`` loss passes over the data.
    seed : int, numpy Generator or None
        For Lanczos's start vector or the random directions; default 0.

    Returns
    -------
    Landscape
        ``alphas``, ``betas`` (grid), ``losses``, the directions' ``eigenvalues`` (curvatures), ``loss0``;
        ``.plot(path)``, ``.curvature()``.

    Examples
    --------
    The mean squared error of a linear model, ``L(w) = ((2 w_1)^2 + w_2^2) / 2``, has the Hessian ``diag(4, 1, 0)``.
    By default the landscape is a grid along the top two eigenvectors, found by Lanczos:

    >>> import hessop
    >>> from hessop.models.linear import linear_least_squares
    >>> H = linear_least_squares(bias=False)
    >>> land = hessop.landscape(H, n_points=5)
    >>> land.is_grid, land.kind, land.losses.shape
    (True, 'eigenvectors', (5, 5))
    >>> land.eigenvalues.round(6).tolist()
    [4.0, 1.0]
    >>> land.alphas.tolist()
    [-1.0, -0.5, 0.0, 0.5, 1.0]

    Along each eigenvector the loss is ``0.5 * eigenvalue * a**2`` (the model is exactly quadratic here):

    >>> land.losses[:, 2].round(6).tolist()
    [2.0, 0.5, 0.0, 0.5, 2.0]
    >>> land.losses[2, :].round(6).tolist()
    [0.5, 0.125, 0.0, 0.125, 0.5]
    >>> land.curvature().round(6).tolist()
    [4.0, 1.0]

    ``directions="random1"`` gives a line along one filter-normalised random direction instead, and
    ``land.plot("landscape.png")`` draws either kind (matplotlib).
    """
    op = _check_loss_operator(H)
    n_points = check_int(n_points, "n_points", 3)
    if n_points % 2 == 0:
        raise ValueError(f"n_points must be odd so that theta itself is on the grid; got {n_points}, use "
                         f"{n_points + 1}.")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    rng = make_rng(seed)
    hvp0 = op.n_hvp
    xp = op.xp

    eigenvalues = None
    if directions is None:
        directions = lanczos(op, k=2, seed=rng)
    if isinstance(directions, EigenResult):
        k = min(2, directions.eigenvectors.shape[1])
        D = directions.eigenvectors[:, :k]
        eigenvalues = np.asarray(directions.eigenvalues[:k], dtype=np.float64)
        kind = "eigenvectors"
    elif isinstance(directions, str):
        if directions not in ("random", "random1"):
            raise ValueError(f"directions {directions!r} is not understood: use None, an EigenResult, an (n,) / "
                             "(n, 1) / (n, 2) array, 'random' (a grid) or 'random1' (a line).")
        D = op.cast(_filter_normalised(op, rng, 2 if directions == "random" else 1))
        kind = "random (filter-normalised)"
    else:
        shape = tuple(directions.shape)
        if shape == (op.n,):
            directions = directions.reshape(op.n, 1) if isinstance(directions, np.ndarray) else \
                xp.reshape(directions, (op.n, 1))
        elif len(shape) != 2 or shape[0] != op.n or shape[1] not in (1, 2):
            raise ValueError(f"directions must have shape ({op.n},), ({op.n}, 1) or ({op.n}, 2); got {shape}")
        D = op.asarray(np.asarray(directions)) if isinstance(directions, np.ndarray) else directions
        kind = "given"
    sq = np.asarray(op.to_numpy(xp.sum(D * D, axis=0)), dtype=np.float64)
    if np.any(sq == 0):
        raise ValueError("a direction is zero")
    if eigenvalues is None:
        eigenvalues = np.asarray(op.to_numpy(xp.sum(D * op.hvp_block(D), axis=0)), dtype=np.float64) / sq

    steps = np.linspace(-radius, radius, n_points)
    steps[n_points // 2] = 0.0
    d1 = D[:, 0]
    loss = op.model_backend("landscape").loss_at
    if D.shape[1] == 1:
        losses = np.array([loss(a * d1) for a in steps])
        betas = None
    else:
        d2 = D[:, 1]
        losses = np.array([[loss(a * d1 + b * d2) for b in steps] for a in steps])
        betas = steps.copy()
    loss0 = float(losses[n_points // 2] if betas is None else losses[n_points // 2, n_points // 2])
    return Landscape(alphas=steps, betas=betas, losses=losses, eigenvalues=eigenvalues, norms=np.sqrt(sq),
                     directions=D, kind=kind, loss0=loss0, n_hvp=op.n_hvp - hvp0)
