"""Precision of the solve: solver_dtype, the no-down-cast policy, per-pair flags, half-precision torch models."""

from __future__ import annotations

import numpy as np
import pytest

import hessop
from hessop import HessianOperator
from hessop.testing import family_spectrum, matrix_with_spectrum


@pytest.fixture(scope="module")
def float32_problem():
    lam = family_spectrum("outliers", 300, seed=3)
    A = matrix_with_spectrum(lam, seed=4, dtype=np.float32)
    return A, np.linalg.eigvalsh(A.astype(np.float64))[::-1]


def test_float64_solve_over_float32_products(float32_problem):
    A, truth = float32_problem
    H = HessianOperator.from_matrix(A)
    r = hessop.lanczos(H, 3, which="SA", solver_dtype=np.float64)
    assert r.eigenvectors.dtype == np.float64
    assert H.n_hvp == r.n_hvp  # every product went through the float32 operator
    V = r.eigenvectors
    true_res = np.linalg.norm(A.astype(np.float64) @ V - V * r.eigenvalues, axis=0)
    assert np.all(true_res <= r.residuals)
    # |lambda| = 1..3 against ||H|| = 100: the float32 products' floor sqrt(n) eps ||H|| = 2.5e-4 is above the
    # default relative tol (2e-5) times |lambda|; under the default tol a residual within 10 floors counts as
    # converged (results.residual_threshold), an explicit tol is taken as given and the flags say it is not met
    floor = np.sqrt(H.n) * np.finfo(np.float32).eps * np.max(np.abs(truth))
    assert r.converged.all() and np.all(r.residuals <= 10 * floor * 1.01)
    strict = hessop.lanczos(H, 3, which="SA", solver_dtype=np.float64, tol=2e-5)
    assert not strict.converged.any() and np.all(strict.residuals > 2e-5 * np.abs(strict.eigenvalues))
    assert np.all(np.abs(r.eigenvalues - truth[::-1][:3]) <= r.residuals)
    p = hessop.power_iteration(H, 1, solver_dtype=np.float64)
    assert p.eigenvectors.dtype == np.float64 and abs(p.eigenvalues[0] - truth[0]) <= p.residuals[0]
    d = hessop.slq(H, n_iter=30, max_hvp=60, solver_dtype=np.float64)
    assert d.n_hvp == 60 and abs(d.trace().estimate - truth.sum()) <= 5 * d.trace().std_error + 1e-3 * abs(truth).sum()


def test_no_silent_down_cast_anywhere(float32_problem):
    A, _ = float32_problem
    H = HessianOperator.from_matrix(A)
    x64 = np.ones(H.n)
    for call in (lambda: H @ x64, lambda: H.asarray(x64), lambda: hessop.lanczos(H, 1, v0=x64),
                 lambda: hessop.lanczos(HessianOperator.from_matrix(A.astype(np.float64)), 1,
                                        solver_dtype=np.float32)):
        with pytest.raises(TypeError, match="does not down-cast silently"):
            call()
    with pytest.raises(TypeError, match="float32 or wider"):
        hessop.lanczos(H, 1, solver_dtype=np.float16)
    # up-casts are exact and allowed
    r = hessop.lanczos(HessianOperator.from_matrix(A.astype(np.float64)), 1, v0=x64.astype(np.float32))
    assert r.all_converged


def test_power_iteration_flags_each_pair():
    """k=3 with a fast first pair and two slow ones: the first is flagged converged, the others not (the
    all-or-nothing flag reported False for all)."""
    lam = np.r_[10.0, 5.0, 4.95, 4.9, np.linspace(0, 1, 40)]
    A = matrix_with_spectrum(lam, seed=0)
    r = hessop.power_iteration(A, 3, max_iter=60, tol=1e-8)
    rule = r.residuals <= 1e-8 * np.abs(r.eigenvalues)
    np.testing.assert_array_equal(r.converged, rule)
    assert r.converged[0] and not r.converged.all()


def test_half_precision_model_products_as_the_warning_says(torch_problem):
    """A float16 / bfloat16 copy of the test CNN: the operator warns with the product accuracy (10 eps relative)
    and the products meet it against float64 products of the same (rounded) parameters and data."""
    torch = pytest.importorskip("torch")
    from hessop.backends.widened import HALF_PRODUCT_ACCURACY
    from hessop.models.digits import SmallResNet

    x, y, loss_fn = torch_problem["x"], torch_problem["y"], torch_problem["loss_fn"]
    for dt in (torch.float16, torch.bfloat16):
        half = SmallResNet().to(dt).eval()
        half.load_state_dict({k: v.to(dt) for k, v in torch_problem["model"].state_dict().items()})
        ref = SmallResNet().double().eval()
        ref.load_state_dict({k: v.double() for k, v in half.state_dict().items()})
        xh = x.to(dt)
        with pytest.warns(UserWarning, match=rf"accurate to about {HALF_PRODUCT_ACCURACY} eps"):
            H = HessianOperator.from_torch(half, loss_fn, (xh, y))
        assert H.dtype == np.float32 and H.product_eps == torch.finfo(dt).eps
        R = HessianOperator.from_torch(ref, loss_fn, (xh.double(), y))
        V = np.random.default_rng(0).standard_normal((H.n, 4))
        got = H.to_numpy(H.hvp_block(H.asarray(V.astype(np.float32)))).astype(np.float64)
        exact = R.to_numpy(R.hvp_block(R.asarray(V)))
        rel = np.linalg.norm(got - exact, axis=0) / np.linalg.norm(exact, axis=0)
        assert np.all(rel <= HALF_PRODUCT_ACCURACY * torch.finfo(dt).eps), (dt, rel / torch.finfo(dt).eps)
        r = hessop.lanczos(H, 1, solver_dtype=np.float64)  # runs; its residual includes the product error
        top = hessop.lanczos(R, 1)
        assert abs(r.eigenvalues[0] - top.eigenvalues[0]) <= r.residuals[0] + 10 * torch.finfo(dt).eps * abs(
            top.eigenvalues[0])
