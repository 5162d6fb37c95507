"""JAX backend: products against a dense float64 Hessian, pytrees, batching, precision, solvers, bad input.

JAX's 64-bit mode is switched on only inside the ``x64`` fixture (a ``jax.enable_x64`` context), never globally,
so the other tests in the same pytest process keep JAX's default float32 behaviour.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
from jax_x64 import enable_x64  # noqa: E402

jnp = pytest.importorskip("jax.numpy")
from jax.flatten_util import ravel_pytree  # noqa: E402

import hessop  # noqa: E402
from hessop import HessianOperator  # noqa: E402
from hessop.backends.jax import JaxBackend, x64_enabled  # noqa: E402


def mlp_loss(params, batch):
    """Mean cross-entropy of a one-hidden-layer tanh MLP; params is a nested dict (flax style)."""
    x, y = batch
    h = jnp.tanh(x @ params["hidden"]["w"] + params["hidden"]["b"])
    logits = h @ params["out"]["w"] + params["out"]["b"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def mlp_sum_loss(params, batch):
    return mlp_loss(params, batch) * batch[0].shape[0]


def init_params(seed: int = 0, d: int = 64, h: int = 12, c: int = 10, dtype=np.float64) -> dict:
    """MLP parameters as numpy arrays of ``dtype`` (nested dicts: ``params[layer][w or b]``)."""
    rng = np.random.default_rng(seed)
    p = {
        "hidden": {"w": rng.standard_normal((d, h)) / np.sqrt(d), "b": 0.1 * rng.standard_normal(h)},
        "out": {"w": rng.standard_normal((h, c)) / np.sqrt(h), "b": 0.1 * rng.standard_normal(c)},
    }
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), p)


def digits_np(n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    ds = load_digits()
    return ds.data[:n] / 16.0, ds.target[:n].astype(np.int32)


SPLITS = (100, 200)  # batches of 100, 100 and 56 samples: unequal sizes on purpose


@pytest.fixture(scope="module")
def problem():
    """A float64 MLP (910 parameters) on 256 digits, its batches, and the dense Hessian by jax.hessian."""
    with enable_x64(True):
        x, y = digits_np(256)
        params = jax.tree_util.tree_map(jnp.asarray, init_params(0))
        xs, ys = np.split(x, SPLITS), np.split(y, SPLITS)
        batches = [(jnp.asarray(a), jnp.asarray(b)) for a, b in zip(xs, ys, strict=True)]
        theta, unravel = ravel_pytree(params)
        full = (jnp.asarray(x), jnp.asarray(y))
        dense = np.asarray(jax.jit(jax.hessian(lambda t: mlp_loss(unravel(t), full)))(theta))
        dense = (dense + dense.T) / 2
        H = HessianOperator.from_jax(mlp_loss, params, batches)
        return {"params": params, "batches": batches, "full": full, "x": x, "y": y, "dense": dense,
                "eigenvalues": np.linalg.eigvalsh(dense)[::-1], "H": H, "theta": theta}


# ---------------------------------------------------------------------------------------------------- products
def test_hvp_and_block_match_dense_hessian(problem, x64):
    H, D = problem["H"], problem["dense"]
    assert H.n == 910 and H.dtype == np.float64 and H.backend.name == "jax"
    assert H.backend.n_samples == 256 and H.backend.reduction == "mean"
    rng = np.random.default_rng(1)
    v = rng.standard_normal(H.n)
    hv = H.hvp(H.asarray(v))
    assert isinstance(hv, jax.Array) and hv.dtype == jnp.float64
    scale = np.linalg.norm(D, 2)
    np.testing.assert_allclose(H.to_numpy(hv), D @ v, rtol=0, atol=1e-12 * scale * np.linalg.norm(v))
    V = rng.standard_normal((H.n, 4))
    HV = H.hvp_block(H.asarray(V))
    assert isinstance(HV, jax.Array) and HV.shape == (H.n, 4)
    np.testing.assert_allclose(H.to_numpy(HV), D @ V, rtol=0, atol=1e-12 * scale * np.linalg.norm(V))
    # block columns equal single products
    for j in range(4):
        np.testing.assert_allclose(H.to_numpy(HV[:, j]), H.to_numpy(H.hvp(H.asarray(V[:, j]))), rtol=0,
                                   atol=1e-14 * scale * np.linalg.norm(V[:, j]))


def test_weights_follow_batch_sizes_and_reduction(problem, x64):
    """Unequal batches weighted |b|/N give the full-data Hessian; a wrong (equal) weighting would not."""
    D, params = problem["dense"], problem["params"]
    v = np.random.default_rng(2).standard_normal(D.shape[0])
    one = HessianOperator.from_jax(mlp_loss, params, problem["full"], check_deterministic=False)
    many = problem["H"]
    a, b = one @ v, many @ v
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14 * np.abs(a).max())
    # equal weights 1/3 would differ by far more than rounding: check that the test can see a weighting error
    per_batch = [HessianOperator.from_jax(mlp_loss, params, bt, check_deterministic=False) @ v
                 for bt in problem["batches"]]
    assert np.abs(np.mean(per_batch, axis=0) - a).max() > 1e-4 * np.abs(a).max()
    # reduction="sum": loss summed over each batch -> Hessian of the total loss = N * mean Hessian
    S = HessianOperator.from_jax(mlp_sum_loss, params, problem["batches"], reduction="sum")
    assert S.backend.reduction == "sum"
    np.testing.assert_allclose(S @ v, 256 * (D @ v), rtol=0, atol=1e-11 * 256 * np.abs(D @ v).max())


def test_compiled_once_and_reused(x64):
    """The loss is traced a fixed number of times at construction, not once per product."""
    x, y = digits_np(64)
    traces = []

    def loss(params, batch):
        traces.append(1)
        return mlp_loss(params, batch)

    params = init_params(1)
    batches = [(jnp.asarray(x[:32]), jnp.asarray(y[:32])), (jnp.asarray(x[32:]), jnp.asarray(y[32:]))]
    H = HessianOperator.from_jax(loss, params, batches)
    v = H.asarray(np.ones(H.n, H.dtype))
    H.hvp(v)
    H.hvp_block(H.asarray(np.ones((H.n, 3), H.dtype)))
    after_first = len(traces)
    for _ in range(10):
        v = H.hvp(v)
    H.hvp_block(H.asarray(np.ones((H.n, 3), H.dtype)))
    assert len(traces) == after_first
    assert H.n_hvp == 10 + 1 + 6
    # an operator at another point with the same loss reuses the compiled code, and theta is an input of that
    # code, not a constant baked into it: its products are those of the new point
    p2 = init_params(2)
    H2 = HessianOperator.from_jax(loss, p2, batches)
    assert len(traces) == after_first
    fresh = HessianOperator.from_jax(lambda p, b: mlp_loss(p, b), p2, batches)  # a new function: compiled anew
    u = np.random.default_rng(0).standard_normal(H.n)
    np.testing.assert_allclose(H2 @ u, fresh @ u, rtol=1e-12, atol=1e-14)
    assert np.abs((H2 @ u) - (H @ u)).max() > 1e-3 * np.abs(H @ u).max()


# ---------------------------------------------------------------------------------------------------- solvers
def test_lanczos_and_power_on_jax_operator(problem, x64):
    H, D, lam = problem["H"], problem["dense"], problem["eigenvalues"]
    res = hessop.lanczos(H, k=5, tol=1e-10)
    assert res.all_converged
    np.testing.assert_allclose(res.eigenvalues, lam[:5], rtol=1e-10)
    assert isinstance(res.eigenvectors, jax.Array) and res.eigenvectors.shape == (H.n, 5)
    Vh = H.to_numpy(res.eigenvectors)
    assert np.linalg.norm(D @ Vh - Vh * res.eigenvalues, axis=0).max() < 1e-8 * lam[0]
    assert H.xp is jnp or H.xp.__name__ in ("jax.numpy", "array_api_compat.jax")
    low = hessop.lanczos(H, k=2, which="SA", tol=1e-10)
    np.testing.assert_allclose(low.eigenvalues, lam[::-1][:2], rtol=1e-8, atol=1e-10 * lam[0])
    pw = hessop.power_iteration(H, k=2, tol=1e-8)
    assert isinstance(pw.eigenvectors, jax.Array)
    np.testing.assert_allclose(np.sort(pw.eigenvalues)[::-1], lam[:2], rtol=1e-6)


def test_scipy_face_on_jax_operator(problem, x64):
    from scipy.sparse.linalg import eigsh

    H, lam = problem["H"], problem["eigenvalues"]
    vals = eigsh(H, k=3, which="LA", return_eigenvectors=False, tol=1e-12)
    np.testing.assert_allclose(np.sort(vals)[::-1], lam[:3], rtol=1e-9)


# ---------------------------------------------------------------------------------------------------- pytrees
def test_unflatten_gives_pytree_like_params(problem, x64):
    H, params = problem["H"], problem["params"]
    be = H.backend
    res = hessop.lanczos(H, k=1, tol=1e-8)
    tree = be.unflatten(res.eigenvectors[:, 0])
    assert jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(params), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and isinstance(a, jax.Array)
    np.testing.assert_array_equal(np.asarray(be.flatten(tree)), np.asarray(res.eigenvectors[:, 0]))
    # the flat layout is ravel_pytree's, and names / offsets describe it
    v = np.arange(H.n, dtype=np.float64)
    t = be.unflatten(v)  # NumPy input accepted
    assert be.names == ["['hidden']['b']", "['hidden']['w']", "['out']['b']", "['out']['w']"]
    assert be.offsets == [0, 12, 12 + 768, 12 + 768 + 10, 910]
    np.testing.assert_array_equal(np.asarray(t["hidden"]["w"]).ravel(), v[12: 12 + 768])
    np.testing.assert_array_equal(np.asarray(problem["theta"]), np.asarray(be.flatten(params)))
    with pytest.raises(ValueError, match="shape"):
        be.unflatten(np.zeros(H.n + 1))
    with pytest.raises(ValueError, match="pytree shaped like params"):
        be.flatten({"hidden": params["hidden"]})


def test_other_pytree_containers(x64):
    """Lists, tuples and numpy leaves work; the flat order is the leaves' order."""
    x, y = digits_np(48)
    p = init_params(2)
    as_list = [(p["hidden"]["w"], p["hidden"]["b"]), (p["out"]["w"], p["out"]["b"])]

    def loss_list(params, batch):
        (w1, b1), (w2, b2) = params
        return mlp_loss({"hidden": {"w": w1, "b": b1}, "out": {"w": w2, "b": b2}}, batch)

    Hd = HessianOperator.from_jax(mlp_loss, p, (x, y))  # numpy leaves and numpy batch
    Hl = HessianOperator.from_jax(loss_list, as_list, (x, y))
    e_d = hessop.lanczos(Hd, k=3, tol=1e-10).eigenvalues
    e_l = hessop.lanczos(Hl, k=3, tol=1e-10).eigenvalues
    np.testing.assert_allclose(e_d, e_l, rtol=1e-10)
    assert Hl.backend.names == ["[0][0]", "[0][1]", "[1][0]", "[1][1]"]


