"""Parameter selection: which of a model's parameters the Hessian is taken with respect to."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["select_params"]


def select_params(model: nn.Module, params: Any) -> tuple[list[str], list[torch.Tensor]]:
    """The names and tensors of the selected parameters, in the order of the flat vector.

    Parameters
    ----------
    model : torch.nn.Module
    params :
        ``None`` (every parameter with ``requires_grad``), a submodule, or a list of parameter names (a submodule
        name selects all its parameters) or parameter tensors.

    Returns
    -------
    tuple of (list of str, list of torch.Tensor)

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> select_params(model, ["1"])[0]
    ['1.weight', '1.bias']
    """
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
