"""PyTorch backend: Hessian-vector products of a model's loss over a data set.

Maths
-----
For a loss ``L(theta) = sum_b w_b L_b(theta)`` over batches ``b`` (``w_b = |b| / N`` when ``L_b`` is a per-batch
mean, ``w_b = 1`` when it is a per-batch sum) the product is accumulated batch by batch, by one of

* forward-over-reverse (``hvp_method="forward_over_reverse"``; under ``"auto"``, blocks of k > 1 vectors on a GPU):
  ``H v = sum_b w_b d/dt grad L_b(theta + t v)|_{t=0}``, ``torch.func.jvp`` of ``torch.func.grad`` of the loss as a
  function of the selected parameters (``torch.func.functional_call``; buffers and unselected parameters are the
  module's own, unchanged).  A block ``V = [v_1 .. v_k]`` is ``torch.func.vmap`` of it over the k columns: one
  batched pass per batch;
* reverse-over-reverse (``hvp_method="double_backward"``; under ``"auto"``, single vectors, and blocks on a CPU):
  ``H v = sum_b w_b d/dtheta (grad L_b(theta) . v)`` (Pearlmutter 1994; the HVP of PyHessian, Yao et al. 2020); a
  block shares each batch's forward pass and first backward pass between its k second backward passes.  The
  gradient with its graph depends on ``theta`` only: when the data are a list or tuple of batches it is kept
  between products within the ``cache_memory`` budget (1 GiB or a quarter of the free memory by default, 0 keeps
  nothing), and each later product is then a single backward pass through it.

Batches are moved to the parameters' device inside the loop (tensors nested in tuples, lists and dicts;
``non_blocking`` when pinned), so a model on a GPU takes a CPU ``DataLoader``.

What it never does: change the model's train/eval mode, touch ``.grad``, or leave the model's buffers (BatchNorm
running statistics) changed.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessop.backends.base import DataBackend, DataView

__all__ = ["CACHE_MEMORY", "HVP_METHODS", "TorchBackend", "default_cache_memory", "register_step_hook"]

HVP_METHODS = ("auto", "forward_over_reverse", "double_backward")
CACHE_MEMORY = 2**30
"""Upper end of the default ``cache_memory`` (1 GiB); see :func:`default_cache_memory`."""


def default_cache_memory(device: torch.device) -> int:
    """The default budget for kept gradient graphs: ``min(CACHE_MEMORY, free / 4)`` bytes, ``free`` being the
    device's free memory when the operator is built (``torch.cuda.mem_get_info`` on a GPU, ``MemAvailable`` of
    /proc/meminfo on a Linux CPU); ``CACHE_MEMORY`` where it cannot be read."""
    free = None
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    elif device.type == "cpu":
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open("/proc/meminfo") as f:
                free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    return CACHE_MEMORY if free is None else min(CACHE_MEMORY, free // 4)


_FOR_BLOCK_DEVICES = ("cuda",)
"""Device types on which ``hvp_method="auto"`` computes blocks forward-over-reverse (``vmap``).  Not the CPU: there
double backward, through the kept graph or not, was as fast or faster for single vectors and for blocks of 8 on
every model of benchmarks/hvp_cost.py (docs/benchmarks.md).  On a GPU it is the issue's design, not yet measured."""

_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
# half precision: products in the model's dtype, host transfers through these NumPy dtypes (NumPy has no
# bfloat16); HessianOperator.from_torch shows such a model through float32 vectors (hessop.operator.WidenedBackend)
_HALF = {torch.float16: np.dtype(np.float16), torch.bfloat16: np.dtype(np.float32)}


def _is_single_batch(data: Any, loss_form: str) -> bool:
    if isinstance(data, torch.Tensor):
        return True
    if isinstance(data, Mapping):
        return all(isinstance(x, torch.Tensor) for x in data.values())
    if isinstance(data, (tuple, list)) and data:
        if loss_form == "outputs":
            return len(data) == 2 and isinstance(data[0], torch.Tensor)
        return all(isinstance(x, torch.Tensor) for x in data)
    return False


def _tensors(batch: Any) -> Iterator[torch.Tensor]:
    """Every tensor of a batch (nested tuples, lists and mappings), in order."""
    if isinstance(batch, torch.Tensor):
        yield batch
        return
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for x in items:
        yield from _tensors(x)


