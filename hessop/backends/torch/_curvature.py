"""PyTorch curvature backends: products with the GGN, the Monte-Carlo Fisher and the empirical Fisher.

Maths in :mod:`hessop.curvature`.  Every product is ``sum_b w_b A_b^T M_b A_b v``, ``A_b`` the Jacobian of the
batch's outputs ``f`` (GGN, Fisher) or of its vector of per-sample losses (empirical Fisher), in three steps per
batch and column: ``A v`` (a Jacobian-vector product), ``M (A v)`` in output space (closed form, ``O(N C)``) and
``A^T (M A v)`` (a vector-Jacobian product: one backward pass).  ``A v`` is computed one of two ways
(``jv_method``):

* ``"forward"`` (the default, ``"auto"``): one forward pass with dual parameters ``theta + eps v``
  (``torch.autograd.forward_ad`` through ``torch.func.functional_call``; buffers, train-mode batch norm included)
  gives the outputs, with their reverse graph, and their tangent ``A v`` at once; then the backward pass.  Cost per
  column: a forward pass, its tangent (about two forward passes of arithmetic: ``dW x + W dx`` per layer) and a
  backward pass, about 5/3 of a gradient: **1.71 gradients of arithmetic on the test CNN, 1.67 on a
  ResNet-20-sized model** (``torch.utils.flop_counter.FlopCounterMode``, benchmarks/curvature_cost.py).  Nothing is
  kept between products.

  A block ``V`` of k > 1 vectors goes in one pass per batch (``block_method="auto"`` or ``"batched"``;
  :func:`_batched_block`): one primal forward pass keeping its reverse graph, the k tangents ``A V`` together
  (``torch.func.jvp`` under ``torch.func.vmap``: the primal does not depend on the tangents, so it is computed once),
  ``M`` on the k output tangents at once and the k products ``A^T (M A V)`` in one batched backward pass
  (``torch.autograd.grad(..., is_grads_batched=True)``).  Per column that is the tangent and the backward pass, about
  4/3 of a gradient, plus the primal pass shared by the block: **1.45 / 1.31 gradients per column for k = 5 / 20 on
  the test CNN, 1.47 / 1.35 on the ResNet-20-sized model**, against 1.71 / 1.67 column by column.  Its memory grows
  with k (the k tangents of every activation: 1.4-3x the primal's saved activations per column), so a block is
  split into chunks of columns that fit ``block_memory``; where ``torch.func`` cannot transform the model the
  products go column by column (``block_method="columns"``, chosen by ``"auto"`` after a warning).
* ``"reverse"`` (the fallback where an operation has no forward derivative): the "double vjp" ``A v =
  d(z(u) . v) / du`` through the graph of ``z(u) = A^T u`` of a zero dummy ``u`` (one forward pass and one
  ``create_graph`` backward pass, shared by the block's columns), then the backward pass for ``A^T``.  That graph
  is kept between products within ``cache_memory`` by the Hessian's kept-graph cache
  (:class:`hessop.backends.torch._graph_cache.GraphCache`, dropped when the model, its mode or the data change):
  2.86 / 3.02 gradients (CNN / ResNet-20) for a product that builds it, 1.86 / 2.02 through a kept graph (the
  double vjp costs more arithmetic than the forward tangent).

The data loop, batch weights, parameter selection (``params=``), device handling, determinism check and
train-mode warnings are those of :class:`hessop.backends.torch.TorchBackend`; its ``hvp_method`` does not apply.
Built by :meth:`hessop.HessianOperator.from_torch` with ``curvature=``, or from an existing backend by its
``curvature_backend`` (:func:`hessop.curvature_of`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, jvp, vmap
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessop.backends.settings import TorchSettings
from hessop.backends.torch._backend import TorchBackend
from hessop.backends.torch._batches import tensors, to_device
from hessop.backends.torch._graph_cache import default_cache_memory, state_key
from hessop.backends.torch._train_mode import batch_statistics_only, buffers_preserved
from hessop.curvature import OUTPUT_LOSSES, WHY_OUTPUT_LOSS, check_curvature, draw_seed

__all__ = ["BLOCK_METHODS", "JV_METHODS", "TorchCurvatureBackend", "curvature_product"]

JV_METHODS = ("auto", "forward", "reverse")
"""How a curvature product computes ``A v`` (:class:`TorchCurvatureBackend`'s ``jv_method``)."""

BLOCK_METHODS = ("auto", "batched", "columns")
"""How a forward-mode curvature product treats a block of k vectors (:class:`TorchCurvatureBackend`'s
``block_method``): in one batched pass, or column by column."""

TANGENT_MEMORY = 4
"""Memory of one column of a batched pass, in units of the bytes the primal forward pass saves for its backward
pass (its tangents and their graph, and the batched backward pass's gradients): an upper bound of the peaks measured at
k = 20, 3.0 on the test CNN and 1.4 on the ResNet-20-sized model (benchmarks/curvature_cost.py); used to split a
block to ``block_memory``."""


def _recognise(loss_fn: Callable, output_loss: str | None, reduction: str) -> tuple[str, float]:
    """``(kind, label_smoothing)`` of ``loss_fn``: a ``torch.nn.CrossEntropyLoss`` / ``MSELoss`` (its reduction
    must be ``reduction``; no class weights), ``torch.nn.functional.cross_entropy`` / ``mse_loss``, or any
    callable declared with ``output_loss``."""
    if output_loss is not None:
        return output_loss, 0.0
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.MSELoss)):
        if loss_fn.reduction != reduction:
            raise ValueError(f"loss_fn reduces with {loss_fn.reduction!r} but reduction={reduction!r}: pass "
                             f"reduction={loss_fn.reduction!r} (hessop supports 'mean' and 'sum').")
        if isinstance(loss_fn, nn.MSELoss):
            return "mse", 0.0
        if loss_fn.weight is not None:
            raise ValueError("loss_fn is a CrossEntropyLoss with class weights: the weighted loss is not the "
                             "negative log-likelihood of the model's predictive distribution, so its Fisher is not "
                             "defined. Use an unweighted loss for curvature='ggn' / 'fisher' / 'empirical_fisher'.")
        return "cross_entropy", float(loss_fn.label_smoothing)
    if loss_fn is F.cross_entropy:
        return "cross_entropy", 0.0
    if loss_fn is F.mse_loss:
        return "mse", 0.0
    raise ValueError(f"curvature needs a recognised loss in the model's outputs: {WHY_OUTPUT_LOSS}. loss_fn is "
                     f"{getattr(loss_fn, '__name__', type(loss_fn).__name__)}; pass torch.nn.CrossEntropyLoss(), "
                     "torch.nn.MSELoss() or their functional forms, or declare what your callable computes with "
                     f"output_loss={' or '.join(map(repr, OUTPUT_LOSSES))} (checked on the first batch).")


