"""hessop.landscape against exact answers: a quadratic loss (PyTorch and JAX) and the test CNN's top eigenvector."""

from __future__ import annotations

import numpy as np
import pytest

import hessop
from hessop.landscape import _filter_normalised
from hessop.testing import matrix_with_spectrum

torch = pytest.importorskip("torch")

N = 6
A = matrix_with_spectrum(np.array([3.0, 1.5, 0.7, 0.2, -0.4, -1.1]), seed=3)


class Quadratic(torch.nn.Module):
    """L(theta) = 0.5 theta^T A theta, theta starting at 0: the landscape is 0.5 x^T A x exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(N, dtype=torch.float64))
        self.A = torch.as_tensor(A)
        self.calls = 0
        self.fail_at = None

    def loss(self, model, batch):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("loss failed on purpose")
        return 0.5 * self.theta @ self.A @ self.theta


def quadratic_operator():
    q = Quadratic()
    return q, hessop.HessianOperator.from_torch(q, q.loss, [torch.zeros(1)], loss_form="model")


def test_quadratic_landscape_is_exact_on_given_and_eigen_directions():
    _, H = quadratic_operator()
    D = np.random.default_rng(0).standard_normal((N, 2))
    L = hessop.landscape(H, D, radius=2.0, n_points=7)
    assert L.is_grid and L.losses.shape == (7, 7) and L.kind == "given"
    X = L.alphas[:, None, None] * D[:, 0] + L.betas[None, :, None] * D[:, 1]
    exact = 0.5 * np.einsum("abi,ij,abj->ab", X, A, X)
    np.testing.assert_allclose(L.losses, exact, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(L.eigenvalues * L.norms**2, np.einsum("ik,ij,jk->k", D, A, D), rtol=1e-13)
    np.testing.assert_allclose(L.curvature(), np.einsum("ik,ij,jk->k", D, A, D), rtol=1e-10)
    # default: the top two eigenvectors; the losses are 0.5 (lambda_1 a^2 + lambda_2 b^2)
    E = hessop.landscape(H, radius=1.0, n_points=5)
    assert E.kind == "eigenvectors" and E.n_hvp > 0
    np.testing.assert_allclose(E.eigenvalues, [3.0, 1.5], rtol=1e-10)
    a, b = np.meshgrid(E.alphas, E.betas, indexing="ij")
    np.testing.assert_allclose(E.losses, 0.5 * (3.0 * a**2 + 1.5 * b**2), rtol=1e-10, atol=1e-14)
    # one direction: a line
    line = hessop.landscape(H, D[:, 0], radius=1.0, n_points=5)
    assert not line.is_grid and line.losses.shape == (5,)
    np.testing.assert_allclose(line.losses, 0.5 * line.alphas**2 * (D[:, 0] @ A @ D[:, 0]), rtol=1e-13)


def test_parameters_bit_identical_also_when_the_loss_raises():
    q, H = quadratic_operator()
    with torch.no_grad():
        q.theta.copy_(torch.as_tensor(np.random.default_rng(1).standard_normal(N) / 3))
    before = q.theta.detach().clone()
    hessop.landscape(H, np.eye(N)[:, :2], radius=0.7, n_points=5)
    assert torch.equal(q.theta, before)
    q.fail_at = q.calls + 4
    with pytest.raises(RuntimeError, match="on purpose"):
        hessop.landscape(H, np.eye(N)[:, :2], radius=0.7, n_points=5)
    assert torch.equal(q.theta, before)


def test_curvature_along_top_eigenvector_of_the_cnn(torch_problem):
    p = torch_problem
    H = hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]))
    before = [t.detach().clone() for t in p["model"].parameters()]
    top = hessop.lanczos(H, k=1, tol=1e-10)
    # ReLU kinks make the loss only piecewise smooth: the fit needs steps below the distance to the nearest kink
    L = hessop.landscape(H, top, radius=1e-5, n_points=5)
    assert L.losses.shape == (5,)
    assert abs(L.curvature()[0] - p["eigenvalues"][0]) <= 1e-4 * p["eigenvalues"][0]
    with torch.no_grad():
        assert abs(L.loss0 - float(p["loss_fn"](p["model"](p["x"]), p["y"]))) < 1e-12
    assert all(torch.equal(a, b) for a, b in zip(before, p["model"].parameters(), strict=True))


def test_filter_normalised_random_directions(torch_problem):
    p = torch_problem
    H = hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"][:16], p["y"][:16]),
                                          check_deterministic=False)
    D = _filter_normalised(H, np.random.default_rng(0), 2)
    b = H.backend
    for i, (name, param) in enumerate(p["model"].named_parameters()):
        block = D[b.offsets[i]: b.offsets[i + 1]]
        if param.ndim == 1:
            assert not np.any(block), name
            continue
        t = param.detach().numpy().reshape(param.shape[0], -1)
        for c in range(2):
            d = block[:, c].reshape(param.shape[0], -1)
            np.testing.assert_allclose(np.linalg.norm(d, axis=1), np.linalg.norm(t, axis=1), rtol=1e-12)
    L = hessop.landscape(H, "random1", radius=0.5, n_points=3)
    assert L.kind.startswith("random") and L.losses.shape == (3,) and np.all(np.isfinite(L.losses))


def test_jax_quadratic_landscape_and_filter_axis():
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    from jax_x64 import enable_x64

    with enable_x64(True):
        Aj = jnp.asarray(A)

        def loss(params, batch):
            t = jnp.concatenate([params["w"].reshape(-1), params["b"]])
            return 0.5 * t @ Aj @ t

        params = {"b": jnp.zeros(2), "w": jnp.zeros((2, 2))}
        H = hessop.HessianOperator.from_jax(loss, params, jnp.zeros((1, 1)))
        D = np.random.default_rng(2).standard_normal((N, 2))
        L = hessop.landscape(H, D, radius=1.5, n_points=5)
        # the flat vector follows tree_leaves order ("b" then "w"); the loss orders w then b
        perm = np.r_[2:6, 0:2]
        Dp = D[perm]
        X = L.alphas[:, None, None] * Dp[:, 0] + L.betas[None, :, None] * Dp[:, 1]
        np.testing.assert_allclose(L.losses, 0.5 * np.einsum("abi,ij,abj->ab", X, A, X), rtol=1e-13, atol=1e-15)
        assert H.backend.theta is not None and not np.any(H.to_numpy(H.backend.theta))
        # filters of a JAX (in, out) weight lie along the last axis
        params = {"w": jnp.asarray(np.random.default_rng(3).standard_normal((3, 2))), "b": jnp.ones(2)}
        G = hessop.HessianOperator.from_jax(lambda p, b: jnp.sum(jnp.tanh(p["w"]) ** 2) + jnp.sum(p["b"] ** 2),
                                            params, jnp.zeros((1, 1)))
        R = _filter_normalised(G, np.random.default_rng(0), 1)
        names = G.backend.names
        w = R[G.backend.offsets[names.index("['w']")]: G.backend.offsets[names.index("['w']") + 1], 0]
        np.testing.assert_allclose(np.linalg.norm(w.reshape(3, 2), axis=0),
                                   np.linalg.norm(np.asarray(params["w"]), axis=0), rtol=1e-12)
        assert jax.tree_util.tree_structure(params) == G.backend.treedef


def test_plots(tmp_path):
    pytest.importorskip("matplotlib")
    _, H = quadratic_operator()
    grid = hessop.landscape(H, radius=1.0, n_points=5)
    fig = grid.plot(tmp_path / "grid.png")
    assert len(fig.axes) >= 2 and (tmp_path / "grid.png").stat().st_size > 1000
    line = hessop.landscape(H, np.eye(N)[:, 0], radius=1.0, n_points=5)
    ax = line.plot(tmp_path / "line.png").axes[0]
    assert len(ax.lines) == 2  # the loss and the quadratic model


def test_bad_input():
    _, H = quadratic_operator()
    with pytest.raises(ValueError, match="odd"):
        hessop.landscape(H, np.eye(N)[:, :1], n_points=4)
    with pytest.raises(ValueError, match="shape"):
        hessop.landscape(H, np.ones((N, 3)))
    with pytest.raises(ValueError, match="radius"):
        hessop.landscape(H, np.eye(N)[:, :1], radius=-1.0)
    with pytest.raises(ValueError, match="random"):
        hessop.landscape(H, "sideways")
    with pytest.raises(ValueError, match="zero"):
        hessop.landscape(H, np.zeros(N))
    with pytest.raises(TypeError, match="from_torch or from_jax"):
        hessop.landscape(hessop.HessianOperator.from_matrix(A))
