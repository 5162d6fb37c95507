"""The kept-graph cache: within its budget, rebuilt when the model changes."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_helpers import rel, unequal_batches  # noqa: E402

import hessop.backends.torch as tb  # noqa: E402
from hessop import HessianOperator  # noqa: E402


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
    assert 0 < full <= H.backend.cache_memory and len(H.backend.graphs.graphs) == len(data)
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
    kept = dict(H.backend.graphs.graphs)  # restoring the running statistics after a product does not count as a change
    assert rel(H @ v, fresh @ v) < 1e-12 and all(H.backend.graphs.graphs[i] is g for i, g in kept.items())
    assert all(torch.equal(a, b) for a, b in zip(running, model.buffers(), strict=True))
    model.eval()
    # a budget that holds some batches' graphs but not all: never exceeded, same products
    part = HessianOperator.from_torch(model, p["loss_fn"], data, cache_memory=full // 2, check_deterministic=False)
    assert rel(part @ v, H @ v) < 1e-12
    assert 0 < part.backend.cache_bytes <= full // 2 and 0 < len(part.backend.graphs.graphs) < len(data)
    for budget in (0, 1):  # 0 disables; 1 byte holds nothing
        small = HessianOperator.from_torch(model, p["loss_fn"], data, cache_memory=budget, check_deterministic=False)
        assert rel(small @ v, H @ v) < 1e-12 and small.backend.cache_bytes == 0 and not small.backend.graphs.graphs
    H.backend.clear_cache()
    assert H.backend.cache_bytes == 0 and not H.backend.graphs.graphs
