"""Lanczos with full reorthogonalisation and thick restart.

Maths
-----
From a unit start vector ``q_1``, Lanczos builds an orthonormal basis ``Q_j = [q_1 .. q_j]`` of the Krylov space
``span{q_1, H q_1, .., H^{j-1} q_1}`` and the projected matrix ``T_j = Q_j^T H Q_j`` such that

    H Q_j = Q_j T_j + beta_j q_{j+1} e_j^T.

``T_j`` is tridiagonal (``alpha`` on the diagonal, ``beta`` beside it).  Its eigenpairs ``T_j s_i = theta_i s_i``
give Ritz pairs ``(theta_i, Q_j s_i)`` whose residuals are known for free:
``||H Q_j s_i - theta_i Q_j s_i|| = |beta_j s_{j,i}|`` (Golub & Van Loan, *Matrix Computations*, sec. 10.1).

In floating point the basis loses orthogonality as soon as a Ritz pair converges and copies ("ghosts") of the
extreme eigenvalues appear (Paige 1971).  Every new vector is therefore reorthogonalised against the whole basis,
in block form and twice (classical Gram-Schmidt run twice, "twice is enough": Giraud et al. 2005), which keeps
``Q_j`` orthonormal to working precision at the cost of two (n x j) matrix products per step and no per-vector loop.

Memory is ``max_basis`` vectors.  When the basis is full, thick restart (Wu & Simon, SIAM J. Matrix Anal. Appl.
22(2), 2000) keeps the ``p`` best Ritz vectors ``Y = Q S_p`` and the next Lanczos vector; the projected matrix
becomes an arrowhead ``[[diag(theta_p), b], [b^T, alpha]]`` with ``b = beta_m S_{m,p}`` and Lanczos continues.  The
projected matrix is always symmetric and is diagonalised with a symmetric solver (``eigh_tridiagonal`` before
the first restart, ``eigh`` after), never a general eigensolver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
from array_api_compat import device

from hessop._array import make_rng, set_column, vector_norm
from hessop._progress import Progress
from hessop._validate import check_cast, check_choice, check_finite, check_int, check_k, check_shape, check_tol
from hessop.operator import HessianOperator, as_operator
from hessop.results import EigenResult, residual_floor, residual_threshold, resolve_tol

__all__ = ["lanczos", "Krylov"]

WHICH = ("LA", "SA", "LM")


class Krylov:
    """A growing Lanczos basis ``Q`` (native (n, m + 1) array) with its projected matrix ``T`` (host float64).

    Shared by :func:`lanczos` and by the spectral-density code (one fixed-length run per probe).  ``j`` is the
    number of basis vectors whose product has been taken; ``Q[:, j]`` is the next vector to multiply.

    Columns of ``Q`` past the current basis are kept exactly zero, so the block Gram-Schmidt products run on the
    whole fixed-shape ``Q`` (a zero column adds an exact 0 to ``Q^T w`` and nothing to ``Q h``).  Every step then
    has the same array shapes, which backends that compile per shape (JAX, and any jit) reuse instead of compiling
    new kernels at every step; the cost is at most twice the (cheap, O(n m)) reorthogonalisation flops.

    Examples
    --------
    Three steps on a 3 x 3 matrix span the whole space, so the Ritz values are its eigenvalues:

    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_matrix(np.diag([3.0, 2.0, 1.0]))
    >>> K = Krylov(H, H.asarray(np.ones(3)), 3)
    >>> _ = [K.step() for _ in range(3)]
    >>> theta, S = K.ritz()
    >>> K.j, theta.round(6).tolist()
    (3, [1.0, 2.0, 3.0])
    """

    def __init__(self, op: HessianOperator, v0: Any, m: int) -> None:
        self.op = op
        self.xp = op.xp
        self.m = m
        xp = self.xp
        self.Q = xp.zeros((op.n, m + 1), dtype=v0.dtype, device=device(v0))
        self.T = np.zeros((m + 1, m + 1))
        self.j = 0
        self.beta = 0.0
        self.anorm = 0.0
        self.breakdown = False
        self.tridiagonal = True
        nrm = vector_norm(op, v0)
        check_finite(nrm, "the start vector's norm", 0)
        if nrm == 0.0:
            raise ValueError("the start vector is zero")
        self.Q = set_column(self.Q, 0, v0 / nrm)
        self._eps = op.product_eps

    def step(self, w: Any = None) -> float:
        """One Lanczos step: ``w = H q_j``, two block Gram-Schmidt passes, ``alpha``, ``beta``.  Returns beta.

        ``w``, if given, is the product ``H q_j`` already computed by the caller (several Krylov runs advanced in
        lockstep share one block product ``H [q_j^(1) .. q_j^(b)]``); it is then not counted again."""
        xp, j = self.xp, self.j
        B = self.Q  # fixed shape; the columns past j are zero
        if w is None:
            w = self.op.hvp(self.Q[:, j])
        h1 = B.T @ w
        w = w - B @ h1
        h2 = B.T @ w
        w = w - B @ h2
        # one host synchronisation per step: alpha and beta together
        with np.errstate(over="ignore"):  # NumPy's warning when the squares overflow: beta is rescaled below
            alpha, beta = (float(x) for x in self.op.to_numpy(xp.stack([h1[j] + h2[j], xp.linalg.vector_norm(w)])))
        beta = vector_norm(self.op, w, plain=beta)  # scale-safe: a second transfer only near the range's ends
        check_finite(alpha, "the Lanczos coefficient alpha", j + 1)
        check_finite(beta, "the Lanczos coefficient beta", j + 1, products_finite=False)
        self.T[j, j] = alpha
        self.anorm = max(self.anorm, abs(alpha) + beta + (self.T[j, j - 1] if j else 0.0))
        self.beta = beta
        self.T[j + 1, j] = self.T[j, j + 1] = beta
        # a beta within 100 times the precision floor sqrt(n) eps ||H|| is rounding: the space is invariant.
        # Capped at 1e-2 ||H||: with half-precision products the floor itself is a few percent of ||H||, and every
        # step would otherwise count as a breakdown (a random restart each step, no convergence)
        self.breakdown = beta <= min(100 * residual_floor(self.op, self.anorm), 1e-2 * self.anorm)
        if not self.breakdown:
            self.Q = set_column(self.Q, j + 1, w / beta)
        self.j = j + 1
        return beta

    def restart_with_random(self, rng: np.random.Generator) -> bool:
        """After a breakdown (invariant subspace found), continue with a random vector orthogonal to the basis.

        The coupling to the old block is zero, so Ritz pairs of the invariant block stay exact.  Returns False if
        the basis already spans the whole space."""
        j = self.j
        if j >= self.op.n:
            return False
        B = self.Q  # columns j.. are zero
        v = self.op.cast(rng.standard_normal(self.op.n))
        for _ in range(2):
            v = v - B @ (B.T @ v)
        nrm = vector_norm(self.op, v)
        if nrm <= 100 * self._eps:
            return False
        self.Q = set_column(self.Q, j, v / nrm)
        self.T[j, j - 1] = self.T[j - 1, j] = 0.0
        self.beta = 0.0
        self.breakdown = False
        return True

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenpairs ``(theta, S)`` of the current projected matrix ``T_j`` (ascending)."""
        j = self.j
        if self.tridiagonal:
            return scipy.linalg.eigh_tridiagonal(np.diag(self.T, 0)[:j].copy(), np.diag(self.T, 1)[: j - 1].copy())
        return scipy.linalg.eigh(self.T[:j, :j])

    def thick_restart(self, S: np.ndarray, theta: np.ndarray, keep: np.ndarray) -> None:
        """Keep Ritz vectors ``Q S[:, keep]`` and the next Lanczos vector (Wu & Simon 2000)."""
        j, p = self.j, len(keep)
        Sk = S[:, keep]
        Y = self.Q[:, :j] @ self.op.cast(Sk)
        nxt = self.Q[:, j]
        self.Q = set_column(self.Q, slice(0, p), Y)
        self.Q = set_column(self.Q, p, nxt)
        self.Q = set_column(self.Q, slice(p + 1, None), 0.0)  # keep the columns past the basis zero
        b = self.beta * Sk[j - 1, :]
        T = np.zeros_like(self.T)
        T[np.arange(p), np.arange(p)] = theta[keep]
        T[p, :p] = T[:p, p] = b
        self.T = T
        self.j = p
        self.tridiagonal = False