def _first_tensor(batch: Any) -> torch.Tensor | None:
    return next(_tensors(batch), None)


def _to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (nested in tuples, lists, dicts) on ``device``; pinned tensors move with
    ``non_blocking=True``.  Tensors already there and non-tensor leaves are returned as they are."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=batch.is_pinned())
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(x, device) for x in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(x, device) for x in batch)
    return batch


class _LossModule(nn.Module):
    """``forward(batch) = loss of batch`` with ``model`` as submodule ``m``, for ``functional_call``."""

    def __init__(self, backend: TorchBackend) -> None:
        super().__init__()
        self.m = backend.model
        object.__setattr__(self, "_backend", backend)  # not a submodule

    def forward(self, batch: Any) -> torch.Tensor:
        return self._backend._loss(batch)


def _select_params(model: nn.Module, params: Any) -> tuple[list[str], list[torch.Tensor]]:
    named = list(model.named_parameters())
    by_id = {id(p): name for name, p in named}
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise ValueError("the model has no parameter with requires_grad=True; there is no Hessian to take.")
        return [n for n, _ in chosen], [p for _, p in chosen]
    if isinstance(params, nn.Module):
        items = list(params.parameters())
        if not items:
            raise ValueError("params is a module with no parameters.")
        missing = [p for p in items if id(p) not in by_id]
        if missing:
            raise ValueError("params is a module that is not part of the model (its parameters are not the model's).")
        chosen = [(by_id[id(p)], p) for p in items]
    else:
        if isinstance(params, (str, torch.Tensor)):
            params = [params]
        try:
            items = list(params)
        except TypeError:
            raise TypeError(
                "params must be None, a submodule, or a list of parameter names or parameter tensors; "
                f"got {type(params).__name__}"
            ) from None
        if not items:
            raise ValueError("params is empty: name at least one trainable parameter (or pass None for all).")
        chosen = []
        for item in items:
            if isinstance(item, str):
                hits = [(n, p) for n, p in named if n == item or n.startswith(item + ".")]
                if not hits:
                    some = ", ".join(n for n, _ in named[:8])
                    raise ValueError(f"params names {item!r}, which is not a parameter or submodule of the model "
                                     f"(its parameters are: {some}{', ...' if len(named) > 8 else ''}).")
                chosen.extend(hits)
            elif isinstance(item, torch.Tensor):
                if id(item) not in by_id:
                    raise ValueError("params holds a tensor that is not a parameter of the model.")
                chosen.append((by_id[id(item)], item))
            else:
                raise TypeError(f"params entries must be names or parameter tensors, got {type(item).__name__}")
    seen: set[int] = set()
    unique = [(n, p) for n, p in chosen if not (id(p) in seen or seen.add(id(p)))]
    frozen = [n for n, p in unique if not p.requires_grad]
    if len(frozen) == len(unique):
        raise ValueError(f"params names no trainable parameter: {', '.join(frozen)} have requires_grad=False.")
    if frozen:
        raise ValueError(f"params includes parameters with requires_grad=False ({', '.join(frozen)}); hessop "
                         "differentiates trainable parameters only. Drop them or set requires_grad=True.")
    return [n for n, _ in unique], [p for _, p in unique]


