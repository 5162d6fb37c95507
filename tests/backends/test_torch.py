"""PyTorch backend against the dense float64 Hessian of a small residual CNN on the digits data."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from scipy.sparse.linalg import eigsh  # noqa: E402

import hessop  # noqa: E402
from hessop import HessianOperator  # noqa: E402
from hessop.models.digits import SmallResNet  # noqa: E402


@pytest.fixture(autouse=True, params=["forward_over_reverse", "double_backward"])
def hvp_method(request, monkeypatch):
    """Every test of this module runs with each product method as from_torch's default ("auto", the library
    default, is forward-over-reverse and runs in the rest of the suite)."""
    from hessop.backends.torch import TorchBackend

    monkeypatch.setitem(TorchBackend.__init__.__kwdefaults__, "hvp_method", request.param)
    return request.param


def op(problem, data=None, **kw):
    p = problem
    return HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]) if data is None else data, **kw)


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


@pytest.mark.parametrize("selector", ["fc1", ["fc1.weight", "fc1.bias"], "module", "tensors"])
def test_parameter_subset_is_the_diagonal_block(torch_problem, selector):
    p = torch_problem
    model = p["model"]
    if selector == "module":
        selector = model.fc1
    elif selector == "tensors":
        selector = [model.fc1.weight, model.fc1.bias]
    H = op(p, params=selector)
    start = sum(s for n, s in zip(p["names"], p["sizes"], strict=True) if not n.startswith("fc1") and
                p["names"].index(n) < p["names"].index("fc1.weight"))
    block = p["hessian"][start: start + H.n, start: start + H.n]
    assert H.n == model.fc1.weight.numel() + model.fc1.bias.numel()
    V = np.random.default_rng(1).standard_normal((H.n, 2))
    np.testing.assert_allclose(H.matmat(V), block @ V, rtol=1e-12, atol=1e-14)
    assert H.backend.names == ["fc1.weight", "fc1.bias"]


def test_unequal_batches_equal_one_batch(torch_problem):
    p = torch_problem
    x, y = p["x"], p["y"]
    cuts = [0, 100, 130, 256]
    batches = [(x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    H1, H3 = op(p), op(p, data=batches)
    v = np.random.default_rng(2).standard_normal(H1.n)
    np.testing.assert_allclose(H3 @ v, H1 @ v, rtol=1e-12, atol=1e-15)
    # a DataLoader with shuffling is fine (complete every pass)
    ds = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(ds, batch_size=60, shuffle=True, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(op(p, data=loader) @ v, H1 @ v, rtol=1e-10, atol=1e-13)


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


def test_model_state_untouched_and_unused_parameters(torch_problem):
    p = torch_problem
    model = copy.deepcopy(p["model"])
    model.unused = torch.nn.Linear(3, 2).double()  # not used by forward: zero rows
    model.fc2.weight.grad = torch.ones_like(model.fc2.weight)
    H = HessianOperator.from_torch(model, p["loss_fn"], (p["x"], p["y"]))
    v = np.random.default_rng(4).standard_normal(H.n)
    hv = H @ v
    assert not model.training
    assert torch.equal(model.fc2.weight.grad, torch.ones_like(model.fc2.weight))
    assert model.fc1.weight.grad is None
    np.testing.assert_array_equal(hv[-8:], 0.0)  # unused.weight (6) and unused.bias (2) come last
    np.testing.assert_allclose(hv[:-8], p["hessian"] @ v[:-8], rtol=1e-11, atol=1e-13)


def test_train_mode_batchnorm_warns_and_keeps_running_stats(torch_problem):
    p = torch_problem
    model = copy.deepcopy(p["model"]).train()
    before = model.bn1.running_mean.clone(), model.bn1.num_batches_tracked.clone()
    with pytest.warns(UserWarning, match="BatchNorm"):
        H = HessianOperator.from_torch(model, p["loss_fn"], (p["x"], p["y"]))
    H @ np.ones(H.n)
    assert model.training
    assert torch.equal(model.bn1.running_mean, before[0]) and torch.equal(model.bn1.num_batches_tracked, before[1])
    # a different Hessian from eval mode, as the warning says
    assert not np.allclose(H @ np.ones(H.n), p["hessian"] @ np.ones(H.n))


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


# ---------------------------------------------------------------------------------------------- bad input
def test_dropout_in_train_mode_is_refused(torch_problem):
    p = torch_problem
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Dropout(0.5),
                                torch.nn.Linear(16, 10)).double().train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="not deterministic"):
            HessianOperator.from_torch(model, p["loss_fn"], (p["x"], p["y"]))
    # and the check can be switched off by someone who knows why
    with pytest.warns(UserWarning, match="dropout"):
        HessianOperator.from_torch(model, p["loss_fn"], (p["x"], p["y"]), check_deterministic=False)


def test_augmentation_is_refused(torch_problem):
    p = torch_problem

    class Noisy:
        def __iter__(self):
            yield p["x"] + 0.1 * torch.randn_like(p["x"]), p["y"]

    with pytest.raises(ValueError, match="not deterministic"):
        op(p, data=Noisy())


def test_one_shot_generator_and_empty_data(torch_problem):
    p = torch_problem
    with pytest.raises(TypeError, match="one-shot"):
        op(p, data=((p["x"][i: i + 10], p["y"][i: i + 10]) for i in range(0, 50, 10)))
    with pytest.raises(ValueError, match="empty"):
        op(p, data=[])


def test_non_scalar_and_non_float_loss(torch_problem):
    p = torch_problem
    with pytest.raises(ValueError, match="not a scalar"):
        HessianOperator.from_torch(p["model"], torch.nn.CrossEntropyLoss(reduction="none"), (p["x"], p["y"]))
    with pytest.raises(TypeError, match="scalar torch tensor"):
        HessianOperator.from_torch(p["model"], lambda out, y: 1.0, (p["x"], p["y"]))


def test_nan_loss_is_refused(torch_problem):
    p = torch_problem
    x = p["x"].clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="nan"):
        op(p, data=(x, p["y"]))


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
    with pytest.raises(FloatingPointError, match="iteration 3"):
        hessop.lanczos(H, 2)


def test_mixed_dtypes_and_devices_and_no_trainable(torch_problem):
    p = torch_problem
    mixed = SmallResNet().double()
    mixed.fc2.float()
    with pytest.raises(TypeError, match="mixed dtypes"):
        HessianOperator.from_torch(mixed, p["loss_fn"], (p["x"], p["y"]))
    devs = SmallResNet().double()
    devs.fc2.to("meta")
    with pytest.raises(ValueError, match="several devices"):
        HessianOperator.from_torch(devs, p["loss_fn"], (p["x"], p["y"]))
    frozen = SmallResNet().double()
    frozen.fc1.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        HessianOperator.from_torch(frozen, p["loss_fn"], (p["x"], p["y"]), params="fc1")
    with pytest.raises(ValueError, match="not a parameter or submodule"):
        op(p, params=["fc9.weight"])
    with pytest.raises(ValueError, match="empty"):
        op(p, params=[])


def test_bad_arguments(torch_problem):
    p = torch_problem
    with pytest.raises(ValueError, match="reduction"):
        op(p, reduction="average")
    with pytest.raises(ValueError, match="loss_form"):
        op(p, loss_form="batch")
    with pytest.raises(TypeError, match="nn.Module"):
        HessianOperator.from_torch(lambda x: x, p["loss_fn"], (p["x"], p["y"]))


def test_float32_model_given_float64_data_says_what_to_convert(torch_problem):
    p = torch_problem
    model = copy.deepcopy(p["model"]).float()
    with pytest.raises(TypeError, match=r"the batch holds torch.float64 tensors but the model's parameters are "
                                        r"torch.float32 .* Convert the data to the model's dtype \(e.g. "
                                        r"x.to\(torch.float32\)"):
        HessianOperator.from_torch(model, p["loss_fn"], (p["x"], p["y"]))
    with pytest.raises(TypeError, match="the batch holds torch.float64 tensors"):  # also for loss_fn(model, batch)
        HessianOperator.from_torch(model, lambda m, b: p["loss_fn"](m(b[0]), b[1]), (p["x"], p["y"]),
                                   loss_form="model")


@pytest.mark.parametrize(("loss", "words"), [
    (lambda out, y: 1.0, r"loss_fn returned a Python float \(1.0\), not a scalar torch tensor: .*no .item\(\)"),
    (lambda out, y: 3, r"loss_fn returned a Python int \(3\), not a scalar torch tensor"),
    (lambda out, y: torch.nn.functional.cross_entropy(out, y).item(), "Python float"),
    (lambda out, y: (out.argmax(1) != y).sum(), "loss_fn returned a torch.int64 tensor; the loss must be floating "
                                                "point"),
    (lambda out, y: [torch.nn.functional.cross_entropy(out, y)], "loss_fn returned list, expected a scalar torch "
                                                                 "tensor"),
])
def test_loss_returning_a_number_or_an_integer(torch_problem, loss, words):
    p = torch_problem
    with pytest.raises(TypeError, match=words):
        HessianOperator.from_torch(p["model"], loss, (p["x"], p["y"]))


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


def test_check_symmetric_on_a_model(torch_problem):
    """Off by default for autodiff Hessians; when asked, a real model's product passes it (two uncounted products)."""
    H = op(torch_problem, check_symmetric=True)
    assert H.n_hvp == 0