# ---------------------------------------------------------------------------------------------------- precision
def test_float32_stays_float32(problem):
    with enable_x64(False):
        assert not x64_enabled()
        p32 = init_params(0, dtype=np.float32)
        x, y = problem["x"].astype(np.float32), problem["y"]
        H = HessianOperator.from_jax(mlp_loss, p32, (jnp.asarray(x), jnp.asarray(y)))
        assert H.dtype == np.float32
        v = H.asarray(np.random.default_rng(0).standard_normal(H.n).astype(H.dtype))
        assert v.dtype == jnp.float32 and H.hvp(v).dtype == jnp.float32
        res = hessop.lanczos(H, k=2, tol=1e-4)
        assert res.eigenvectors.dtype == jnp.float32
    np.testing.assert_allclose(res.eigenvalues, problem["eigenvalues"][:2], rtol=1e-3)


def test_float64_needs_x64(problem):
    with enable_x64(False):
        with pytest.raises(TypeError, match="64-bit mode is off"):
            HessianOperator.from_jax(mlp_loss, init_params(0), problem["batches"][0])
    # an operator built in 64-bit mode refuses to be fed once the mode is off (no silent float32)
    H = problem["H"]
    with enable_x64(False), pytest.raises(TypeError, match="64-bit mode is off"):
        H.asarray(np.ones(H.n, H.dtype))


