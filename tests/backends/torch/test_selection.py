"""Parameter selection: blocks of named parameters and submodules, refused selections."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_helpers import op  # noqa: E402

from hessop import HessianOperator  # noqa: E402
from hessop.models.digits import SmallResNet  # noqa: E402


@pytest.mark.usefixtures("each_method")
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


@pytest.mark.usefixtures("each_method")
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


def _gpt2_like() -> torch.nn.Module:
    """Names like a Hugging Face GPT-2: transformer.h.<i>.attn.c_attn.weight, transformer.h.<i>.mlp.c_fc.bias ..."""
    def block() -> torch.nn.Module:
        b = torch.nn.Module()
        b.attn = torch.nn.Module()
        b.attn.c_attn, b.attn.c_proj = torch.nn.Linear(4, 12), torch.nn.Linear(4, 4)
        b.mlp = torch.nn.Module()
        b.mlp.c_fc = torch.nn.Linear(4, 4)
        return b

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = torch.nn.Module()
            self.transformer.h = torch.nn.ModuleList([block(), block()])
            self.lm_head = torch.nn.Linear(4, 3)

        def forward(self, x):
            for b in self.transformer.h:
                q, k, v = b.attn.c_attn(x).chunk(3, dim=-1)
                x = x + b.attn.c_proj(torch.tanh(q * k) * v)
                x = x + torch.tanh(b.mlp.c_fc(x))
            return self.lm_head(x)

    torch.manual_seed(0)
    return Tiny().double()


def test_glob_selects_by_pattern_in_model_order():
    model = _gpt2_like()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = torch.nn.CrossEntropyLoss()
    H = HessianOperator.from_torch(model, loss, (x, y), params="transformer.h.*.attn.*")
    expected = [n for n, _ in model.named_parameters() if ".attn." in n]
    assert H.backend.names == expected and len(expected) == 8
    explicit = HessianOperator.from_torch(model, loss, (x, y), params=expected)
    V = np.random.default_rng(0).standard_normal((H.n, 2))
    np.testing.assert_array_equal(H.matmat(V), explicit.matmat(V))
    # a pattern naming submodules selects their parameters; several patterns and plain names mix
    assert HessianOperator.from_torch(model, loss, (x, y), params="transformer.h.?.mlp").backend.names == [
        "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias",
        "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.bias"]
    assert HessianOperator.from_torch(model, loss, (x, y), params=["lm_head", "*.1.*.c_proj.bias"]
                                      ).backend.names == ["lm_head.weight", "lm_head.bias",
                                                          "transformer.h.1.attn.c_proj.bias"]
    with pytest.raises(ValueError, match=r"pattern that matches no parameter.*transformer\.h\.0\.attn\.c_attn\.weight"):
        HessianOperator.from_torch(model, loss, (x, y), params="transformer.h.*.attention.*")