class TorchCurvatureBackend(TorchBackend):
    """Products with the GGN, the Monte-Carlo Fisher or the empirical Fisher of a PyTorch model's loss.

    Parameters
    ----------
    model, loss_fn, data, params, reduction, check_deterministic, batch_size :
        As for :class:`hessop.backends.torch.TorchBackend`; ``loss_fn`` one of the losses of
        :data:`hessop.curvature.OUTPUT_LOSSES` (recognised, or declared with ``output_loss``), checked against
        hessop's own form of that loss on the first batch.
    loss_form : {"outputs"}
        Only ``"outputs"``: the curvature needs the outputs ``model(inputs)`` and the loss in them.
    curvature : {"ggn", "fisher", "empirical_fisher"}
        Which matrix (:mod:`hessop.curvature`).
    mc_samples : int
        Labels drawn per sample for ``"fisher"``; default 1.
    fisher_seed : int
        Seed of those draws (mixed with the batch's index by :func:`hessop.curvature.draw_seed`; drawn on the
        CPU with a ``torch.Generator``, so the same on every device); default 0.
    output_loss : {"cross_entropy", "mse"}, optional
        What ``loss_fn`` computes, for a callable hessop does not recognise.
    cache_memory : int, optional
        For ``jv_method="reverse"``: budget in bytes for keeping each batch's graph of ``z(u) = A^T u`` between
        products (forward mode keeps nothing), as the Hessian's
        ``cache_memory`` (:class:`hessop.backends.torch.TorchBackend`; the same
        :class:`~hessop.backends.torch._graph_cache.GraphCache`); default None: 1 GiB or a quarter of the free
        memory; 0 keeps nothing.
    jv_method : {"auto", "forward", "reverse"}
        How ``A v`` is computed: ``"forward"`` by a forward-mode pass with dual parameters
        (``torch.autograd.forward_ad``) per column, ``"reverse"`` by the double vjp through the graph of ``z(u)``
        (kept between products where ``cache_memory`` allows); ``"auto"`` (default) is ``"forward"`` until forward
        mode fails on the model (an operation without a forward derivative), then warns once and uses
        ``"reverse"`` from then on.
    block_method : {"auto", "batched", "columns"}
        How a forward-mode product treats a block ``V`` of k vectors: ``"batched"`` in one pass per batch (one
        primal forward pass keeping its graph, the k tangents ``A V`` together by ``torch.func.jvp`` under
        ``torch.func.vmap``, ``M`` on the k output tangents at once and the k products ``A^T (M A V)`` in one
        batched backward pass, ``is_grads_batched``), split into chunks of columns to fit ``block_memory``;
        ``"columns"`` one forward and one backward pass per column; ``"auto"`` (default) is ``"batched"`` for
        blocks of k > 1 until the batched pass fails on the model (a module ``torch.func`` cannot transform, e.g. one
        that writes to a buffer in its forward pass), then warns once and uses ``"columns"`` from then on.  The
        reverse form (``jv_method="reverse"``) always goes column by column.
    block_memory : int, optional
        Budget in bytes for one batched pass: a block is split into chunks of at most
        ``block_memory // (TANGENT_MEMORY * s)`` columns, ``s`` the bytes the batch's primal forward pass saves for
        its backward pass (measured once per operator on the first batch, scaled by batch length; each chunk costs
        one more primal forward pass).  Default None: :func:`~hessop.backends.torch._graph_cache.default_cache_memory`
        (1 GiB or a quarter of the free memory).

    Examples
    --------
    The GGN of a linear model under the mean squared error is ``(2 / N) X^T X``, its Hessian:

    >>> model = torch.nn.Linear(2, 1, bias=False).double()
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    >>> G = TorchCurvatureBackend(model, torch.nn.MSELoss(), (x, torch.zeros(2, 1, dtype=torch.float64)),
    ...                           curvature="ggn")
    >>> G.hvp(torch.ones(2, dtype=torch.float64)).tolist()
    [1.0, 4.0]
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, data: Any, *, curvature: str, mc_samples: int = 1,
                 fisher_seed: int = 0, output_loss: str | None = None, params: Any = None, reduction: str = "mean",
                 loss_form: str = "outputs", check_deterministic: bool = True,
                 batch_size: Callable[[Any], int] | None = None, cache_memory: int | None = None,
                 jv_method: str = "auto", block_method: str = "auto", block_memory: int | None = None) -> None:
        if jv_method not in JV_METHODS:
            raise ValueError(f"jv_method must be one of {', '.join(map(repr, JV_METHODS))}; got {jv_method!r}")
        if block_method not in BLOCK_METHODS:
            raise ValueError(f"block_method must be one of {', '.join(map(repr, BLOCK_METHODS))}; got "
                             f"{block_method!r}")
        if block_memory is not None and (isinstance(block_memory, bool) or not isinstance(block_memory, int)
                                         or block_memory < 1):
            raise ValueError(f"block_memory must be a number of bytes >= 1 (None: the default), got {block_memory!r}")
        if check_curvature(curvature, mc_samples, fisher_seed, output_loss) == "hessian":
            raise ValueError("TorchCurvatureBackend is for curvature='ggn', 'fisher' or 'empirical_fisher'; use "
                             "TorchBackend for the Hessian.")
        if loss_form != "outputs":
            raise ValueError(f"curvature={curvature!r} needs the model's outputs and the loss in them, but with "
                             "loss_form='model' hessop sees only a scalar loss_fn(model, batch). Use "
                             "loss_form='outputs' with loss_fn(model(inputs), targets).")
        self.curvature, self.mc_samples, self.fisher_seed = curvature, int(mc_samples), int(fisher_seed)
        self.output_loss, self.jv_method, self.block_method = output_loss, jv_method, block_method
        self._block_memory = block_memory
        self._saved_per_sample: float | None = None  # bytes a primal forward pass saves, per sample (measured once)
        self._kept: dict[int, tuple] = {}  # batch index -> (a, u, f, y, S) of its kept graph
        self.kind, self.label_smoothing = _recognise(loss_fn, output_loss, reduction)
        super().__init__(model, loss_fn, data, TorchSettings(params, reduction, loss_form, check_deterministic,
                                                             batch_size, hvp_method="auto", cache_memory=cache_memory))
        self._check_loss(next(iter(self._batches())))

    def _options(self) -> dict[str, Any]:
        return {"curvature": self.curvature, "mc_samples": self.mc_samples, "fisher_seed": self.fisher_seed,
                "output_loss": self.output_loss, "jv_method": self.jv_method, "cache_memory": self.cache_memory,
                "block_method": self.block_method, "block_memory": self._block_memory}

    def clear_cache(self) -> None:
        """Free every kept graph (rebuilt, within ``cache_memory``, by the next products)."""
        super().clear_cache()
        self._kept.clear()

    def _forward_mode(self) -> bool:
        """Whether ``A v`` is computed in forward mode: for ``jv_method="forward"`` and ``"auto"`` (until forward
        mode fails on the model), not for ``"reverse"``."""
        return self.jv_method != "reverse"

    def _batching(self, k: int) -> bool:
        """Whether a block of ``k`` columns goes in one batched pass (``block_method``; forward mode only)."""
        return self.block_method == "batched" or (self.block_method == "auto" and k > 1)

    def block_memory(self) -> int:
        """The budget in bytes for one batched pass (``block_memory``)."""
        return default_cache_memory(self.device) if self._block_memory is None else self._block_memory

    def chunk_columns(self, x: torch.Tensor) -> int:
        """The most columns one batched pass over inputs ``x`` takes: ``block_memory // (TANGENT_MEMORY * s)``,
        at least 1, ``s`` the bytes the primal forward pass saves for inputs like ``x`` (:meth:`saved_bytes` of the
        first batch, per sample, times ``len(x)``)."""
        if self._saved_per_sample is None:
            self._saved_per_sample = self.saved_bytes(x) / max(len(x), 1)
        return max(1, int(self.block_memory() // max(TANGENT_MEMORY * self._saved_per_sample * len(x), 1.0)))

    def saved_bytes(self, x: torch.Tensor) -> int:
        """Bytes the model's forward pass on inputs ``x`` saves for its backward pass (``saved_tensors_hooks``;
        the storages of the parameters, buffers and ``x`` excluded): one forward pass."""
        held: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with (torch.enable_grad(), buffers_preserved(self.model), sdpa_kernel(SDPBackend.MATH),
              torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)):
            self.model(x)
        for t in [*self.model.parameters(), *self.model.buffers(), *tensors(x)]:
            held.pop(t.untyped_storage().data_ptr(), None)
        return sum(held.values())

    # ------------------------------------------------------------------ the loss in output space
    def _scale(self, f: torch.Tensor) -> tuple[float, float]:
        """``(rho, c)``: the batch loss is ``rho sum_i l_i`` and the MSE's ``l_i = c ||f_i - y_i||^2``."""
        per = math.prod(f.shape[1:])
        mean = self.reduction == "mean"
        return (1.0 / f.shape[0] if mean else 1.0), (1.0 / per if mean and self.kind == "mse" else 1.0)

    def per_sample_loss(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The per-sample losses ``l_i`` (shape ``(N,)``) of outputs ``f`` at targets ``y``."""
        if self.kind == "cross_entropy":
            if f.ndim != 2:
                raise ValueError(f"curvature with cross-entropy takes (N, C) logits; the model returns shape "
                                 f"{tuple(f.shape)} (flatten extra dimensions into the batch first).")
            return F.cross_entropy(f, y, reduction="none", label_smoothing=self.label_smoothing)
        if y.shape != f.shape:
            raise ValueError(f"the MSE's targets have shape {tuple(y.shape)} but the outputs {tuple(f.shape)}; "
                             "hessop takes no broadcasting here (it changes the loss's scale).")
        return (f - y).square().flatten(1).sum(1) * self._scale(f)[1]

    def _check_loss(self, batch: Any) -> None:
        """The user's ``loss_fn`` and hessop's form of it must agree on ``batch`` (to ``sqrt(eps)``)."""
        x, y = to_device(batch, self.device)
        with torch.no_grad(), buffers_preserved(self.model):
            f = self.model(x)
            theirs = float(self.loss_fn(f, y))
            ours = float(self._scale(f)[0] * self.per_sample_loss(f, y).sum())
        if abs(theirs - ours) > math.sqrt(self.product_eps) * max(abs(theirs), abs(ours), 1e-30):
            raise ValueError(f"on the first batch loss_fn gives {theirs!r} but hessop's {self.kind} with "
                             f"reduction={self.reduction!r} gives {ours!r}: the curvature would not be that of your "
                             "loss. Check reduction=, output_loss=, class weights or ignored targets.")

    def sample_targets(self, batch_index: int, f: torch.Tensor) -> torch.Tensor:
        """The Fisher's ``mc_samples`` labels per sample for batch ``batch_index`` with outputs ``f``: class
        indices ``(N, M)`` (cross-entropy) or targets ``(N, M, ...)`` drawn from ``N(f, I / (2c))`` (MSE)."""
        gen = torch.Generator().manual_seed(draw_seed(self.fisher_seed, batch_index))
        f = f.detach()
        if self.kind == "cross_entropy":
            p = torch.softmax(f, dim=1).cpu()
            return torch.multinomial(p, self.mc_samples, replacement=True, generator=gen).to(f.device)
        noise = torch.randn((f.shape[0], self.mc_samples, *f.shape[1:]), generator=gen, dtype=f.dtype)
        return f[:, None] + noise.to(f.device) / math.sqrt(2 * self._scale(f)[1])

    def output_product(self, f: torch.Tensor, y: torch.Tensor, S: torch.Tensor | None,
                       U: torch.Tensor) -> torch.Tensor:
        """``M_b U`` for the batch's outputs ``f`` (detached) and tangents ``U`` shaped like ``A_b``'s output;
        ``S`` the Fisher's drawn output gradients (:meth:`fisher_gradients`), else None."""
        rho, c = self._scale(f)
        if self.curvature == "empirical_fisher":
            return rho * U
        if self.curvature == "fisher":  # rho / M sum_m s_m (s_m . u), per sample
            coef = torch.einsum("nm...,n...->nm", S, U)
            return torch.einsum("nm...,nm->n...", S, coef) * (rho / self.mc_samples)
        if self.kind == "mse":
            return (2 * rho * c) * U
        p = torch.softmax(f, dim=1)
        return rho * (p * U - p * (p * U).sum(1, keepdim=True))

    def fisher_gradients(self, batch_index: int, f: torch.Tensor) -> torch.Tensor:
        """``s_im = grad_f l(f_i, y~_im)`` at the drawn labels, shape ``(N, M, ...)``."""
        drawn = self.sample_targets(batch_index, f)
        if self.kind == "cross_entropy":
            p = torch.softmax(f, dim=1)
            return p[:, None, :] - F.one_hot(drawn, f.shape[1]).to(f.dtype)
        return (2 * self._scale(f)[1]) * (f[:, None] - drawn)

    # ------------------------------------------------------------------ products
    def hvp_block(self, V: torch.Tensor) -> torch.Tensor:
        self._check_native(V)
        return curvature_product(self, V)

    def describe(self) -> str:
        extra = f", {self.mc_samples} draws, fisher_seed {self.fisher_seed}" if self.curvature == "fisher" else ""
        return f"{super().describe()[:-1]}, curvature={self.curvature!r} ({self.kind}{extra}))"


_NOT_DONE = object()  # a batch's term not computed yet (None: the outputs do not depend on the parameters)


def curvature_product(backend: TorchCurvatureBackend, V: torch.Tensor) -> torch.Tensor:
    """The curvature product ``sum_b w_b A_b^T M_b A_b V`` (module docstring), the counterpart of
    :func:`hessop.backends.torch._products.double_backward` for the Hessian: per batch, in forward mode the whole
    block in one batched pass (:func:`_batched_block`) or column by column (:func:`_forward_columns`), or ``A v`` by
    the double vjp through the batch's kept graph (:func:`_reverse_columns`)."""
    cache, model = backend.graphs, backend.model
    caching = backend.caching() and not backend._forward_mode()  # forward mode keeps no graph
    if caching:
        key = state_key(model, backend.data)
        if key != cache.key:
            backend.clear_cache()  # the kept graphs are stale
    out = torch.zeros_like(V)
    with torch.enable_grad(), buffers_preserved(model):
        for i, (batch, w) in enumerate(backend._weighted()):
            term: Any = _NOT_DONE
            if backend._forward_mode() and backend._batching(V.shape[1]):
                try:
                    term = _batched_block(backend, i, batch, V)
                except (RuntimeError, NotImplementedError) as e:
                    if backend.block_method == "batched":
                        raise
                    backend.block_method = "columns"
                    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
                    warnings.warn(f"hessop: the batched block product (torch.func.jvp under vmap) failed on this "
                                  f"model ({type(e).__name__}: {first}); curvature blocks go column by column from "
                                  "now on. Pass block_method='columns' to silence this.", UserWarning, stacklevel=4)
            if term is _NOT_DONE and backend._forward_mode():
                try:
                    term = _forward_columns(backend, i, batch, V)
                except (RuntimeError, NotImplementedError) as e:
                    if backend.jv_method == "forward":
                        raise
                    term = _NOT_DONE
                    backend.jv_method = "reverse"
                    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
                    warnings.warn(f"hessop: forward-mode Jacobian-vector products failed on this model "
                                  f"({type(e).__name__}: {first}); curvature products use the reverse-only form "
                                  "(a second backward pass) from now on. Pass jv_method='reverse' to silence this.",
                                  UserWarning, stacklevel=4)
            if term is _NOT_DONE:
                term = _reverse_columns(backend, i, batch, V, caching)
            if term is not None:
                out.add_(term, alpha=w)
    if caching:  # restoring train-mode buffers (buffers_preserved) counts as an in-place change
        cache.key = state_key(model, backend.data) if model.training else key
    return out


def _flat(grads: tuple, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) if g is not None else p.new_zeros(p.numel())
                      for g, p in zip(grads, params, strict=True)])