@contextlib.contextmanager
def _buffers_preserved(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (e.g. BatchNorm running statistics a train-mode forward updates) on exit."""
    saved = [(b, b.detach().clone()) for b in model.buffers()] if model.training else []
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


@contextlib.contextmanager
def _batch_statistics_only(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm layers normalise with the batch's statistics and, as a side effect, update their running
    statistics in place, which ``torch.func`` transforms refuse (an in-place write to a captured tensor).  The
    running statistics do not enter a train-mode forward, so while this is active they are detached from the layer
    (``running_mean = running_var = None``, ``track_running_stats = False``: the same output) and put back, the
    same tensor objects, untouched, on exit.  Eval-mode layers (which do use them) are left alone."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            saved.append((m, m.running_mean, m.running_var))
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    try:
        yield
    finally:
        for m, mean, var in saved:
            m.track_running_stats, m.running_mean, m.running_var = True, mean, var


class TorchBackend(DataBackend):
    """Hessian of ``loss`` over ``data`` with respect to some of ``model``'s parameters.

    Parameters
    ----------
    model : torch.nn.Module
    loss_fn : callable
        With ``loss_form="outputs"`` (default): ``loss_fn(model(inputs), targets) -> scalar`` (e.g.
        ``torch.nn.CrossEntropyLoss()``).  With ``loss_form="model"``: ``loss_fn(model, batch) -> scalar`` for
        losses that are not of (inputs, targets) form.
    data :
        One batch, or a re-iterable of batches (list, ``DataLoader``).  For ``loss_form="outputs"`` a batch is
        ``(inputs, targets)``; for ``"model"`` anything ``loss_fn`` accepts.  A one-shot iterator or generator is
        refused (the data are traversed once per product).
    params :
        ``None`` (all parameters with ``requires_grad``), a submodule, or a list of parameter names (a submodule
        name selects all its parameters) or parameter tensors.  The operator is then the corresponding diagonal
        block of the full Hessian; the flat vector follows the order of the selection.
    reduction : {"mean", "sum"}
        What ``loss_fn`` does over a batch.  ``"mean"``: the Hessian of the mean loss over all N samples,
        ``H = sum_b (|b| / N) H_b`` (batches may differ in size).  ``"sum"``: ``H = sum_b H_b``.
    check_deterministic : bool
        At construction, compare the total loss over two passes and two products of one vector, and refuse data
        or models that make ``H v`` random (dropout, augmentation, a sampler that changes the samples).
        Costs two loss passes and two products.  Default True.
    batch_size : callable, optional
        ``batch_size(batch) -> int`` for the weights when ``loss_form="model"``; default: the first dimension of
        the first tensor in the batch.
    hvp_method : {"auto", "forward_over_reverse", "double_backward"}
        How products are computed (module docstring).  ``"auto"`` (default): double backward (through the kept
        graph where ``cache_memory`` allows), the fastest for single vectors and for blocks on every CPU model of
        docs/benchmarks.md; on a GPU, blocks of k > 1 vectors forward-over-reverse (``vmap``: one batched pass
        per batch; ``_FOR_BLOCK_DEVICES``), falling back to double backward, once, with a warning naming the
        cause, when the model uses an operation without a forward-mode derivative (e.g. a custom
        ``torch.autograd.Function`` without ``jvp``).  ``"forward_over_reverse"`` never keeps graphs.
    cache_memory : int, optional
        Budget in bytes for keeping each batch's gradient graph (the forward pass and the ``create_graph``
        backward pass: everything in a double-backward product that depends only on ``theta``) between products,
        so that each later product is one backward pass through it (the product of PyHessian's kept graph, for
        every batch).  Only when ``data`` is a list or tuple of batches; the graphs are dropped and rebuilt when a
        parameter, buffer or batch tensor is modified in place or replaced, or a module switches train/eval mode
        (:meth:`clear_cache` frees them).  What a graph holds is counted as it is built; a batch whose graph
        would take the total over the budget is differentiated afresh at every product, so the kept bytes
        (``cache_bytes``) never exceed it.  Default None: :func:`default_cache_memory` (1 GiB, or a quarter of
        the device's free memory when that is less); 0 keeps nothing.
    """

    name = "torch"
    _randomness_hint = "dropout or other randomness in train mode (call model.eval())"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Any,
        *,
        params: Any = None,
        reduction: str = "mean",
        loss_form: str = "outputs",
        check_deterministic: bool = True,
        batch_size: Callable[[Any], int] | None = None,
        hvp_method: str = "auto",
        cache_memory: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum' (what loss_fn does over a batch), got {reduction!r}")
        if loss_form not in ("outputs", "model"):
            raise ValueError(
                f"loss_form must be 'outputs' (loss_fn(model(inputs), targets)) or 'model' (loss_fn(model, batch)), "
                f"got {loss_form!r}"
            )
        if hvp_method not in HVP_METHODS:
            raise ValueError(f"hvp_method must be one of {', '.join(map(repr, HVP_METHODS))}; got {hvp_method!r}")
        if cache_memory is not None and (isinstance(cache_memory, bool) or not isinstance(cache_memory, int)
                                         or cache_memory < 0):
            raise ValueError(f"cache_memory must be a number of bytes >= 0 (0 keeps nothing), got {cache_memory!r}")
        self.model, self.loss_fn, self.reduction, self.loss_form = model, loss_fn, reduction, loss_form
        self._batch_size = batch_size
        self.hvp_method = hvp_method
        self._cache: dict[int, tuple | None] = {}  # batch index -> (used, gradients) with their graph kept
        self._over_budget: set[int] = set()  # batches whose graph does not fit
        self._cache_key: tuple = ()
        self._checking = False
        self.cache_bytes = 0

        self.names, self.params = _select_params(model, params)
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) > 1:
            raise TypeError(f"the selected parameters have mixed dtypes {sorted(map(str, dtypes))}; convert the "
                            "model with model.double() or model.float() first.")
        devices = {p.device for p in self.params}
        if len(devices) > 1:
            raise ValueError(f"the selected parameters live on several devices {sorted(map(str, devices))}; "
                             "move the model to one device or select parameters on one device.")
        self.torch_dtype = self.params[0].dtype
        if self.torch_dtype not in _DTYPES and self.torch_dtype not in _HALF:
            raise TypeError(f"parameters have dtype {self.torch_dtype}; hessop supports float64, float32 and (with "
                            "float32 solvers) float16 / bfloat16 models.")
        self.dtype = _DTYPES.get(self.torch_dtype) or _HALF[self.torch_dtype]
        self.device = self.params[0].device
        self.cache_memory = default_cache_memory(self.device) if cache_memory is None else cache_memory
        self.shapes = [tuple(p.shape) for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.n = int(self.offsets[-1])
        self._loss_module = _LossModule(self)
        self._fnames = ["m." + name for name in self.names]

        self._set_data(data, _is_single_batch(data, loss_form))
        self._warn_train_mode()

        if check_deterministic:
            self._checking = True  # the check's two products are computed afresh, never through a kept graph
            try:
                self._check_deterministic()
            finally:
                self._checking = False
        else:
            self.n_samples = sum(self._size(b) for b in self._batches())
            if self.n_samples == 0:
                raise ValueError("data holds no samples.")

    # ------------------------------------------------------------------ data
    def _size(self, batch: Any) -> int:
        if self._batch_size is not None:
            return int(self._batch_size(batch))
        t = batch[0] if self.loss_form == "outputs" else _first_tensor(batch)
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            raise ValueError("cannot tell the batch size: pass batch_size=callable(batch) -> int, or batches whose "
                             "first tensor has the samples along dimension 0.")
        return int(t.shape[0])

    def _loss(self, batch: Any) -> torch.Tensor:
        batch = _to_device(batch, self.device)
        if self.loss_form == "outputs" and not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError("with loss_form='outputs' each batch must be (inputs, targets); for other batch "
                             "structures use loss_form='model' and loss_fn(model, batch).")
        try:
            if self.loss_form == "outputs":
                inputs, targets = batch
                loss = self.loss_fn(self.model(inputs), targets)
            else:
                loss = self.loss_fn(self.model, batch)
        except RuntimeError as e:  # torch's dtype mismatch error does not say what to convert
            other = sorted({str(t.dtype) for t in _tensors(batch) if t.is_floating_point()} - {str(self.torch_dtype)})
            if other and re.search(r"dtype|scalar type|type \(|should be the same|Double|Float|Half", str(e)):
                raise TypeError(
                    f"the batch holds {', '.join(other)} tensors but the model's parameters are {self.torch_dtype} "
                    f"(torch: {e}). Convert the data to the model's dtype (e.g. x.to({self.torch_dtype}), or build "
                    "the batches in it) or the model to the data's (model.to(torch.float64))."
                ) from e
            raise
        if isinstance(loss, (bool, int, float)):
            raise TypeError(
                f"loss_fn returned a Python {type(loss).__name__} ({loss!r}), not a scalar torch tensor: a Python "
                "number carries no graph to differentiate. Return the loss tensor itself (no .item(), float() or "
                "int())."
            )
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss_fn returned {type(loss).__name__}, expected a scalar torch tensor.")
        if loss.numel() != 1:
            raise ValueError(
                f"loss_fn returned a tensor of shape {tuple(loss.shape)}, not a scalar: reduce it over the batch "
                "(e.g. reduction='mean' in the loss) and tell hessop which reduction with reduction=..."
            )
        if not loss.is_floating_point():
            raise TypeError(f"loss_fn returned a {loss.dtype} tensor; the loss must be floating point (an integer "
                            "has no derivative: compute it from the model's floating-point outputs).")
        return loss.reshape(())

    def _batch_loss(self, batch: Any) -> float:
        with torch.no_grad(), _buffers_preserved(self.model):
            return float(self._loss(batch))

    def _warn_train_mode(self) -> None:
        if not self.model.training:
            return
        bn = [n or "<model>" for n, m in self.model.named_modules()
              if isinstance(m, nn.modules.batchnorm._NormBase) and m.training]
        drop = [n or "<model>" for n, m in self.model.named_modules()
                if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0]
        if bn:
            warnings.warn(
                f"the model is in train mode and holds BatchNorm layers ({', '.join(bn[:4])}): you get the Hessian "
                "of the train-mode loss, normalised with each batch's statistics (it depends on the batching). "
                "Call model.eval() for the eval-mode Hessian. Running statistics are left unchanged.",
                UserWarning,
                stacklevel=4,
            )
        if drop:
            warnings.warn(
                f"the model is in train mode and holds dropout layers ({', '.join(drop[:4])}): each forward pass "
                "draws a new mask, so H v is random. Call model.eval().",
                UserWarning,
                stacklevel=4,
            )

    # ------------------------------------------------------------------ products
    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        return self.hvp_block(v.reshape(-1, 1)).reshape(-1)

    def hvp_block(self, V: torch.Tensor) -> torch.Tensor:
        if not isinstance(V, torch.Tensor):
            raise TypeError(f"the torch backend takes torch tensors, got {type(V).__name__}")
        if V.dtype != self.torch_dtype or V.device != self.device:
            raise TypeError(f"vectors must be {self.torch_dtype} on {self.device}, got {V.dtype} on {V.device} "
                            "(use H.asarray(x) to move a NumPy array in).")
        if self.hvp_method == "double_backward" or (self.hvp_method == "auto" and (
                V.shape[1] == 1 or self.device.type not in _FOR_BLOCK_DEVICES)):
            return self._double_backward(V)
        if self.hvp_method == "forward_over_reverse":
            return self._forward_over_reverse(V)
        try:
            return self._forward_over_reverse(V)
        except (RuntimeError, NotImplementedError) as e:
            out = self._double_backward(V)  # raises if the loss itself is at fault
            self.hvp_method = "double_backward"
            warnings.warn(f"hessop: forward-over-reverse Hessian-vector products failed on this model "
                          f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}); "
                          "using double backward from now on (slower for blocks). Pass "
                          "hvp_method='double_backward' to silence this.", UserWarning, stacklevel=4)
            return out

    def _double_backward(self, V: torch.Tensor) -> torch.Tensor:
        k = V.shape[1]
        rows: list[torch.Tensor | None] = [None] * k  # row j: H v_j, the batches' terms summed
        caching = self._caching()
        if caching:
            key = self._state_key()
            if key != self._cache_key:
                self.clear_cache()  # the kept graphs are stale
        with torch.enable_grad(), _buffers_preserved(self.model):
            for i, (batch, w) in enumerate(self._weighted()):
                graph, kept = self._gradient_graph(i, batch)
                if graph is None:
                    continue  # loss at most linear in these parameters: this batch adds nothing
                used, outputs = graph
                for j in range(k):
                    v = V[:, j]
                    hv = torch.autograd.grad(
                        outputs, self.params, retain_graph=kept or j < k - 1, allow_unused=True,
                        grad_outputs=[v[self.offsets[m]: self.offsets[m + 1]].view_as(outputs[a])
                                      for a, m in enumerate(used)])
                    term = torch.cat([h.reshape(-1) if h is not None else p.new_zeros(p.numel())
                                      for h, p in zip(hv, self.params, strict=True)])
                    if w != 1.0:
                        term.mul_(w)
                    rows[j] = term if rows[j] is None else rows[j].add_(term)
        if caching:  # restoring train-mode buffers (_buffers_preserved) counts as an in-place change
            self._cache_key = self._state_key() if self.model.training else key
        if rows[0] is None:
            return V.new_zeros(V.shape)
        return rows[0][:, None] if k == 1 else torch.stack(rows, dim=1)

    def _gradient_graph(self, i: int, batch: Any) -> tuple[tuple[list[int], list[torch.Tensor]] | None, bool]:
        """Batch ``i``'s gradient with its graph (``create_graph``) as ``(used, grads)``: the indices of the selected
        parameters whose gradient depends on the parameters, and those gradients (None when there is none: the
        loss is at most linear in them); and whether it is kept: taken from the cache, or built and kept when the
        tensors its graph saves (counted through ``saved_tensors_hooks``, storages of parameters, buffers and the
        batch excluded) and the gradients themselves fit what is left of ``cache_memory``."""
        if i in self._cache:
            return self._cache[i], True
        keep = self._caching() and i not in self._over_budget
        held: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with (torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if keep else contextlib.nullcontext(),
              sdpa_kernel(SDPBackend.MATH)):  # the fused attention kernels have no second derivative
            loss = self._loss(batch)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        used = [m for m, g in enumerate(grads) if g is not None and g.requires_grad]
        graph = (used, [grads[m] for m in used]) if used else None
        if not keep:
            return graph, False
        for t in [*self.model.parameters(), *self.model.buffers(), *_tensors(batch)]:
            held.pop(t.untyped_storage().data_ptr(), None)
        for g in graph[1] if graph else ():
            held[g.untyped_storage().data_ptr()] = g.untyped_storage().nbytes()
        size = sum(held.values())
        if self.cache_bytes + size > self.cache_memory:
            self._over_budget.add(i)
            return graph, False
        self._cache[i] = graph
        self.cache_bytes += size
        return graph, True

    def _caching(self) -> bool:
        return self.cache_memory > 0 and isinstance(self.data, (list, tuple)) and not self._checking

    def _state_key(self) -> tuple:
        """What the kept graphs depend on: each parameter, buffer and batch tensor (identity, version counter,
        storage: an in-place change or a replaced tensor changes it) and each module's train/eval mode.  The
        running statistics of train-mode BatchNorm layers are left out: a train-mode forward does not read them
        (it normalises with the batch's statistics), while every product's forward updates and restores them."""
        unread = {id(b) for m in self.model.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for b in m.buffers()}
        tensors = [*self.model.parameters(), *(b for b in self.model.buffers() if id(b) not in unread),
                   *(t for b in self.data for t in _tensors(b))]
        return (tuple((id(t), t._version, t.data_ptr()) for t in tensors),
                tuple(m.training for m in self.model.modules()))

    def clear_cache(self) -> None:
        """Free every kept gradient graph (they are rebuilt, within ``cache_memory``, by the next products)."""
        self._cache.clear()
        self._over_budget.clear()
        self.cache_bytes = 0

    def _split(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: v[self.offsets[i]: self.offsets[i + 1]].reshape(shape)
                for i, (name, shape) in enumerate(zip(self._fnames, self.shapes, strict=True))}

    def _flat(self, tangents: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tangents[name].reshape(-1) for name in self._fnames])

    def _forward_over_reverse(self, V: torch.Tensor) -> torch.Tensor:
        primals = {name: p.detach() for name, p in zip(self._fnames, self.params, strict=True)}
        out = torch.zeros_like(V)
        with (torch.no_grad(), _buffers_preserved(self.model), _batch_statistics_only(self.model),
              sdpa_kernel(SDPBackend.MATH)):  # the fused attention kernels have no forward derivative
            for batch, w in self._weighted():
                # A floating-point target gets an explicit zero tangent: with none, torch's mse_loss double backward
                # writes in place into an immutable zero tensor ("ZeroTensors are immutable", pytorch#123996).
                target = batch[1] if self.loss_form == "outputs" else None
                if not (isinstance(target, torch.Tensor) and target.is_floating_point()):
                    target = None
                else:
                    target = _to_device(target, self.device)

                def grad_fn(ps: dict, t: Any, batch: Any = batch) -> dict:
                    def loss(q: dict) -> torch.Tensor:
                        return functional_call(self._loss_module, q, (batch if t is None else (batch[0], t),))
                    return grad(loss)(ps)

                def tangent(v: torch.Tensor, grad_fn: Callable = grad_fn, t: Any = target) -> torch.Tensor:
                    if t is None:
                        return self._flat(jvp(lambda ps: grad_fn(ps, None), (primals,), (self._split(v),))[1])
                    return self._flat(jvp(grad_fn, (primals, t), (self._split(v), torch.zeros_like(t)))[1])

                hv = tangent(V[:, 0])[:, None] if V.shape[1] == 1 else vmap(tangent, in_dims=1, out_dims=1)(V)
                out.add_(hv, alpha=w)
        return out

    # ------------------------------------------------------------------ host transfers and layout
    def asarray(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), device=self.device).to(self.torch_dtype)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()

    @property
    def half_precision(self) -> bool:
        """True for a float16 / bfloat16 model (its operator exchanges float32 vectors)."""
        return self.torch_dtype in _HALF

    @property
    def product_eps(self) -> float:
        return float(torch.finfo(self.torch_dtype).eps)

    def unflatten(self, v: Any) -> dict[str, torch.Tensor]:
        """Split a flat vector (native or NumPy) into ``{parameter name: tensor shaped like it}``."""
        if isinstance(v, np.ndarray):
            v = self.asarray(v)
        return {name: v[self.offsets[i]: self.offsets[i + 1]].reshape(shape)
                for i, (name, shape) in enumerate(zip(self.names, self.shapes, strict=True))}

    def describe(self) -> str:
        return (f"torch ({self.device}, {len(self.params)} parameter tensors, {self.n_samples} samples, "
                f"reduction={self.reduction!r})")

    # ------------------------------------------------------------------ analyses: loss at a point, blocks, layout
    filter_axis = 0
    """Axis of a weight that indexes its filters (output channels / rows): 0 for ``nn.Conv*`` and ``nn.Linear``."""

    def parameters_flat(self) -> torch.Tensor:
        """The selected parameters' current values as one flat vector (the point ``theta``), a copy."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).clone()

    def modules(self) -> list[str]:
        """For each selected parameter, the name of the module holding it (``"layer1.0.conv"`` for
        ``"layer1.0.conv.weight"``; ``""`` for a parameter of the model itself)."""
        return [name.rpartition(".")[0] for name in self.names]

    def loss_at(self, delta: torch.Tensor) -> float:
        """The loss over the data (the reduction of the products: ``sum_b w_b L_b``) at ``theta + delta``.

        The parameters are shifted in place and restored bit-identically from a copy afterwards, also when the loss
        raises; buffers (BatchNorm statistics) are left unchanged as for every product."""
        if not isinstance(delta, torch.Tensor) or tuple(delta.shape) != (self.n,):
            raise ValueError(f"delta must be a torch tensor of shape ({self.n},), got {type(delta).__name__} of "
                             f"shape {tuple(getattr(delta, 'shape', ()))}")
        delta = delta.to(device=self.device, dtype=self.torch_dtype)
        saved = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for i, p in enumerate(self.params):
                    p.add_(delta[self.offsets[i]: self.offsets[i + 1]].reshape(p.shape))
            return self._loss_pass()[1]
        finally:
            with torch.no_grad():
                for p, copy in zip(self.params, saved, strict=True):
                    p.copy_(copy)

    def restrict(self, names: list[str]) -> TorchBackend:
        """A backend for the diagonal block of the selected parameters ``names`` (a subset of :attr:`names`): same
        model, loss, data, reduction and loss form; the determinism check and the train-mode warnings are not
        repeated (this backend passed them)."""
        unknown = [n for n in names if n not in self.names]
        if unknown or not names:
            raise ValueError(f"restrict takes a non-empty subset of this operator's parameters; unknown: {unknown}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return TorchBackend(self.model, self.loss_fn, DataView(self.data), params=list(names),
                                reduction=self.reduction, loss_form=self.loss_form, check_deterministic=False,
                                batch_size=self._batch_size, hvp_method=self.hvp_method)


def register_step_hook(optimizer: torch.optim.Optimizer, callback: Callable[[int], Any]) -> Any:
    """Call ``callback(step)`` after every ``optimizer.step()`` (``step`` counts from 1); returns the handle whose
    ``remove()`` detaches it.  Used by :meth:`hessop.tracking.Tracker.attach` for a plain PyTorch loop."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    count = [0]

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        count[0] += 1
        callback(count[0])

    return optimizer.register_step_post_hook(hook)
