"""GGN, Fisher and empirical Fisher operators of the JAX backend against dense float64 references (explicit
Jacobians by ``jax.jacrev``, per-sample gradients by ``vmap(grad)``), and against the PyTorch backend's."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")

jnp = pytest.importorskip("jax.numpy")
from jax.flatten_util import ravel_pytree  # noqa: E402

import hessop  # noqa: E402

RTOL = 1e-12


def model_fn(params, x):
    return jnp.tanh(x @ params["h"]["w"] + params["h"]["b"]) @ params["o"]["w"] + params["o"]["b"]


def ce_loss(params, batch):
    x, y = batch
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(model_fn(params, x)), y[:, None], axis=1))


def mse_loss(params, batch):
    x, t = batch
    return jnp.mean((model_fn(params, x) - t) ** 2)


@pytest.fixture
def problem(x64):
    rng = np.random.default_rng(0)
    params = {"h": {"w": rng.standard_normal((4, 5)), "b": rng.standard_normal(5)},
              "o": {"w": rng.standard_normal((5, 3)), "b": rng.standard_normal(3)}}
    params = jax.tree_util.tree_map(jnp.asarray, params)
    x = jnp.asarray(rng.standard_normal((11, 4)))
    return params, x, jnp.asarray(rng.integers(0, 3, 11)), jnp.asarray(rng.standard_normal((11, 3)))


def _references(params, x, y, kind, drawn=None):
    theta, unravel = ravel_pytree(params)
    n_samples = x.shape[0]

    def out(t, xx):
        return model_fn(unravel(t), xx)

    J = jax.jacrev(out)(theta, x)  # (N, C, n)
    f = out(theta, x)
    if kind == "cross_entropy":
        p = jax.nn.softmax(f, axis=1)
        Hl = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]

        def loss(t, xi, yi):
            return -jax.nn.log_softmax(out(t, xi[None]))[0, yi]
    else:
        Hl = (2.0 / f.shape[1]) * jnp.broadcast_to(jnp.eye(f.shape[1]), (n_samples, f.shape[1], f.shape[1]))

        def loss(t, xi, yi):
            return jnp.mean((out(t, xi[None])[0] - yi) ** 2)
    per_sample = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))
    g = per_sample(theta, x, y)
    refs = {"ggn": jnp.einsum("nci,ncd,ndj->ij", J, Hl, J) / n_samples, "empirical_fisher": g.T @ g / n_samples}
    if drawn is not None:
        gs = jax.vmap(lambda d: per_sample(theta, x, d))(drawn)  # (M, N, n)
        refs["fisher"] = jnp.einsum("mni,mnj->ij", gs, gs) / (n_samples * drawn.shape[0])
    return {k: np.asarray(v) for k, v in refs.items()}


def _dense(op):
    return op @ np.eye(op.n)


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
def test_products_match_dense(problem, kind):
    params, x, y, t = problem
    targets, loss = (y, ce_loss) if kind == "cross_entropy" else (t, mse_loss)
    batches = [(x[:3], targets[:3]), (x[3:], targets[3:])]  # unequal batches
    ops = {c: hessop.HessianOperator.from_jax(loss, params, batches, curvature=c, model_fn=model_fn,
                                              output_loss=kind, mc_samples=3, fisher_seed=2) if c == "fisher" else
           hessop.HessianOperator.from_jax(loss, params, batches, curvature=c, model_fn=model_fn, output_loss=kind)
           for c in ("ggn", "fisher", "empirical_fisher")}
    ggn_ef = _references(params, x, targets, kind)
    for c in ("ggn", "empirical_fisher"):
        ref = ggn_ef[c]
        assert np.max(np.abs(_dense(ops[c]) - ref)) < RTOL * np.max(np.abs(ref))
    backend = ops["fisher"].backend
    fisher = 0
    for i, (xb, tb) in enumerate(batches):  # the Fisher's draws are per batch
        drawn = backend.sample_targets(i, model_fn(params, xb))
        fisher = fisher + _references(params, xb, tb, kind, drawn)["fisher"] * xb.shape[0] / x.shape[0]
    assert np.max(np.abs(_dense(ops["fisher"]) - fisher)) < RTOL * np.max(np.abs(fisher))


def _fisher_reference(backend, params, batches, kind, n_samples):
    """The dense Fisher over ``batches`` at the backend's per-batch draws (weights |b| / N)."""
    fisher = 0
    for i, (xb, tb) in enumerate(batches):
        drawn = backend.sample_targets(i, model_fn(params, xb))
        fisher = fisher + _references(params, xb, tb, kind, drawn)["fisher"] * xb.shape[0] / n_samples
    return fisher


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
@pytest.mark.parametrize("curvature", ["ggn", "fisher", "empirical_fisher"])
def test_block_products_match_dense(problem, curvature, kind, reduction):
    """A block of two leaves from different layers (restrict), and a block of that block, against the diagonal
    block of the dense reference, over unequal batches, for both reductions (the sum is N times the mean)."""
    params, x, y, t = problem
    targets, loss = (y, ce_loss) if kind == "cross_entropy" else (t, mse_loss)
    d = 1 if kind == "cross_entropy" else t.shape[1]  # MSE: the sum's per-sample loss is d times the mean's
    total = (lambda p, b: loss(p, b) * b[0].shape[0] * d) if reduction == "sum" else loss
    batches = [(x[:3], targets[:3]), (x[3:], targets[3:])]
    kw = {"mc_samples": 2, "fisher_seed": 4} if curvature == "fisher" else {}
    op = hessop.HessianOperator.from_jax(total, params, batches, curvature=curvature, model_fn=model_fn,
                                         output_loss=kind, reduction=reduction, **kw)
    ref = (_fisher_reference(op.backend, params, batches, kind, x.shape[0]) if curvature == "fisher" else
           _references(params, x, targets, kind)[curvature])  # of the mean loss, at the operator's draws
    if reduction == "sum":  # G: N d (loss Hessian 2 I, not 2 I / d); the Fishers: N d^2 (gradients d times)
        ref = ref * x.shape[0] * (d if curvature == "ggn" else d * d)
    names, offsets = op.backend.names, op.backend.offsets
    chosen = ["['h']['b']", "['o']['w']"]
    block = op.backend.restrict(chosen)
    assert block.names == chosen and block.curvature == curvature and block.n == 5 + 15
    idx = np.concatenate([np.arange(offsets[names.index(c)], offsets[names.index(c) + 1]) for c in chosen])
    dense = _dense(hessop.HessianOperator(block))
    assert np.max(np.abs(dense - ref[np.ix_(idx, idx)])) < RTOL * np.max(np.abs(ref[np.ix_(idx, idx)]))
    V = np.random.default_rng(3).standard_normal((block.n, 3))  # a block of vectors (vmap over the columns)
    assert np.max(np.abs(hessop.HessianOperator(block) @ V - dense @ V)) < RTOL * np.max(np.abs(dense @ V))
    inner = block.restrict(["['o']['w']"])
    assert np.max(np.abs(_dense(hessop.HessianOperator(inner)) - dense[5:, 5:])) < RTOL * np.max(np.abs(dense))
    with pytest.raises(ValueError, match="non-empty subset"):
        block.restrict(["['h']['w']"])


