"""The PyTorch backend as a whole: products against the dense Hessian, solvers, reductions, dtypes, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scipy.sparse.linalg import eigsh  # noqa: E402
from torch_helpers import op  # noqa: E402

import hessop  # noqa: E402
from hessop import HessianOperator  # noqa: E402


@pytest.mark.usefixtures("each_method")
def test_hvp_equals_dense_product(torch_problem):
    H = op(torch_problem)
    D = torch_problem["hessian"]
    assert H.shape == D.shape and H.dtype == np.float64 and H.n >= 1500
    V = np.random.default_rng(0).standard_normal((H.n, 3))
    np.testing.assert_array_less(np.linalg.norm(H.matmat(V) - D @ V) / np.linalg.norm(D @ V), 1e-12)
    v = V[:, 0]
    assert np.linalg.norm(H @ v - D @ v) <= 1e-12 * np.linalg.norm(D @ v)
    # native face: a tensor in, a tensor out, no host copy
    out = H.hvp(torch.as_tensor(v))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64


@pytest.mark.usefixtures("each_method")
def test_lanczos_top5_and_bottom3_and_eigsh(torch_problem):
    H = op(torch_problem)
    lam = torch_problem["eigenvalues"]
    top = hessop.lanczos(H, 5)
    assert top.all_converged and isinstance(top.eigenvectors, torch.Tensor)
    np.testing.assert_allclose(top.eigenvalues, lam[:5], rtol=1e-8)
    bottom = hessop.lanczos(H, 3, which="SA", tol=1e-10)
    assert bottom.all_converged
    np.testing.assert_allclose(bottom.eigenvalues, lam[::-1][:3], rtol=1e-8)
    vals = np.sort(eigsh(H, k=5, which="LA", return_eigenvectors=False))[::-1]
    np.testing.assert_allclose(vals, lam[:5], rtol=1e-8)
    pw = hessop.power_iteration(H, 2, tol=1e-8)
    np.testing.assert_allclose(pw.eigenvalues, lam[:2], rtol=1e-8)


@pytest.mark.usefixtures("each_method")
def test_sum_reduction_and_model_loss_form(torch_problem):
    p = torch_problem
    x, y, model = p["x"], p["y"], p["model"]
    v = np.random.default_rng(3).standard_normal(op(p).n)
    Hs = HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(reduction="sum"), [(x[:50], y[:50]),
                                    (x[50:], y[50:])], reduction="sum")
    np.testing.assert_allclose(Hs @ v, len(x) * (p["hessian"] @ v), rtol=1e-11, atol=1e-12)

    def loss(m, batch):
        return torch.nn.functional.cross_entropy(m(batch["image"]), batch["label"])

    Hm = HessianOperator.from_torch(model, loss, {"image": x, "label": y}, loss_form="model")
    np.testing.assert_allclose(Hm @ v, p["hessian"] @ v, rtol=1e-11, atol=1e-13)


@pytest.mark.usefixtures("each_method")
def test_float32_model_gives_float32_operator(torch_problem):
    p = torch_problem
    model = copy.deepcopy(p["model"]).float()
    H = HessianOperator.from_torch(model, p["loss_fn"], (p["x"].float(), p["y"]))
    assert H.dtype == np.float32
    r = hessop.lanczos(H, 2, tol=1e-5)
    assert r.eigenvectors.dtype == torch.float32
    np.testing.assert_allclose(r.eigenvalues, p["eigenvalues"][:2], rtol=1e-4)
    with pytest.raises(TypeError, match="down-cast"):
        H @ np.ones(H.n)


@pytest.mark.usefixtures("each_method")
def test_augmentation_is_refused(torch_problem):
    p = torch_problem

    class Noisy:
        def __iter__(self):
            yield p["x"] + 0.1 * torch.randn_like(p["x"]), p["y"]

    with pytest.raises(ValueError, match="not deterministic"):
        op(p, data=Noisy())


@pytest.mark.usefixtures("each_method")
def test_one_shot_generator_and_empty_data(torch_problem):
    p = torch_problem
    with pytest.raises(TypeError, match="one-shot"):
        op(p, data=((p["x"][i: i + 10], p["y"][i: i + 10]) for i in range(0, 50, 10)))
    with pytest.raises(ValueError, match="empty"):
        op(p, data=[])


@pytest.mark.usefixtures("each_method")
def test_nan_loss_is_refused(torch_problem):
    p = torch_problem
    x = p["x"].clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="nan"):
        op(p, data=(x, p["y"]))


@pytest.mark.usefixtures("each_method")
def test_nan_hvp_in_solver_names_the_iteration(torch_problem):
    p = torch_problem
    H = op(p, check_deterministic=False)
    calls = {"n": 0}
    real = H.backend.hvp_block

    def flaky(V):
        calls["n"] += 1
        out = real(V)
        return out * float("nan") if calls["n"] == 3 else out

    H.backend.hvp_block = flaky
    H.product_error = 0  # the measurement's products (hessop/_product_error.py) would take some of the counted calls
    with pytest.raises(FloatingPointError, match="iteration 3"):
        hessop.lanczos(H, 2)
    # a NaN in the measurement's own products says so
    H = op(p, check_deterministic=False)
    H.backend.hvp_block = lambda V, real=H.backend.hvp_block: real(V) * float("nan")
    with pytest.raises(FloatingPointError, match="measured the operator's product error"):
        H.product_error  # noqa: B018 - measured on first access


@pytest.mark.usefixtures("each_method")
def test_bad_arguments(torch_problem):
    p = torch_problem
    with pytest.raises(ValueError, match="reduction"):
        op(p, reduction="average")
    with pytest.raises(ValueError, match="loss_form"):
        op(p, loss_form="batch")
    with pytest.raises(TypeError, match="nn.Module"):
        HessianOperator.from_torch(lambda x: x, p["loss_fn"], (p["x"], p["y"]))


def test_bad_method_and_budget(torch_problem):
    p = torch_problem
    with pytest.raises(ValueError, match="hvp_method"):
        HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]), hvp_method="jvp")
    with pytest.raises(ValueError, match="cache_memory"):
        HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]), cache_memory=-1)


@pytest.mark.usefixtures("each_method")
def test_loader_whose_batches_change_between_passes(torch_problem):
    """Complete and shuffled is fine; a loader that serves other samples on each pass is refused."""
    p = torch_problem
    n = len(p["x"])

    class Shuffled:  # every sample once per pass, in a new order each time
        def __init__(self):
            self.g = torch.Generator().manual_seed(0)

        def __iter__(self):
            idx = torch.randperm(n, generator=self.g)
            return iter([(p["x"][idx[i: i + 25]], p["y"][idx[i: i + 25]]) for i in range(0, n, 25)])

    class Subsample(Shuffled):  # a random half of the data on each pass: another loss every time
        def __iter__(self):
            idx = torch.randperm(n, generator=self.g)[: n // 2]
            return iter([(p["x"][idx], p["y"][idx])])

    op(p, data=Shuffled())
    with pytest.raises(ValueError, match="H v is not deterministic: the total loss .* differs between two passes "
                                         "over the data. .* a loader that does not visit every sample"):
        op(p, data=Subsample())


@pytest.mark.usefixtures("each_method")
def test_vectors_of_wrong_length_dtype_or_device_given_to_hvp(torch_problem):
    H = op(torch_problem)
    with pytest.raises(ValueError, match=rf"hvp expects a vector of shape \({H.n},\), got \({H.n - 1},\)"):
        H.hvp(torch.ones(H.n - 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="the vector given to hvp must have dtype torch.float64 .* got torch.float32"):
        H.hvp(torch.ones(H.n))
    with pytest.raises(TypeError, match="the block given to hvp_block is on device meta but the operator computes "
                                        "on cpu; move it there"):
        H.hvp_block(torch.ones(H.n, 2, dtype=torch.float64, device="meta"))
    with pytest.raises(TypeError, match=r"must be a torch array \(Tensor\) like this operator's, got ndarray"):
        H.hvp(np.ones(H.n))


@pytest.mark.usefixtures("each_method")
def test_check_symmetric_on_a_model(torch_problem):
    """Off by default for autodiff Hessians; when asked, a real model's product passes it (two uncounted products)."""
    H = op(torch_problem, check_symmetric=True)
    assert H.n_hvp == 0
