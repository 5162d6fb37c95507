"""Batches: what counts as one batch, its tensors, its size, its move to the parameters' device, and the loss of
a batch (checked to be a differentiable scalar)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["READING_RULE", "BatchLoss", "describe_reading", "first_tensor", "is_single_batch", "model_loss", "tensors",
           "to_device"]


READING_RULE = """\
How ``data`` is read (``from_torch``): one batch, or a re-iterable of batches.

* A tensor or a mapping (a dict) is one batch.
* A tuple or list is either one batch or a collection of batches:

  - ``loss_form="outputs"`` (each batch is ``(inputs, targets)``): a pair whose second entry is a tensor and whose
    first is a tensor or a mapping is one batch; any other tuple or list is a collection of batches.
  - ``loss_form="model"`` or ``loss_fn=None``: a *tuple* of tensors is one batch (``(x, y)``, ``(inputs...)``); a
    *list* of tensors is a list of batches, one tensor each (token batches of a language model); any other tuple
    or list is a collection of batches.

  A tuple or list mixing tensors with other values, a list of tensors of different dtypes or dimensions under
  ``loss_form="model"`` (or floating-point tensors of different shapes beyond the first dimension: token batches
  of different lengths are integer), and a list of tensors that is not a pair under ``loss_form="outputs"`` cannot
  be read either way: they are refused (``ValueError``) with the fix.  Wrap one batch in a list (``[batch]``) to
  make any batch unambiguous.
