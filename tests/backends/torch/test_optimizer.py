"""The optimizer hook behind Tracker.attach."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hessop.backends.torch import register_step_hook  # noqa: E402


def test_callback_after_every_step_until_removed():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    steps = []
    handle = register_step_hook(opt, steps.append)
    for _ in range(3):
        opt.step()
    handle.remove()
    opt.step()
    assert steps == [1, 2, 3]
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        register_step_hook(object(), steps.append)
