"""Shared problems with exact answers: prescribed-spectrum matrices and a small network with its dense Hessian."""

from __future__ import annotations

import os

import numpy as np
import pytest

import hessop
from hessop.testing import flat_spectrum, matrix_with_spectrum, outlier_spectrum


@pytest.fixture
def nan_operator():
    """A 20 x 20 operator whose every product (single or block) has a NaN in row 3: solvers must raise."""
    import hessop

    def block(V):
        out = V.copy()
        out[3] = np.nan
        return out

    return hessop.HessianOperator.from_function(lambda v: block(v[:, None])[:, 0], 20, hvp_block=block)


@pytest.fixture
def block_only():
    """A factory: ``make(A)`` gives an operator over the matrix ``A`` that serves block products only (a
    single-vector product fails the test) and the list of the block widths it was asked for, the uncounted block of
    two of the symmetry check at construction already cleared."""

    def make(A):
        calls = []

        def block(V):
            calls.append(V.shape[1])
            return A @ V

        def single(v):
            raise AssertionError("single-vector product")

        op = hessop.HessianOperator.from_function(single, A.shape[0], hvp_block=block)
        assert calls == [2] and op.n_hvp == 0  # the symmetry check at construction: one uncounted block of two
        calls.clear()
        op.product_error = 0  # the blocks recorded are the solver's, not the product-error measurement's block of 4
        return op, calls

    return make


@pytest.fixture
def tiny_torch_problem():
    """A 23-parameter float64 MLP (Linear-Tanh-Linear) with cross-entropy on 16 random samples, and its operator:
    ``(model, H)``.  The model is fresh per test (tests may change its weights)."""
    torch = pytest.importorskip("torch")
    import hessop

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
    data = (torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 2, (16,)))
    return model, hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), data)


@pytest.fixture(scope="session")
def outlier_matrix() -> tuple[np.ndarray, np.ndarray]:
    """(A, eigenvalues descending): n = 2000, 10 outliers over a bulk, 3 negative eigenvalues."""
    lam = outlier_spectrum(2000, n_outliers=10, n_negative=3, seed=0)
    return matrix_with_spectrum(lam, seed=1), lam


@pytest.fixture(scope="session")
def torch_problem():
    """A trained SmallResNet (eval mode, float64, 1,708 parameters) on 256 digits, with its dense Hessian.

    The reference Hessian is computed column by column as ``jvp(grad(loss))`` of the loss as a function of the flat
    parameter vector (forward-over-reverse through ``functional_call``, vmapped over identity columns): independent
    of hessop's double-backward products.  About 25 s on 2 cores, once per session.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from torch.func import functional_call, grad, jvp, vmap

    from hessop.models.digits import SmallResNet, digits, train

    torch.manual_seed(0)
    x, y = digits(256)
    model = SmallResNet().double()
    train(model, x, y, steps=150)
    loss_fn = torch.nn.CrossEntropyLoss()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat):
        parts = torch.split(flat, sizes)
        ps = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return loss_fn(functional_call(model, ps, (x,)), y)

    g = grad(loss_of)
    eye = torch.eye(theta.numel(), dtype=theta.dtype)
    with torch.no_grad():
        cols = [vmap(lambda v: jvp(g, (theta,), (v,))[1])(eye[i: i + 256]) for i in range(0, theta.numel(), 256)]
    dense = torch.cat(cols).numpy()
    dense = (dense + dense.T) / 2
    return {
        "model": model, "x": x, "y": y, "loss_fn": loss_fn, "names": names, "sizes": sizes,
        "hessian": dense, "eigenvalues": np.linalg.eigvalsh(dense)[::-1],
    }


@pytest.fixture(autouse=True)
def _torch_hvp_method(monkeypatch):
    """``HESSOP_TEST_HVP_METHOD=double_backward pytest`` (or ``forward_over_reverse``) reruns every test with
    that default ``hvp_method`` for the PyTorch backend; unset, the library default ("auto") is tested."""
    method = os.environ.get("HESSOP_TEST_HVP_METHOD")
    if method:
        monkeypatch.setitem(hessop.HessianOperator.from_torch.__kwdefaults__, "hvp_method", method)


# ------------------------------------------------ prescribed spectra and the network's Hessian (trace, diagonal)
@pytest.fixture(scope="module")
def flat():
    lam = flat_spectrum(400, seed=3)
    return matrix_with_spectrum(lam, seed=4), float(lam.sum())


@pytest.fixture(scope="module")
def outlier():
    lam = outlier_spectrum(400, seed=3)
    return matrix_with_spectrum(lam, seed=4), float(lam.sum())


@pytest.fixture(scope="module")
def outlier32():
    """The outlier matrix stored in float32 (products and probes in float32); the truth is the exact trace of the
    stored matrix."""
    A = matrix_with_spectrum(outlier_spectrum(400, seed=3), seed=4).astype(np.float32)
    return A, float(np.trace(A.astype(np.float64)))


@pytest.fixture(scope="module")
def network(torch_problem):
    A = torch_problem["hessian"]
    return A, float(np.trace(A))


@pytest.fixture(scope="module")
def torch_op(torch_problem):
    p = torch_problem
    return hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]))


@pytest.fixture
def x64():
    """JAX's 64-bit mode inside the test only (a ``jax.enable_x64`` context, never switched on globally), shared by
    the JAX test modules; skipped where JAX is not installed."""
    pytest.importorskip("jax")
    from jax_x64 import enable_x64

    with enable_x64(True):
        yield