def _reverse_columns(backend: TorchCurvatureBackend, i: int, batch: Any, V: torch.Tensor,
                     caching: bool) -> torch.Tensor | None:
    """``A_b^T M_b A_b V`` for batch ``i`` with ``A_b v`` by the double vjp through the graph of ``z(u) = A_b^T u``
    (kept between products by the backend's :class:`~hessop.backends.torch._graph_cache.GraphCache` within
    ``cache_memory``); None when the outputs do not depend on the selected parameters."""
    params, offsets = backend.params, backend.offsets
    built: dict[str, Any] = {}

    def dummy(batch: Any) -> torch.Tensor:  # a . u: its gradient is z(u) = A^T u, linear in the zero dummy u
        x, y = to_device(batch, backend.device)
        f = backend.model(x)
        a = backend.per_sample_loss(f, y) if backend.curvature == "empirical_fisher" else f
        u = torch.zeros_like(a, requires_grad=True)
        built.update(a=a, u=u, f=f.detach(), y=y)
        return (a * u).sum()

    graph, kept = backend.graphs.gradient_graph(i, batch, dummy, params, backend.model, caching)
    if graph is None:
        return None  # the outputs do not depend on these parameters
    if built:
        S = backend.fisher_gradients(i, built["f"]) if backend.curvature == "fisher" else None
        extras = (built["a"], built["u"], built["f"], built["y"], S)
        if kept:
            backend._kept[i] = extras
    else:
        extras = backend._kept[i]  # taken from the cache: built at an earlier product
    a, u, fd, y, S = extras
    used, z = graph
    out = torch.empty_like(V)
    for j in range(V.shape[1]):
        v = V[:, j]
        av, = torch.autograd.grad(z, u, retain_graph=True, grad_outputs=[
            v[offsets[m]: offsets[m + 1]].view_as(z[q]) for q, m in enumerate(used)])
        atm = torch.autograd.grad(a, params, grad_outputs=backend.output_product(fd, y, S, av),
                                  retain_graph=kept or j < V.shape[1] - 1, allow_unused=True)
        out[:, j] = _flat(atm, params)
    return out


