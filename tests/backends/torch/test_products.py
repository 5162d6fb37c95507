"""The two product methods (and "auto") against the dense float64 Hessian; the fallback."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_helpers import METHODS, rel, unequal_batches  # noqa: E402

from hessop import HessianOperator  # noqa: E402
from hessop.backends.torch import _backend  # noqa: E402
from hessop.models.digits import SmallResNet  # noqa: E402


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

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on a CPU "auto" is double backward throughout: nothing to fall back from
        H = HessianOperator.from_torch(model, p["loss_fn"], unequal_batches(p))
        assert rel(H.matmat(V), p["hessian"] @ V) < 1e-12
    monkeypatch.setattr(_backend, "FOR_BLOCK_DEVICES", ("cpu",))  # blocks forward-over-reverse, as on a GPU
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
