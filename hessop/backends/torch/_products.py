"""The two product methods of the torch backend, each accumulating ``H V = sum_b w_b H_b V`` over the batches:
double backward (through the kept graphs of :mod:`._graph_cache` where they are) and forward-over-reverse
(``torch.func.jvp`` of ``grad``, ``vmap`` over a block's columns)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessop.backends.torch._batches import to_device
from hessop.backends.torch._graph_cache import state_key
from hessop.backends.torch._train_mode import batch_statistics_only, buffers_preserved

if TYPE_CHECKING:
    from hessop.backends.torch._backend import TorchBackend

__all__ = ["LossModule", "double_backward", "forward_over_reverse"]


class LossModule(nn.Module):
    """``forward(batch) = loss(batch)`` with ``model`` as submodule ``m``, for ``functional_call``.

    Examples
    --------
    >>> model = torch.nn.Linear(1, 1)
    >>> [name for name, _ in LossModule(model, lambda batch: model(batch).sum()).named_parameters()]
    ['m.weight', 'm.bias']
    """

    def __init__(self, model: nn.Module, loss: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.m = model
        object.__setattr__(self, "_loss", loss)  # not a submodule

    def forward(self, batch: Any) -> torch.Tensor:
        return self._loss(batch)


def double_backward(backend: TorchBackend, V: torch.Tensor) -> torch.Tensor:
    """``H V`` by reverse-over-reverse: per batch, ``d/dtheta (grad L_b . v_j)`` for each column, the gradient's
    graph shared by the k columns and, where the cache keeps it, by later products."""
    k = V.shape[1]
    rows: list[torch.Tensor | None] = [None] * k  # row j: H v_j, the batches' terms summed
    cache, model, params, offsets = backend.graphs, backend.model, backend.params, backend.offsets
    caching = backend.caching()
    if caching:
        key = state_key(model, backend.data)
        if key != cache.key:
            cache.clear()  # the kept graphs are stale
    with torch.enable_grad(), buffers_preserved(model):
        for i, (batch, w) in enumerate(backend._weighted()):
            graph, kept = cache.gradient_graph(i, batch, backend.loss, params, model, caching)
            if graph is None:
                continue  # loss at most linear in these parameters: this batch adds nothing
            used, outputs = graph
            for j in range(k):
                v = V[:, j]
                hv = torch.autograd.grad(
                    outputs, params, retain_graph=kept or j < k - 1, allow_unused=True,
                    grad_outputs=[v[offsets[m]: offsets[m + 1]].view_as(outputs[a]) for a, m in enumerate(used)])
                term = torch.cat([h.reshape(-1) if h is not None else p.new_zeros(p.numel())
                                  for h, p in zip(hv, params, strict=True)])
                if w != 1.0:
                    term.mul_(w)
                rows[j] = term if rows[j] is None else rows[j].add_(term)
    if caching:  # restoring train-mode buffers (buffers_preserved) counts as an in-place change
        cache.key = state_key(model, backend.data) if model.training else key
    if rows[0] is None:
        return V.new_zeros(V.shape)
    return rows[0][:, None] if k == 1 else torch.stack(rows, dim=1)


def forward_over_reverse(backend: TorchBackend, V: torch.Tensor) -> torch.Tensor:
    """``H V`` by forward-over-reverse: per batch, ``jvp`` of ``grad`` of the loss as a function of the selected
    parameters (``functional_call``), ``vmap`` over the columns of a block."""
    fnames = ["m." + name for name in backend.names]
    offsets, shapes = backend.offsets, backend.shapes
    module = backend.loss_module

    def split(v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: v[offsets[i]: offsets[i + 1]].reshape(shape)
                for i, (name, shape) in enumerate(zip(fnames, shapes, strict=True))}

    def flat(tangents: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tangents[name].reshape(-1) for name in fnames])

    primals = {name: p.detach() for name, p in zip(fnames, backend.params, strict=True)}
    out = torch.zeros_like(V)
    with (torch.no_grad(), buffers_preserved(backend.model), batch_statistics_only(backend.model),
          sdpa_kernel(SDPBackend.MATH)):  # the fused attention kernels have no forward derivative
        for batch, w in backend._weighted():
            # A floating-point target gets an explicit zero tangent: with none, torch's mse_loss double backward
            # writes in place into an immutable zero tensor ("ZeroTensors are immutable", pytorch#123996).
            target = batch[1] if backend.loss_form == "outputs" else None
            if not (isinstance(target, torch.Tensor) and target.is_floating_point()):
                target = None
            else:
                target = to_device(target, backend.device)

            def grad_fn(ps: dict, t: Any, batch: Any = batch) -> dict:
                def loss(q: dict) -> torch.Tensor:
                    return functional_call(module, q, (batch if t is None else (batch[0], t),))
                return grad(loss)(ps)

            def tangent(v: torch.Tensor, grad_fn: Callable = grad_fn, t: Any = target) -> torch.Tensor:
                if t is None:
                    return flat(jvp(lambda ps: grad_fn(ps, None), (primals,), (split(v),))[1])
                return flat(jvp(grad_fn, (primals, t), (split(v), torch.zeros_like(t)))[1])

            hv = tangent(V[:, 0])[:, None] if V.shape[1] == 1 else vmap(tangent, in_dims=1, out_dims=1)(V)
            out.add_(hv, alpha=w)
    return out


def _widen(batch: Any) -> Any:
    """``batch`` with every floating tensor (nested in tuples, lists, dicts) in float64."""
    if isinstance(batch, torch.Tensor):
        return batch.to(torch.float64) if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: _widen(v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_widen(x) for x in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(_widen(x) for x in batch)
    return batch


def reference_products(backend: TorchBackend, U: Any, host: bool = True) -> Any:
    """``H U`` in float64 for host columns ``U`` (NumPy, (n, k)): forward-over-reverse through float64 copies of
    every parameter, floating buffer and floating batch tensor (``functional_call``; the model is not changed).
    For measuring the rounding of a float32 or half-precision model's own products
    (:mod:`hessop._product_error`).  Returns a host float64 array (with ``host=False`` a float64 tensor on the
    model's device), or None when the loss cannot be evaluated in
    float64 (a ``loss_fn`` that builds tensors of a fixed dtype): the caller then measures without it."""
    import numpy as np

    module, model = backend.loss_module, backend.model
    wide = {"m." + k: p.detach().to(torch.float64) for k, p in model.named_parameters()}
    wide.update({"m." + k: b.to(torch.float64) if b.is_floating_point() else b for k, b in model.named_buffers()})
    fnames = ["m." + name for name in backend.names]
    offsets, shapes = backend.offsets, backend.shapes
    primals = {name: wide[name] for name in fnames}
    V = torch.as_tensor(np.asarray(U, dtype=np.float64), device=backend.device)
    out = torch.zeros_like(V)
    try:
        with (torch.no_grad(), buffers_preserved(model), batch_statistics_only(model), sdpa_kernel(SDPBackend.MATH)):
            for batch, w in backend._weighted():
                batch = _widen(to_device(batch, backend.device))

                def loss(q: dict, batch: Any = batch) -> torch.Tensor:
                    return functional_call(module, {**wide, **q}, (batch,))

                if loss(primals).dtype != torch.float64:  # the loss narrows on its own: no wider product
                    return None

                for j in range(V.shape[1]):
                    v = V[:, j]
                    tangent = {name: v[offsets[i]: offsets[i + 1]].reshape(shape)
                               for i, (name, shape) in enumerate(zip(fnames, shapes, strict=True))}
                    hv = jvp(grad(loss), (primals,), (tangent,))[1]
                    out[:, j] += w * torch.cat([hv[name].reshape(-1) for name in fnames]).to(torch.float64)
    except (RuntimeError, TypeError, NotImplementedError):
        return None
    return out.cpu().numpy() if host else out
