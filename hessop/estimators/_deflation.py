"""Deflation: an orthonormal basis ``Q`` of sketched directions of H with ``Z = H Q`` and ``B = Q^T H Q``, and the
products of probes projected off it (Hutch++, Diag++)."""

from __future__ import annotations

from typing import Any

import numpy as np

from hessop._array import check_finite
from hessop._probes import column_dots


def _orthonormal_range(xp: Any, Y: Any) -> tuple[Any, Any]:
    """Reduced QR ``Y = Q R`` on the backend (Householder: ``Q`` orthonormal to working precision)."""
    return xp.linalg.qr(Y)


class _Deflation:
    """Hutch++'s exact part: an orthonormal basis ``Q`` of sketched directions of H, ``Z = H Q``, ``B = Q^T H Q``."""

    def __init__(self, op: Any) -> None:
        self.op = op
        self.Q: Any = None
        self.Z: Any = None
        self.B: Any = None
        self.exact = 0.0

    @property
    def rank(self) -> int:
        return 0 if self.Q is None else int(self.Q.shape[1])

    def grow(self, Y: Any) -> None:
        """Add the range of the sketch block ``Y`` (columns ``H omega``) to ``Q``: one product per new column."""
        xp = self.op.xp
        if self.Q is not None:
            for _ in range(2):  # two block Gram-Schmidt passes: the new columns orthogonal to Q to working precision
                Y = Y - self.Q @ (self.Q.T @ Y)
        Qn, _ = _orthonormal_range(xp, Y)
        if self.Q is not None:
            Qn, _ = _orthonormal_range(xp, Qn - self.Q @ (self.Q.T @ Qn))
        Zn = self.op.hvp_block(Qn)
        self.Q = Qn if self.Q is None else xp.concat([self.Q, Qn], axis=1)
        self.Z = Zn if self.Z is None else xp.concat([self.Z, Zn], axis=1)
        B = self.Q.T @ self.Z
        self.B = (B + B.T) / 2
        self.exact = check_finite(float(self.op.to_numpy(xp.sum(column_dots(xp, self.Q, self.Z)))),
                                  "tr(Q^T H Q)", self.rank)

    def probe(self, G: Any, plain: bool) -> tuple[np.ndarray, np.ndarray | None, Any]:
        """Products of the probes ``G`` projected off ``Q``: the residual samples ``g'^T H g'`` with
        ``g' = (I - Q Q^T) g``, optionally the plain samples ``g^T H g`` of the same probes (from ``H g' `` and
        ``Z``, no further product), and ``H g'`` (a sketch block for the next growth)."""
        xp = self.op.xp
        C = self.Q.T @ G
        Gp = G - self.Q @ C
        W = self.op.hvp_block(Gp)
        r = column_dots(xp, Gp, W)
        rows = [r]
        if plain:
            rows.append(r + column_dots(xp, C, self.B @ C) + 2 * column_dots(xp, C, self.Z.T @ Gp))
        vals = np.asarray(self.op.to_numpy(xp.stack(rows, axis=0)), dtype=np.float64).reshape(len(rows), -1)
        return vals[0], (vals[1] if plain else None), W
