"""PyTorch products by every ``hvp_method`` against the dense float64 Hessian; fallback; cache; device moves."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hessop.backends.torch as tb  # noqa: E402
from hessop import HessianOperator  # noqa: E402
from hessop.models.digits import SmallResNet  # noqa: E402

METHODS = ["auto", "forward_over_reverse", "double_backward"]


def unequal_batches(p):
    cuts = [0, 100, 130, 256]
    return [(p["x"][a:b], p["y"][a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("cache_memory", [0, None])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_equals_dense_product(torch_problem, method, cache_memory):
    p = torch_problem
    D = p["hessian"]
    V = np.random.default_rng(0).standard_normal((D.shape[0], 3))
    # unequal batches, all parameters
    H = HessianOperator.from_torch(p["model"], p["loss_fn"], unequal_batches(p), hvp_method=method,
                                   cache_memory=cache_memory)
    assert rel(H.matmat(V), D @ V) < 1e-12
    assert rel(H @ V[:, 0], D @ V[:, 0]) < 1e-12
    cached = method != "forward_over_reverse" and cache_memory is None  # None: the default budget
    assert (H.backend.cache_bytes > 0) == cached and H.backend.cache_bytes <= H.backend.cache_memory
    # a parameter block, loss_form="model", a dict batch
    names, sizes = p["names"], p["sizes"]
    start = sum(sizes[: names.index("fc1.weight")])
    n1 = sizes[names.index("fc1.weight")] + sizes[names.index("fc1.bias")]

    def loss(m, batch):
        return torch.nn.functional.cross_entropy(m(batch["image"]), batch["label"])

    Hm = HessianOperator.from_torch(p["model"], loss, [{"image": x, "label": y} for x, y in unequal_batches(p)],
                                    loss_form="model", params="fc1", hvp_method=method, cache_memory=cache_memory)
    block = D[start: start + n1, start: start + n1]
    assert rel(Hm.matmat(V[:n1]), block @ V[:n1]) < 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_block_equals_single_products(torch_problem, method):
    p = torch_problem
    H = HessianOperator.from_torch(p["model"], p["loss_fn"], unequal_batches(p), hvp_method=method)
    V = torch.as_tensor(np.random.default_rng(1).standard_normal((H.n, 5)))
    block = H.hvp_block(V)
    singles = torch.stack([H.hvp(V[:, j]) for j in range(5)], dim=1)
    assert float(torch.linalg.norm(block - singles) / torch.linalg.norm(singles)) < 1e-13


def test_float32_methods_agree(torch_problem):
    p = torch_problem
    model = copy.deepcopy(p["model"]).float()
    data = [(x.float(), y) for x, y in unequal_batches(p)]
    v = np.random.default_rng(2).standard_normal(sum(p["sizes"])).astype(np.float32)
    ref = p["hessian"] @ v.astype(np.float64)
    for method in METHODS:
        H = HessianOperator.from_torch(model, p["loss_fn"], data, hvp_method=method)
        assert H.dtype == np.float32
        assert rel(H @ v, ref) < 1e-4


class _Tanh(torch.autograd.Function):
    """tanh with a (twice differentiable) backward but no forward-mode derivative (no ``jvp``)."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class _CustomTanhNet(SmallResNet):
    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = h + _Tanh.apply(self.conv2(h))
        h = self.pool(h).flatten(1)
        return self.fc2(_Tanh.apply(self.fc1(h)))


def test_auto_falls_back_once_with_a_warning(torch_problem, monkeypatch):
    p = torch_problem
    model = _CustomTanhNet().double().eval()
    model.load_state_dict(p["model"].state_dict())
    V = np.random.default_rng(3).standard_normal((sum(p["sizes"]), 3))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on a CPU "auto" is double backward throughout: nothing to fall back from
        H = HessianOperator.from_torch(model, p["loss_fn"], unequal_batches(p))
        assert rel(H.matmat(V), p["hessian"] @ V) < 1e-12
    monkeypatch.setattr(tb, "_FOR_BLOCK_DEVICES", ("cpu",))  # blocks forward-over-reverse, as on a GPU
    H = HessianOperator.from_torch(model, p["loss_fn"], unequal_batches(p))
    with pytest.warns(UserWarning, match="forward-over-reverse .* failed") as record:
        assert rel(H.matmat(V), p["hessian"] @ V) < 1e-12
    assert len([w for w in record if "forward-over-reverse" in str(w.message)]) == 1
    assert H.backend.hvp_method == "double_backward"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert rel(H.matmat(V), p["hessian"] @ V) < 1e-12
    with pytest.raises(RuntimeError):
        HessianOperator.from_torch(model, p["loss_fn"], unequal_batches(p), hvp_method="forward_over_reverse")


