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