def _order(theta: np.ndarray, which: str) -> np.ndarray:
    """Indices of ``theta`` from most to least wanted."""
    if which == "LA":
        return np.argsort(-theta, kind="stable")
    if which == "SA":
        return np.argsort(theta, kind="stable")
    return np.argsort(-np.abs(theta), kind="stable")


def start_vector(op: HessianOperator, v0: Any, rng: np.random.Generator) -> Any:
    """The start vector as a native array: ``v0`` if given (NumPy or native; a dtype wider than the solver's raises
    ``TypeError``, a narrower one is converted exactly), else a standard normal draw made on the host from ``rng``
    (so one seed gives one vector on every backend) and moved to the device once.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_matrix(np.eye(3))
    >>> start_vector(H, np.ones(3), None).tolist()
    [1.0, 1.0, 1.0]
    >>> start_vector(H, None, np.random.default_rng(0)).round(3).tolist()
    [0.126, -0.132, 0.64]
    """
    if v0 is None:
        return op.cast(rng.standard_normal(op.n))
    check_shape(v0, (op.n,), "v0")
    if isinstance(v0, np.ndarray):
        return op.asarray(v0)
    check_cast(v0.dtype, op.dtype, "v0")
    return op.xp.astype(v0, op.cast(np.zeros(1)).dtype)