@pytest.mark.slow  # 13 s; by_block over JAX: also tests/test_blocks.py (slow), over torch in the default run
def test_by_block_of_a_ggn(problem):
    """hessop.by_block on a JAX GGN operator: one row per layer, eigenvalues within their residuals of the dense
    diagonal blocks' and exact traces."""
    params, x, y, _ = problem
    G = hessop.HessianOperator.from_jax(ce_loss, params, [(x[:5], y[:5]), (x[5:], y[5:])], curvature="ggn",
                                        model_fn=model_fn, output_loss="cross_entropy")
    ref = _references(params, x, y, "cross_entropy")["ggn"]
    table = hessop.by_block(G, k=2, tol=1e-8)
    assert [r.name for r in table] == ["['h']", "['o']"]
    names, offsets = G.backend.names, G.backend.offsets
    for row in table:
        idx = np.concatenate([np.arange(offsets[names.index(p)], offsets[names.index(p) + 1]) for p in row.params])
        blk = ref[np.ix_(idx, idx)]
        true = np.linalg.eigvalsh(blk)[::-1][:2]
        assert row.n == idx.size and row.converged.all()
        assert np.all(np.abs(row.eigenvalues - true) <= row.residuals + 1e-10 * true[0])
        assert row.trace.exact and abs(row.trace.estimate - np.trace(blk)) <= 1e-10 * np.abs(blk).sum()


def test_same_as_torch(problem):
    """The JAX and PyTorch GGN and empirical Fisher of one MLP agree to rounding."""
    torch = pytest.importorskip("torch")
    params, x, y, _ = problem
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    with torch.no_grad():
        for layer, key in ((model[0], "h"), (model[2], "o")):
            layer.weight.copy_(torch.as_tensor(np.array(params[key]["w"]).T))
            layer.bias.copy_(torch.as_tensor(np.array(params[key]["b"])))
    data_t = (torch.as_tensor(np.array(x)), torch.as_tensor(np.array(y)))
    # torch's flat order (weight (out, in), bias per layer) differs from the pytree's: compare spectra
    for c in ("ggn", "empirical_fisher"):
        a = np.linalg.eigvalsh(_dense(hessop.HessianOperator.from_jax(ce_loss, params, (x, y), curvature=c,
                                                                      model_fn=model_fn,
                                                                      output_loss="cross_entropy")))
        b = np.linalg.eigvalsh(_dense(hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), data_t,
                                                                        curvature=c)))
        assert np.max(np.abs(a - b)) < 1e-12 * np.max(np.abs(b))