def _forward_columns(backend: TorchCurvatureBackend, i: int, batch: Any, V: torch.Tensor) -> torch.Tensor:
    """``A_b^T M_b A_b V`` for batch ``i``, per column one forward pass with dual parameters
    (``torch.autograd.forward_ad``: the outputs with their reverse graph and the tangent ``A_b v`` at once) and
    one backward pass for ``A_b^T``."""
    params, offsets, names = backend.params, backend.offsets, backend.names
    x, y = to_device(batch, backend.device)
    out = torch.empty_like(V)
    S = None
    for j in range(V.shape[1]):
        v = V[:, j]
        with fwAD.dual_level(), sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward AD
            duals = {name: fwAD.make_dual(p, v[offsets[m]: offsets[m + 1]].view_as(p))
                     for m, (name, p) in enumerate(zip(names, params, strict=True))}
            f = functional_call(backend.model, duals, (x,), strict=False)
            a = backend.per_sample_loss(f, y) if backend.curvature == "empirical_fisher" else f
            a, av = fwAD.unpack_dual(a)
            fd = fwAD.unpack_dual(f).primal.detach()
        if av is None or not a.requires_grad:
            out[:, j] = 0  # the outputs do not depend on these parameters
            continue
        if backend.curvature == "fisher" and S is None:
            S = backend.fisher_gradients(i, fd)
        atm = torch.autograd.grad(a, params, grad_outputs=backend.output_product(fd, y, S, av), allow_unused=True)
        out[:, j] = _flat(atm, params)
    return out


