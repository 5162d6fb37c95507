"""The kept-graph cache: each batch's gradient with its ``create_graph`` graph, kept between double-backward
products within a memory budget, and dropped when the model, its mode or the data change."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessop._memory import FRACTION
from hessop.backends.base import host_free_memory
from hessop.backends.torch._batches import tensors

__all__ = ["CACHE_MEMORY", "GraphCache", "default_cache_memory", "device_free_memory", "state_key"]

CACHE_MEMORY = 2**30
"""Upper end of the default ``cache_memory`` (1 GiB); see :func:`default_cache_memory`."""

Graph = tuple[list[int], list[torch.Tensor]]
"""``(used, grads)``: the indices of the selected parameters whose gradient depends on the parameters, and those
gradients (with their graph)."""


def device_free_memory(device: torch.device) -> int | None:
    """Bytes free now on a torch device: on a GPU, the driver's free memory (``torch.cuda.mem_get_info``) plus
    what torch's caching allocator holds unused (reserved less allocated); on the CPU the host's available memory
    (:func:`hessop.backends.base.host_free_memory`); None where it cannot be read (other devices).

    Examples
    --------
    >>> free = device_free_memory(torch.device("cpu"))
    >>> free is None or free > 0
    True
    """
    if device.type == "cuda":
        idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + max(int(idle), 0)
    if device.type == "cpu":
        return host_free_memory()
    return None


def default_cache_memory(device: torch.device) -> int:
    """The default budget for kept gradient graphs: ``min(CACHE_MEMORY, FRACTION * free)`` bytes, ``free`` being
    the device's free memory when the operator is built (:func:`device_free_memory`) and ``FRACTION`` the share of
    :mod:`hessop._memory` (a quarter); ``CACHE_MEMORY`` where it cannot be read.

    Examples
    --------
    >>> 0 < default_cache_memory(torch.device("cpu")) <= CACHE_MEMORY
    True
    """
    free = device_free_memory(device)
    return CACHE_MEMORY if free is None else min(CACHE_MEMORY, int(free * FRACTION))


def state_key(model: nn.Module, data: Any) -> tuple:
    """What the kept graphs depend on: each parameter, buffer and batch tensor (identity, version counter,
    storage: an in-place change or a replaced tensor changes it) and each module's train/eval mode.  The running
    statistics of train-mode BatchNorm layers are left out: a train-mode forward does not read them (it normalises
    with the batch's statistics), while every product's forward updates and restores them.

    Examples
    --------
    >>> model = torch.nn.Linear(1, 1)
    >>> key = state_key(model, [])
    >>> with torch.no_grad():
    ...     _ = model.bias.add_(1.0)
    >>> state_key(model, []) == key
    False
    """
    unread = {id(b) for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for b in m.buffers()}
    every = [*model.parameters(), *(b for b in model.buffers() if id(b) not in unread),
             *(t for b in data for t in tensors(b))]
    return (tuple((id(t), t._version, t.data_ptr()) for t in every),
            tuple(m.training for m in model.modules()))


class GraphCache:
    """Batch index -> its gradient graph, within ``budget`` bytes.

    Attributes
    ----------
    budget : int
        ``cache_memory``: the most bytes the kept graphs may hold (0 keeps nothing).
    bytes : int
        What the kept graphs hold now (never more than ``budget``).
    key : tuple
        The :func:`state_key` the kept graphs were built at.

    Examples
    --------
    >>> cache = GraphCache(0)
    >>> cache.bytes, len(cache.graphs)
    (0, 0)
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.graphs: dict[int, Graph | None] = {}
        self.over_budget: set[int] = set()  # batches whose graph does not fit
        self.key: tuple = ()
        self.bytes = 0

    def clear(self) -> None:
        """Free every kept graph."""
        self.graphs.clear()
        self.over_budget.clear()
        self.bytes = 0

    def gradient_graph(self, i: int, batch: Any, loss: Callable[[Any], torch.Tensor], params: list[torch.Tensor],
                       model: nn.Module, caching: bool) -> tuple[Graph | None, bool]:
        """Batch ``i``'s gradient with its graph (``create_graph``) as ``(used, grads)`` (None when there is none:
        the loss is at most linear in the parameters); and whether it is kept: taken from the cache, or built and
        kept (when ``caching``) if the tensors its graph saves (counted through ``saved_tensors_hooks``, storages
        of parameters, buffers and the batch excluded) and the gradients themselves fit what is left of the
        budget."""
        if i in self.graphs:
            return self.graphs[i], True
        keep = caching and i not in self.over_budget
        held: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with (torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if keep else contextlib.nullcontext(),
              sdpa_kernel(SDPBackend.MATH)):  # the fused attention kernels have no second derivative
            value = loss(batch)
            grads = torch.autograd.grad(value, params, create_graph=True, allow_unused=True)
        used = [m for m, g in enumerate(grads) if g is not None and g.requires_grad]
        graph = (used, [grads[m] for m in used]) if used else None
        if not keep:
            return graph, False
        for t in [*model.parameters(), *model.buffers(), *tensors(batch)]:
            held.pop(t.untyped_storage().data_ptr(), None)
        for g in graph[1] if graph else ():
            held[g.untyped_storage().data_ptr()] = g.untyped_storage().nbytes()
        size = sum(held.values())
        if self.bytes + size > self.budget:
            self.over_budget.add(i)
            return graph, False
        self.graphs[i] = graph
        self.bytes += size
        return graph, True
