"""The PyTorch backend class: validates its arguments and composes the jobs of the package's modules (parameter
selection, batch losses, train-mode handling, the two product methods, the kept-graph cache, the analyses)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from hessop.backends.base import ModelBackend
from hessop.backends.settings import TorchSettings
from hessop.backends.torch._analysis import TorchAnalysis
from hessop.backends.torch._batches import BatchLoss, describe_reading, is_single_batch
from hessop.backends.torch._graph_cache import GraphCache, default_cache_memory, device_free_memory
from hessop.backends.torch._loader import default_data_memory, keep_batches
from hessop.backends.torch._products import (
    LossModule,
    double_backward,
    finite_difference,
    finite_difference_error,
    forward_over_reverse,
)
from hessop.backends.torch._selection import select_params
from hessop.backends.torch._train_mode import buffers_preserved, warn_train_mode

__all__ = ["FOR_BLOCK_DEVICES", "HVP_METHODS", "TorchBackend"]

HVP_METHODS = ("auto", "forward_over_reverse", "double_backward", "finite_difference")

FOR_BLOCK_DEVICES = ("cuda",)
"""Device types on which ``hvp_method="auto"`` computes blocks forward-over-reverse (``vmap``).  Not the CPU: there
double backward, through the kept graph or not, was as fast or faster for single vectors and for blocks of 8 on
every model of benchmarks/hvp_cost.py (docs/benchmarks.md).  On a GPU it is the issue's design, not yet measured."""

_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
# half precision: products in the model's dtype, host transfers through these NumPy dtypes (NumPy has no
# bfloat16); HessianOperator.from_torch shows such a model through float32 vectors (hessop.backends.widened)
_HALF = {torch.float16: np.dtype(np.float16), torch.bfloat16: np.dtype(np.float32)}


