"""The product methods of the torch backend, each accumulating ``H V = sum_b w_b H_b V`` over the batches: double
backward (through the kept graphs of :mod:`._graph_cache` where they are), forward-over-reverse (``torch.func.jvp``
of ``grad``, ``vmap`` over a block's columns), both exact up to rounding (Pearlmutter 1994), and central differences
of gradients (:func:`finite_difference`, with its measured error :func:`finite_difference_error`), which need
nothing but the model's own forward and backward passes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessop.backends.torch._batches import to_device
from hessop.backends.torch._graph_cache import state_key
from hessop.backends.torch._train_mode import batch_statistics_only, buffers_preserved

if TYPE_CHECKING:
    from hessop.backends.torch._backend import TorchBackend

__all__ = ["STEP_SCALES", "LossModule", "choose_step_scale", "double_backward", "finite_difference",
           "finite_difference_error", "finite_difference_step", "forward_over_reverse"]


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


def finite_difference_step(backend: TorchBackend, V: torch.Tensor) -> torch.Tensor:
    """The step ``h_j`` of :func:`finite_difference` for each column ``v_j`` of ``V`` (0 for a zero column):

    ``h_j = eps^(1/3) * max(1, ||theta||) / ||v_j||``,

    ``eps`` the unit roundoff of the parameters' dtype and ``theta`` the selected parameters.  The parameters move
    by ``h_j v_j``, of norm ``eps^(1/3) max(1, ||theta||)`` whatever ``||v_j||``: the step that balances the
    truncation error of a central difference (``O(h^2)``) against its rounding error (``O(eps / h)``) for a
    function whose third derivative is of the size of its first, on the scale of ``theta`` (Nocedal & Wright 2006,
    Numerical Optimization, sections 8.1 and 7.1: the relative step ``eps^(1/3)`` of central differences, and
    ``(1 + ||x||) / ||p||`` for the gradient difference along ``p`` of a Hessian-free Newton method), times the
    backend's ``fd_scale`` (:func:`choose_step_scale`, 1 until chosen).  It is not assumed accurate:
    :func:`finite_difference_error` measures the error it gives.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> b = SimpleNamespace(params=[torch.zeros(2, dtype=torch.float64)], torch_dtype=torch.float64)
    >>> h = finite_difference_step(b, torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    >>> h.tolist() == [torch.finfo(torch.float64).eps ** (1 / 3) / 2, 0.0]
    True
    """
    eps = torch.finfo(backend.torch_dtype).eps
    theta = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach().double())
                                                         for p in backend.params])))
    norms = torch.linalg.vector_norm(V.detach().double(), dim=0)
    step = eps ** (1 / 3) * max(1.0, theta) * (getattr(backend, "fd_scale", None) or 1.0)
    return torch.where(norms > 0, step / torch.where(norms > 0, norms, 1.0), 0.0)


def _gradient(backend: TorchBackend) -> torch.Tensor:
    """The flat gradient ``sum_b w_b grad L_b`` at the parameters' current values (one forward and one backward
    pass per batch, the model's own kernels; ``.grad`` untouched)."""
    params, total = backend.params, None
    with torch.enable_grad():
        for batch, w in backend._weighted():
            grads = torch.autograd.grad(backend.loss(batch), params, allow_unused=True)
            flat = torch.cat([g.reshape(-1) if g is not None else p.new_zeros(p.numel())
                              for g, p in zip(grads, params, strict=True)]).detach()
            total = flat.mul_(w) if total is None else total.add_(flat, alpha=w)
    return total


def _differences(backend: TorchBackend, V: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g(theta + h_j v_j) - g(theta - h_j v_j)) / (2 h_j)`` for each column, and ``||g(theta + h_j v_j)|| +
    ||g(theta - h_j v_j)||`` (float64, for the rounding term of :func:`finite_difference_error`).  The parameters
    are saved first and copied back at the end, whatever happens: they come back bit for bit (a copy, never a
    subtraction of the step)."""
    params, offsets = backend.params, backend.offsets
    wide = torch.float32 if backend.torch_dtype in (torch.float16, torch.bfloat16) else backend.torch_dtype
    out = torch.zeros_like(V)
    gnorms = torch.zeros(V.shape[1], dtype=torch.float64, device=V.device)
    saved = [p.detach().clone() for p in params]
    try:
        with buffers_preserved(backend.model):
            for j in range(V.shape[1]):
                hj = float(h[j])
                if hj == 0.0:
                    continue  # a zero column: H 0 = 0
                v = V[:, j]
                grads = []
                for sign in (1.0, -1.0):
                    with torch.no_grad():
                        for m, (p, theta) in enumerate(zip(params, saved, strict=True)):
                            p.copy_(theta + (sign * hj) * v[offsets[m]: offsets[m + 1]].view_as(p))
                    g = _gradient(backend)
                    grads.append(g)
                    gnorms[j] += torch.linalg.vector_norm(g.double())
                out[:, j] = ((grads[0].to(wide) - grads[1].to(wide)) / (2.0 * hj)).to(V.dtype)
    finally:
        with torch.no_grad():
            for p, theta in zip(params, saved, strict=True):
                p.copy_(theta)
    return out, gnorms


def finite_difference(backend: TorchBackend, V: torch.Tensor) -> torch.Tensor:
    """``H V`` by central differences of gradients, column by column:

    ``H v ~ (g(theta + h v) - g(theta - h v)) / (2 h)``,  ``g = sum_b w_b grad L_b``,

    with ``h`` from :func:`finite_difference_step`.  Two gradient evaluations (a forward and a backward pass per
    batch, through the model's own kernels: fused attention, fused losses and anything else without a second
    derivative) per column; the parameters are restored bit for bit afterwards.  Its error, ``h^2/6 D^3 g[v, v, v]``
    plus rounding ``O(eps ||g|| / h)``, is not zero: :func:`finite_difference_error` measures it, and the
    operator's product error (:mod:`hessop._product_error`) includes that measurement.

    Examples
    --------
    >>> from hessop import HessianOperator
    >>> model = torch.nn.Linear(1, 1, bias=False).double()
    >>> data = (torch.tensor([[1.0], [2.0]], dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))
    >>> H = HessianOperator.from_torch(model, torch.nn.MSELoss(), data, hvp_method="finite_difference")
    >>> before = model.weight.detach().clone()
    >>> round(float((H @ np.ones(1))[0]), 9), bool(torch.equal(model.weight, before))  # d2/dw2 mean (w x)^2 = 5
    (5.0, True)
    """
    _chosen_step(backend)
    return _differences(backend, V, finite_difference_step(backend, V))[0]


def _chosen_step(backend: TorchBackend) -> None:
    """Choose the backend's step scale (:func:`choose_step_scale`) if it has none yet."""
    if getattr(backend, "fd_scale", None) is None:
        backend.fd_scale = choose_step_scale(backend)


STEP_SCALES = (1.0, 1 / 4, 1 / 16, 1 / 64)
"""The multiples of the default step ``eps^(1/3) max(1, ||theta||) / ||v||`` that :func:`choose_step_scale` tries."""

_STEP_SEED = 0x57E9  # the two random vectors of the choice: the same on every run


def choose_step_scale(backend: TorchBackend) -> float:
    """The multiple of the default step (:data:`STEP_SCALES`) with the smallest measured error
    (:func:`finite_difference_error`, the larger of two seeded random unit vectors'), chosen once per backend at
    its first finite-difference product (``8 * len(STEP_SCALES)`` gradients).  The default balances truncation
    against rounding for a smooth loss with third derivatives of the size of its first; the choice adapts it to
    the model (the test CNN, float64: relative error 3e-9 at the default, 2e-10 at the chosen step).  A
    piecewise-linear loss (ReLU) makes the gradient jump wherever the step moves a pre-activation across 0, an
    error that does not shrink with ``h`` until almost no kink is crossed: on the trained test CNN in float32 it is
    about 1e-2 absolute (0.13 relative) from the default step down to 1/64 of it, which this choice cannot mend
    (exact products are the remedy there).  The choice only sets the accuracy: the error at the chosen step is
    measured, as at any step, for the operator's product error.
    """
    U = np.random.default_rng(_STEP_SEED).standard_normal((backend.n, 2))
    V = backend.asarray(U / np.linalg.norm(U, axis=0))
    best, best_error = 1.0, float("inf")
    for scale in STEP_SCALES:
        backend.fd_scale = scale
        error = float(finite_difference_error(backend, V).max())
        if error < best_error:
            best, best_error = scale, error
    return best


def finite_difference_error(backend: TorchBackend, V: torch.Tensor) -> torch.Tensor:
    """A measured estimate of ``||D_h v_j - H v_j||`` for each column of ``V``, ``D_h`` the central difference of
    :func:`finite_difference` at its step ``h``: the difference at ``h`` and at ``2 h`` (Richardson's two steps)
    and the rounding of the gradients,

    ``est_j = ||D_h v_j - D_2h v_j|| + eps (||g(theta + h v_j)|| + ||g(theta - h v_j)||) / (2 h)``.

    The truncation error of a central difference is ``c h^2 + O(h^4)`` (``c = D^3 g[v, v, v] / 6``), so
    ``D_2h - D_h = 3 c h^2 + ...``: three times the truncation error at ``h``.  Rounding adds a term of size
    ``rho / h`` to ``D_h`` and ``rho / (2 h)`` to ``D_2h``, nearly independent: their difference is about
    ``sqrt(5) / 2`` times the first, so the first term covers the realised rounding too; the second is the
    classical rounding bound of a gradient difference (e.g. Nocedal & Wright 2006, section 8.1), added for
    gradients computed to working precision.  Costs ``4 k`` gradient evaluations for ``k`` columns (two
    differences).  Returns float64 norms, one per column, on the parameters' device.

    Examples
    --------
    >>> from hessop import HessianOperator
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(1, 1, bias=False).double()
    >>> data = (torch.tensor([[1.0], [2.0]], dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))
    >>> H = HessianOperator.from_torch(model, torch.nn.MSELoss(), data, hvp_method="finite_difference")
    >>> est = finite_difference_error(H.backend, torch.ones(1, 1, dtype=torch.float64))
    >>> bool(0 < est[0] < 1e-8)  # H = 5, a quadratic loss: no truncation, rounding only
    True
    """
    _chosen_step(backend)
    h = finite_difference_step(backend, V)
    d1, gnorms = _differences(backend, V, h)
    d2 = _differences(backend, V, 2.0 * h)[0]
    eps = torch.finfo(backend.torch_dtype).eps
    spread = torch.linalg.vector_norm((d1 - d2).double(), dim=0)
    rounding = torch.where(h > 0, eps * gnorms / (2.0 * torch.where(h > 0, h, 1.0)), 0.0)
    return spread + rounding


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
