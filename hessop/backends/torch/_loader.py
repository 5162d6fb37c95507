"""A ``DataLoader``'s batches kept in memory: read once when the operator is built, so that every product sees the
same batches (one fixed matrix, even from a shuffling loader) and no product restarts the loader's workers.

Without them a loader is iterated once per product: ``iter(loader)`` starts ``num_workers`` fresh processes each
time unless ``persistent_workers=True``, and a shuffling loader deals the samples into new batches each time.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch

from hessop.backends.torch._batches import tensors

__all__ = ["DATA_MEMORY", "batch_bytes", "default_data_memory", "keep_batches", "shuffles"]

DATA_MEMORY = 2**30
"""Upper end of the default budget for keeping a ``DataLoader``'s batches (1 GiB); see
:func:`default_data_memory`."""


def default_data_memory() -> int:
    """The budget for keeping a ``DataLoader``'s batches: ``min(DATA_MEMORY, free / 4)`` bytes, ``free`` being the
    host's available memory when the operator is built (``MemAvailable`` of /proc/meminfo on Linux; ``DATA_MEMORY``
    where it cannot be read).  The batches are kept where the loader puts them, the host for an ordinary loader.

    Examples
    --------
    >>> 0 < default_data_memory() <= DATA_MEMORY
    True
    """
    free = None
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    return DATA_MEMORY if free is None else min(DATA_MEMORY, free // 4)


def batch_bytes(batch: Any, seen: set[int]) -> int:
    """The bytes of ``batch``'s tensors whose storage is not in ``seen`` (updated): views of one storage count once.

    Examples
    --------
    >>> x, seen = torch.zeros(4, 2), set()
    >>> batch_bytes((x, x[:2]), seen), batch_bytes([x], seen)
    (32, 0)
    """
    total = 0
    for t in tensors(batch):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def shuffles(loader: torch.utils.data.DataLoader) -> bool:
    """Whether ``loader`` draws a new order at every pass (a ``RandomSampler``, or ``shuffle=True``).

    Examples
    --------
    >>> ds = torch.utils.data.TensorDataset(torch.zeros(4))
    >>> shuffles(torch.utils.data.DataLoader(ds, shuffle=True)), shuffles(torch.utils.data.DataLoader(ds))
    (True, False)
    """
    sampler = getattr(loader.batch_sampler, "sampler", None) or loader.sampler
    return isinstance(sampler, torch.utils.data.RandomSampler)


def keep_batches(data: Any, budget: int) -> tuple[Any, bool]:
    """``(list of the loader's batches, True)`` for a ``DataLoader`` whose batches, read once now, fit ``budget``
    bytes; ``(data, False)`` otherwise (any other data; a loader over the budget, whose partial read is dropped).

    A loader that is iterated at every product warns once, saying what it costs: one worker start-up per product
    for ``num_workers > 0`` without ``persistent_workers=True``, and new batches at every product for a shuffling
    loader (the same matrix only for a loss that is a sum of per-sample terms; the determinism check refuses the
    differences it sees, such as train-mode BatchNorm or ``drop_last``).

    Examples
    --------
    >>> ds = torch.utils.data.TensorDataset(torch.arange(6.0)[:, None], torch.zeros(6))
    >>> kept, ok = keep_batches(torch.utils.data.DataLoader(ds, batch_size=4), 2**20)
    >>> ok, [tuple(b[0].shape) for b in kept]
    (True, [(4, 1), (2, 1)])
    >>> keep_batches([1, 2], 2**20)
    ([1, 2], False)
    """
    if not isinstance(data, torch.utils.data.DataLoader):
        return data, False
    kept: list[Any] | None = []
    if budget > 0:
        seen: set[int] = set()
        total = 0
        for batch in data:
            total += batch_bytes(batch, seen)
            if total > budget:
                kept = None
                break
            kept.append(batch)
    else:
        kept = None
    if kept is not None:
        return kept, True
    costs = []
    if data.num_workers > 0 and not data.persistent_workers:
        costs.append(f"its {data.num_workers} worker processes start afresh at every product: pass "
                     "persistent_workers=True to the DataLoader")
    if shuffles(data):
        costs.append("it shuffles, so every product deals the samples into new batches: the operator is one matrix "
                     "only when the loss is a sum of per-sample terms (no train-mode BatchNorm, no drop_last); pass "
                     "shuffle=False")
    if costs:
        warnings.warn(
            f"hessop: the DataLoader's batches hold more than the {budget} bytes allowed for keeping them in memory, "
            f"so it is iterated at every product, and {'; and '.join(costs)} (or pass data=list(loader) to keep "
            "them anyway).", UserWarning, stacklevel=5)
    return data, False
