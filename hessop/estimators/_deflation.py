"""Deflation: an orthonormal basis ``Q`` of sketched directions of H with ``Z = H Q`` and ``B = Q^T H Q``, and the
products of probes projected off it (Hutch++, Diag++)."""

from __future__ import annotations

from typing import Any

import numpy as np

from hessop._probes import column_dots
from hessop._validate import check_finite


def orthonormal_range(xp: Any, Y: Any) -> tuple[Any, Any]:
    """Reduced QR ``Y = Q R`` on the backend (Householder: ``Q`` orthonormal to working precision)."""
    return xp.linalg.qr(Y)


class Deflation:
    """The exact part of Hutch++ and Diag++: an orthonormal basis ``Q`` of sketched directions of H, ``Z = H Q``,
    ``B = Q^T H Q`` and ``exact = tr(B)``, and the products ``H g'`` of the probes projected off ``Q`` since it last
    grew (the sketch of its next growth)."""

    def __init__(self, op: Any) -> None:
        self.op = op
        self.Q: Any = None
        self.Z: Any = None
        self.B: Any = None
        self.exact = 0.0
        self.pending: list[Any] = []

    @property
    def rank(self) -> int:
        return 0 if self.Q is None else int(self.Q.shape[1])

    def grow(self, Y: Any = None) -> None:
        """Add the range of the sketch block ``Y`` (columns ``H omega``; default the pending products) to ``Q``: one
        product per new column."""
        xp = self.op.xp
        if Y is None:
            Y = xp.concat(self.pending, axis=1)
        self.pending = []
        if self.Q is not None:
            for _ in range(2):  # two block Gram-Schmidt passes: the new columns orthogonal to Q to working precision
                Y = Y - self.Q @ (self.Q.T @ Y)
        Qn, _ = orthonormal_range(xp, Y)
        if self.Q is not None:
            Qn, _ = orthonormal_range(xp, Qn - self.Q @ (self.Q.T @ Qn))
        Zn = self.op.hvp_block(Qn)
        self.Q = Qn if self.Q is None else xp.concat([self.Q, Qn], axis=1)
        self.Z = Zn if self.Z is None else xp.concat([self.Z, Zn], axis=1)
        B = self.Q.T @ self.Z
        self.B = (B + B.T) / 2
        self.exact = check_finite(float(self.op.to_numpy(xp.sum(column_dots(xp, self.Q, self.Z)))),
                                  "tr(Q^T H Q)", self.rank)

    def _project(self, G: Any) -> tuple[Any, Any, Any]:
        """``C = Q^T G``, the probes projected off Q, ``G' = G - Q C``, and their products ``H G'`` (kept pending)."""
        C = self.Q.T @ G
        Gp = G - self.Q @ C
        W = self.op.hvp_block(Gp)
        self.pending.append(W)
        return C, Gp, W

    def probe(self, G: Any, plain: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Trace samples of the probes ``G`` (one product each): the residual ``g'^T H g'`` with
        ``g' = (I - Q Q^T) g`` and, with ``plain``, the plain ``g^T H g`` of the same probes (from ``H g'`` and
        ``Z``, no further product)."""
        xp = self.op.xp
        C, Gp, W = self._project(G)
        r = column_dots(xp, Gp, W)
        rows = [r]
        if plain:
            rows.append(r + column_dots(xp, C, self.B @ C) + 2 * column_dots(xp, C, self.Z.T @ Gp))
        vals = np.asarray(self.op.to_numpy(xp.stack(rows, axis=0)), dtype=np.float64).reshape(len(rows), -1)
        return vals[0], (vals[1] if plain else None)

    def probe_diagonal(self, G: Any, plain: bool) -> tuple[Any, Any]:
        """Diagonal samples of the Rademacher probes ``G`` (one product each, on the backend): the residual
        ``g * ((I - P) H (I - P) g) = g * (H g' - Q Z^T g')`` and, with ``plain``, ``g * (H g) = g * (H g' + Z C)``."""
        C, Gp, W = self._project(G)
        return G * (W - self.Q @ (self.Z.T @ Gp)), (G * (W + self.Z @ C) if plain else None)

    def exact_diagonal(self) -> Any:
        """``diag(P H + H P - P H P)``, ``P = Q Q^T``: the diagonal on the deflated directions, exactly."""
        xp = self.op.xp
        return 2 * xp.sum(self.Q * self.Z, axis=1) - xp.sum((self.Q @ self.B) * self.Q, axis=1)

    def state(self) -> dict[str, Any]:
        if self.Q is None:
            return {}
        xp = self.op.xp
        pending = xp.concat(self.pending, axis=1) if self.pending else np.empty((self.op.n, 0))
        return {"Q": self.Q, "Z": self.Z, "B": self.B, "exact": self.exact, "pending": pending}

    def restore(self, state: dict[str, Any]) -> None:
        self.Q, self.Z, self.B = (self.op.cast(state[key]) for key in "QZB")
        self.exact = float(state["exact"])
        self.pending = [self.op.cast(state["pending"])] if state["pending"].shape[1] else []
