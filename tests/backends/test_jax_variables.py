"""Flax ``variables`` passed whole to ``from_jax``: the Hessian over the ``"params"`` collection, the others
(``"batch_stats"``) held fixed and handed back to the loss (``hessop.backends.jax.split_variables``)."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")

jnp = pytest.importorskip("jax.numpy")
from jax.flatten_util import ravel_pytree  # noqa: E402

from hessop import HessianOperator  # noqa: E402


def apply(variables, x):
    """A BatchNorm-like layer in eval mode (normalised by the running statistics) and a dense layer with tanh."""
    stats, p = variables["batch_stats"], variables["params"]
    h = (x - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5) * p["scale"]
    return jnp.tanh(h @ p["w"]) @ p["v"]


def loss(variables, batch):
    x, y = batch
    return jnp.mean((apply(variables, x) - y) ** 2)


def problem():
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    params = {"scale": 1.0 + 0.1 * jax.random.normal(k[0], (3,)), "w": jax.random.normal(k[1], (3, 4)),
              "v": jax.random.normal(k[2], (4, 1))}
    variables = {"params": params, "batch_stats": {"mean": jnp.full(3, 0.3), "var": jnp.full(3, 2.0)}}
    x = jax.random.normal(k[3], (16, 3))
    return variables, [(x[:8], jnp.sin(x[:8, :1])), (x[8:], jnp.sin(x[8:, :1]))]


@pytest.mark.usefixtures("x64")
def test_whole_variables_give_the_hessian_over_params_only():
    variables, batches = problem()
    variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables)
    batches = [jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), b) for b in batches]
    params = variables["params"]
    flat, unravel = ravel_pytree(params)

    def total(theta):
        return sum(loss({**variables, "params": unravel(theta)}, b) for b in batches) / len(batches)

    dense = np.asarray(jax.hessian(total)(flat))
    H = HessianOperator.from_jax(loss, variables, batches)
    assert H.n == flat.size == 3 + 12 + 4  # the running statistics are not parameters
    assert H.backend.names == ["['scale']", "['v']", "['w']"]
    v = np.random.default_rng(0).standard_normal(H.n)
    np.testing.assert_allclose(H @ v, dense @ v, rtol=1e-12, atol=1e-13)
    # the statistics are really used and held at their values: other statistics give another matrix
    other = {**variables, "batch_stats": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}
    assert np.linalg.norm(HessianOperator.from_jax(loss, other, batches) @ v - dense @ v) > 1e-3 * np.linalg.norm(
        dense @ v)
    # the GGN's model_fn also takes whole variables
    G = HessianOperator.from_jax(loss, variables, batches, curvature="ggn", model_fn=apply, output_loss="mse")
    assert G.n == H.n and np.all(np.isfinite(G @ v))


def test_a_pytree_with_only_params_or_without_that_key_is_left_as_it_is():
    variables, batches = problem()
    H = HessianOperator.from_jax(lambda v, b: loss({**variables, "params": v["params"]}, b),
                                 {"params": variables["params"]}, batches)
    assert H.n == 19 and H.backend.names[0] == "['params']['scale']"
    n_all = sum(a.size for a in jax.tree_util.tree_leaves(variables))
    H_all = HessianOperator.from_jax(lambda v, b: loss(v["vars"], b), {"vars": variables}, batches)
    assert H_all.n == n_all  # a pytree of another shape: every leaf, as before


def test_flax_batchnorm_variables():
    """With flax installed: a linen model with BatchNorm, variables passed whole (skipped without flax)."""
    nn = pytest.importorskip("flax.linen")

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.BatchNorm(use_running_average=True)(x)
            return nn.Dense(1)(nn.tanh(nn.Dense(4)(x)))

    x = jax.random.normal(jax.random.PRNGKey(1), (16, 3))
    y = jnp.sin(x[:, :1])
    model = Net()
    variables = model.init(jax.random.PRNGKey(2), x)
    variables = {**variables, "batch_stats": jax.tree_util.tree_map(lambda a: a + 0.5, variables["batch_stats"])}

    def flax_loss(v, batch):
        return jnp.mean((model.apply(v, batch[0]) - batch[1]) ** 2)

    H = HessianOperator.from_jax(flax_loss, variables, (x, y))
    n_params = sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    assert H.n == n_params
    H_params = HessianOperator.from_jax(lambda p, b: flax_loss({**variables, "params": p}, b), variables["params"],
                                        (x, y))
    v = np.random.default_rng(0).standard_normal(H.n).astype(np.float32)
    np.testing.assert_allclose(H @ v, H_params @ v, rtol=1e-5, atol=1e-6)
