"""Parameter selection: which of a model's parameters the Hessian is taken with respect to (names, submodules,
tensors, glob patterns), and the refusal of sharded (DTensor) parameters."""

from __future__ import annotations

from fnmatch import fnmatchcase
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
        name selects all its parameters) or parameter tensors.  A name holding ``*``, ``?`` or ``[`` is a glob
        pattern (:func:`fnmatch.fnmatchcase`, ``*`` also matching dots) over the names of ``named_parameters``: it
        selects every parameter whose name, or whose submodule's name, it matches, in the model's order
        (``"transformer.h.*.attn.*"``: every attention parameter of a GPT-2; ``"*.bias"``: every bias).

    Returns
    -------
    tuple of (list of str, list of torch.Tensor)

    Raises
    ------
    TypeError
        A selected parameter is a ``torch.distributed.tensor.DTensor`` (a model wrapped with FSDP2's
        ``fully_shard``, or tensor-parallel): hessop's vectors are whole n-vectors on one process, and over sharded
        parameters its products would be of this rank's shard only (FSDP2 gave top eigenvalues 0 with residual 0,
        "converged": a silent wrong answer); refused until sharded vectors exist (issue 23).

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> select_params(model, ["1"])[0]
    ['1.weight', '1.bias']
    >>> select_params(model, "*.bias")[0]
    ['0.bias', '1.bias']
    """
    _refuse_sharded(model, [])
    named = list(model.named_parameters())
    by_id = {id(p): name for name, p in named}
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise ValueError("the model has no parameter with requires_grad=True; there is no Hessian to take.")
        _refuse_sharded(model, chosen)
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
                glob = any(c in item for c in "*?[")
                if glob:
                    hits = [(n, p) for n, p in named if fnmatchcase(n, item) or fnmatchcase(n, item + ".*")]
                else:
                    hits = [(n, p) for n, p in named if n == item or n.startswith(item + ".")]
                if not hits:
                    some = ", ".join(n for n, _ in named[:8])
                    what = "a pattern that matches no parameter or submodule name" if glob else \
                        "not a parameter or submodule"
                    raise ValueError(f"params names {item!r}, which is {what} of the model (its parameters are: "
                                     f"{some}{', ...' if len(named) > 8 else ''}).")
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
    _refuse_sharded(model, unique)
    return [n for n, _ in unique], [p for _, p in unique]


def _refuse_sharded(model: nn.Module, chosen: list[tuple[str, torch.Tensor]]) -> None:
    """Raise TypeError if ``model`` holds a module wrapped with FSDP2's ``fully_shard`` (whatever state its
    parameters are in: between a forward and a backward they are whole tensors on freed storage) or a selected
    parameter is a DTensor (sharded: FSDP2, tensor parallelism)."""
    try:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without torch.distributed: nothing can be sharded
        return
    wrapped = [name or type(module).__name__ for name, module in model.named_modules()
               if isinstance(module, FSDPModule)]
    sharded = [n for n, p in chosen if isinstance(p, DTensor)]
    if not (wrapped or sharded):
        return
    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    what = (f"{len(sharded)} of the selected parameters ({some(sharded)}) are DTensors sharded over a device mesh"
            if sharded else f"the model holds modules wrapped with FSDP2's fully_shard ({some(wrapped)}), whose "
            "parameters are DTensors sharded over a device mesh")
    raise TypeError(
        f"{what} (FSDP2 or tensor parallelism). hessop's vectors are whole n-vectors on one process and its "
        "products would see this rank's shard only (a wrong spectrum); sharded vectors are not supported yet "
        "(hessop issue 23). Analyse an unwrapped copy instead: on every rank build the model without fully_shard "
        "and load the full state dict (torch.distributed.checkpoint.state_dict.get_model_state_dict(model, "
        "options=StateDictOptions(full_state_dict=True))), then HessianOperator.from_torch(copy, loss_fn, "
        "this_rank_data, comm='torch') splits the data over the ranks.")