@pytest.mark.parametrize("kwargs, match", [
    ({"curvature": "ggn", "output_loss": "cross_entropy"}, "needs the model's outputs"),
    ({"curvature": "ggn", "model_fn": model_fn}, "output_loss="),
    ({"curvature": "ggn", "model_fn": model_fn, "output_loss": "mse"}, "gives|shape"),
    ({"model_fn": model_fn}, "apply to curvature="),
    ({"curvature": "fisher", "model_fn": model_fn, "output_loss": "cross_entropy", "mc_samples": 0}, ">= 1"),
])
def test_refusals(problem, kwargs, match):
    params, x, y, _ = problem
    with pytest.raises((ValueError, TypeError), match=match):
        hessop.HessianOperator.from_jax(ce_loss, params, (x, y), **kwargs)


def test_curvature_of_a_jax_operator_is_refused(problem):
    params, x, y, _ = problem
    H = hessop.HessianOperator.from_jax(ce_loss, params, (x, y))
    with pytest.raises(TypeError, match="carries no model function"):
        hessop.curvature_of(H)


_MESH_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jax.sharding import Mesh
import hessop

def model_fn(p, x):
    return jnp.tanh(x @ p["h"]["w"] + p["h"]["b"]) @ p["o"]["w"] + p["o"]["b"]

def loss(p, batch):
    x, y = batch
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(model_fn(p, x)), y[:, None], axis=1))

rng = np.random.default_rng(0)
params = jax.tree_util.tree_map(jnp.asarray, {"h": {"w": rng.standard_normal((4, 5)), "b": rng.standard_normal(5)},
                                              "o": {"w": rng.standard_normal((5, 3)), "b": rng.standard_normal(3)}})
x, y = jnp.asarray(rng.standard_normal((24, 4))), jnp.asarray(rng.integers(0, 3, 24))
batches = [(x[:8], y[:8]), (x[8:], y[8:])]
mesh = Mesh(np.array(jax.devices()), ("data",))
V = rng.standard_normal((43, 3))
out = {"devices": len(jax.devices())}
for c in ("ggn", "fisher", "empirical_fisher"):
    kw = dict(curvature=c, model_fn=model_fn, output_loss="cross_entropy", mc_samples=2, fisher_seed=1)
    one = hessop.HessianOperator.from_jax(loss, params, batches, **kw)
    sharded = hessop.HessianOperator.from_jax(loss, params, batches, comm=mesh, **kw)
    out[c] = {"one": (one @ V).tolist(), "mesh": (sharded @ V).tolist(), "describe": sharded.backend.describe(),
              "type": type(sharded.backend).__name__,
              "lanczos": [hessop.lanczos(op, 2, tol=1e-10).eigenvalues.tolist() for op in (one, sharded)]}
    try:
        hessop.HessianOperator.from_jax(loss, params, [(x[:6], y[:6])], comm=mesh, **kw)
    except ValueError as e:
        out[c]["uneven"] = str(e)
json.dump(out, open(sys.argv[1], "w"))
"""


def test_mesh_curvature_equals_one_device(tmp_path):
    """``from_jax(..., curvature=..., comm=Mesh(4 CPU devices))``: every batch split over the devices, the products
    (a block of three vectors) and the top-2 Lanczos eigenvalues equal the one-device operator's to 1e-12 (the
    Fisher's draws included); a batch that does not split evenly is refused."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script, out = tmp_path / "mesh_curvature.py", tmp_path / "out.json"
    script.write_text(_MESH_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, str(script), str(out)], check=True, cwd=root, timeout=600, env=env)
    res = json.loads(out.read_text())
    assert res["devices"] == 4
    for c in ("ggn", "fisher", "empirical_fisher"):
        r = res[c]
        assert r["type"] == "MeshJaxCurvatureBackend" and "jax mesh (4 devices" in r["describe"]
        assert f"curvature={c!r}" in r["describe"]
        one, mesh = np.asarray(r["one"]), np.asarray(r["mesh"])
        assert np.max(np.abs(mesh - one)) < RTOL * np.max(np.abs(one))
        assert np.allclose(r["lanczos"][1], r["lanczos"][0], rtol=RTOL, atol=0)
        assert "cannot be split evenly" in r["uneven"]