def _batched_block(backend: TorchCurvatureBackend, i: int, batch: Any, V: torch.Tensor) -> torch.Tensor | None:
    """``A_b^T M_b A_b V`` for batch ``i`` and the whole block ``V`` (n, k) in one pass (chunks of
    :meth:`TorchCurvatureBackend.chunk_columns` columns): the primal outputs with their reverse graph and the k
    tangents ``A_b V`` by ``torch.func.jvp`` under ``torch.func.vmap`` (the primal is computed once: it does not
    depend on the vmapped tangents), ``M_b`` on the k output tangents (``vmap``), and the k vector-Jacobian
    products in one batched backward pass (``torch.autograd.grad(..., is_grads_batched=True)``).  Train-mode batch
    norm runs on the batch's statistics with its running statistics detached (``batch_statistics_only``: the same
    outputs; ``torch.func`` refuses their in-place update).  None when the outputs do not depend on the selected
    parameters."""
    params, offsets, names, model = backend.params, backend.offsets, backend.names, backend.model
    x, y = to_device(batch, backend.device)
    primals = dict(zip(names, params, strict=True))  # with grad: the primal pass keeps its reverse graph

    def outputs(ps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        f = functional_call(model, ps, (x,), strict=False)
        return (backend.per_sample_loss(f, y) if backend.curvature == "empirical_fisher" else f), f

    def tangent(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, av, f = jvp(outputs, (primals,), ({name: v[offsets[m]: offsets[m + 1]].view_as(p)
                                              for m, (name, p) in enumerate(primals.items())},), has_aux=True)
        return a, f, av

    out = torch.empty_like(V)
    step = backend.chunk_columns(x) if V.shape[1] > 1 else 1
    S = None
    for start in range(0, V.shape[1], step):
        block = V[:, start: start + step]
        with sdpa_kernel(SDPBackend.MATH), batch_statistics_only(model):  # fused attention: no forward AD
            a, f, AV = vmap(tangent, in_dims=1, out_dims=(None, None, 0))(block)
        if not a.requires_grad:
            return None  # the outputs do not depend on these parameters
        fd = f.detach()
        if backend.curvature == "fisher" and S is None:
            S = backend.fisher_gradients(i, fd)
        MAV = vmap(lambda U, fd=fd, S=S: backend.output_product(fd, y, S, U))(AV.detach())
        grads = torch.autograd.grad(a, params, grad_outputs=MAV, is_grads_batched=True, allow_unused=True)
        k = block.shape[1]
        out[:, start: start + k] = torch.cat([g.reshape(k, -1) if g is not None else p.new_zeros(k, p.numel())
                                              for g, p in zip(grads, params, strict=True)], dim=1).T
    return out