* Anything else iterable (a ``DataLoader``, a ``DataView``) yields the batches: each item is one batch, whatever
  its type."""


def _kinds(items: Any) -> str:
    return ", ".join(sorted({type(x).__name__ for x in items}))


def is_single_batch(data: Any, loss_form: str) -> bool:
    """Whether ``data`` is one batch rather than a re-iterable of batches, by :data:`READING_RULE` (``loss_form``
    ``"outputs"``, or ``"model"`` also for ``loss_fn=None``).

    Raises
    ------
    ValueError
        For a tuple or list the rule cannot read (mixed tensors and other values; tensors of different dtypes or
        dimensions, or floating-point ones of different trailing shapes, in a list under ``"model"``; a list of
        tensors other than a pair under ``"outputs"``), naming the fix.

    Examples
    --------
    >>> x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    >>> is_single_batch((x, y), "outputs"), is_single_batch([(x, y)], "outputs"), is_single_batch([x, y], "outputs")
    (True, False, True)
    >>> is_single_batch((x, y), "model"), is_single_batch([y, y, y], "model"), is_single_batch({"x": x}, "model")
    (True, False, True)
    """
    if isinstance(data, (torch.Tensor, Mapping)):
        return True
    if not isinstance(data, (tuple, list)) or not data:
        return False
    is_tensor = [isinstance(x, torch.Tensor) for x in data]
    if loss_form == "outputs" and len(data) == 2 and is_tensor[1] and isinstance(data[0], (torch.Tensor, Mapping)):
        return True
    if any(is_tensor) and not all(is_tensor):
        raise ValueError(
            f"data is a {type(data).__name__} mixing tensors with other values ({_kinds(data)}): hessop cannot tell "
            "one batch from a list of batches. If it is one batch, pass it wrapped in a list, data=[batch]; if it is "
            "a list of batches, make every entry a batch (a tuple (inputs, targets), a dict, or a tensor).")
    if not all(is_tensor):
        return False
    shapes = ", ".join(f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}" for x in data[:4])
    if loss_form == "outputs":
        raise ValueError(
            f"data is a {type(data).__name__} of {len(data)} tensors ({shapes}{', ...' if len(data) > 4 else ''}): "
            "with loss_form='outputs' a batch is a pair (inputs, targets). Pass data=(x, y) for one batch or "
            "[(x1, y1), (x2, y2), ...] for several; for batches a model scores itself (a language model's token "
            "batches) pass loss_fn=None (the model's own loss) or loss_form='model' with loss_fn(model, batch).")
    if isinstance(data, tuple):
        return True
    kinds = {(x.dtype, x.ndim) for x in data}
    trailing = {tuple(x.shape[1:]) for x in data}
    integer = not (data[0].is_floating_point() or data[0].is_complex())
    if len(kinds) > 1 or (len(trailing) > 1 and not integer):
        raise ValueError(
            f"data is a list of {len(data)} tensors of different dtypes or shapes ({shapes}"
            f"{', ...' if len(data) > 4 else ''}): with loss_form='model' (or loss_fn=None) a list of tensors is a "
            "list of batches, one tensor each, and these do not look like batches of one kind (token batches of "
            "different lengths may differ in shape; floating-point batches may not). If it is one batch such as "
            "(inputs, targets), pass it as a tuple, data=(x, y), or as data=[(x, y)]; if it is a list of batches of "
            "different shapes, give each as a 1-tuple, data=[(b,) for b in batches], and read batch[0] in loss_fn.")
    return False


def describe_reading(data: Any, single: bool) -> str:
    """How ``data`` was read (for error messages): one batch of which kind, or a collection of how many batches.

    Examples
    --------
    >>> x = torch.zeros(4, 2)
    >>> describe_reading([x, x], False)
    'a list of 2 batches, each a Tensor'
    >>> describe_reading((x, x), True)
    'one batch, a tuple of 2 tensors'
    """
    if single:
        n = sum(1 for _ in tensors(data))
        return f"one batch, a {type(data).__name__} of {n} tensor{'s' if n != 1 else ''}"
    if isinstance(data, (tuple, list)):
        return f"a {type(data).__name__} of {len(data)} batches, each a {_kinds(data)}"
    return f"the batches a {type(data).__name__} yields (each item one batch)"


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


def call_model(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple or list, ``model(batch)`` otherwise: how a
    model that computes its own loss (``loss_fn=None``) is called.

    Examples
    --------
    >>> call_model(lambda a, b=0: a + b, {"a": 1, "b": 2}), call_model(lambda a, b: a * b, (3, 4))
    (3, 12)
    """
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def model_loss(output: Any) -> Any:
    """The loss in a model's output (``loss_fn=None``): the output itself when it is a tensor, else its ``.loss``
    (a Hugging Face ``ModelOutput``, any object with that attribute) or its ``"loss"`` entry (a dict).

    Raises
    ------
    ValueError
        When the output carries ``loss=None`` (a Hugging Face model given no labels).
    TypeError
        When the output holds no loss at all.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> model_loss(SimpleNamespace(loss=torch.tensor(2.0), logits=None)).item(), model_loss({"loss": 3.0})
    (2.0, 3.0)
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "loss" in output:
        loss = output["loss"]
    elif hasattr(output, "loss"):
        loss = output.loss
    else:
        raise TypeError(
            f"loss_fn=None uses the loss the model computes itself, but the model returned a "
            f"{type(output).__name__} holding no loss. The model must return the loss (a scalar tensor), an object "
            "with .loss (a Hugging Face ModelOutput) or a dict with 'loss'; otherwise pass a loss_fn.")
    if loss is None:
        raise ValueError(
            f"the model returned {type(output).__name__} with loss=None: a Hugging Face model computes its loss only "
            "when given labels. Put them in every batch, e.g. {'input_ids': ids, 'attention_mask': mask, 'labels': "
            "ids} for a causal language model (it shifts the labels itself).")
    return loss


def _not_a_tensor(output: Any, error: Exception) -> TypeError:
    """The advice when ``loss_fn(model(inputs), targets)`` failed on an output that is not a tensor."""
    carries = ("holds a .loss" if hasattr(output, "loss") or (isinstance(output, Mapping) and "loss" in output)
               else "is not a tensor")
    return TypeError(
        f"the model returned a {type(output).__name__}, not a tensor, and loss_fn(model(inputs), targets) failed on "
        f"it ({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else error!r}). "
        f"The output {carries}: for a model that computes its own loss (a Hugging Face model, model(**batch).loss) "
        "pass loss_fn=None and batches the model takes (dicts with 'labels'); otherwise pass loss_form='model' and "
        "loss_fn(model, batch), e.g. lambda m, b: F.cross_entropy(m(b[0]).logits, b[1]).")


class BatchLoss:
    """The loss of one batch, ``loss_fn(model(inputs), targets)``, ``loss_fn(model, batch)`` or, with
    ``loss_fn=None``, the model's own (:func:`model_loss` of :func:`call_model`), and its size.

    Parameters
    ----------
    model : torch.nn.Module
    loss_fn : callable or None
        None: the model computes its loss (``model(**batch).loss``).
    loss_form : {"outputs", "model"}
        Ignored (read as ``"model"``) when ``loss_fn`` is None.
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

    def __init__(self, model: nn.Module, loss_fn: Callable | None, loss_form: str, device: torch.device,
                 torch_dtype: torch.dtype, batch_size: Callable[[Any], int] | None = None) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.loss_form = "model" if loss_fn is None else loss_form
        self.device, self.torch_dtype, self.batch_size = device, torch_dtype, batch_size

    def size(self, batch: Any) -> int:
        """The number of samples in ``batch``."""
        if self.batch_size is not None:
            return int(self.batch_size(batch))
        pair = self.loss_form == "outputs" and isinstance(batch, (tuple, list)) and len(batch) == 2
        t = first_tensor(batch[0] if pair else batch)
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            raise ValueError("cannot tell the batch size: pass batch_size=callable(batch) -> int, or batches whose "
                             "first tensor has the samples along dimension 0.")
        return int(t.shape[0])

    def __call__(self, batch: Any) -> torch.Tensor:
        """The batch's loss, a 0-d floating tensor with its graph."""
        batch = to_device(batch, self.device)
        if self.loss_form == "outputs" and not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(
                f"with loss_form='outputs' each batch must be (inputs, targets), got a {type(batch).__name__}. For a "
                "model that computes its own loss (a Hugging Face model given dict batches with 'labels') pass "
                "loss_fn=None; for other batches use loss_form='model' and loss_fn(model, batch).")
        try:
            if self.loss_fn is None:
                loss = model_loss(call_model(self.model, batch))
            elif self.loss_form == "outputs":
                inputs, targets = batch
                output = self.model(inputs)
                try:
                    loss = self.loss_fn(output, targets)
                except (TypeError, AttributeError, ValueError, RuntimeError, IndexError, KeyError) as e:
                    if isinstance(output, torch.Tensor):
                        raise
                    raise _not_a_tensor(output, e) from e
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
        who = "loss_fn" if self.loss_fn is not None else "the model's own loss (loss_fn=None)"
        if isinstance(loss, (bool, int, float)):
            raise TypeError(
                f"{who} returned a Python {type(loss).__name__} ({loss!r}), not a scalar torch tensor: a Python "
                "number carries no graph to differentiate. Return the loss tensor itself (no .item(), float() or "
                "int())."
            )
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"{who} returned {type(loss).__name__}, expected a scalar torch tensor.")
        if loss.numel() != 1:
            raise ValueError(
                f"{who} returned a tensor of shape {tuple(loss.shape)}, not a scalar: reduce it over the batch "
                "(e.g. reduction='mean' in the loss) and tell hessop which reduction with reduction=..."
            )
        if not loss.is_floating_point():
            raise TypeError(f"{who} returned a {loss.dtype} tensor; the loss must be floating point (an integer "
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
