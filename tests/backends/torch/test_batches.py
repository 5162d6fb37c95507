"""Batches: unequal sizes, the loss of a batch (checked a differentiable scalar of the right dtype), device moves."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_helpers import METHODS, op, rel, unequal_batches  # noqa: E402

from hessop import HessianOperator  # noqa: E402
from hessop.backends.torch import _batches  # noqa: E402


@pytest.mark.usefixtures("each_method")
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


@pytest.mark.usefixtures("each_method")
def test_non_scalar_and_non_float_loss(torch_problem):
    p = torch_problem
    with pytest.raises(ValueError, match="not a scalar"):
        HessianOperator.from_torch(p["model"], torch.nn.CrossEntropyLoss(reduction="none"), (p["x"], p["y"]))
    with pytest.raises(TypeError, match="scalar torch tensor"):
        HessianOperator.from_torch(p["model"], lambda out, y: 1.0, (p["x"], p["y"]))


@pytest.mark.usefixtures("each_method")
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


@pytest.mark.usefixtures("each_method")
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


# ---------------------------------------------------------------------------------------------- device moves
def test_to_device_moves_nested_tensors_non_blocking_when_pinned(monkeypatch):
    """No GPU here: a fake device move records each ``Tensor.to`` call and pretends the copy is elsewhere."""
    calls = []
    real_to = torch.Tensor.to

    def fake_to(self, device, non_blocking=False):
        calls.append((tuple(self.shape), torch.device(device), non_blocking))
        return real_to(self, "cpu").clone()

    pinned = torch.zeros(2)
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: self is pinned)
    gpu = torch.device("cuda", 0)
    batch = {"x": (torch.ones(3), [torch.ones(4, 1), pinned]), "meta": "keep", "n": 7}
    out = _batches.to_device(batch, gpu)
    assert out["meta"] == "keep" and out["n"] == 7
    assert isinstance(out["x"], tuple) and isinstance(out["x"][1], list)
    assert sorted(calls, key=str) == sorted([((3,), gpu, False), ((4, 1), gpu, False), ((2,), gpu, True)], key=str)
    calls.clear()
    assert _batches.to_device(batch, torch.device("cpu")) is not None and calls == []  # already there: no copy


@pytest.mark.parametrize("method", METHODS)
def test_every_batch_goes_through_the_device_move(torch_problem, monkeypatch, method):
    p = torch_problem
    seen = []
    real = _batches.to_device

    def spy(batch, device):
        seen.append((id(batch), device))
        return real(batch, device)

    monkeypatch.setattr(_batches, "to_device", spy)
    data = unequal_batches(p)
    H = HessianOperator.from_torch(p["model"], p["loss_fn"], data, hvp_method=method, cache_memory=0,
                                   check_deterministic=False)
    seen.clear()
    v = np.random.default_rng(5).standard_normal(H.n)
    assert rel(H @ v, p["hessian"] @ v) < 1e-12
    assert {id(b) for b in data} <= {i for i, _ in seen}  # each batch (and, recursively, its tensors)
    assert {d for _, d in seen} == {H.backend.device}
