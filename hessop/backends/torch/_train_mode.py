"""Train mode: the warnings for BatchNorm and dropout layers, and the side effects a train-mode forward pass has
on BatchNorm running statistics, which the backend undoes (its products leave the model as they found it)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["batch_statistics_only", "buffers_preserved", "warn_train_mode"]


def warn_train_mode(model: nn.Module) -> None:
    """Warn when a train-mode ``model`` holds BatchNorm layers (the Hessian then depends on the batching) or
    dropout layers (``H v`` is random); nothing in eval mode.

    Examples
    --------
    >>> warn_train_mode(torch.nn.Linear(2, 2).eval())  # eval mode: no warning
    """
    if not model.training:
        return
    bn = [n or "<model>" for n, m in model.named_modules()
          if isinstance(m, nn.modules.batchnorm._NormBase) and m.training]
    drop = [n or "<model>" for n, m in model.named_modules()
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


@contextlib.contextmanager
def buffers_preserved(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (e.g. BatchNorm running statistics a train-mode forward updates) on exit.

    Examples
    --------
    >>> bn = torch.nn.BatchNorm1d(1).train()
    >>> with buffers_preserved(bn):
    ...     _ = bn(torch.tensor([[1.0], [3.0]]))
    >>> bn.running_mean.tolist()
    [0.0]
    """
    saved = [(b, b.detach().clone()) for b in model.buffers()] if model.training else []
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


@contextlib.contextmanager
def batch_statistics_only(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm layers normalise with the batch's statistics and, as a side effect, update their running
    statistics in place, which ``torch.func`` transforms refuse (an in-place write to a captured tensor).  The
    running statistics do not enter a train-mode forward, so while this is active they are detached from the layer
    (``running_mean = running_var = None``, ``track_running_stats = False``: the same output) and put back, the
    same tensor objects, untouched, on exit.  Eval-mode layers (which do use them) are left alone.

    Examples
    --------
    >>> bn = torch.nn.BatchNorm1d(1).train()
    >>> with batch_statistics_only(bn):
    ...     print(bn.running_mean)
    None
    >>> bn.running_mean.tolist()
    [0.0]
    """
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
