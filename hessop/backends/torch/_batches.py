"""Batches: what counts as one batch, its tensors, its size, its move to the parameters' device, and the loss of
a batch (checked to be a differentiable scalar)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["BatchLoss", "first_tensor", "is_single_batch", "tensors", "to_device"]


def is_single_batch(data: Any, loss_form: str) -> bool:
    """Whether ``data`` is one batch (a tensor, a mapping of tensors, ``(inputs, targets)``) rather than a
    re-iterable of batches.

    Examples
    --------
    >>> x = torch.zeros(4, 2)
    >>> is_single_batch((x, x), "outputs"), is_single_batch([(x, x)], "outputs")
    (True, False)
    """
    if isinstance(data, torch.Tensor):
        return True
    if isinstance(data, Mapping):
        return all(isinstance(x, torch.Tensor) for x in data.values())
    if isinstance(data, (tuple, list)) and data:
        if loss_form == "outputs":
            return len(data) == 2 and isinstance(data[0], torch.Tensor)
        return all(isinstance(x, torch.Tensor) for x in data)
    return False


def tensors(batch: Any) -> Iterator[torch.Tensor]:
    """Every tensor of a batch (nested tuples, lists and mappings), in order.

    Examples
    --------
    >>> [tuple(t.shape) for t in tensors({"x": torch.zeros(2), "y": [torch.zeros(3)], "n": 5})]
    [(2,), (3,)]
    """
    if isinstance(batch, torch.Tensor):
        yield batch
        return
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for x in items:
        yield from tensors(x)


def first_tensor(batch: Any) -> torch.Tensor | None:
    """The first tensor of a batch, or None.

    Examples
    --------
    >>> first_tensor(("label", torch.ones(2))).tolist()
    [1.0, 1.0]
    """
    return next(tensors(batch), None)


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (nested in tuples, lists, dicts) on ``device``; pinned tensors move with
    ``non_blocking=True``.  Tensors already there and non-tensor leaves are returned as they are.

    Examples
    --------
    >>> x = torch.zeros(2)
    >>> to_device({"x": x, "n": 3}, torch.device("cpu"))["x"] is x
    True
    """
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=batch.is_pinned())
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(x, device) for x in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(x, device) for x in batch)
    return batch


class BatchLoss:
    """The loss of one batch, ``loss_fn(model(inputs), targets)`` or ``loss_fn(model, batch)``, and its size.

    Parameters
    ----------
    model : torch.nn.Module
    loss_fn : callable
    loss_form : {"outputs", "model"}
    device : torch.device
        Where the parameters live: each batch is moved there.
    torch_dtype : torch.dtype
        The parameters' dtype (named when a batch's dtype does not match).
    batch_size : callable, optional
        ``batch_size(batch) -> int``; default the first dimension of the batch's first tensor.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 1)
    >>> loss = BatchLoss(model, torch.nn.MSELoss(), "outputs", torch.device("cpu"), torch.float32)
    >>> batch = (torch.zeros(3, 2), model.bias.detach().expand(3, 1) + 1)
    >>> round(float(loss(batch).detach()), 6), loss.size(batch)
    (1.0, 3)
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, loss_form: str, device: torch.device,
                 torch_dtype: torch.dtype, batch_size: Callable[[Any], int] | None = None) -> None:
        self.model, self.loss_fn, self.loss_form = model, loss_fn, loss_form
        self.device, self.torch_dtype, self.batch_size = device, torch_dtype, batch_size

    def size(self, batch: Any) -> int:
        """The number of samples in ``batch``."""
        if self.batch_size is not None:
            return int(self.batch_size(batch))
        t = batch[0] if self.loss_form == "outputs" else first_tensor(batch)
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            raise ValueError("cannot tell the batch size: pass batch_size=callable(batch) -> int, or batches whose "
                             "first tensor has the samples along dimension 0.")
        return int(t.shape[0])

    def __call__(self, batch: Any) -> torch.Tensor:
        """The batch's loss, a 0-d floating tensor with its graph."""
        batch = to_device(batch, self.device)
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
            other = sorted({str(t.dtype) for t in tensors(batch) if t.is_floating_point()} - {str(self.torch_dtype)})
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
        if not getattr(self, "_narrow_warned", False) and (
                torch.finfo(loss.dtype).eps > torch.finfo(self.torch_dtype).eps):
            self._narrow_warned = True  # once per operator
            warnings.warn(
                f"loss_fn returns a {str(loss.dtype).removeprefix('torch.')} loss for "
                f"{str(self.torch_dtype).removeprefix('torch.')} parameters (e.g. a Hugging Face model's .loss, "
                "computed in float32): every product, eigenvalue, trace and residual is then only as accurate as "
                f"{str(loss.dtype).removeprefix('torch.')}, whatever the parameters' dtype. Compute the loss in the "
                "parameters' dtype (e.g. from the logits: loss_fn(model(x).logits.double(), y)).",
                UserWarning, stacklevel=2)
        return loss.reshape(())