def lanczos(
    H: Any,
    k: int = 1,
    *,
    which: str = "LA",
    tol: float | None = None,
    max_iter: int | None = None,
    max_basis: int | None = None,
    seed: int | np.random.Generator | None = 0,
    v0: Any = None,
    callback: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    verify: bool = True,
    solver_dtype: Any = None,
    progress: bool | None = None,
) -> EigenResult:
    """The ``k`` extreme eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation and thick
    restart.

    Parameters
    ----------
    H : HessianOperator or symmetric scipy LinearOperator / array
        The operator; only its products are used (native face for a HessianOperator: vectors stay on the
        backend's device, only ``alpha``, ``beta`` and the small projected matrix live on the host).
    k : int
        Number of eigenpairs, ``1 <= k < n``.
    which : {"LA", "SA", "LM"}
        Largest algebraic (default; returned in descending order), smallest algebraic (ascending; the most
        negative eigenvalues of a Hessian) or largest magnitude (descending ``|lambda|``).
    tol : float, optional
        Stop when every wanted Ritz pair has ``|beta_j s_{j,i}| + floor <= tol * max(|theta_i|, eps**(2/3) *
        ||T||)`` (ARPACK's rule, with the precision floor ``floor = sqrt(n) * eps * ||H||`` of
        :func:`hessop.results.residual_floor`, ``eps`` the products' unit roundoff).  For a symmetric H the
        eigenvalue error is at most the residual and usually about ``residual**2 / gap``.  Default (None):
        ``max(1e-8, 10 sqrt(n) eps)`` (1e-8 for float64; about 1e-5 .. 1e-3 for float32 models), and a pair whose
        residual is within ``10 * floor`` also counts as converged (as far as the precision allows; this is what
        lets small eigenvalues of float32 models converge).  A smaller
        ``tol`` than ``sqrt(n) eps`` draws a warning with the reachable value; the run then stops once the Ritz
        estimates reach the floor and reports ``converged=False``.
    max_iter : int, optional
        Most Lanczos steps (= HVPs) in all; default ``max(1000, 20 * max_basis)``.  Pairs not converged by then
        are returned with ``converged=False``.
    max_basis : int, optional
        Most basis vectors held (memory = ``max_basis + 1`` vectors of length n).  Default
        ``min(n, max(2k + 1, 40))``.  When it is reached the basis is thick-restarted keeping
        ``k + (max_basis - k) // 2`` Ritz vectors.  Must exceed ``k``.
    seed : int, numpy Generator or None
        Seed of the standard-normal start vector (drawn on the host; the same seed gives the same answer on every
        backend).  Default 0.
    v0 : array, optional
        Start vector (NumPy or native) instead of a random one.  A dtype wider than the solver's raises
        ``TypeError`` (hessop never down-casts silently).
    callback : callable, optional
        Called after every step as ``callback(step, ritz_values, residuals)`` with the wanted Ritz values and their
        residuals so far (host arrays, most wanted first, at most k); for convergence plots.  Costs nothing extra.
    verify : bool
        Compute the reported residuals ``||H v_i - theta_i v_i||`` from ``k`` more products of the returned
        vectors (one block product), instead of the Ritz estimates ``|beta_j s_{j,i}|``.  The Ritz estimate
        misses the rounding of the products and the loss of orthogonality of the basis: on float32 models it can
        be 1e5 .. 1e16 times below the true residual.  Default True (cost: ``k`` products, 8-37% of a run on a
        matrix that converges in 2-3 k steps, see docs/reliability.md); ``converged`` is then decided on them.  With
        ``verify=False`` the residual (Ritz estimate plus the floor) is an estimate, not a bound: measured up to
        4x (float32) and 69x (float64) below the true residual on the property-test families.
    solver_dtype : numpy dtype, optional
        Dtype of the basis, the recurrences and the returned vectors (default: the operator's).  ``numpy.float64``
        over a float32 model runs Lanczos in float64 while each product is still taken in float32 (cast on the
        device: :meth:`HessianOperator.with_solver_dtype`); a narrower dtype raises ``TypeError``.
    progress : bool, optional
        Show a tqdm bar: step, wanted pairs converged, worst wanted residual (Ritz estimate); default None: only
        when stderr is a terminal.

    Notes
    -----
    Memory: ``max_basis + 4`` n-vectors (the basis, the product and two Gram-Schmidt temporaries).

    A Krylov space holds one copy of each distinct eigenvalue.  When the basis closes (an invariant subspace,
    ``beta ~ 0``), Lanczos continues from a random vector orthogonal to it and stops once the newest block's best
    Ritz pair has converged and adds nothing to the wanted eigenvalues, so repeated eigenvalues of low-rank or
    degenerate operators are found with their multiplicity.  Without a breakdown, a wanted eigenvalue of
    multiplicity > 1 is resolved only slowly (through rounding); this is the usual limit of single-vector Lanczos.

    Returns
    -------
    EigenResult
        ``eigenvalues`` ordered as ``which`` says, orthonormal ``eigenvectors`` (native (n, k)), ``residuals``,
        ``converged``, ``n_hvp``, ``n_iter`` (= Lanczos steps) and ``n_restarts``.

    Examples
    --------
    >>> import numpy as np
    >>> import hessop
    >>> H = hessop.HessianOperator.from_matrix(np.diag([5.0, 4.0, 3.0, 2.0, 1.0, -1.0]))
    >>> top = hessop.lanczos(H, k=2)
    >>> np.round(top.eigenvalues, 6), top.all_converged
    (array([5., 4.]), True)
    >>> np.round(hessop.lanczos(H, k=1, which="SA").eigenvalues, 6)  # the most negative
    array([-1.])
    >>> bool(np.all(top.residuals < 1e-8 * np.abs(top.eigenvalues)))  # |error| <= residual
    True
    """
    op = as_operator(H).with_solver_dtype(solver_dtype)
    n = op.n
    k = check_k(k, n)
    which = check_choice(which, "which", WHICH)
    default_tol = tol is None
    tol = resolve_tol(None if default_tol else check_tol(tol), 1e-8, op)
    if max_basis is None:
        max_basis = min(n, max(2 * k + 1, 40))
    m = check_int(max_basis, "max_basis", k + 1, None)
    m = min(m, n)
    if max_iter is None:
        max_iter = max(1000, 20 * m)
    max_iter = check_int(max_iter, "max_iter", 1)
    rng = make_rng(seed)

    hvp0 = op.n_hvp
    kry = Krylov(op, start_vector(op, v0, rng), m)
    eps23 = op.product_eps ** (2.0 / 3.0)
    n_iter = n_restarts = 0
    explore_from = None  # basis index where the block opened after an invariant-subspace breakdown starts
    bar = Progress(progress, op, f"lanczos {which}", None, "step")
    while True:
        kry.step()
        n_iter += 1
        theta, S = kry.ritz()
        order = _order(theta, which)
        sel = order[:k]
        ritz_all = np.abs(kry.beta * S[kry.j - 1, :])
        anorm = max(kry.anorm, float(np.max(np.abs(theta))))
        floor = residual_floor(op, anorm)
        res_all = ritz_all + floor
        ok_all = res_all <= residual_threshold(tol, False, theta, anorm, floor, eps23)  # the stopping rule
        res, conv = res_all[sel], ok_all[sel]
        if callback is not None:
            callback(n_iter, theta[sel].copy(), res.copy())
        bar.update(1, {"converged": f"{int(np.sum(conv))}/{len(sel)}", "worst residual": float(np.max(res))})
        # converged, or at the precision floor for a tol it cannot reach (nothing more to gain)
        # never stop before 2k + 1 vectors (ARPACK's default basis): a converged Ritz pair of a smaller basis
        # may be an unwanted eigenvalue (found by the property tests: n = 2 with a gap of 4e-7, one step)
        done = kry.j >= min(n, 2 * k + 1) and bool(np.all(conv | (ritz_all[sel] <= floor)))
        block_joins_wanted = explore_from is None
        if explore_from is not None:
            # Ritz pairs living in the newest block (T is block diagonal across a breakdown)
            in_new = np.flatnonzero(np.sum(S[explore_from:, :] ** 2, axis=0) > 0.5)
            if in_new.size:
                best = in_new[np.argmin(np.argsort(order)[in_new])]
                block_joins_wanted = bool(np.isin(best, sel))
                done = done and bool(ok_all[best]) and not block_joins_wanted
        if kry.breakdown:
            # Invariant subspace: its Ritz pairs are exact, but a Krylov space holds one copy of each distinct
            # eigenvalue, so a repeated wanted eigenvalue can hide in the complement.  While the block that just
            # closed contributed to the wanted set, explore the complement from a fresh random vector.
            if (done and not block_joins_wanted) or not kry.restart_with_random(rng):
                break
            explore_from = kry.j
        elif done:
            break
        if n_iter >= max_iter:
            break
        if kry.j >= m:
            p = min(k + (m - k) // 2, m - 1)
            kry.thick_restart(S, theta, order[:p])
            n_restarts += 1
            explore_from = None

    bar.close()
    if kry.j < k:  # only possible when the whole space was exhausted before k vectors: cannot happen for k < n
        raise RuntimeError("Lanczos basis smaller than k")
    vectors = kry.Q[:, : kry.j] @ op.cast(S[:, sel])
    if verify:
        R = op.hvp_block(vectors) - vectors * op.cast(theta[sel])
        res = vector_norm(op, R, axis=0) + floor
    conv = res <= residual_threshold(tol, default_tol, theta[sel], anorm, floor, eps23)
    return EigenResult(
        eigenvalues=theta[sel].astype(np.float64),
        eigenvectors=vectors,
        residuals=res,
        converged=conv,
        n_hvp=op.n_hvp - hvp0,
        n_iter=n_iter,
        method=f"lanczos(which={which!r})",
        n_restarts=n_restarts,
    )
