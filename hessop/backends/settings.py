"""The settings a model backend is built with: one object per backend, made by
:meth:`hessop.HessianOperator.from_torch` or :meth:`~hessop.HessianOperator.from_jax` from their keywords, and
copied (with the selected parameters changed) for the backends derived from it (``restrict``, blocks).

The fields have no defaults: the defaults are the constructors' (``from_torch``, ``from_jax``), documented there,
and a settings object is always given whole.  No framework is imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["CurvatureSettings", "JaxSettings", "TorchSettings", "keywords"]


def keywords(settings: Any) -> dict[str, Any]:
    """A settings object's fields as keywords, the values themselves (not copies, unlike ``dataclasses.asdict``).

    Examples
    --------
    >>> keywords(CurvatureSettings(curvature="ggn", output_loss=None, mc_samples=1, fisher_seed=0))
    {'curvature': 'ggn', 'output_loss': None, 'mc_samples': 1, 'fisher_seed': 0}
    """
    return {f.name: getattr(settings, f.name) for f in fields(settings)}


@dataclass(frozen=True)
class TorchSettings:
    """How a :class:`hessop.backends.torch.TorchBackend` reads its problem (``params``, ``reduction``,
    ``loss_form``, ``check_deterministic``, ``batch_size``) and computes its products (``hvp_method``,
    ``cache_memory``); each field is the keyword of that name of :meth:`hessop.HessianOperator.from_torch`.

    Examples
    --------
    >>> s = TorchSettings(params=None, reduction="mean", loss_form="outputs", check_deterministic=True,
    ...                   batch_size=None, hvp_method="auto", cache_memory=None)
    >>> s.problem()["reduction"], s.derived(["0.bias"], "double_backward").params
    ('mean', ['0.bias'])
    """

    params: Any
    reduction: str
    loss_form: str
    check_deterministic: bool
    batch_size: Callable[[Any], int] | None
    hvp_method: str
    cache_memory: int | None

    def problem(self) -> dict[str, Any]:
        """The problem's fields as keywords (all but the product method's ``hvp_method`` and ``cache_memory``):
        what a backend of another matrix of the same problem (the curvature backend) takes."""
        return {k: v for k, v in keywords(self).items() if k not in ("hvp_method", "cache_memory")}

    def derived(self, names: list[str], hvp_method: str) -> TorchSettings:
        """The settings of a backend derived from one built with these, which passed the checks: the parameters
        ``names``, no determinism check, ``hvp_method`` (the method its products use now), the default cache
        budget."""
        return replace(self, params=list(names), check_deterministic=False, hvp_method=hvp_method,
                       cache_memory=None)


@dataclass(frozen=True)
class JaxSettings:
    """How a :class:`hessop.backends.jax.JaxBackend` reads its data; each field is the keyword of that name of
    :meth:`hessop.HessianOperator.from_jax`.

    Examples
    --------
    >>> JaxSettings(reduction="sum", check_deterministic=True, batch_size=None)
    JaxSettings(reduction='sum', check_deterministic=True, batch_size=None)
    """

    reduction: str
    check_deterministic: bool
    batch_size: Callable[[Any], int] | None


@dataclass(frozen=True)
class CurvatureSettings:
    """Which matrix a model's operator is (``curvature``: the Hessian, GGN, Fisher or empirical Fisher), the loss
    in the model's outputs (``output_loss``) and the Fisher's draws (``mc_samples``, ``fisher_seed``); the keywords
    of those names of ``from_torch`` and ``from_jax`` (:mod:`hessop.curvature`).

    Examples
    --------
    >>> CurvatureSettings(curvature="hessian", output_loss=None, mc_samples=1, fisher_seed=0).curvature
    'hessian'
    """

    curvature: str
    output_loss: str | None
    mc_samples: int
    fisher_seed: int