class TorchBackend(TorchAnalysis, ModelBackend):
    """Hessian of ``loss`` over ``data`` with respect to some of ``model``'s parameters.

    Parameters
    ----------
    model : torch.nn.Module
    loss_fn : callable or None
        With ``loss_form="outputs"`` (default): ``loss_fn(model(inputs), targets) -> scalar`` (e.g.
        ``torch.nn.CrossEntropyLoss()``).  With ``loss_form="model"``: ``loss_fn(model, batch) -> scalar`` for
        losses that are not of (inputs, targets) form.  None: the model's own loss (``model(**batch).loss``;
        :func:`hessop.backends.torch._batches.call_model`, :func:`~hessop.backends.torch._batches.model_loss`),
        ``loss_form`` then read as ``"model"``.
    data :
        One batch, or a re-iterable of batches (list, ``DataLoader``), read by
        :data:`hessop.backends.torch._batches.READING_RULE`.  For ``loss_form="outputs"`` a batch is
        ``(inputs, targets)``; for ``"model"`` anything ``loss_fn`` accepts.  A one-shot iterator or generator is
        refused (the data are traversed once per product).  A ``DataLoader``'s batches are kept in memory within
        :func:`~hessop.backends.torch._loader.default_data_memory` (:func:`~hessop.backends.torch._loader.keep_batches`;
        ``batches_kept`` says whether they were).
    settings : hessop.backends.settings.TorchSettings
        The keywords of :meth:`hessop.HessianOperator.from_torch` (whose defaults are given here), as fields:

        * ``params``:
          ``None`` (all parameters with ``requires_grad``), a submodule, or a list of parameter names (a submodule
          name selects all its parameters) or parameter tensors.  The operator is then the corresponding diagonal
          block of the full Hessian; the flat vector follows the order of the selection.
        * ``reduction`` ({"mean", "sum"}):
          What ``loss_fn`` does over a batch.  ``"mean"``: the Hessian of the mean loss over all N samples,
          ``H = sum_b (|b| / N) H_b`` (batches may differ in size).  ``"sum"``: ``H = sum_b H_b``.
        * ``check_deterministic`` (bool):
          At construction, compare the total loss over two passes and two products of one vector, and refuse data
          or models that make ``H v`` random (dropout, augmentation, a sampler that changes the samples).
          Costs two loss passes and two products.  Default True.
        * ``batch_size`` (callable, optional):
          ``batch_size(batch) -> int`` for the weights when ``loss_form="model"``; default: the first dimension of
          the first tensor in the batch.
        * ``hvp_method`` ({"auto", "forward_over_reverse", "double_backward", "finite_difference"}):
          How products are computed (module docstring).  ``"auto"`` (default): double backward (through the kept
          graph where ``cache_memory`` allows), the fastest for single vectors and for blocks on every CPU model of
          docs/benchmarks.md; on a GPU, blocks of k > 1 vectors forward-over-reverse (``vmap``: one batched pass
          per batch; ``FOR_BLOCK_DEVICES``), falling back to double backward, once, with a warning naming the
          cause, when the model uses an operation without a forward-mode derivative (e.g. a custom
          ``torch.autograd.Function`` without ``jvp``).  ``"forward_over_reverse"`` never keeps graphs.
          ``"finite_difference"``: central differences of gradients (:func:`._products.finite_difference`), for
          models whose kernels have no second derivative; not exact: its error is measured
          (:meth:`product_error_estimate`) and goes into the operator's product error.
        * ``cache_memory`` (int, optional):
          Budget in bytes for keeping each batch's gradient graph (the forward pass and the ``create_graph``
          backward pass: everything in a double-backward product that depends only on ``theta``) between products,
          so that each later product is one backward pass through it (the product of PyHessian's kept graph, for
          every batch).  Only when ``data`` is a list or tuple of batches; the graphs are dropped and rebuilt when a
          parameter, buffer or batch tensor is modified in place or replaced, or a module switches train/eval mode
          (:meth:`clear_cache` frees them).  What a graph holds is counted as it is built; a batch whose graph
          would take the total over the budget is differentiated afresh at every product, so the kept bytes
          (``cache_bytes``) never exceed it.  Default None: :func:`default_cache_memory` (1 GiB, or a quarter of
          the device's free memory when that is less); 0 keeps nothing.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 1).double()
    >>> data = (torch.ones(4, 2, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64))
    >>> settings = TorchSettings(params=None, reduction="mean", loss_form="outputs", check_deterministic=True,
    ...                          batch_size=None, hvp_method="auto", cache_memory=None)
    >>> backend = TorchBackend(model, torch.nn.MSELoss(), data, settings)
    >>> backend.n, backend.names, backend.n_samples
    (3, ['weight', 'bias'], 4)
    >>> backend.hvp(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).tolist()  # d2/db2 of mean (w.x + b)^2
    [2.0, 2.0, 2.0]
    """

    name = "torch"
    _randomness_hint = "dropout or other randomness in train mode (call model.eval())"

    def __init__(self, model: nn.Module, loss_fn: Callable, data: Any, settings: TorchSettings) -> None:
        params, reduction, loss_form = settings.params, settings.reduction, settings.loss_form
        hvp_method, cache_memory = settings.hvp_method, settings.cache_memory
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (or None for a model that computes its own loss), got "
                            f"{type(loss_fn).__name__}")
        if loss_fn is None:
            loss_form = "model"  # the model is called on each batch and returns its loss
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
        self.settings, self.hvp_method = settings, hvp_method
        self._checking = False

        self.names, self.params = select_params(model, params)
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
        self.graphs = GraphCache(default_cache_memory(self.device) if cache_memory is None else cache_memory)
        self.shapes = [tuple(p.shape) for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.n = int(self.offsets[-1])
        self.loss = BatchLoss(model, loss_fn, loss_form, self.device, self.torch_dtype, settings.batch_size)
        self.loss_module = LossModule(model, self.loss)

        single = is_single_batch(data, loss_form)
        reading = describe_reading(data, single)
        self.loader = data if isinstance(data, torch.utils.data.DataLoader) else None
        data, self.batches_kept = keep_batches(data, default_data_memory())
        self._set_data(data, single)
        warn_train_mode(model)

        try:
            if settings.check_deterministic:
                self._checking = True  # the check's two products are computed afresh, never through a kept graph
                try:
                    self._check_deterministic()
                finally:
                    self._checking = False
            else:
                self.n_samples = sum(self._size(b) for b in self._batches())
                if self.n_samples == 0:
                    raise ValueError("data holds no samples.")
        except (TypeError, ValueError, AttributeError, RuntimeError, IndexError, KeyError) as e:
            e.add_note(f"hessop read data as {reading} (see hessop.backends.torch._batches.READING_RULE; wrap one "
                       "batch in a list, data=[batch], to read it as one batch).")
            raise

    def _check_deterministic(self) -> None:
        """The determinism check of :class:`~hessop.backends.base.DataBackend`; for a ``DataLoader`` whose batches
        are kept (:func:`~hessop.backends.torch._loader.keep_batches`), also one pass over the loader itself,
        whose total loss must equal the kept batches' (a loader that changes the samples between passes, such as
        random augmentation or ``drop_last`` with shuffling, is refused as before)."""
        super()._check_deterministic()
        if self.batches_kept:
            kept_total = self._last_pass[1]
            kept, self.data = self.data, self.loader
            try:
                n, total = self._loss_pass()
            finally:
                self.data = kept
            if n != self.n_samples:
                self._not_deterministic(f"number of samples ({self.n_samples} kept vs {n} in a new pass)")
            if abs(total - kept_total) > float(np.sqrt(self.product_eps)) * max(abs(total), abs(kept_total)):
                self._not_deterministic(f"total loss ({kept_total!r} over the kept batches vs {total!r} over a new "
                                        "pass of the DataLoader)")

    # ------------------------------------------------------------------ data
    def _size(self, batch: Any) -> int:
        return self.loss.size(batch)

    def _loss_pass(self) -> tuple[int, float]:
        self._last_pass = super()._loss_pass()
        return self._last_pass

    def _batch_loss(self, batch: Any) -> float:
        with torch.no_grad(), buffers_preserved(self.model):
            return float(self.loss(batch))

    # ------------------------------------------------------------------ products
    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        return self.hvp_block(v.reshape(-1, 1)).reshape(-1)

    def _check_native(self, V: Any) -> None:
        """Refuse what is not a tensor of the parameters' dtype on their device."""
        if not isinstance(V, torch.Tensor):
            raise TypeError(f"the torch backend takes torch tensors, got {type(V).__name__}")
        if V.dtype != self.torch_dtype or V.device != self.device:
            raise TypeError(f"vectors must be {self.torch_dtype} on {self.device}, got {V.dtype} on {V.device} "
                            "(use H.asarray(x) to move a NumPy array in).")

    def hvp_block(self, V: torch.Tensor) -> torch.Tensor:
        self._check_native(V)
        if self.hvp_method == "finite_difference":
            return finite_difference(self, V)
        if self.hvp_method == "double_backward" or (self.hvp_method == "auto" and (
                V.shape[1] == 1 or self.device.type not in FOR_BLOCK_DEVICES)):
            return double_backward(self, V)
        if self.hvp_method == "forward_over_reverse":
            return forward_over_reverse(self, V)
        try:
            return forward_over_reverse(self, V)
        except (RuntimeError, NotImplementedError) as e:
            out = double_backward(self, V)  # raises if the loss itself is at fault
            self.hvp_method = "double_backward"
            warnings.warn(f"hessop: forward-over-reverse Hessian-vector products failed on this model "
                          f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}); "
                          "using double backward from now on (slower for blocks). Pass "
                          "hvp_method='double_backward' to silence this.", UserWarning, stacklevel=4)
            return out

    def product_error_estimate(self, U: np.ndarray) -> np.ndarray | None:
        """Measured error norms ``||fl(H u_j) - H u_j||`` of this backend's products of the host columns ``U``
        (float64, one per column) where the products are not exact up to rounding (finite differences:
        :func:`._products.finite_difference_error`); None otherwise (:mod:`hessop._product_error` measures the
        rounding)."""
        if self.hvp_method != "finite_difference":
            return None
        return finite_difference_error(self, self.asarray(U)).cpu().numpy()

    def _options(self) -> dict[str, Any]:
        """The keywords a backend of another matrix (a subclass taking the problem's keywords: the curvature
        backend) derived from this one keeps (:meth:`restrict`); none here: the Hessian backend's options travel
        in its :attr:`settings`."""
        return {}

    # ------------------------------------------------------------------ the kept-graph cache
    def caching(self) -> bool:
        """Whether products keep gradient graphs: a budget, data given as a list or tuple, and not inside the
        determinism check."""
        return self.graphs.budget > 0 and isinstance(self.data, (list, tuple)) and not self._checking

    @property
    def cache_memory(self) -> int:
        """The budget in bytes for kept gradient graphs (``cache_memory``)."""
        return self.graphs.budget

    @property
    def cache_bytes(self) -> int:
        """What the kept gradient graphs hold now, in bytes (at most :attr:`cache_memory`)."""
        return self.graphs.bytes

    def clear_cache(self) -> None:
        """Free every kept gradient graph (they are rebuilt, within ``cache_memory``, by the next products)."""
        self.graphs.clear()

    # ------------------------------------------------------------------ host transfers and precision
    def asarray(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), device=self.device).to(self.torch_dtype)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()

    def free_memory(self) -> int | None:
        """Bytes free on the parameters' device (:func:`~hessop.backends.torch.device_free_memory`)."""
        return device_free_memory(self.device)

    @property
    def half_precision(self) -> bool:
        """True for a float16 / bfloat16 model (its operator exchanges float32 vectors)."""
        return self.torch_dtype in _HALF

    @property
    def product_eps(self) -> float:
        return float(torch.finfo(self.torch_dtype).eps)

    @property
    def product_dtype(self) -> str:
        return str(self.torch_dtype).removeprefix("torch.")

    def describe(self) -> str:
        return (f"torch ({self.device}, {len(self.params)} parameter tensors, {self.n_samples} samples, "
                f"reduction={self.reduction!r})")
