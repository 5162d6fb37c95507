"""Result objects: everything a user needs to trust an answer travels with it."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EigenResult", "precision_limited", "rayleigh_noise", "residual_floor", "resolve_tol", "still_moving",
           "warn_result"]


def residual_floor(op: Any, anorm: float) -> float:
    """The precision floor added to every residual a solver reports: the larger of ``sqrt(n) * eps * ||H||`` and
    the operator's measured product error (:attr:`HessianOperator.product_error`).

    ``eps`` is the unit roundoff of the products (:attr:`HessianOperator.product_eps`: float32's for a float32
    model even when the solver runs in float64) and ``||H||`` the solver's estimate of the norm.  Below it a
    residual says nothing: one product ``H v`` in floating point carries an error ``e = fl(H v) - H v``, so a
    residual computed from products is wrong by up to ``||e||``; and the Ritz estimate ``|beta s_j|`` ignores
    that error, the loss of orthogonality of the basis and the rounding of ``Q s``, so it can fall to 0 where the
    true ``||H v - lambda v||`` is 1e12 times larger.  For a stored matrix ``||e||`` is about
    ``eps * ||H||_F <= sqrt(n) * eps * ||H||``; for autograd products at a well-fit network (softmax saturated)
    it is ``eps`` times the intermediate terms, which can be 1e5 times larger (a float32 MLP at loss 1e-8: 5% of
    ``||H||``), so it is measured, once per operator (:mod:`hessop._product_error`), and the floor is never below
    the measured bound.  Every reported residual is the computed one (from products, or the Ritz estimate) plus
    this floor, and no pair is reported converged unless the floor alone meets its tolerance.

    The first call on an operator may take the measurement's products (4, or 7 for a float32 PyTorch model; not
    counted in ``n_hvp``).

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_matrix(np.eye(4, dtype=np.float32))
    >>> residual_floor(H, 2.0) == 2 * float(np.finfo(np.float32).eps) * 2.0
    True
    >>> H.product_error = 1e-3  # e.g. measured elsewhere
    >>> residual_floor(H, 2.0)
    0.001
    """
    return max(math.sqrt(op.n) * op.product_eps * anorm, float(op.product_error))


def rayleigh_noise(op: Any, anorm: float) -> float:
    """How much a Rayleigh quotient ``v . fl(H v)`` of a unit vector moves from rounding alone: 4 times the larger
    of the measured rounding of a Rayleigh quotient (:attr:`hessop._product_error.ProductError.rayleigh`, 0 for a
    stored matrix) and ``eps * ||H||`` with ``eps`` the solver vectors' unit roundoff (the rounding of the dot
    product itself).  A change of a Ritz value below it is noise, above it the iteration still moves
    (:func:`still_moving`).

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> rayleigh_noise(HessianOperator.from_matrix(np.eye(3)), 1.0) == 4 * float(np.finfo(np.float64).eps)
    True
    """
    return 4.0 * max(float(op.product_error_info.rayleigh), float(np.finfo(op.dtype).eps) * anorm)


def still_moving(theta: Any, theta_prev: Any, tol: float, noise: float) -> np.ndarray:
    """Per Ritz value, whether it still moves: ``|theta - theta_prev| > max(tol * |theta|, noise)``.

    The rule that keeps an iteration going when the precision floor is so high that every residual already meets
    it (a bfloat16 model: a floor of 39 for eigenvalues of 12 makes every pair "converged" after two products).
    A residual at the floor says only that the residual cannot be resolved further; the Ritz values can still
    improve (the iteration's own progress is far larger than the products' noise), so a solver stops at the floor
    only once the values it reports have settled: a change below ``tol`` relative, or below the rounding noise of
    a Rayleigh quotient (``noise``: :func:`rayleigh_noise`).  Solvers call it per step with the previous step's
    values (``inf`` where there is none: that value moves).

    Examples
    --------
    >>> still_moving([12.1, 5.0], [12.1, 4.0], 1e-6, 0.01).tolist()
    [False, True]
    >>> still_moving([12.1], [float("inf")], 1e-6, 0.01).tolist()
    [True]
    """
    theta = np.atleast_1d(np.asarray(theta, dtype=np.float64))
    step = np.abs(theta - np.asarray(theta_prev, dtype=np.float64))
    step = np.where(np.isfinite(step), step, np.inf)
    return step > np.maximum(tol * np.abs(theta), noise)


def precision_limited(residuals: Any, floor: float, tol: float, theta: Any, anorm: float,
                      eps23: float) -> np.ndarray:
    """Per pair, whether the precision of the products (not the iteration) limits it: the floor is at least half
    its reported residual and above what ``tol`` asks (``tol * max(|theta|, eps**(2/3) ||H||)``), so no number of
    iterations can meet the tolerance; only a more accurate product can.

    Examples
    --------
    >>> precision_limited([2e-6, 5e-3], 1e-6, 1e-6, [0.1, 3.0], 12.0, 1e-5).tolist()
    [True, False]
    """
    res = np.asarray(residuals, dtype=np.float64)
    need = tol * np.maximum(np.abs(np.asarray(theta, dtype=np.float64)), eps23 * anorm)
    return (2 * floor >= res) & (floor > need)


def warn_result(result: EigenResult, op: Any, tol: float, stacklevel: int = 3, *, floor: Any = None,
                limited: Any = None, remedy: str = "raise max_iter") -> None:
    """The eigensolvers' one warning (one per call): pairs returned unconverged, and pairs whose accuracy the
    products' precision limits (:attr:`EigenResult.precision_limited`), naming the pairs, the residual and its
    floor, the reachable relative accuracy and the remedies; silent otherwise.

    Parameters
    ----------
    result : EigenResult
        What the solver returns; its ``method`` up to ``(`` names it in the message.
    op : HessianOperator
        The operator it was computed on (the products' dtype and measured error).
    tol : float
        The tolerance used.
    stacklevel : int
        As for :func:`warnings.warn`; default 3 (the solver's caller).
    floor : array of float, optional
        Per pair, the precision floor in its residual; default: the residual itself (at the floor for a limited
        pair).
    limited : array of bool, optional
        The precision-limited pairs to warn about.  Default: the flagged ones when the floor comes from more than
        the usual rounding (half-precision products, or a measured product error above ``sqrt(n) eps ||H||``: the
        flag alone marks the usual float32 floor).  :func:`hessop.lanczos` passes the flagged pairs that are not
        converged, and every flagged pair for an explicit ``tol``.
    remedy : str
        The remedy for unconverged pairs before "or loosen tol"; default ``"raise max_iter"``.

    Unconverged pairs that are also warned about as limited are named once, as limited.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> r = EigenResult(np.array([2.0]), None, np.array([0.5]), np.array([False]), 10, 10, "power_iteration")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_result(r, HessianOperator.from_matrix(np.eye(2)), 1e-6)
    >>> print(caught[0].message)  # doctest: +ELLIPSIS
    power_iteration: pair 1 of 1 is returned unconverged (residual 5e-01 for eigenvalue 2 after 10 iterations; ...
    """
    k = len(result.converged)
    res, theta = np.asarray(result.residuals, dtype=np.float64), np.asarray(result.eigenvalues, dtype=np.float64)
    if limited is None:
        flagged = result.precision_limited
        limited = np.zeros(k, dtype=bool) if flagged is None or not _unusual_precision(op, result) else flagged
    limited = np.asarray(limited, dtype=bool)
    bad = np.flatnonzero(~np.asarray(result.converged) & ~limited)
    limited = np.flatnonzero(limited)
    if not len(bad) and not len(limited):
        return
    parts = []
    if len(bad):
        i = bad[np.argmax(res[bad])]
        parts.append(f"{_pairs(bad)} of {k} {'is' if len(bad) == 1 else 'are'} returned unconverged ("
                     f"{'worst ' if len(bad) > 1 else ''}residual {res[i]:.0e} for eigenvalue {theta[i]:.6g} after "
                     f"{result.n_iter} iterations; tol={tol:g}): {remedy}, or loosen tol")
    if len(limited):
        floor = res[limited] if floor is None else np.asarray(floor, dtype=np.float64)[limited]
        rel = float(np.max(floor / np.maximum(np.abs(theta[limited]), np.finfo(np.float64).tiny)))
        span = f"{np.min(floor):.1e}" + (f" .. {np.max(floor):.1e}" if np.max(floor) > np.min(floor) else "")
        info = op.product_error_info
        how = f"the products are {op.backend.product_dtype} (eps {op.product_eps:.1e})" + (
            f" with a measured error of {info.bound:.1e} per unit vector ({info.method})" if info.bound > 0 else "")
        parts.append(
            f"{_pairs(limited)} of {k} {'is' if len(limited) == 1 else 'are'} limited by the precision of the "
            f"products, not by the iteration: {how}, so residuals cannot fall below {span} (relative accuracy "
            f"{rel:.1e} at best) and the eigenvalues are accurate to about that; returned with "
            "precision_limited=True. More iterations or solver_dtype=float64 do not help; products of the same "
            "model in a wider dtype (a float32 or float64 copy), or Hessian-vector products from gradient "
            f"differences, do; or ask for tol >= {rel:.0e}")
    warnings.warn(f"{result.method.split('(')[0]}: " + "; ".join(parts) + ".", UserWarning, stacklevel=stacklevel)


def _unusual_precision(op: Any, result: EigenResult) -> bool:
    """Whether the floor comes from more than the usual rounding: products narrower than float32 (half
    precision), or a measured product error above ``sqrt(n) eps ||H||`` (a saturated network)."""
    if op.product_eps > float(np.finfo(np.float32).eps):
        return True
    anorm = float(np.max(np.abs(result.eigenvalues))) if len(result.eigenvalues) else 0.0
    return float(op.product_error) > math.sqrt(op.n) * op.product_eps * anorm


def _pairs(idx: np.ndarray) -> str:
    shown = ", ".join(str(int(i) + 1) for i in idx[:5]) + (", ..." if len(idx) > 5 else "")
    return f"pair {shown}" if len(idx) == 1 else f"pairs {shown}"


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
        plus the precision floor (:func:`residual_floor`: the larger of ``sqrt(n) * eps * ||H||`` and the
        operator's measured product error) that covers the rounding of the products and of the residual's own
        computation.  For a symmetric
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
        Lanczos only: after the wanted pairs converged, a Lanczos block from a fresh random start orthogonal to
        them proved (Kuczynski-Wozniakowski bound, failure probability 1e-2) that the space left holds no
        eigenvalue more wanted than the k-th pair beyond its residual: no copy of a wanted eigenvalue is missing.
        False when the check was not run (``check_multiplicity=False``) or could not conclude within its share of
        the products or the basis (the result may still be complete; it was not proved).

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
        """True when every requested pair met the stopping rule.

        Examples
        --------
        >>> EigenResult(np.array([2.0, 1.0]), None, np.array([1e-9, 0.3]), np.array([True, False]), 8, 8,
        ...             "lanczos").all_converged
        False
        """
        return bool(np.all(self.converged))

    def __repr__(self) -> str:
        vals = np.array2string(self.eigenvalues, precision=6)
        res = np.array2string(self.residuals, precision=1)
        return (
            f"EigenResult(method={self.method!r}, eigenvalues={vals}, residuals={res}, "
            f"converged={int(np.sum(self.converged))}/{len(self.converged)}, n_hvp={self.n_hvp}, "
            f"n_iter={self.n_iter})"
        )