def test_kept_graphs_stay_within_the_budget_and_are_rebuilt_when_the_model_changes(torch_problem):
    p = torch_problem
    model = copy.deepcopy(p["model"])
    data = unequal_batches(p)
    v = np.random.default_rng(4).standard_normal(sum(p["sizes"]))
    H = HessianOperator.from_torch(model, p["loss_fn"], data)  # the default budget
    assert H.backend.cache_memory == tb.default_cache_memory(torch.device("cpu"))
    assert 0 < H.backend.cache_memory <= tb.CACHE_MEMORY
    assert H.backend.cache_bytes == 0  # the determinism check keeps nothing
    assert rel(H @ v, p["hessian"] @ v) < 1e-12
    full = H.backend.cache_bytes
    assert 0 < full <= H.backend.cache_memory and len(H.backend._cache) == len(data)
    assert rel(H @ v, p["hessian"] @ v) < 1e-12 and H.backend.cache_bytes == full  # reused, not grown
    # an optimizer-like in-place step, then a replaced parameter tensor, then eval -> train: rebuilt each time
    with torch.no_grad():
        model.fc1.weight.mul_(1.5)
    fresh = HessianOperator.from_torch(model, p["loss_fn"], data, hvp_method="double_backward", cache_memory=0)
    assert rel(H @ v, fresh @ v) < 1e-12 and rel(fresh @ v, p["hessian"] @ v) > 1e-3
    model.fc2.bias.data = model.fc2.bias.data + 0.25
    fresh = HessianOperator.from_torch(model, p["loss_fn"], data, hvp_method="double_backward", cache_memory=0)
    assert rel(H @ v, fresh @ v) < 1e-12
    running = [b.clone() for b in model.buffers()]
    model.train()
    with pytest.warns(UserWarning, match="train mode"):
        fresh = HessianOperator.from_torch(model, p["loss_fn"], data, hvp_method="double_backward", cache_memory=0)
    assert rel(H @ v, fresh @ v) < 1e-12
    kept = dict(H.backend._cache)  # restoring the running statistics after a product does not count as a change
    assert rel(H @ v, fresh @ v) < 1e-12 and all(H.backend._cache[i] is g for i, g in kept.items())
    assert all(torch.equal(a, b) for a, b in zip(running, model.buffers(), strict=True))
    model.eval()
    # a budget that holds some batches' graphs but not all: never exceeded, same products
    part = HessianOperator.from_torch(model, p["loss_fn"], data, cache_memory=full // 2, check_deterministic=False)
    assert rel(part @ v, H @ v) < 1e-12
    assert 0 < part.backend.cache_bytes <= full // 2 and 0 < len(part.backend._cache) < len(data)
    for budget in (0, 1):  # 0 disables; 1 byte holds nothing
        small = HessianOperator.from_torch(model, p["loss_fn"], data, cache_memory=budget, check_deterministic=False)
        assert rel(small @ v, H @ v) < 1e-12 and small.backend.cache_bytes == 0 and not small.backend._cache
    H.backend.clear_cache()
    assert H.backend.cache_bytes == 0 and not H.backend._cache


def test_forward_over_reverse_on_linear_regression_with_mse_loss():
    """torch's mse_loss double backward fails under forward-over-reverse when the target has no tangent
    ("ZeroTensors are immutable", pytorch#123996); hessop gives floating-point targets a zero tangent."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randn(40, 3, dtype=torch.float64)
    # closed form: loss = mean over 40 x 3 entries of (x W^T + b - y)^2; H = 2 / 120 * kron(I_3, [x 1]^T [x 1])
    # in the layout (W row by row, then b): reorder to it
    xa = torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], 1)
    blocks = torch.kron(torch.eye(3, dtype=torch.float64), xa.T @ xa) * 2 / 120  # per output row: (w_r, b_r)
    order = [r * 6 + c for r in range(3) for c in range(5)] + [r * 6 + 5 for r in range(3)]
    dense = blocks[order][:, order].numpy()
    V = np.random.default_rng(6).standard_normal((18, 4))
    for method in METHODS:
        H = HessianOperator.from_torch(model, torch.nn.MSELoss(), [(x[:25], y[:25]), (x[25:], y[25:])],
                                       hvp_method=method)
        assert rel(H.matmat(V), dense @ V) < 1e-12 and rel(H @ V[:, 0], dense @ V[:, 0]) < 1e-12


def test_forward_over_reverse_through_attention():
    """The fused attention kernels have no forward derivative; the products run attention through the math
    kernel, and equal double backward's."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double().eval()
    model = torch.nn.Sequential(layer, torch.nn.Flatten(), torch.nn.Linear(8 * 4, 3).double())
    x, y = torch.randn(12, 4, 8, dtype=torch.float64), torch.randint(0, 3, (12,))
    ref = HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y), hvp_method="double_backward")
    H = HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y), hvp_method="forward_over_reverse")
    V = np.random.default_rng(7).standard_normal((H.n, 3))
    assert rel(H.matmat(V), ref.matmat(V)) < 1e-12 and rel(H @ V[:, 0], ref @ V[:, 0]) < 1e-12


def test_bad_method_and_budget(torch_problem):
    p = torch_problem
    with pytest.raises(ValueError, match="hvp_method"):
        HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]), hvp_method="jvp")
    with pytest.raises(ValueError, match="cache_memory"):
        HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]), cache_memory=-1)


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
    out = tb._to_device(batch, gpu)
    assert out["meta"] == "keep" and out["n"] == 7
    assert isinstance(out["x"], tuple) and isinstance(out["x"][1], list)
    assert sorted(calls, key=str) == sorted([((3,), gpu, False), ((4, 1), gpu, False), ((2,), gpu, True)], key=str)
    calls.clear()
    assert tb._to_device(batch, torch.device("cpu")) is not None and calls == []  # already there: no copy


@pytest.mark.parametrize("method", METHODS)
def test_every_batch_goes_through_the_device_move(torch_problem, monkeypatch, method):
    p = torch_problem
    seen = []
    real = tb._to_device

    def spy(batch, device):
        seen.append((id(batch), device))
        return real(batch, device)

    monkeypatch.setattr(tb, "_to_device", spy)
    data = unequal_batches(p)
    H = HessianOperator.from_torch(p["model"], p["loss_fn"], data, hvp_method=method, cache_memory=0,
                                   check_deterministic=False)
    seen.clear()
    v = np.random.default_rng(5).standard_normal(H.n)
    assert rel(H @ v, p["hessian"] @ v) < 1e-12
    assert {id(b) for b in data} <= {i for i, _ in seen}  # each batch (and, recursively, its tensors)
    assert {d for _, d in seen} == {H.backend.device}
