"""Train mode: warnings, BatchNorm running statistics left unchanged, dropout refused, model state untouched."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")


from hessop import HessianOperator  # noqa: E402


@pytest.mark.usefixtures("each_method")
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


@pytest.mark.usefixtures("each_method")
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


@pytest.mark.usefixtures("each_method")
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
