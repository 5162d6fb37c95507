"""Gradient-difference products (``hvp_method="finite_difference"``): the parameters come back bit for bit, the
measured product error bounds the true error against the exact product (dense float64 Hessian) over a family of
models in float32 and float64, and ``lanczos``'s residuals stay true bounds."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hessop import HessianOperator, lanczos  # noqa: E402
from hessop.backends.torch._products import finite_difference_error  # noqa: E402
from hessop.models.digits import SmallResNet, digits  # noqa: E402

LOSS = torch.nn.CrossEntropyLoss()
DTYPES = {"float64": (torch.float64, np.float64), "float32": (torch.float32, np.float32)}


def _mlp(act: type) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), act(), torch.nn.Linear(4, 10))


def _model(name: str) -> torch.nn.Module:
    """Small models of the family (a dense Hessian each): MLPs with tanh and relu (310 parameters), a tanh CNN
    (350) and the test CNN (SmallResNet: conv, relu, residual tanh conv, tanh; 192 at this width)."""
    torch.manual_seed(0)
    if name == "mlp-tanh":
        return _mlp(torch.nn.Tanh).double()
    if name == "mlp-relu":
        return _mlp(torch.nn.ReLU).double()
    if name == "cnn-tanh":
        return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
                                   torch.nn.Flatten(), torch.nn.Linear(32, 10)).double()
    return SmallResNet(channels=1, hidden=6, batchnorm=False).double()


_DENSE: dict[str, tuple] = {}


def _problem(name: str) -> tuple[torch.nn.Module, tuple, np.ndarray]:
    """The float64 model, its data and its dense float64 Hessian (exact products of the identity's columns)."""
    if name not in _DENSE:
        model = _model(name)
        data = digits(64)
        exact = HessianOperator.from_torch(model, LOSS, data, hvp_method="forward_over_reverse")
        D = exact @ np.eye(exact.n)
        _DENSE[name] = (model, data, (D + D.T) / 2)
    return _DENSE[name]


def _fd_operator(name: str, dtype: str, **kw) -> tuple[HessianOperator, torch.nn.Module, np.ndarray]:
    model, (x, y), D = _problem(name)
    tdt = DTYPES[dtype][0]
    m = copy.deepcopy(model).to(tdt)
    return HessianOperator.from_torch(m, LOSS, (x.to(tdt), y), hvp_method="finite_difference", **kw), m, D


def _unit_vectors(n: int, k: int, seed: int) -> np.ndarray:
    U = np.random.default_rng(seed).standard_normal((n, k))
    return U / np.linalg.norm(U, axis=0)


def test_parameters_restored_bit_identical_also_after_an_error():
    model, (x, y), _ = _problem("mlp-tanh")
    m = copy.deepcopy(model).float()
    before = [p.detach().clone() for p in m.parameters()]
    H = HessianOperator.from_torch(m, LOSS, (x.float(), y), hvp_method="finite_difference")
    H.matmat(_unit_vectors(H.n, 3, 0).astype(np.float32))
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters(), strict=True))
    versions = [p._version for p in m.parameters()]  # the products did write into the parameters

    calls = {"n": 0}

    def failing(out, target):
        calls["n"] += 1
        if calls["n"] > 3:  # during the second gradient of the product: parameters are at theta - h v
            raise RuntimeError("loss failed")
        return LOSS(out, target)

    F = HessianOperator.from_torch(m, failing, (x.float(), y), hvp_method="finite_difference",
                                   check_deterministic=False)
    calls["n"] = 2
    with pytest.raises(RuntimeError, match="loss failed"):
        F @ np.ones(F.n, dtype=np.float32)
    assert [p._version for p in m.parameters()] != versions
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters(), strict=True))


def test_block_is_its_columns_and_zero_column_gives_zero():
    H, _, _ = _fd_operator("mlp-tanh", "float64")
    U = _unit_vectors(H.n, 3, 1)
    U[:, 1] = 0.0
    block = H.matmat(U)
    assert np.array_equal(block[:, 1], np.zeros(H.n))
    for j in (0, 2):
        assert np.array_equal(block[:, j], H @ U[:, j])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["mlp-tanh", "mlp-relu", "cnn-tanh", "cnn"])
def test_product_error_bounds_the_true_error(name, dtype, monkeypatch):
    """``product_error`` (measured with the two steps) >= ``||D_h u - H u||`` for random unit ``u``, ``H`` the
    dense float64 Hessian; in float32 also without the float64 reference products (a model whose loss cannot be
    evaluated in float64, as under FSDP or with fused kernels): the finite-difference estimate alone."""
    H, _, D = _fd_operator(name, dtype)
    U = _unit_vectors(H.n, 8, 2)
    true = np.linalg.norm(H.matmat(U.astype(DTYPES[dtype][1])) - D @ U, axis=0)
    info = H.product_error_info
    assert "finite-difference" in info.method
    assert np.all(true <= info.bound), (true.max(), info.bound)
    if dtype == "float32":
        import hessop._product_error as pe

        monkeypatch.setattr(pe, "_reference_products", lambda op, U: None)
        H.product_error = None  # measure again, without the float64 products
        assert H.product_error_info.method == "witnesses + finite-difference steps h, 2h"
        assert np.all(true <= H.product_error), (true.max(), H.product_error)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_estimate_per_vector_on_a_smooth_model(dtype):
    """On a smooth (tanh) model the two-step estimate bounds each vector's own error; and the products are
    accurate: relative error below eps^(1/3) (float32 about 4e-5, float64 about 6e-11 measured)."""
    H, _, D = _fd_operator("mlp-tanh", dtype)
    U = _unit_vectors(H.n, 6, 3)
    exact = D @ U
    err = np.linalg.norm(H.matmat(U.astype(DTYPES[dtype][1])) - exact, axis=0)
    est = finite_difference_error(H.backend, H.asarray(U.astype(DTYPES[dtype][1]))).numpy()
    assert np.all(err <= est), (err, est)
    eps = float(np.finfo(DTYPES[dtype][1]).eps)
    assert np.max(err / np.linalg.norm(exact, axis=0)) < eps ** (1 / 3)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["mlp-tanh", "cnn-tanh"])
def test_lanczos_residuals_are_true_bounds(name, dtype):
    """Smooth models (on the relu CNN in float32 the measured bound exceeds ||H||: honest but no answer)."""
    H, _, D = _fd_operator(name, dtype)
    res = lanczos(H, k=3, tol=1e-2 if dtype == "float32" else 1e-6)
    X = np.asarray(res.eigenvectors, dtype=np.float64)
    lam = np.asarray(res.eigenvalues, dtype=np.float64)
    true_res = np.linalg.norm(D @ X - X * lam, axis=0) / np.linalg.norm(X, axis=0)
    assert np.all(true_res <= res.residuals), (true_res, res.residuals)
    nearest = np.min(np.abs(lam[:, None] - np.linalg.eigvalsh(D)[None, :]), axis=1)
    assert np.all(nearest <= res.residuals), (lam, nearest, res.residuals)
    assert res.n_hvp > 0 and res.residuals.max() < np.abs(lam).max()  # an answer, not a vacuous bound


def test_refusals():
    model, data, _ = _problem("mlp-tanh")
    with pytest.raises(ValueError, match="finite_difference"):
        HessianOperator.from_torch(model, LOSS, data, hvp_method="finite_difference", comm="torch")
    with pytest.raises(ValueError, match="'finite_difference'"):
        HessianOperator.from_torch(model, LOSS, data, hvp_method="finite-difference")
