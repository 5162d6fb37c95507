"""Random probe blocks for the randomised estimators (trace, diagonal, spectral density, sketch).

Every probe is drawn on the host from a NumPy generator and moved to the backend once per block with
``H.asarray``, so one seed gives the same probes, and the same answers, on every backend (and on every MPI rank).
Probe ``j`` is always the ``j``-th length-``n`` stretch of the generator's stream: blocks are drawn row-major as
``(k, n)`` and transposed, so the probes do not depend on how a run is cut into blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from hessop._validate import check_choice

__all__ = ["DISTRIBUTIONS", "block_sizes", "column_dots", "draw", "probe_block"]

DISTRIBUTIONS = ("rademacher", "gaussian")

DEFAULT_BLOCK = 16
"""Default number of probes per block HVP: large enough to amortise a framework's per-call overhead, small enough
that ``n x 16`` probe and product blocks fit beside a large model."""


def draw(rng: np.random.Generator, n: int, k: int, distribution: str = "rademacher", scale: float = 1.0) -> np.ndarray:
    """Host array of shape (n, k) whose columns are independent probes.

    ``"rademacher"``: entries ``+-scale`` with probability 1/2 each (``E[v v^T] = scale**2 I``, ``||v||^2 = n
    scale**2`` exactly); ``"gaussian"``: entries ``N(0, scale**2)``.
    """
    distribution = check_choice(distribution, "distribution", DISTRIBUTIONS)
    if distribution == "rademacher":
        rows = np.where(rng.random((k, n)) < 0.5, -scale, scale)
    else:
        rows = scale * rng.standard_normal((k, n))
    return np.ascontiguousarray(rows.T)


def probe_block(op: Any, rng: np.random.Generator, k: int, distribution: str = "rademacher",
                scale: float = 1.0) -> Any:
    """``k`` probes drawn on the host (see :func:`draw`) and moved to ``op``'s backend in one transfer."""
    return op.cast(draw(rng, op.n, k, distribution, scale))


def block_sizes(total: int, block_size: int) -> Iterator[int]:
    """Sizes of consecutive blocks covering ``total`` items, each at most ``block_size``."""
    done = 0
    while done < total:
        k = min(block_size, total - done)
        yield k
        done += k


def column_dots(xp: Any, A: Any, B: Any) -> Any:
    """``[a_j . b_j for each column j]`` as a native (k,) array: one fused product, no loop over columns."""
    return xp.sum(A * B, axis=0)
