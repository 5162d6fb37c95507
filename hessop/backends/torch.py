"""PyTorch backend: Hessian-vector products of a model's loss over a data set, by double backward.

Maths
-----
For a loss ``L(theta) = sum_b w_b L_b(theta)`` over batches ``b`` (``w_b = |b| / N`` when ``L_b`` is a per-batch
mean, ``w_b = 1`` when it is a per-batch sum) the product is accumulated batch by batch:

    H v = sum_b w_b  d/dtheta ( grad L_b(theta) . v ),

i.e. reverse-over-reverse differentiation (Pearlmutter 1994; the HVP of PyHessian, Yao et al. 2020).  For a block
``V = [v_1 .. v_k]`` the forward pass and first backward pass of each batch are done once and the k second
backward passes reuse that graph.

What it never does: change the model's train/eval mode, touch ``.grad``, or leave the model's buffers (BatchNorm
running statistics) changed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from hessop.backends.base import DataBackend

__all__ = ["TorchBackend"]

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


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for x in items:
        t = _first_tensor(x)
        if t is not None:
            return t
    return None


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
        self.model, self.loss_fn, self.reduction, self.loss_form = model, loss_fn, reduction, loss_form
        self._batch_size = batch_size

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
        self.shapes = [tuple(p.shape) for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.n = int(self.offsets[-1])

        self._set_data(data, _is_single_batch(data, loss_form))
        self._warn_train_mode()

        if check_deterministic:
            self._check_deterministic()
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
        if self.loss_form == "outputs":
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ValueError("with loss_form='outputs' each batch must be (inputs, targets); for other batch "
                                 "structures use loss_form='model' and loss_fn(model, batch).")
            inputs, targets = batch
            loss = self.loss_fn(self.model(inputs), targets)
        else:
            loss = self.loss_fn(self.model, batch)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss_fn returned {type(loss).__name__}, expected a scalar torch tensor.")
        if loss.numel() != 1:
            raise ValueError(
                f"loss_fn returned a tensor of shape {tuple(loss.shape)}, not a scalar: reduce it over the batch "
                "(e.g. reduction='mean' in the loss) and tell hessop which reduction with reduction=..."
            )
        if not loss.is_floating_point():
            raise TypeError(f"loss_fn returned a {loss.dtype} tensor; the loss must be floating point.")
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
        k = V.shape[1]
        out = torch.zeros_like(V)
        off = self.offsets
        with torch.enable_grad(), _buffers_preserved(self.model):
            for batch, w in self._weighted():
                loss = self._loss(batch)
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                if not any(g is not None and g.requires_grad for g in grads):
                    continue  # loss at most linear in these parameters: this batch adds nothing
                flat = torch.cat([
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, self.params, strict=True)
                ])
                for j in range(k):
                    hv = torch.autograd.grad(flat, self.params, grad_outputs=V[:, j], retain_graph=j < k - 1,
                                             allow_unused=True)
                    for i, h in enumerate(hv):
                        if h is not None:
                            out[off[i]: off[i + 1], j].add_(h.reshape(-1), alpha=w)
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
