"""JAX curvature backend: products with the GGN, the Monte-Carlo Fisher and the empirical Fisher.

Maths in :mod:`hessop.curvature`.  Each batch ``(inputs, targets)`` contributes ``w_b A_b^T M_b A_b V`` with ``A_b``
the Jacobian of ``model_fn(params, inputs)`` (GGN, Fisher) or of the per-sample losses (empirical Fisher):
one primal forward pass per batch and block (``jax.linearize`` of the outputs), ``A_b V`` by the linearised map,
``M_b`` in closed form and ``A_b^T`` by its transpose (``jax.linear_transpose``), each ``vmap``-ed over the block's
columns, in one compiled call per batch (compiled once per model function, layout,
curvature and batch shape, as the Hessian's products are).  The data loop, weights, flattening, host transfers and
the determinism check are those of :class:`hessop.backends.jax.JaxBackend`.  Blocks of leaves
(:meth:`JaxCurvatureBackend.restrict`, :func:`hessop.by_block`) close the model function and the loss over the
other leaves; batches sharded over a ``jax.sharding.Mesh``: :class:`hessop.backends.jax_mesh.MeshJaxCurvatureBackend`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from hessop.backends.base import DataView
from hessop.backends.jax import JaxBackend, Static, unflatten_theta
from hessop.backends.settings import JaxSettings
from hessop.curvature import OUTPUT_LOSSES, WHY_OUTPUT_LOSS, check_curvature, draw_seed

__all__ = ["JaxCurvatureBackend"]


def _scale(spec: tuple, f: jax.Array) -> tuple[float, float]:
    """``(rho, c)`` as in :mod:`hessop.curvature` (static: from shapes)."""
    mean = spec[3] == "mean"
    return (1.0 / f.shape[0] if mean else 1.0), (1.0 / math.prod(f.shape[1:]) if mean and spec[1] == "mse" else 1.0)


def _per_sample(spec: tuple, f: jax.Array, y: jax.Array) -> jax.Array:
    if spec[1] == "cross_entropy":
        return -jnp.take_along_axis(jax.nn.log_softmax(f, axis=1), y[:, None], axis=1)[:, 0]
    return _scale(spec, f)[1] * jnp.sum(jnp.reshape(jnp.square(f - y), (f.shape[0], -1)), axis=1)


def _draws(spec: tuple, f: jax.Array, key: jax.Array) -> jax.Array:
    """The Fisher's drawn labels: class indices ``(M, N)`` or targets ``(M, N, ...)`` from ``N(f, I / (2c))``."""
    if spec[1] == "cross_entropy":
        return jax.random.categorical(key, f, axis=1, shape=(spec[4], f.shape[0]))
    noise = jax.random.normal(key, (spec[4], *f.shape), f.dtype)
    return f[None] + noise / math.sqrt(2 * _scale(spec, f)[1])


def _output_product(spec: tuple, f: jax.Array, key: jax.Array, u: jax.Array) -> jax.Array:
    """``M_b u`` for one tangent ``u`` shaped like the batch's ``A_b`` output (:mod:`hessop.curvature`)."""
    rho, c = _scale(spec, f)
    if spec[2] == "empirical_fisher":
        return rho * u
    if spec[2] == "fisher":
        drawn = _draws(spec, f, key)
        if spec[1] == "cross_entropy":
            s = jax.nn.softmax(f, axis=1)[None] - jax.nn.one_hot(drawn, f.shape[1], dtype=f.dtype)
        else:
            s = 2 * c * (f[None] - drawn)
        coef = jnp.sum(jnp.reshape(s * u[None], (*s.shape[:2], -1)), axis=2)  # (M, N)
        return jnp.einsum("mn,mn...->n...", coef, s) * (rho / spec[4])
    if spec[1] == "mse":
        return 2 * rho * c * u
    p = jax.nn.softmax(f, axis=1)
    return rho * (p * u - p * jnp.sum(p * u, axis=1, keepdims=True))


def _curvature_cols(theta: jax.Array, batch: Any, V: jax.Array, key: jax.Array, spec: tuple,
                    layout: tuple) -> jax.Array:
    """``A_b^T M_b A_b V`` for one batch and a block ``V`` of shape (n, k), in one pass: one primal forward pass
    (``jax.linearize``: the outputs and the linear map ``v -> A_b v`` with its residuals), the k tangents
    ``A_b V``, ``M_b`` on them and the k products ``A_b^T (.)`` (``jax.linear_transpose`` of that linear map, the
    reverse pass) all ``vmap``-ed over the block's columns."""
    x, y = batch

    def outputs(t: jax.Array) -> jax.Array:
        f = spec[0].fn(unflatten_theta(t, layout), x)
        return _per_sample(spec, f, y) if spec[2] == "empirical_fisher" else f

    a, linear = jax.linearize(outputs, theta)  # a: the outputs f (GGN, Fisher) or the per-sample losses
    transpose = jax.linear_transpose(linear, theta)  # u -> A_b^T u, through the same linearisation

    def column(v: jax.Array) -> jax.Array:
        return transpose(_output_product(spec, a, key, linear(v)))[0]

    return jax.vmap(column, in_axes=1, out_axes=1)(V)