def test_same_seed_same_probes(problem, x64):
    """Host-drawn probes arrive unchanged (float64) or rounded once (float32) in the backend's dtype."""
    H = problem["H"]
    draw = np.random.default_rng(0).standard_normal((H.n, 3))
    moved = H.asarray(draw)
    assert moved.dtype == jnp.float64
    np.testing.assert_array_equal(H.to_numpy(moved), draw)
    assert H.to_numpy(moved).flags.writeable
    # and lanczos from the same seed gives bitwise the same start: same answer as the dense numpy operator
    ref = hessop.lanczos(HessianOperator.from_matrix(problem["dense"]), k=3, tol=1e-10, seed=7)
    got = hessop.lanczos(H, k=3, tol=1e-10, seed=7)
    np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues, rtol=1e-11)
    assert got.n_iter == ref.n_iter


# ---------------------------------------------------------------------------------------------------- determinism
class ChangingLoader:
    """Yields a different random half of the data at every pass (not a fixed set of samples)."""

    def __init__(self, x, y):
        self.x, self.y, self.rng = x, y, np.random.default_rng(0)

    def __iter__(self):
        idx = self.rng.permutation(len(self.x))[: len(self.x) // 2]
        yield jnp.asarray(self.x[idx]), jnp.asarray(self.y[idx])


class ShuffledLoader:
    """Every sample once per pass, in a new order and new batches: the Hessian is the same."""

    def __init__(self, x, y, bs):
        self.x, self.y, self.bs, self.rng = x, y, bs, np.random.default_rng(0)

    def __iter__(self):
        idx = self.rng.permutation(len(self.x))
        for i in range(0, len(idx), self.bs):
            j = idx[i: i + self.bs]
            yield self.x[j], self.y[j]


def test_determinism_check(problem, x64):
    x, y = problem["x"], problem["y"]
    with pytest.raises(ValueError, match="not deterministic"):
        HessianOperator.from_jax(mlp_loss, problem["params"], ChangingLoader(x, y))
    H = HessianOperator.from_jax(mlp_loss, problem["params"], ShuffledLoader(x, y, 64))
    v = np.random.default_rng(3).standard_normal(H.n)
    np.testing.assert_allclose(H @ v, problem["dense"] @ v, rtol=0, atol=1e-11 * np.abs(problem["dense"] @ v).max())


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_loss_outputs(problem, x64):
    p, b = problem["params"], problem["batches"][0]

    def per_sample(params, batch):  # forgot the mean
        x, y = batch
        h = jnp.tanh(x @ params["hidden"]["w"] + params["hidden"]["b"])
        return -jax.nn.log_softmax(h @ params["out"]["w"] + params["out"]["b"])[jnp.arange(y.shape[0]), y]

    with pytest.raises(ValueError, match=r"shape \(100,\), not a scalar"):
        HessianOperator.from_jax(per_sample, p, b)
    with pytest.raises(TypeError, match="int(32|64) array.*floating-point"):
        HessianOperator.from_jax(lambda params, batch: jnp.sum(batch[1]), p, b)
    with pytest.raises(TypeError, match=r"returned tuple.*\(loss, aux\)"):
        HessianOperator.from_jax(lambda params, batch: (mlp_loss(params, batch), 0.0), p, b)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        HessianOperator.from_jax("loss", p, b)


def test_bad_params(problem, x64):
    b = problem["batches"][0]
    p = problem["params"]
    with pytest.raises(TypeError, match=r"\['step'\] has integer dtype int32"):
        HessianOperator.from_jax(lambda q, bt: mlp_loss(q["net"], bt), {"net": p, "step": jnp.zeros((), jnp.int32)}, b)
    mixed = {"hidden": p["hidden"], "out": jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), p["out"])}
    with pytest.raises(TypeError, match="mixes dtypes"):
        HessianOperator.from_jax(mlp_loss, mixed, b)
    with pytest.raises(ValueError, match="holds no arrays"):
        HessianOperator.from_jax(mlp_loss, {}, b)
    with pytest.raises(TypeError, match="Python float|not an array"):
        HessianOperator.from_jax(lambda q, bt: q["a"] * mlp_loss(p, bt), {"a": 1.0}, b)
    with pytest.raises(TypeError, match="float32 and float64"):
        HessianOperator.from_jax(mlp_loss, jax.tree_util.tree_map(lambda a: a.astype(jnp.float16), p), b)


