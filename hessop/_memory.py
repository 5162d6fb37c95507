"""Memory budgets in bytes, and the shapes of the runs that fit them.

The solvers hold their vectors in blocks whose size they choose: the Lanczos basis (:func:`hessop.lanczos`,
``max_basis``), the draws SLQ advances together (:func:`hessop.slq`, ``block_size``).  Their budget is given in
bytes (``memory=``) and defaults to :data:`FRACTION` (a quarter) of the memory free, at call time, on the device
that holds the vectors (:meth:`hessop.backends.base.Backend.free_memory`: ``torch.cuda.mem_get_info`` or CuPy's
on a GPU, JAX's ``Device.memory_stats()``, ``MemAvailable`` of /proc/meminfo on the CPU), so that the model's own
memory (activations, a kept gradient graph, whose default budget is also a quarter of the free memory) keeps the
rest.  This module turns a budget into a number of length-n vectors and shapes the run to it; when nothing fits,
``ValueError`` names the knob.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hessop._validate import check_int

__all__ = ["FALLBACK_VECTORS", "FRACTION", "Budget", "budget", "format_bytes", "lanczos_basis", "lanczos_vectors",
           "slq_block"]

FRACTION = 0.25
"""Share of the device's free memory a solver's vectors may take by default (``memory=None``)."""
FALLBACK_VECTORS = 400
"""Default budget in vectors where the device's free memory cannot be read (e.g. macOS' host memory)."""


def format_bytes(x: float) -> str:
    """``x`` bytes in words (binary units).

    Examples
    --------
    >>> format_bytes(3 * 2**30), format_bytes(1536 * 1024), format_bytes(100)
    ('3.00 GiB', '1.50 MiB', '100 bytes')
    """
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= size:
            return f"{x / size:.2f} {unit}"
    return f"{int(x)} bytes"


@dataclass(frozen=True)
class Budget:
    """A memory budget for a solver's length-n vectors.

    Attributes
    ----------
    bytes : int or None
        The budget; None where none was given and the device's free memory cannot be read.
    vector_bytes : int
        One vector of the operator: ``n * itemsize`` of its (solver) dtype.
    source : str
        Where the budget comes from, in words (for messages).
    """

    bytes: int | None
    vector_bytes: int
    source: str

    @property
    def vectors(self) -> int:
        """How many vectors the budget holds (:data:`FALLBACK_VECTORS` where it is unknown)."""
        return FALLBACK_VECTORS if self.bytes is None else self.bytes // self.vector_bytes

    def words(self, count: int) -> str:
        """``count`` vectors in words: ``"27 vectors of 42.63 MiB = 1.12 GiB"``."""
        return f"{count} vectors of {format_bytes(self.vector_bytes)} = {format_bytes(count * self.vector_bytes)}"


def budget(op: Any, memory: int | None) -> Budget:
    """The budget for ``op``'s vectors: ``memory`` bytes if given (an int >= 1), else :data:`FRACTION` of the free
    memory of the device holding them (:meth:`~hessop.backends.base.Backend.free_memory`, read now).

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> b = budget(HessianOperator.from_matrix(np.eye(1000)), 80_000)
    >>> b.vectors, b.vector_bytes, b.source
    (10, 8000, 'memory=80,000 bytes (78.12 KiB)')
    """
    vector_bytes = int(op.n) * np.dtype(op.dtype).itemsize
    if memory is not None:
        memory = check_int(memory, "memory (bytes)", 1)
        return Budget(int(memory), vector_bytes, f"memory={int(memory):,} bytes ({format_bytes(memory)})")
    free = op.backend.free_memory()
    if free is None:
        return Budget(None, vector_bytes, f"{FALLBACK_VECTORS} vectors (the free memory of the {op.backend.name} "
                                          "backend's device cannot be read)")
    return Budget(int(free * FRACTION), vector_bytes,
                  f"a quarter of the {format_bytes(free)} free on the {op.backend.name} backend's device "
                  f"= {format_bytes(free * FRACTION)}")


def lanczos_vectors(m: int, k: int) -> int:
    """Peak vectors of :func:`hessop.lanczos` with a basis of ``m`` and ``k`` wanted pairs: the ``m + 1`` basis
    columns plus the largest temporary: four vectors within a step (the product and the Gram-Schmidt updates), the
    ``p = k + (m - k) // 2`` Ritz vectors of a thick restart, or the ``4 k`` of the end (the eigenvectors, the
    vectors verified, their products and residuals).

    Examples
    --------
    >>> lanczos_vectors(40, 5), lanczos_vectors(6, 5)
    (63, 27)
    """
    return m + 1 + max(4, min(k + (m - k) // 2, m - 1), 4 * k)


def lanczos_basis(op: Any, k: int, default: int, max_basis: int | None, memory: int | None) -> int:
    """The basis size of :func:`hessop.lanczos`: ``max_basis`` if given (checked against ``memory`` when that is
    given too), else the largest ``m <= default`` whose :func:`lanczos_vectors` fit the budget (:func:`budget`);
    ``ValueError`` naming ``memory`` / ``max_basis`` when not even ``m = k + 1`` fits.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_matrix(np.eye(1000))  # 8,000 bytes a vector
    >>> [lanczos_basis(H, 5, 40, None, None), lanczos_basis(H, 5, 40, None, 40 * 8000),
    ...  lanczos_basis(H, 5, 40, 7, None)]
    [40, 19, 7]
    >>> lanczos_basis(H, 5, 40, None, 20 * 8000)
    Traceback (most recent call last):
    ...
    ValueError: lanczos(k=5) needs at least 27 vectors of 7.81 KiB = 210.94 KiB (a basis of k + 1 = 6); ...
    """
    if max_basis is not None:
        m = min(check_int(max_basis, "max_basis", k + 1, None), int(op.n))
        if memory is None:
            return m  # an explicit count, as before byte budgets
    b = budget(op, memory)
    cap = b.vectors
    least = lanczos_vectors(k + 1, k)
    if max_basis is not None:
        if lanczos_vectors(m, k) > cap:
            fit = [x for x in range(k + 1, m) if lanczos_vectors(x, k) <= cap]
            fix = f"lower max_basis to {fit[-1]}" if fit else "lower k"
            raise ValueError(f"lanczos(k={k}, max_basis={m}) needs {b.words(lanczos_vectors(m, k))}; the memory "
                             f"budget is {b.source}: {fix}, or pass a larger memory= (bytes)")
        return m
    if least > cap:
        raise ValueError(f"lanczos(k={k}) needs at least {b.words(least)} (a basis of k + 1 = {k + 1}); the memory "
                         f"budget is {b.source}: pass a larger memory= (bytes), or a smaller k")
    m = default
    while m > k + 1 and lanczos_vectors(m, k) > cap:
        m -= 1
    return m


def slq_block(op: Any, n_iter: int, draws: int, block_size: int | None, memory: int | None) -> tuple[int, int]:
    """``(block_size, per_draw)`` for :func:`hessop.slq`: a draw of ``n_iter`` steps holds ``per_draw = n_iter + 4``
    vectors (its basis of ``n_iter + 1``, its probe, input and product columns); the block is ``block_size`` if
    given, else as many draws as the budget (:func:`budget`) holds, at most ``draws``.  ``ValueError`` naming
    ``memory`` / ``n_iter`` / ``block_size`` when one draw, or the given block, does not fit.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_matrix(np.eye(1000))  # 8,000 bytes a vector
    >>> slq_block(H, 20, 10, None, 50 * 8000), slq_block(H, 20, 10, None, None)
    ((2, 24), (10, 24))
    """
    per_draw = n_iter + 4
    b = budget(op, memory)
    fit = b.vectors // per_draw
    if fit < 1:
        raise ValueError(f"slq(n_iter={n_iter}) needs {b.words(per_draw)} per draw (n_iter + 4); the memory budget "
                         f"is {b.source}: pass a larger memory= (bytes; at least {per_draw * b.vector_bytes:,}), or "
                         "a smaller n_iter")
    if block_size is None:
        return min(draws, fit), per_draw
    if check_int(block_size, "block_size", 1) > fit:
        raise ValueError(f"block_size = {block_size} draws of n_iter = {n_iter} steps need "
                         f"{b.words(block_size * per_draw)}, over the memory budget ({b.source}); lower block_size "
                         f"to {fit} or pass a larger memory= (bytes).")
    return block_size, per_draw
