"""The optimizer hook: a callback after every ``optimizer.step()`` (for :meth:`hessop.tracking.Tracker.attach`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["register_step_hook"]


def register_step_hook(optimizer: torch.optim.Optimizer, callback: Callable[[int], Any]) -> Any:
    """Call ``callback(step)`` after every ``optimizer.step()`` (``step`` counts from 1).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    callback : callable
        ``callback(step)``.

    Returns
    -------
    torch.utils.hooks.RemovableHandle
        Its ``remove()`` detaches the hook.  Used by :meth:`hessop.tracking.Tracker.attach` for a plain PyTorch
        loop.

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.zeros(1))
    >>> opt = torch.optim.SGD([w], lr=0.1)
    >>> handle = register_step_hook(opt, lambda step: print("step", step))
    >>> opt.step()
    step 1
    >>> handle.remove()
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    count = [0]

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        count[0] += 1
        callback(count[0])

    return optimizer.register_step_post_hook(hook)