@functools.partial(jax.jit, static_argnames=("spec", "layout"))
def _first_jit(theta: jax.Array, batch: Any, V: jax.Array, w: Any, key: jax.Array, *, spec: tuple,
               layout: tuple) -> jax.Array:
    return (w * _curvature_cols(theta, batch, V, key, spec, layout)).astype(V.dtype)


@functools.partial(jax.jit, static_argnames=("spec", "layout"))
def _acc_jit(acc: jax.Array, theta: jax.Array, batch: Any, V: jax.Array, w: Any, key: jax.Array, *, spec: tuple,
             layout: tuple) -> jax.Array:
    return acc + (w * _curvature_cols(theta, batch, V, key, spec, layout)).astype(acc.dtype)


class JaxCurvatureBackend(JaxBackend):
    """Products with the GGN, the Monte-Carlo Fisher or the empirical Fisher of a JAX model's loss.

    Parameters
    ----------
    loss_fn, params, data, reduction, check_deterministic, batch_size :
        As for :class:`hessop.backends.jax.JaxBackend`; every batch is ``(inputs, targets)`` and
        ``loss_fn(params, batch)`` must equal hessop's ``output_loss`` of ``model_fn(params, inputs)`` (checked on
        the first batch: the curvature is then that of your loss).
    curvature : {"ggn", "fisher", "empirical_fisher"}
        Which matrix (:mod:`hessop.curvature`).
    model_fn : callable
        ``model_fn(params, inputs) -> outputs``: logits ``(N, C)`` for cross-entropy (integer class targets
        ``(N,)``), any ``(N, ...)`` for MSE (targets of the same shape).
    output_loss : {"cross_entropy", "mse"}
        The loss in the outputs (JAX losses are plain functions: hessop cannot recognise them, so name it).
    mc_samples, fisher_seed : int
        Labels drawn per sample for ``"fisher"`` (default 1) and their seed (default 0; per batch
        ``jax.random.PRNGKey(draw_seed(fisher_seed, batch_index))``).

    Examples
    --------
    The GGN of a linear model under the mean squared error is ``(2 / N) X^T X``, its Hessian:

    >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> def model_fn(p, inputs):
    ...     return inputs @ p["w"]
    >>> def loss(p, batch):
    ...     return jnp.mean((model_fn(p, batch[0]) - batch[1]) ** 2)
    >>> G = JaxCurvatureBackend(loss, {"w": jnp.zeros((2, 1))}, (x, jnp.zeros((2, 1))), curvature="ggn",
    ...                         model_fn=model_fn, output_loss="mse")
    >>> G.hvp(jnp.ones(2, dtype=G.dtype)).tolist()
    [1.0, 4.0]
    """

    def __init__(self, loss_fn: Callable, params: Any, data: Any, *, curvature: str,
                 model_fn: Callable | None, output_loss: str | None, mc_samples: int = 1, fisher_seed: int = 0,
                 reduction: str = "mean", check_deterministic: bool = True,
                 batch_size: Callable[[Any], int] | None = None) -> None:
        if check_curvature(curvature, mc_samples, fisher_seed, output_loss, model_fn) == "hessian":
            raise ValueError("JaxCurvatureBackend is for curvature='ggn', 'fisher' or 'empirical_fisher'; use "
                             "JaxBackend for the Hessian.")
        if not callable(model_fn):
            raise TypeError(f"curvature={curvature!r} needs the model's outputs: pass model_fn(params, inputs) -> "
                            f"outputs (got {type(model_fn).__name__}).")
        if output_loss is None:
            raise ValueError(f"curvature={curvature!r} needs the loss in the model's outputs named: "
                             f"output_loss={' or '.join(map(repr, OUTPUT_LOSSES))} ({WHY_OUTPUT_LOSS}).")
        self.curvature, self.model_fn, self.output_loss = curvature, model_fn, output_loss
        self.mc_samples, self.fisher_seed, self._keys = int(mc_samples), int(fisher_seed), {}
        self._spec = (Static(model_fn), output_loss, curvature, reduction, self.mc_samples)
        super().__init__(loss_fn, params, data, JaxSettings(reduction, check_deterministic=False,
                                                            batch_size=batch_size))
        self._check_loss(next(iter(self._batches())))
        if check_deterministic:
            self._check_deterministic()

    def _compile(self) -> dict[str, Callable]:
        jitted = super()._compile()
        static = {"spec": self._spec, "layout": self._layout}
        jitted.update(block_first=functools.partial(_first_jit, **static),
                      block_acc=functools.partial(_acc_jit, **static))
        return jitted

    def _check_loss(self, batch: Any) -> None:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError("with a curvature every batch must be (inputs, targets).")
        batch = jax.device_put(tuple(batch), self.device)  # with theta (a mesh's sharded batch included)
        x, y = batch
        f = self.model_fn(self.unflatten(self.theta), x)
        rho = _scale(self._spec, f)[0]
        theirs, ours = self._batch_loss(batch), float(rho * jnp.sum(_per_sample(self._spec, f, jnp.asarray(y))))
        if abs(theirs - ours) > math.sqrt(self.product_eps) * max(abs(theirs), abs(ours), 1e-30):
            raise ValueError(f"on the first batch loss_fn gives {theirs!r} but hessop's {self.output_loss} of "
                             f"model_fn with reduction={self.reduction!r} gives {ours!r}: the curvature would not "
                             "be that of your loss. Check reduction=, output_loss= and model_fn.")

    def _key(self, batch_index: int) -> jax.Array:
        if batch_index not in self._keys:
            self._keys[batch_index] = jax.random.PRNGKey(draw_seed(self.fisher_seed, batch_index))
        return self._keys[batch_index]

    def sample_targets(self, batch_index: int, f: jax.Array) -> jax.Array:
        """The Fisher's drawn labels for batch ``batch_index`` with outputs ``f``: class indices ``(M, N)`` or
        targets ``(M, N, ...)``."""
        return _draws(self._spec, f, self._key(batch_index))

    def _product(self, V: jax.Array, first: Callable, acc: Callable) -> jax.Array:
        self._check_native(V)
        out = None
        for i, (batch, w) in enumerate(self._weighted()):
            key = self._key(i)
            out = first(self.theta, batch, V, w, key) if out is None else acc(out, self.theta, batch, V, w, key)
        return out

    def hvp(self, v: jax.Array) -> jax.Array:
        return self.hvp_block(v[:, None])[:, 0]

    def describe(self) -> str:
        extra = f", {self.mc_samples} draws, fisher_seed {self.fisher_seed}" if self.curvature == "fisher" else ""
        return f"{super().describe()[:-1]}, curvature={self.curvature!r} ({self.output_loss}{extra}))"

    def restrict(self, names: list[str]) -> JaxCurvatureBackend:
        """A backend for the diagonal block of the leaves ``names`` (a subset of :attr:`names`) of the same curvature
        matrix, as :meth:`hessop.backends.jax.JaxBackend.restrict` does for the Hessian: the other leaves are held
        fixed at ``theta``, closed over by a model function (and a loss) of the selected leaves, so the block's
        ``A_b`` is the columns of the full ``A_b`` for those leaves and ``M_b`` (outputs, the Fisher's draws: same
        seed, same batches) is unchanged; same data, reduction and batch sizes; the determinism check is not
        repeated.  ``names`` keep the full pytree's key paths.

        Examples
        --------
        >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
        >>> def model_fn(p, inputs):
        ...     return inputs @ p["w"] + p["b"]
        >>> def loss(p, batch):
        ...     return jnp.mean((model_fn(p, batch[0]) - batch[1]) ** 2)
        >>> G = JaxCurvatureBackend(loss, {"w": jnp.zeros((2, 1)), "b": jnp.zeros(1)}, (x, jnp.zeros((2, 1))),
        ...                         curvature="ggn", model_fn=model_fn, output_loss="mse")
        >>> G.names
        ["['b']", "['w']"]
        >>> G.restrict(["['w']"]).hvp(jnp.ones(2, dtype=G.dtype)).tolist()  # (2 / N) x^T x
        [1.0, 4.0]
        """
        unknown = [n for n in names if n not in self.names]
        if unknown or not names:
            raise ValueError(f"restrict takes a non-empty subset of this operator's leaves; unknown: {unknown}")
        idx = [self.names.index(n) for n in names]
        leaves = jax.tree_util.tree_leaves(self.unflatten(self.theta))
        treedef, loss_fn, model_fn = self.treedef, self.loss_fn, self.model_fn

        def full(sub: list) -> Any:
            every = list(leaves)
            for i, leaf in zip(idx, sub, strict=True):
                every[i] = leaf
            return jax.tree_util.tree_unflatten(treedef, every)

        def block_loss(sub: list, batch: Any) -> Any:
            return loss_fn(full(sub), batch)

        def block_model(sub: list, inputs: Any) -> Any:
            return model_fn(full(sub), inputs)

        sub = JaxCurvatureBackend(block_loss, [leaves[i] for i in idx], DataView(self.data),
                                  curvature=self.curvature, model_fn=block_model, output_loss=self.output_loss,
                                  mc_samples=self.mc_samples, fisher_seed=self.fisher_seed, reduction=self.reduction,
                                  check_deterministic=False, batch_size=self._batch_size)
        sub.names = [self.names[i] for i in idx]
        return sub