def test_bad_data(problem, x64):
    p, (b0, b1, _) = problem["params"], problem["batches"]
    with pytest.raises(ValueError, match="mixed structure"):
        HessianOperator.from_jax(mlp_loss, p, [b0, {"x": b1[0], "y": b1[1]}])
    with pytest.raises(ValueError, match="mixed structure"):
        HessianOperator.from_jax(mlp_loss, p, [b0, (b1[0], b1[1], b1[1])])
    with pytest.raises(TypeError, match="one-shot iterator"):
        HessianOperator.from_jax(mlp_loss, p, (b for b in [b0, b1]))
    with pytest.raises(ValueError, match="data is empty"):
        HessianOperator.from_jax(mlp_loss, p, [])
    with pytest.raises(TypeError, match="re-iterable"):
        HessianOperator.from_jax(mlp_loss, p, 3)
    with pytest.raises(ValueError, match="reduction"):
        HessianOperator.from_jax(mlp_loss, p, b0, reduction="batchmean")
    with pytest.raises(ValueError, match="batch size"):
        HessianOperator.from_jax(lambda q, bt: mlp_loss(q, (bt["x"], bt["y"])), p,
                                 {"scale": jnp.ones(()), "x": b0[0], "y": b0[1]})
    H = HessianOperator.from_jax(lambda q, bt: mlp_loss(q, (bt["x"], bt["y"])), p,
                                 {"scale": jnp.ones(()), "x": b0[0], "y": b0[1]}, batch_size=lambda bt: 100)
    assert H.backend.n_samples == 100


def test_bad_vectors(problem, x64):
    H = problem["H"]
    with pytest.raises(TypeError, match="jax arrays"):
        H.backend.hvp(np.ones(H.n))
    with pytest.raises(TypeError, match="float64"):
        H.backend.hvp(jnp.ones(H.n, dtype=jnp.float32))
    with pytest.raises(ValueError, match="shape"):
        H.hvp(jnp.ones(H.n + 1))
    with pytest.raises(TypeError, match="complex"):
        H.asarray(np.ones(H.n, dtype=complex))


def test_nan_hvp_raises(problem, x64):
    x, y = problem["x"].copy(), problem["y"]
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="loss over the data is nan"):
        HessianOperator.from_jax(mlp_loss, problem["params"], (jnp.asarray(x), jnp.asarray(y)))
    H = HessianOperator.from_jax(mlp_loss, problem["params"], (jnp.asarray(x), jnp.asarray(y)),
                                 check_deterministic=False)
    with pytest.raises(FloatingPointError):
        hessop.lanczos(H, k=1)


def test_repr_and_backend_class(problem, x64):
    H = problem["H"]
    assert isinstance(H.backend, JaxBackend)
    assert "jax (" in repr(H) and "256 samples" in repr(H) and "reduction='mean'" in repr(H)
