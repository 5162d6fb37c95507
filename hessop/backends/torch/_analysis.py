"""What the analyses need from a torch model beyond products (the :class:`~hessop.backends.base.ModelBackend`
interface): the parameters' layout and values, the loss at a shifted point, and the backends of diagonal blocks."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import numpy as np
import torch

from hessop.backends.base import DataView

__all__ = ["TorchAnalysis"]


class TorchAnalysis:
    """The :class:`~hessop.backends.base.ModelBackend` methods of :class:`~hessop.backends.torch.TorchBackend`,
    over its ``params`` (the selected tensors), ``names``, ``shapes`` and ``offsets``.

    Examples
    --------
    >>> from hessop import HessianOperator
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)).double()
    >>> data = (torch.ones(4, 2, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64))
    >>> backend = HessianOperator.from_torch(model, torch.nn.MSELoss(), data).backend
    >>> backend.modules()
    ['0', '0', '1', '1']
    >>> {name: tuple(t.shape) for name, t in backend.unflatten(np.zeros(backend.n)).items()}
    {'0.weight': (2, 2), '0.bias': (2,), '1.weight': (1, 2), '1.bias': (1,)}
    >>> backend.restrict(["1.bias"]).n
    1
    """

    filter_axis = 0
    """Axis of a weight that indexes its filters (output channels / rows): 0 for ``nn.Conv*`` and ``nn.Linear``."""

    def parameters_flat(self) -> torch.Tensor:
        """The selected parameters' current values as one flat vector (the point ``theta``), a copy."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).clone()

    def modules(self) -> list[str]:
        """For each selected parameter, the name of the module holding it (``"layer1.0.conv"`` for
        ``"layer1.0.conv.weight"``; ``""`` for a parameter of the model itself)."""
        return [name.rpartition(".")[0] for name in self.names]

    def unflatten(self, v: Any) -> dict[str, torch.Tensor]:
        """Split a flat vector (native or NumPy) into ``{parameter name: tensor shaped like it}``."""
        if isinstance(v, np.ndarray):
            v = self.asarray(v)
        return {name: v[self.offsets[i]: self.offsets[i + 1]].reshape(shape)
                for i, (name, shape) in enumerate(zip(self.names, self.shapes, strict=True))}

    def parameter_digest(self) -> str:
        """SHA-256 of the selected parameters' bytes on the host (bfloat16 through float32), in order."""
        h = hashlib.sha256()
        for p in self.params:
            h.update(np.ascontiguousarray(self.to_numpy(p)).tobytes())
        return h.hexdigest()

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

    def _derived(self, cls: type, names: list[str], **options: Any) -> Any:
        """A ``cls`` backend of the same model, loss, data, reduction, loss form and batch sizes for the selected
        parameters ``names`` (a non-empty subset of :attr:`names`); the determinism check and the train-mode
        warnings are not repeated (this backend passed them).  Built from this backend's settings
        (:meth:`hessop.backends.settings.TorchSettings.derived`): whole for a Hessian backend, or their problem's
        keywords and ``options`` for a backend of another matrix (the curvature backend)."""
        unknown = [n for n in names if n not in self.names]
        if unknown or not names:
            raise ValueError(f"restrict takes a non-empty subset of this operator's parameters; unknown: {unknown}")
        settings = self.settings.derived(names, self.hvp_method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if options:
                return cls(self.model, self.loss_fn, DataView(self.data), **settings.problem(), **options)
            return cls(self.model, self.loss_fn, DataView(self.data), settings)

    def restrict(self, names: list[str]) -> Any:
        """A backend for the diagonal block of the selected parameters ``names`` (a subset of :attr:`names`) of the
        same matrix: same model, loss, data, reduction and loss form; the determinism check and the train-mode
        warnings are not repeated (this backend passed them)."""
        return self._derived(type(self), names, **self._options())

    def curvature_backend(self, curvature: str, *, mc_samples: int = 1, fisher_seed: int = 0,
                          output_loss: str | None = None) -> Any:
        """The GGN, Fisher or empirical Fisher of this backend's loss, same parameters
        (:class:`hessop.backends.torch._curvature.TorchCurvatureBackend`)."""
        from hessop.backends.torch._curvature import TorchCurvatureBackend

        return self._derived(TorchCurvatureBackend, self.names, curvature=curvature, mc_samples=mc_samples,
                             fisher_seed=fisher_seed, output_loss=output_loss)
