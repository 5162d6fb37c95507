"""Deflated power iteration, the baseline users know from PyHessian (Yao et al. 2020)."""

from __future__ import annotations

from typing import Any

import numpy as np

from hessop._array import make_rng, vector_norm
from hessop._validate import check_finite, check_int, check_k, check_real, check_tol
from hessop.krylov import start_vector
from hessop.operator import as_operator
from hessop.results import (
    EigenResult,
    precision_limited,
    rayleigh_noise,
    residual_floor,
    residual_threshold,
    resolve_tol,
    still_moving,
    warn_result,
)

__all__ = ["power_iteration"]

_DEFAULT_TOL = 1e-6


def power_iteration(
    H: Any,
    k: int = 1,
    *,
    tol: float | None = None,
    max_iter: int = 1000,
    seed: int | np.random.Generator | None = 0,
    shift: float = 0.0,
    solver_dtype: Any = None,
) -> EigenResult:
    """The ``k`` eigenpairs of largest magnitude of ``H - shift * I`` by deflated power iteration.

    Maths
    -----
    For pair ``i``, start from a random unit ``v`` orthogonal to the pairs already found ``Q``, and repeat
    ``w = (I - Q Q^T)(H - shift I) v``, ``v <- w / ||w||``.  The Rayleigh quotient ``theta = v^T (H - shift I) v``
    converges to the dominant eigenvalue of the deflated operator at rate ``(lambda_2 / lambda_1)^{2t}`` and the
    vector at ``(lambda_2 / lambda_1)^t`` (Golub & Van Loan, sec. 8.2).  This is the method of PyHessian, with two
    changes: the stopping rule also requires a small residual (a small change of the Rayleigh quotient alone does
    not bound the error), and results are sorted.

    Pair ``i`` stops when both
    ``|theta_t - theta_{t-1}| <= max(tol * |theta_t|, noise)`` (``tol`` as given, 1e-6 by default; ``noise``
    four times the measured rounding of a Rayleigh quotient, :func:`hessop.results.still_moving`) and
    ``||H v - lambda v|| <= tol * max(|lambda|, eps**(2/3) * ||H||)``, the same residual rule as :func:`lanczos`
    (residuals never below the precision floor, the larger of ``sqrt(n) * eps * ||H||`` and the operator's measured
    product error, :func:`hessop.results.residual_floor`; with the default ``tol`` a residual within
    ``10 * floor`` also counts, see :func:`hessop.results.residual_threshold`), or when the residual is at the
    floor and the quotient has settled.  A floor above every tolerance (a bfloat16 model, a saturated float32
    network) therefore no longer stops the iteration while the quotient still moves; such pairs are marked
    ``precision_limited`` and a warning names the remedies (:func:`hessop.results.warn_result`, which also warns
    about unconverged pairs).

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
    k : int
        Number of pairs, ``1 <= k < n``.
    tol : float, optional
        Relative tolerance of both tests; default (None) ``max(1e-6, 10 sqrt(n) eps)``.  A ``tol`` below
        ``sqrt(n) eps`` draws a warning with the reachable value (pairs are then reported not converged).
    max_iter : int
        Most iterations (HVPs) per pair; default 1000.  A pair that does not converge is returned with
        ``converged=False`` and the search goes on with the next.
    seed : int, numpy Generator or None
        Seed of the random start vectors (host-drawn: the same on every backend).  Default 0.
    shift : float
        Iterate on ``H - shift * I``: with ``shift`` near ``lambda_max`` the dominant eigenvalues of the shifted
        operator are the smallest (most negative) eigenvalues of H.  Reported eigenvalues are those of H.
    solver_dtype : numpy dtype, optional
        Dtype of the iterates (default: the operator's); ``numpy.float64`` over a float32 model keeps the vectors
        in float64 and takes each product in float32 (see :func:`hessop.lanczos`).

    Notes
    -----
    A final Rayleigh-Ritz step on the span of the found vectors, using the products already computed (no extra
    HVP), removes the coupling that deflation against inexact earlier vectors leaves behind, so the reported
    residuals are true residuals of H.

    Memory: ``2 k + 4`` n-vectors (the found vectors and their products, the iterate, its product, temporaries).

    Returns
    -------
    EigenResult
        Pairs sorted by decreasing ``|lambda - shift|`` (the order power iteration finds them in), residuals
        ``||H v - lambda v||`` (from products, plus the floor), per-pair ``converged`` (pair ``i`` meets the
        residual rule; the iteration's Rayleigh-quotient test decides only when to stop), ``precision_limited``
        (:func:`hessop.results.precision_limited`), ``n_hvp`` and ``n_iter`` (total iterations).  The first
        call on an operator measures its product error (:attr:`HessianOperator.product_error`; not in
        ``n_hvp``).

    Examples
    --------
    >>> import numpy as np
    >>> import hessop
    >>> H = hessop.HessianOperator.from_matrix(np.diag([8.0, 4.0, 2.0, 1.0, -1.0]))
    >>> r = hessop.power_iteration(H, k=2)
    >>> np.round(r.eigenvalues, 4), r.all_converged
    (array([8., 4.]), True)
    >>> np.round(hessop.power_iteration(H, k=1, shift=8.0).eigenvalues, 4)  # H - 8 I: the most negative of H
    array([-1.])
    """
    op = as_operator(H).with_solver_dtype(solver_dtype)
    n = op.n
    k = check_k(k, n)
    default_tol = tol is None
    tol = resolve_tol(None if default_tol else check_tol(tol), _DEFAULT_TOL, op)
    # what the Rayleigh quotients must settle to (and what precision_limited compares the floor with): the asked
    # tol, not the default raised to the floor (10 sqrt(n) eps is above 1 for a bfloat16 model)
    tol_asked = _DEFAULT_TOL if default_tol else tol
    max_iter = check_int(max_iter, "max_iter", 1)
    shift = check_real(shift, "shift")
    rng = make_rng(seed)
    xp = op.xp
    eps23 = op.product_eps ** (2.0 / 3.0)

    hvp0 = op.n_hvp
    V: list[Any] = []  # found vectors
    W: list[Any] = []  # their products (H - shift I) v, kept for the final Rayleigh-Ritz step
    anorm = 0.0
    n_iter = 0
    for i in range(k):
        Q = xp.stack(V, axis=1) if V else None

        def deflate(x: Any, Q: Any = Q) -> Any:
            return x if Q is None else x - Q @ (Q.T @ x)

        v = deflate(start_vector(op, None, rng))
        v = v / xp.linalg.vector_norm(v)
        theta_prev = np.inf
        ok = False
        for t in range(max_iter):
            n_iter += 1
            w = op.hvp(v)
            if shift:
                w = w - shift * v
            theta = check_finite(float(xp.vecdot(v, w)), f"the Rayleigh quotient of pair {i + 1}", n_iter)
            wd = deflate(w)
            res = vector_norm(op, wd - theta * v)  # residual of the deflated operator
            anorm = max(anorm, abs(theta))
            floor = residual_floor(op, anorm + abs(shift))  # ||H|| <= ||H - shift I|| + |shift|
            res = res + floor
            settled = not still_moving(theta, theta_prev, tol_asked, rayleigh_noise(op, anorm))[0]
            ok = settled and bool(res <= residual_threshold(tol, default_tol, theta, anorm, floor, eps23))
            # the residual at the precision floor (a tol below it, or a floor above every tolerance as for a
            # half-precision model): stop once the quotient has settled to its rounding noise, not before
            ok = ok or (res <= 2 * floor and settled)
            nrm = vector_norm(op, wd)
            if ok or nrm == 0.0:  # nrm == 0: v spans the deflated null space, an exact pair with theta = 0
                ok = True
                break
            theta_prev = theta
            if t < max_iter - 1:
                v = wd / nrm
        V.append(v)  # w = (H - shift I) v for exactly this v
        W.append(w)

    # Rayleigh-Ritz on span(V) with the products already at hand (no extra HVP): removes the coupling between
    # pairs that deflation against inexact earlier vectors leaves, so the reported residuals are those of H.
    Vb, Wb = xp.stack(V, axis=1), xp.stack(W, axis=1)
    M = op.to_numpy(Vb.T @ Wb).astype(np.float64)
    theta, S = np.linalg.eigh((M + M.T) / 2)
    order = np.argsort(-np.abs(theta), kind="stable")
    theta, S = theta[order], S[:, order]
    Sx = op.cast(S)
    Vb, Wb = Vb @ Sx, Wb @ Sx
    residuals = vector_norm(op, Wb - Vb * op.cast(theta), axis=0)
    floor = residual_floor(op, anorm + abs(shift))
    residuals = residuals + floor
    converged = residuals <= residual_threshold(tol, default_tol, theta, anorm, floor, eps23)
    result = EigenResult(
        eigenvalues=theta + shift,
        eigenvectors=Vb,
        residuals=residuals,
        converged=converged,
        n_hvp=op.n_hvp - hvp0,
        n_iter=n_iter,
        method="power_iteration" + (f"(shift={shift:g})" if shift else ""),
        precision_limited=precision_limited(residuals, floor, tol_asked, theta, anorm, eps23),
    )
    warn_result(result, op, tol)
    return result
