"""PyTorch backend: Hessian-vector products of a model's loss over a data set.

Maths
-----
For a loss ``L(theta) = sum_b w_b L_b(theta)`` over batches ``b`` (``w_b = |b| / N`` when ``L_b`` is a per-batch
mean, ``w_b = 1`` when it is a per-batch sum) the product is accumulated batch by batch, by one of

* forward-over-reverse (``hvp_method="forward_over_reverse"``; under ``"auto"``, blocks of k > 1 vectors on a GPU):
  ``H v = sum_b w_b d/dt grad L_b(theta + t v)|_{t=0}``, ``torch.func.jvp`` of ``torch.func.grad`` of the loss as a
  function of the selected parameters (``torch.func.functional_call``; buffers and unselected parameters are the
  module's own, unchanged).  A block ``V = [v_1 .. v_k]`` is ``torch.func.vmap`` of it over the k columns: one
  batched pass per batch;
* reverse-over-reverse (``hvp_method="double_backward"``; under ``"auto"``, single vectors, and blocks on a CPU):
  ``H v = sum_b w_b d/dtheta (grad L_b(theta) . v)`` (Pearlmutter 1994; the HVP of PyHessian, Yao et al. 2020); a
  block shares each batch's forward pass and first backward pass between its k second backward passes.  The
  gradient with its graph depends on ``theta`` only: when the data are a list or tuple of batches it is kept
  between products within the ``cache_memory`` budget (1 GiB or a quarter of the free memory by default, 0 keeps
  nothing), and each later product is then a single backward pass through it;
* central differences of gradients (``hvp_method="finite_difference"``, never under ``"auto"``):
  ``H v ~ (g(theta + h v) - g(theta - h v)) / (2 h)``, for kernels without a second derivative; not exact, its
  error measured (steps ``h`` and ``2 h``) into the operator's product error (``_products.finite_difference``).

Batches are moved to the parameters' device inside the loop (tensors nested in tuples, lists and dicts;
``non_blocking`` when pinned), so a model on a GPU takes a CPU ``DataLoader``.

What it never does: change the model's train/eval mode, touch ``.grad``, or leave the model's buffers (BatchNorm
running statistics) changed.

Layout
------
One module per job, composed by :class:`TorchBackend` (``_backend``): parameter selection (``_selection``), batches,
their device moves and losses (``_batches``), train-mode warnings and BatchNorm side effects (``_train_mode``), the
two product methods (``_products``), the kept-graph cache (``_graph_cache``), the analyses' interface (``_analysis``)
the optimizer hook (``_optimizer``), and the GGN / Fisher / empirical Fisher backend (``_curvature``,
:class:`TorchCurvatureBackend`, maths in :mod:`hessop.curvature`).
"""

from __future__ import annotations

from hessop.backends.torch._backend import HVP_METHODS, TorchBackend
from hessop.backends.torch._curvature import TorchCurvatureBackend
from hessop.backends.torch._graph_cache import CACHE_MEMORY, default_cache_memory, device_free_memory
from hessop.backends.torch._optimizer import register_step_hook

__all__ = ["CACHE_MEMORY", "HVP_METHODS", "TorchBackend", "TorchCurvatureBackend", "default_cache_memory",
           "device_free_memory", "register_step_hook"]
