"""The Lanczos basis: block Gram-Schmidt reorthogonalisation, thick restart and bounds on the computed relation.

Maths
-----
From a unit start vector ``q_1``, Lanczos builds an orthonormal basis ``Q_j = [q_1 .. q_j]`` of the Krylov space
``span{q_1, H q_1, .., H^{j-1} q_1}`` and the projected matrix ``T_j = Q_j^T H Q_j`` such that

    H Q_j = Q_j T_j + beta_j q_{j+1} e_j^T.

In floating point the basis loses orthogonality as soon as a Ritz pair converges and copies ("ghosts") of the
extreme eigenvalues appear (Paige 1971).  Every new vector is therefore reorthogonalised against the whole basis,
in block form (classical Gram-Schmidt, two (n x j) matrix products per pass and no per-vector loop), with a second
pass where the first lost orthogonality, measured by the criterion of Daniel, Gragg, Kaufman & Stewart (Math. Comp.
30, 1976): after the first pass ``w -> w'``, a second runs when ``||w'|| < ||w|| / sqrt(2)`` (a cancellation that
leaves ``w'`` with a relative error above ``sqrt(2)`` times the first pass's rounding).  "Twice is enough" (Giraud,
Langou, Rozloznik, Comput. Math. Appl. 50, 2005): two passes keep ``Q_j`` orthonormal to working precision; one
pass without that cancellation does too, its loss of orthogonality being ``O(u ||w|| / ||w'||)``.  Backends that
compile per array shape (:attr:`hessop.backends.base.Backend.fixed_shapes`: JAX) keep the basis at one fixed
shape and always run both passes (no data-dependent branch, one host transfer per step, the same kernels every
step); elsewhere the passes run on the filled columns only.

When the basis is full, thick restart (Wu & Simon, SIAM J. Matrix Anal. Appl. 22(2), 2000) keeps the ``p`` best
Ritz vectors ``Y = Q S_p`` and the next Lanczos vector; the projected matrix becomes an arrowhead
``[[diag(theta_p), b], [b^T, alpha]]`` with ``b = beta_m S_{m,p}``.

The class :class:`Krylov` is shared by :func:`hessop.lanczos` and by the spectral-density code (one fixed-length run
per probe); :func:`start_vector` by Lanczos and power iteration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
from array_api_compat import device

from hessop._array import host_norm, norm_is_exact, pow2_scale, set_column, vector_norm
from hessop._validate import check_cast, check_finite, check_shape
from hessop.operator import HessianOperator
from hessop.results import residual_floor

__all__ = ["Krylov", "start_vector"]

ERROR_MODEL = "operator"
ETA = 1 / np.sqrt(2)
"""The second Gram-Schmidt pass runs when the first leaves ``||w'|| < ETA ||w||`` (Daniel, Gragg, Kaufman, Stewart
1976; Giraud et al. 2005)."""


class Krylov:
    """A growing Lanczos basis ``Q`` (native (n, m + 1) array) with its projected matrix ``T`` (host float64).

    Shared by :func:`lanczos` and by the spectral-density code (one fixed-length run per probe).  ``j`` is the
    number of basis vectors whose product has been taken; ``Q[:, j]`` is the next vector to multiply.

    On backends that compile per array shape (:attr:`~hessop.backends.base.Backend.fixed_shapes`, JAX), columns of
    ``Q`` past the current basis are kept exactly zero, so the block Gram-Schmidt products run on the whole
    fixed-shape ``Q`` (a zero column adds an exact 0 to ``Q^T w`` and nothing to ``Q h``): every step has the same
    array shapes, and the compiled kernels are reused instead of compiled anew at every step.  Elsewhere the basis
    is held one vector per row (``Q`` is the transposed view of an (m + 1, n) array, so each basis vector is
    contiguous) and the Gram-Schmidt products run on the filled columns ``Q[:, :j + 1]`` only, with the second pass
    only where the first lost orthogonality (module notes); :attr:`n_second` counts the second passes.

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

    def __init__(self, op: HessianOperator, v0: Any, m: int, breakdown_floors: float = 100.0) -> None:
        self.op = op
        self.breakdown_floors = breakdown_floors
        self.xp = op.xp
        self.m = m
        xp = self.xp
        self.fixed = bool(op.backend.fixed_shapes)
        if self.fixed:
            self.Q = xp.zeros((op.n, m + 1), dtype=v0.dtype, device=device(v0))
        else:  # one basis vector per row (contiguous); Q is the (n, m + 1) view the rest of the code indexes
            self.Q = xp.zeros((m + 1, op.n), dtype=v0.dtype, device=device(v0)).T
        self.n_second = 0  # second Gram-Schmidt passes run (every step on fixed-shape backends)
        self.T = np.zeros((m + 1, m + 1))
        # C: every coefficient the Gram-Schmidt passes computed (column i: ``Q^T w`` of step i, and beta below the
        # diagonal); T is its symmetric tridiagonal / arrowhead part.  err_units[i] (in units of one product's error)
        # and err_other[i] bound the error column f_i of the computed relation H Q = Q C + F (see residual_bounds)
        self.C = np.zeros((m + 1, m + 1))
        self.err_units = np.zeros(m + 1)
        self.err_other = np.zeros(m + 1)
        # err_coupled: couplings dropped from the relation (a replaced Lanczos vector, a breakdown's remainder); it is
        # carried through a restart per column (sum |s_i| err_i), so a pair's own small residual stays its own
        self.err_coupled = np.zeros(m + 1)
        # after a thick restart the error of the kept block is bounded as a whole: ||F_kept||_2 <= carried_units *
        # (one product's error) + carried_other (||F S||_2 <= ||F||_2 for orthonormal S: no growth per restart)
        self.carried = 0  # columns under the block bound
        self.n_mult = 0  # products taken into the basis (all steps, across restarts)
        self.carried_units = self.carried_other = 0.0
        self.u = float(np.finfo(np.dtype(op.dtype)).eps)  # unit roundoff of the basis and recurrences
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
        """One Lanczos step: ``w = H q_j``, block Gram-Schmidt (a second pass where needed), ``alpha``, ``beta``.
        Returns beta.

        ``w``, if given, is the product ``H q_j`` already computed by the caller (several Krylov runs advanced in
        lockstep share one block product ``H [q_j^(1) .. q_j^(b)]``); it is then not counted again."""
        xp, j = self.xp, self.j
        if w is None:
            w = self.op.hvp(self.Q[:, j])
        if self.fixed:
            B = self.Q  # fixed shape; the columns past j are zero
            h1 = B.T @ w
            w = w - B @ h1
            h2 = B.T @ w
            w = w - B @ h2
            self.n_second += 1
            # one host synchronisation per step: the coefficients h = h1 + h2 and beta together
            with np.errstate(over="ignore"):  # NumPy's warning when the squares overflow: beta is rescaled below
                hb = self.op.to_numpy(xp.concat([h1 + h2, xp.reshape(xp.linalg.vector_norm(w), (1,))]))
            hb = hb.astype(np.float64)
            h = hb[: j + 1]
        else:
            B = self.Q[:, : j + 1]  # the filled columns only
            h1 = B.T @ w
            w1 = w - B @ h1
            # one host synchronisation: h1 and the norms before and after the pass (the DGKS test)
            with np.errstate(over="ignore"):
                hb = self.op.to_numpy(xp.concat([h1, xp.stack([xp.linalg.vector_norm(w),
                                                                xp.linalg.vector_norm(w1)])])).astype(np.float64)
            h, (before, after) = hb[: j + 1], hb[j + 1:]
            w = w1
            # a second pass where the first cancelled, and where the test cannot be read: a NaN or Inf norm
            # (check_finite reports it) or a plain norm whose squares under- or overflowed (near the dtype's ends)
            trusted = norm_is_exact(np.array([before, after]), self.op.n, w.dtype, xp)
            if not after >= ETA * before or not np.isfinite(after) or not np.all(trusted):
                h2 = B.T @ w
                w = w - B @ h2
                self.n_second += 1
                with np.errstate(over="ignore"):
                    h2b = self.op.to_numpy(xp.concat([h2, xp.reshape(xp.linalg.vector_norm(w), (1,))]))
                h2b = h2b.astype(np.float64)
                h = h + h2b[: j + 1]  # the coefficients applied: h1 + h2 (exact sum of the two used)
                hb = np.append(h, h2b[-1])
            else:
                hb = np.append(h, after)
        alpha = float(hb[j])
        beta = vector_norm(self.op, w, plain=float(hb[-1]))  # scale-safe: a second transfer only near the range's ends
        check_finite(alpha, "the Lanczos coefficient alpha", j + 1)
        check_finite(beta, "the Lanczos coefficient beta", j + 1, products_finite=False)
        if not np.all(np.isfinite(h)):
            check_finite(float(np.sum(h)), "a Gram-Schmidt coefficient", j + 1)
        self.C[: j + 1, j] = h
        self.C[j + 1, j] = beta
        # rounding of the Gram-Schmidt passes (two, or one where the second was skipped: its coefficients h2 = 0 and
        # its rounding terms are absent, so the two-pass bound below still holds), of h1 + h2 and of w / beta
        # (probabilistic model, as the floor's sqrt(n) eps: sqrt(terms) u times the sizes involved); the product's own
        # error is one unit
        # (on the coefficients scaled by a power of two near their largest: exact, and no sum of them overflows at
        # the top of the range)
        self.err_units[j] = 1.0
        hb_m = np.append(h, beta)
        sc = float(pow2_scale(np.max(np.abs(hb_m))))
        hb_m = hb_m / sc
        self.err_other[j] = self.u * (2 * np.sqrt(j + 2) * (host_norm(hb_m) + np.sum(np.abs(hb_m[:-1])))
                                      + hb_m[-1]) * sc
        self.n_mult += 1
        self.T[j, j] = alpha
        self.anorm = max(self.anorm, abs(alpha) + beta + (self.T[j, j - 1] if j else 0.0))
        self.beta = beta
        self.T[j + 1, j] = self.T[j, j + 1] = beta
        # a beta within breakdown_floors (100 for SLQ, 1 for lanczos) times the precision floor sqrt(n) eps ||H|| is
        # rounding: the space is invariant.
        # Capped at 1e-2 ||H||: with half-precision products the floor itself is a few percent of ||H||, and every
        # step would otherwise count as a breakdown (a random restart each step, no convergence)
        self.breakdown = beta <= min(self.breakdown_floors * residual_floor(self.op, self.anorm), 1e-2 * self.anorm)
        if not self.breakdown:
            self.Q = set_column(self.Q, j + 1, w / beta)
        else:  # the remainder w (norm beta) is dropped from the relation: it joins column j's error
            if not self.fixed:  # the column past the basis reads as zero (qnorm_bound), as on fixed shapes
                self.Q = set_column(self.Q, j + 1, 0.0)
            self.C[j + 1, j] = 0.0
            self.err_coupled[j] += beta
        self.j = j + 1
        return beta

    def restart_with_random(self, rng: np.random.Generator) -> bool:
        """After a breakdown (invariant subspace found), continue with a random vector orthogonal to the basis.

        The coupling to the old block is zero, so Ritz pairs of the invariant block stay exact.  Returns False if
        the basis already spans the whole space."""
        j = self.j
        if j >= self.op.n:
            return False
        B = set_column(self.Q, j, 0.0) if self.fixed else self.Q[:, :j]  # (fixed shape: columns j.. are zero)
        v = self.op.cast(rng.standard_normal(self.op.n))
        for _ in range(2):
            v = v - B @ (B.T @ v)
        nrm = vector_norm(self.op, v)
        if nrm <= 100 * self._eps:
            return False
        self.Q = set_column(B if self.fixed else self.Q, j, v / nrm)
        # the next Lanczos vector is replaced: its coupling to the basis joins the columns' error
        self.err_coupled[:j] += np.abs(self.C[j, :j])
        self.T[j, :j] = self.T[:j, j] = 0.0
        self.C[j, :j] = self.C[:j, j] = 0.0
        self.beta = 0.0
        self.breakdown = False
        return True

    def lock_and_explore(self, S: np.ndarray, theta: np.ndarray, keep: np.ndarray, rng: np.random.Generator) -> bool:
        """Keep the Ritz vectors ``Q S[:, keep]`` and continue from a fresh random vector orthogonal to them (the
        multiplicity check): a Krylov space holds one copy of each distinct eigenvalue, so copies of a converged
        eigenvalue can only be found from a new start.  The coupling ``b = beta S_{j,keep}`` of the kept vectors to
        the dropped Lanczos vector joins their error bound.  Returns False if the space is exhausted."""
        self.thick_restart(S, theta, keep)
        return self.restart_with_random(rng)

    def residual_bounds(self, S: np.ndarray, theta: np.ndarray, unit: float, anorm: float,
                        qnorm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Bounds on ``||H y_i - theta_i y_i||`` for the Ritz vectors ``y_i = fl(Q_j s_i)``, from no product.

        In floating point the run satisfies ``H Q_j = Q_{j+1} C + F`` exactly, with ``C`` the coefficients it
        computed (:attr:`C`) and ``F`` the error of the products and of the Gram-Schmidt rounding (``unit``: one
        product's error for a unit vector, the precision floor of :func:`hessop.results.residual_floor`; the
        rounding of step ``i``, :attr:`err_other`).  Then for ``T s = theta s`` (Paige 1976, 1980; Parlett, *The
        Symmetric Eigenvalue Problem*, ch. 13)

            ||H y - theta y|| <= ||Q_{j+1}|| ||C s - [theta s; 0]|| + ||F s|| + 2 ||H|| ||fl(Q s) - Q s||

        ``||F s||`` is bounded (``ERROR_MODEL = "operator"``, the default) as the error of a perturbed operator,
        ``F = E Q`` with ``||E||`` one product's error, or independent columns of at most that size, whose norm is
        within ``1 + sqrt(j / n)`` of one column's: ``(1 + sqrt(j / n)) (unit + max_i err_other[i]) ||Q||``, plus
        the rounding of the vector updates of earlier thick restarts (not a product error: it accumulates, as a
        block norm carried from restart to restart, :attr:`carried_other`); the
        worst case for adversarial columns (``"columns"``: ``sum_i |s_i| ||f_i||``, carried through restarts as a
        block norm) is up to ``sqrt(j)`` times larger and made runs converge less often for no measured gain
        (docs/reliability.md).

        whose first term holds the Ritz estimate ``|beta_j s_j|``, the coefficients the tridiagonal / arrowhead
        ``T`` leaves out (loss of orthogonality, asymmetry of the computed coefficients) and the error of the small
        eigensolver.  ``qnorm`` bounds ``||Q_{j+1}||`` (1 + O(u) under full reorthogonalisation; measured from
        ``Q^T Q`` for the reported residuals).  Returns ``(bound, floor_part)``: the bound and the part of it the
        iteration cannot reduce because of the precision (the rounding terms; couplings dropped from the relation,
        :attr:`err_coupled`, are in the bound but not in this part)."""
        j = self.j
        coef = self._coupling(S, theta, j + 1)
        if ERROR_MODEL == "operator":
            # the products' error as a perturbed operator; the rounding of the vector updates of earlier restarts
            # (not a product error, it accumulates) as the carried block bound
            err = (1 + np.sqrt(j / self.op.n)) * (unit + float(np.max(self.err_other[:j], initial=0.0))) * qnorm
            err = err + self.carried_other * host_norm(S[: self.carried], axis=0)
        else:
            err = np.abs(S).T @ (self.err_units[:j] * unit + self.err_other[:j])
            err += (self.carried_units * unit + self.carried_other) * host_norm(S[: self.carried], axis=0)
        yerr = 2 * np.sqrt(j + 1) * self.u * qnorm * anorm  # the small factors first: 2 anorm may overflow
        floor_part = err + yerr
        return qnorm * coef + floor_part + np.abs(S).T @ self.err_coupled[:j], floor_part

    def _coupling(self, S: np.ndarray, theta: np.ndarray, rows: int) -> np.ndarray:
        """``||C[:rows, :j] s_i - [theta_i s_i; 0]||`` for each column ``s_i`` of ``S``, computed on ``C`` and
        ``theta`` scaled by a power of two near their largest entry (exact), so that neither the product nor the
        norm over- or underflows anywhere in float64's range."""
        j = self.j
        C = self.C[:rows, :j]
        sc = float(pow2_scale(max(float(np.max(np.abs(C), initial=0.0)),
                                  float(np.max(np.abs(theta), initial=0.0)))))
        Cs = (C / sc) @ S
        Cs[:j] -= S * (theta / sc)
        return host_norm(Cs, axis=0) * sc

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
        # the relation of the kept vectors: H y = theta y + b q_next + (Q_j (C s - theta s) + F s + rounding of Q s),
        # the bracket joining their error bound (in product-error units and in absolute terms)
        other = 1.01 * self._coupling(Sk, theta[keep], j) + 2 * np.sqrt(j + 1) * self.u * self.anorm
        # ||[F_kept, F_new] S|| <= ||[F_kept, F_new]||_2 <= hypot(block bound + ||per-column part||_F, ||F_new||_F)
        c = self.carried
        cu = np.hypot(self.carried_units + host_norm(self.err_units[:c]), host_norm(self.err_units[c:j]))
        co = np.hypot(self.carried_other + host_norm(self.err_other[:c]), host_norm(self.err_other[c:j]))
        Y = self.Q[:, :j] @ self.op.cast(Sk)
        nxt = self.Q[:, j]
        self.Q = set_column(self.Q, slice(0, p), Y)
        self.Q = set_column(self.Q, p, nxt)
        if self.fixed:
            self.Q = set_column(self.Q, slice(p + 1, None), 0.0)  # keep the columns past the basis zero
        b = self.beta * Sk[j - 1, :]
        T = np.zeros_like(self.T)
        T[np.arange(p), np.arange(p)] = theta[keep]
        T[p, :p] = T[:p, p] = b
        self.T = T
        self.C = T.copy()
        self.err_units = np.zeros_like(self.err_units)
        self.err_other = np.zeros_like(self.err_other)
        coupled = np.abs(Sk).T @ self.err_coupled[:j]
        self.err_coupled = np.zeros_like(self.err_coupled)
        self.err_other[:p], self.err_coupled[:p] = other, coupled
        self.carried, self.carried_units, self.carried_other = p, float(cu), float(co)
        self.j = p
        self.tridiagonal = False


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


def qnorm_bound(kry: Krylov) -> float:
    """A bound on ``||Q_{j+1}||`` from the measured loss of orthogonality ``||Q^T Q - I||`` (plus the rounding of
    ``Q^T Q`` itself): one (n x j) x (j x n) product, once per run."""
    Qj = kry.Q[:, : kry.j + 1]
    G = kry.op.to_numpy(Qj.T @ Qj).astype(np.float64)
    return float(np.sqrt(1.0 + np.linalg.norm(G - np.eye(G.shape[0]), 2) + (kry.j + 1) * np.sqrt(kry.op.n) * kry.u))
