"""Result objects: everything a user needs to trust an answer travels with it."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EigenResult", "residual_floor", "resolve_tol"]


def residual_floor(op: Any, anorm: float) -> float:
    """The precision floor added to every residual a solver reports: ``sqrt(n) * eps * ||H||``.

    ``eps`` is the unit roundoff of the products (:attr:`HessianOperator.product_eps`: float32's for a float32
    model even when the solver runs in float64) and ``||H||`` the solver's estimate of the norm.  Below it a
    residual says nothing: one product ``H v`` in floating point already carries an error of about
    ``eps * ||H||_F <= sqrt(n) * eps * ||H||``, and the Ritz estimate ``|beta s_j|`` ignores that error, the loss
    of orthogonality of the basis and the rounding of ``Q s``, so it can fall to 0 where the true
    ``||H v - lambda v||`` is 1e12 times larger; a residual computed from products carries the same rounding.
    Every reported residual is the computed one (from products, or the Ritz estimate) plus this floor, and no
    pair is reported converged unless the floor alone meets its tolerance.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_matrix(np.eye(4, dtype=np.float32))
    >>> residual_floor(H, 2.0) == 2 * float(np.finfo(np.float32).eps) * 2.0
    True
    """
    return math.sqrt(op.n) * op.product_eps * anorm


def resolve_tol(tol: float | None, default: float, op: Any) -> float:
    """The tolerance a solver uses: ``default`` raised to ``10 sqrt(n) eps`` when ``tol`` is None; a given ``tol``
    below ``sqrt(n) eps`` (relative to ``||H||``, see :func:`residual_floor`) draws a warning with the reachable
    value (such a run returns ``converged=False``: the floor cannot meet it).

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_matrix(np.eye(4, dtype=np.float32))
    >>> resolve_tol(None, 1e-8, H) == 10 * 2 * float(np.finfo(np.float32).eps), resolve_tol(1e-3, 1e-8, H)
    (True, 0.001)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     resolve_tol(1e-9, 1e-8, H), len(caught)
    (1e-09, 1)
    """
    reachable = math.sqrt(op.n) * op.product_eps
    if tol is None:
        return max(default, 10 * reachable)
    if tol < reachable:
        warnings.warn(
            f"tol={tol:g} is below what {np.dtype(op.dtype).name} products of a {op.n}-dimensional operator can "
            f"resolve: residuals are reported no smaller than sqrt(n) * eps * ||H|| = {reachable:.1e} * ||H||, so "
            f"pairs cannot be reported converged. Use tol >= {10 * reachable:.0e} (tol=None picks it), or a float64 "
            "operator.",
            UserWarning,
            stacklevel=3,
        )
    return tol


def residual_threshold(tol: float, default_tol: bool, theta: np.ndarray, anorm: float, floor: float,
                       eps23: float) -> np.ndarray:
    """The residual a pair must reach to count as converged: ``tol * max(|theta|, eps**(2/3) ||H||)`` (ARPACK's
    rule) and, with the default tolerance (``tol=None``), never less than ``10 * floor``: a pair whose residual is
    within ten times what the precision allows has converged as far as it can, so small eigenvalues of float32
    models converge under the defaults.  An explicit ``tol`` is taken as given.

    Examples
    --------
    >>> residual_threshold(1e-3, False, [2.0, 0.0], 2.0, 0.01, 1e-5).tolist()
    [0.002, 2e-08]
    >>> residual_threshold(1e-3, True, [2.0, 0.0], 2.0, 0.01, 1e-5).tolist()
    [0.1, 0.1]
    """
    thr = tol * np.maximum(np.abs(np.asarray(theta, dtype=np.float64)), eps23 * anorm)
    return np.maximum(thr, 10 * floor) if default_tol else thr


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs of a symmetric operator.

    Attributes
    ----------
    eigenvalues : numpy.ndarray, shape (k,)
        Host float64 values, in the order the solver's ``which`` asks for (see each solver).
    eigenvectors : array, shape (n, k)
        Orthonormal columns in the backend's own array type and device (torch tensor, jax array, ...);
        column ``i`` belongs to ``eigenvalues[i]``.
    residuals : numpy.ndarray, shape (k,)
        ``||H v_i - lambda_i v_i||_2`` for each pair, computed from products (``verify=True``, the default of
        :func:`hessop.lanczos`; :func:`hessop.power_iteration` always) or the Ritz estimate ``|beta s_{j,i}|``,
        plus the precision floor ``sqrt(n) * eps * ||H||`` (:func:`residual_floor`) that covers the rounding of
        the products and of the residual's own computation.  For a symmetric
        H, ``|lambda_i - lambda_true| <= residual`` and the error is usually far smaller (about residual**2 / gap).
    converged : numpy.ndarray of bool, shape (k,)
        Whether pair ``i`` meets the rule ``residual <= tol * max(|lambda_i|, eps**(2/3) * ||H||)`` with the
        reported residual (so never for a ``tol`` the precision cannot reach).
    n_hvp : int
        Hessian-vector products the solver used.
    n_iter : int
        Iterations (Lanczos steps or power-iteration steps) taken.
    method : str
        Which solver produced the result.
    n_restarts : int
        Thick restarts (Lanczos only).
    precision_limited : numpy.ndarray of bool, shape (k,)
        Pair ``i``'s accuracy is limited by the precision of the products, not by the iteration: its residual is
        at the floor the products allow (see :func:`residual_floor`), so running longer cannot improve it; a
        product in a wider dtype can.  Default: all False.
    multiplicity_checked : bool
        Lanczos only: after the wanted pairs converged, a fresh random start orthogonal to them found no further
        copy of a wanted eigenvalue, so repeated eigenvalues are returned with their multiplicity (up to k) as
        reliably as single-vector Lanczos finds an extreme eigenvalue from a random start.  False when the check
        was not run (``check_multiplicity=False``, the space or the budget exhausted).

    Examples
    --------
    >>> import numpy as np
    >>> import hessop
    >>> r = hessop.lanczos(hessop.HessianOperator.from_matrix(np.diag([3.0, 2.0, 1.0])), k=1)
    >>> r.method, np.round(r.eigenvalues, 6), r.eigenvectors.shape, r.all_converged
    ("lanczos(which='LA')", array([3.]), (3, 1), True)
    >>> r.n_hvp == r.n_iter  # the steps only: the residual is bounded from the Lanczos relation, no product
    True
    """

    eigenvalues: np.ndarray
    eigenvectors: Any
    residuals: np.ndarray
    converged: np.ndarray
    n_hvp: int
    n_iter: int
    method: str
    n_restarts: int = 0
    precision_limited: np.ndarray | None = None
    multiplicity_checked: bool = False

    def __post_init__(self) -> None:
        if self.precision_limited is None:
            object.__setattr__(self, "precision_limited", np.zeros(len(self.converged), dtype=bool))

    @property
    def all_converged(self) -> bool:
        """True when every requested pair met the stopping rule."""
        return bool(np.all(self.converged))

    def __repr__(self) -> str:
        vals = np.array2string(self.eigenvalues, precision=6)
        res = np.array2string(self.residuals, precision=1)
        return (
            f"EigenResult(method={self.method!r}, eigenvalues={vals}, residuals={res}, "
            f"converged={int(np.sum(self.converged))}/{len(self.converged)}, n_hvp={self.n_hvp}, "
            f"n_iter={self.n_iter})"
        )
