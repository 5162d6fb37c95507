"""One analysis, same numbers: an MLP written in PyTorch and in JAX with identical float64 weights, on the same
batches, gives the same Hessian products, top eigenvalues, Hutchinson trace and SLQ nodes as the NumPy operator
of its dense Hessian (and as a CuPy operator when a GPU is present).

The flat parameter order is the same in both frameworks (torch ``named_parameters`` order = the leaves of the JAX
list ``[(W1, b1), (W2, b2)]``, weights stored (out, in) in both), so one seed gives the same probe vectors and
the same start vectors everywhere.  JAX's 64-bit mode is on only inside this module's fixtures (a context).
"""

from __future__ import annotations

import numpy as np
import pytest

import hessop
from hessop import HessianOperator

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
from jax_x64 import enable_x64  # noqa: E402

jnp = jax.numpy
from jax.flatten_util import ravel_pytree  # noqa: E402

SPLITS = (100, 200)  # batches of 100, 100 and 56 samples


def jax_mlp_loss(params, batch):
    (w1, b1), (w2, b2) = params
    x, y = batch
    logits = jnp.tanh(x @ w1.T + b1) @ w2.T + b2
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def cupy_operator(dense: np.ndarray):
    """A CuPy operator of the dense Hessian when CuPy reaches a GPU, else None."""
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() < 1:
            return None
        return HessianOperator.from_cupy(cp.asarray(dense))
    except Exception:  # no CuPy, no driver, no device
        return None


@pytest.fixture(scope="module")
def operators():
    """{name: operator} for torch, jax, numpy (dense Hessian) and, with a GPU, cupy; plus the dense Hessian."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    ds = load_digits()
    x, y = ds.data[:256] / 16.0, ds.target[:256]
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((12, 64)) / 8.0, 0.1 * rng.standard_normal(12)
    w2, b2 = rng.standard_normal((10, 12)) / np.sqrt(12), 0.1 * rng.standard_normal(10)

    model = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.Tanh(), torch.nn.Linear(12, 10)).double()
    with torch.no_grad():
        for p, value in zip(model.parameters(), (w1, b1, w2, b2), strict=True):
            p.copy_(torch.as_tensor(value))
    model.eval()
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    t_batches = [(a, b) for a, b in zip(torch.tensor_split(xt, SPLITS), torch.tensor_split(yt, SPLITS), strict=True)]
    ops = {"torch": HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), t_batches)}

    with enable_x64(True):
        params = [(jnp.asarray(w1), jnp.asarray(b1)), (jnp.asarray(w2), jnp.asarray(b2))]
        j_batches = [(jnp.asarray(a), jnp.asarray(b, dtype=jnp.int32))
                     for a, b in zip(np.split(x, SPLITS), np.split(y, SPLITS), strict=True)]
        ops["jax"] = HessianOperator.from_jax(jax_mlp_loss, params, j_batches)
        theta, unravel = ravel_pytree(params)
        full = (jnp.asarray(x), jnp.asarray(y, dtype=jnp.int32))
        dense = np.asarray(jax.jit(jax.hessian(lambda t: jax_mlp_loss(unravel(t), full)))(theta))
    dense = (dense + dense.T) / 2
    ops["numpy"] = HessianOperator.from_matrix(dense)
    gpu = cupy_operator(dense)
    if gpu is not None:
        ops["cupy"] = gpu
    assert ops["torch"].n == ops["jax"].n == 910
    return ops, dense


def test_flat_layouts_match(operators):
    ops, _ = operators
    assert ops["torch"].backend.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert ops["jax"].backend.names == ["[0][0]", "[0][1]", "[1][0]", "[1][1]"]
    assert ops["torch"].backend.offsets == ops["jax"].backend.offsets == [0, 768, 780, 900, 910]


def test_same_seed_same_probes(operators, x64):
    ops, _ = operators
    draw = np.random.default_rng(0).choice([-1.0, 1.0], size=(910, 4))
    for name, H in ops.items():
        moved = H.asarray(draw)
        assert moved.dtype == H.xp.float64, name
        np.testing.assert_array_equal(H.to_numpy(moved), draw, err_msg=name)


def test_products_agree(operators, x64):
    ops, dense = operators
    V = np.random.default_rng(1).standard_normal((910, 3))
    ref = dense @ V
    tol = 1e-12 * np.abs(ref).max()
    for name, H in ops.items():
        np.testing.assert_allclose(H.to_numpy(H.hvp_block(H.asarray(V))), ref, rtol=0, atol=tol, err_msg=name)
        np.testing.assert_allclose(H @ V[:, 0], ref[:, 0], rtol=0, atol=tol, err_msg=name)


def test_top5_eigenvalues_agree(operators, x64):
    ops, dense = operators
    exact = np.linalg.eigvalsh(dense)[::-1][:5]
    results = {name: hessop.lanczos(H, k=5, tol=1e-10, seed=0) for name, H in ops.items()}
    for name, res in results.items():
        assert res.all_converged, name
        np.testing.assert_allclose(res.eigenvalues, exact, rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(res.eigenvalues, results["numpy"].eigenvalues, rtol=1e-9, err_msg=name)
        # same start vector and same arithmetic up to rounding: the same number of steps
        assert res.n_iter == results["numpy"].n_iter, name
    # eigenvectors agree up to sign, and come back native
    ref = results["numpy"].eigenvectors
    for name, res in results.items():
        Vh = ops[name].to_numpy(res.eigenvectors)
        assert np.abs(np.abs(np.sum(Vh * ref, axis=0)) - 1).max() < 1e-7, name


def test_power_iteration_agrees(operators, x64):
    ops, _ = operators
    vals = {name: hessop.power_iteration(H, k=1, tol=1e-8, seed=3).eigenvalues for name, H in ops.items()}
    for name, v in vals.items():
        np.testing.assert_allclose(v, vals["numpy"], rtol=1e-9, err_msg=name)


def test_hutchinson_agrees(operators, x64):
    ops, dense = operators
    est = {name: hessop.hutchinson(H, max_hvp=50, seed=0) for name, H in ops.items()}
    ref = est["numpy"].estimate
    for name, e in est.items():
        assert abs(e.estimate - ref) <= 1e-9 * abs(ref), (name, e.estimate, ref)
        assert abs(e.std_error - est["numpy"].std_error) <= 1e-9 * est["numpy"].std_error, name
    # and the shared estimate is a trace estimate (within 5 standard errors of the exact trace)
    assert abs(ref - np.trace(dense)) <= 5 * est["numpy"].std_error


def test_slq_nodes_agree(operators, x64):
    ops, dense = operators
    scale = np.abs(np.linalg.eigvalsh(dense)).max()
    dens = {name: hessop.slq(H, n_iter=40, max_hvp=120, seed=0) for name, H in ops.items()}
    ref = dens["numpy"]
    assert len(ref.nodes) == 3
    for name, d in dens.items():
        assert len(d.nodes) == len(ref.nodes), name
        for a, b, wa, wb in zip(d.nodes, ref.nodes, d.weights, ref.weights, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-8 * scale, err_msg=name)
            np.testing.assert_allclose(np.asarray(wa), np.asarray(wb), rtol=0, atol=1e-8, err_msg=name)
