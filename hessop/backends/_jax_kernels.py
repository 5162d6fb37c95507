"""The JAX backend's compiled kernels: the loss and the Hessian-vector products of one batch, jitted once per
(loss function, parameter layout, batch shapes) and shared by every :class:`hessop.backends.jax.JaxBackend` built
from the same loss (rebuilding an operator at a new ``theta``, e.g. along training, reuses the compiled code).

A product is forward-over-reverse, ``H_b v = d/dt grad L_b(theta + t v)`` at ``t = 0`` (``jax.jvp`` of
``jax.grad``); a block ``V = [v_1 .. v_k]`` maps it over the columns with ``jax.vmap``.  The first batch of a
product starts the weighted sum ``sum_b w_b H_b v`` and the others add to it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Static", "unflatten_theta"]


class Static:
    """A loss function as a static jit argument: equal (same compiled code) exactly when it is the same object.
    Hashing by identity also admits callables that are not hashable themselves (bound methods of dataclasses)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __hash__(self) -> int:
        return id(self.fn)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Static) and other.fn is self.fn


def unflatten_theta(theta: jax.Array, layout: tuple) -> Any:
    """Flat vector -> parameter pytree (the inverse of ``ravel_pytree`` for one dtype), traceable."""
    treedef, shapes = layout[0], layout[1]
    leaves, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        leaves.append(jnp.reshape(theta[start: start + size], shape))
        start += size
    return jax.tree_util.tree_unflatten(treedef, leaves)


def flat_loss(theta: jax.Array, batch: Any, fn: Static, layout: tuple) -> jax.Array:
    return jnp.reshape(fn.fn(unflatten_theta(theta, layout), batch), ())


def hvp_one(theta: jax.Array, batch: Any, v: jax.Array, fn: Static, layout: tuple) -> jax.Array:
    """Forward-over-reverse: the derivative of ``grad L_b`` at ``theta`` in direction ``v``."""
    grad = jax.grad(flat_loss)
    return jax.jvp(lambda t: grad(t, batch, fn, layout), (theta,), (v,))[1]


# Compiled once per (loss function, parameter layout, batch shapes) and shared by every operator built from the
# same loss: rebuilding an operator at a new theta (e.g. along training) reuses the compiled code.
@functools.partial(jax.jit, static_argnames=("fn", "layout"))
def raw_loss_jit(theta: jax.Array, batch: Any, *, fn: Static, layout: tuple) -> Any:
    """The loss as the user wrote it (any output), traced only through ``jax.eval_shape`` to check that output."""
    return fn.fn(unflatten_theta(theta, layout), batch)


@functools.partial(jax.jit, static_argnames=("fn", "layout"))
def loss_jit(theta: jax.Array, batch: Any, *, fn: Static, layout: tuple) -> jax.Array:
    return flat_loss(theta, batch, fn, layout)


def hvp_cols(theta: jax.Array, batch: Any, V: jax.Array, fn: Static, layout: tuple) -> jax.Array:
    return jax.vmap(hvp_one, in_axes=(None, None, 1, None, None), out_axes=1)(theta, batch, V, fn, layout)


# The first batch of a product starts the sum (no zero vector to dispatch); the others add to it.
@functools.partial(jax.jit, static_argnames=("fn", "layout"))
def hvp_first_jit(theta: jax.Array, batch: Any, v: jax.Array, w: Any, *, fn: Static, layout: tuple) -> jax.Array:
    return (w * hvp_one(theta, batch, v, fn, layout)).astype(v.dtype)


@functools.partial(jax.jit, static_argnames=("fn", "layout"))
def hvp_acc_jit(acc: jax.Array, theta: jax.Array, batch: Any, v: jax.Array, w: Any, *, fn: Static,
                 layout: tuple) -> jax.Array:
    return acc + (w * hvp_one(theta, batch, v, fn, layout)).astype(acc.dtype)


@functools.partial(jax.jit, static_argnames=("fn", "layout"))
def hvp_block_first_jit(theta: jax.Array, batch: Any, V: jax.Array, w: Any, *, fn: Static,
                         layout: tuple) -> jax.Array:
    return (w * hvp_cols(theta, batch, V, fn, layout)).astype(V.dtype)


@functools.partial(jax.jit, static_argnames=("fn", "layout"))
def hvp_block_acc_jit(acc: jax.Array, theta: jax.Array, batch: Any, V: jax.Array, w: Any, *, fn: Static,
                       layout: tuple) -> jax.Array:
    return acc + (w * hvp_cols(theta, batch, V, fn, layout)).astype(acc.dtype)
