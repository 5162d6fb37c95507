"""Curvature matrices other than the Hessian: the generalised Gauss-Newton, the Fisher and the empirical Fisher.

Maths
-----
Let the loss over the data be ``L(theta) = sum_b w_b L_b(theta)`` (``w_b = |b| / N`` for ``reduction="mean"``,
``1`` for ``"sum"``; the weights of every hessop backend) with a batch loss ``L_b = rho_b sum_{i in b} l(f_i, y_i)``
of the model's outputs ``f_i = f(x_i; theta)``, ``rho_b = 1 / |b|`` under ``"mean"`` and ``1`` under ``"sum"``, and a
per-sample loss ``l`` that is a negative log-likelihood hessop knows (``OUTPUT_LOSSES``):

* ``"cross_entropy"``: ``l(f, y) = -log softmax(f)_y`` (outputs ``(N, C)`` logits); ``grad_f^2 l = diag(p) - p p^T``
  with ``p = softmax(f)``, whatever the label (and with label smoothing: the smoothed target only moves the
  gradient); the predictive distribution is categorical(p).
* ``"mse"``: ``l(f, y) = c ||f - y||^2`` with ``c = 1 / D`` (``reduction="mean"``: the mean over all ``D`` output
  entries of a sample, as ``torch.nn.MSELoss`` and ``jnp.mean`` do) or ``c = 1`` (``"sum"``);
  ``grad_f^2 l = 2 c I``; the predictive distribution is ``N(f, I / (2 c))``, of which ``l`` is the negative
  log-likelihood up to a constant.

With ``J_i = d f_i / d theta`` and ``H_i = grad_f^2 l(f_i, y_i)`` the Hessian splits (Schraudolph 2002; Martens 2020;
Sagun et al. 2017; Papyan 2019, 2020) as ``H = G + R``:

* ``"ggn"``: ``G = sum_b w_b rho_b sum_i J_i^T H_i J_i``, positive semi-definite (``l`` is convex in ``f``);
* the residual ``R = sum_b w_b rho_b sum_i sum_c (d l / d f_{ic}) grad^2 f_{ic}`` (:func:`hessop.decompose`);
* ``"fisher"``: the Monte-Carlo Fisher ``F = sum_b w_b rho_b sum_i J_i^T (1/M sum_m s_im s_im^T) J_i`` with
  ``s_im = grad_f l(f_i, y~_im)`` at ``M = mc_samples`` labels drawn from the model's predictive distribution
  (``E[s s^T] = H_i`` for both losses, so ``E[F] = G``).  The draws depend on ``fisher_seed`` and the batch's
  position in the data only, so for a given seed every product uses the same draws: ``F`` is one fixed PSD matrix;
* ``"empirical_fisher"``: ``E = sum_b w_b rho_b sum_i g_i g_i^T`` with the per-sample gradients
  ``g_i = grad_theta l(f_i, y_i)`` at the data's labels: ``(1/N) sum_i g_i g_i^T`` under ``"mean"``,
  ``sum_i g_i g_i^T`` under ``"sum"`` (the scale of ``H`` and ``G`` in both cases).  It is not an approximation of
  ``H`` in general (Kunstner, Balles, Hennig 2019).

Each is ``sum_b w_b A_b^T M_b A_b`` for a batch Jacobian ``A_b`` (of the outputs ``f``, or of the vector of
per-sample losses for the empirical Fisher) and a small block-diagonal ``M_b`` in output space, so a product is
``A_b v`` (a Jacobian-vector product), ``M_b`` and ``A_b^T (.)`` (a vector-Jacobian product), batch by batch.  This
module holds what is common to every backend (it imports no framework); the products live in
``hessop.backends.torch._curvature`` and ``hessop.backends.jax_curvature``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hessop._validate import check_int

__all__ = ["CURVATURES", "OUTPUT_LOSSES", "check_curvature", "draw_seed"]

CURVATURES = ("hessian", "ggn", "fisher", "empirical_fisher")
"""The curvature matrices an operator can stand for (``curvature=`` of the constructors)."""

OUTPUT_LOSSES = ("cross_entropy", "mse")
"""The per-sample losses for which hessop defines the GGN and the Fisher (see the module docstring)."""

WHY_OUTPUT_LOSS = (
    "the GGN J^T H_l J needs the loss's Hessian in the model's outputs, which is positive semi-definite (so G is) "
    "for a convex loss, and the Fisher needs the predictive distribution whose negative log-likelihood the loss is; "
    "hessop knows both for cross-entropy (categorical) and the mean squared error (Gaussian)"
)


def check_curvature(curvature: Any, mc_samples: Any = 1, fisher_seed: Any = 0, output_loss: Any = None,
                    model_fn: Any = None) -> str:
    """Validate the curvature keywords shared by the constructors; return ``curvature``.

    Parameters
    ----------
    curvature : str
        One of :data:`CURVATURES`.
    mc_samples : int
        Labels drawn per sample for ``"fisher"`` (``>= 1``).
    fisher_seed : int
        Seed of those draws (``>= 0``).
    output_loss : str or None
        One of :data:`OUTPUT_LOSSES`, or None (recognised from the loss where the backend can).
    model_fn : callable or None
        The JAX constructors' model function (outputs of the parameters and inputs); None elsewhere.

    Raises
    ------
    ValueError
        An unknown curvature or output loss, or curvature options given with ``curvature="hessian"``.

    Examples
    --------
    >>> check_curvature("fisher", mc_samples=4, fisher_seed=1)
    'fisher'
    >>> check_curvature("hessian", mc_samples=4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: mc_samples apply to curvature='ggn', 'fisher' or 'empirical_fisher', not to the Hessian; ...
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {', '.join(map(repr, CURVATURES))}; got {curvature!r}")
    check_int(mc_samples, "mc_samples", 1)
    check_int(fisher_seed, "fisher_seed", 0)
    if output_loss is not None and output_loss not in OUTPUT_LOSSES:
        raise ValueError(f"output_loss must be one of {', '.join(map(repr, OUTPUT_LOSSES))} (or None), got "
                         f"{output_loss!r}: {WHY_OUTPUT_LOSS}.")
    if curvature == "hessian":
        given = [name for name, changed in (("mc_samples", mc_samples != 1), ("fisher_seed", fisher_seed != 0),
                                            ("output_loss", output_loss is not None),
                                            ("model_fn", model_fn is not None)) if changed]
        if given:
            raise ValueError(f"{', '.join(given)} apply to curvature='ggn', 'fisher' or 'empirical_fisher', not to "
                             "the Hessian; drop them or pass curvature=...")
    return curvature


def draw_seed(fisher_seed: int, batch_index: int) -> int:
    """The seed of the Fisher's draws for batch ``batch_index`` of the data: a 32-bit integer mixed from
    ``(fisher_seed, batch_index)`` (NumPy's ``SeedSequence``), the same on every backend and device.

    Examples
    --------
    >>> draw_seed(0, 1) == draw_seed(0, 1) != draw_seed(0, 2)
    True
    >>> 0 <= draw_seed(7, 0) < 2**32
    True
    """
    return int(np.random.SeedSequence((fisher_seed, batch_index)).generate_state(1)[0])
