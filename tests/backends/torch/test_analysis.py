"""The model-backend interface of the torch backend: layout, modules, the loss at a point, blocks, the digest."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hessop import HessianOperator  # noqa: E402
from hessop.backends.base import ModelBackend  # noqa: E402


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
    data = (torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 2, (16,)))
    return model, data, HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), data)


def test_layout_and_modules(tiny):
    _, _, H = tiny
    b = H.model_backend("this test")
    assert isinstance(b, ModelBackend) and b is H.backend and b.layout is b
    assert b.names == ["0.weight", "0.bias", "2.weight", "2.bias"] and b.modules() == ["0", "0", "2", "2"]
    assert b.offsets == [0, 12, 15, 21, 23] and b.filter_axis == 0
    parts = b.unflatten(np.arange(H.n, dtype=np.float64))
    assert [tuple(t.shape) for t in parts.values()] == [(3, 4), (3,), (2, 3), (2,)]
    assert parts["2.bias"].tolist() == [21.0, 22.0]
    theta = b.parameters_flat()
    assert torch.equal(theta[12:15], b.params[1].detach())
    theta += 1  # a copy: the model is untouched
    assert not torch.equal(theta[12:15], b.params[1].detach())


def test_loss_at_restores_the_parameters_bit_identically(tiny):
    model, (x, y), H = tiny
    before = [p.detach().clone() for p in model.parameters()]
    delta = H.asarray(np.random.default_rng(0).standard_normal(H.n) * 0.1)
    shifted = H.backend.loss_at(delta)
    with torch.no_grad():
        for p, d in zip(model.parameters(), H.backend.unflatten(delta).values(), strict=True):
            p.add_(d)
        expected = float(torch.nn.functional.cross_entropy(model(x), y))
        for p, b in zip(model.parameters(), before, strict=True):
            p.copy_(b)
    assert shifted == pytest.approx(expected, rel=1e-14)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    with pytest.raises(ValueError, match="delta must be a torch tensor of shape"):
        H.backend.loss_at(np.zeros(H.n))


def test_restrict_is_the_diagonal_block(tiny):
    _, _, H = tiny
    dense = H @ np.eye(H.n)
    block = HessianOperator(H.backend.restrict(["2.weight", "0.bias"]))
    idx = np.r_[15:21, 12:15]  # in the order of the selection
    np.testing.assert_allclose(block @ np.eye(block.n), dense[np.ix_(idx, idx)], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="non-empty subset"):
        H.backend.restrict(["3.weight"])


def test_parameter_digest_sees_every_bit(tiny):
    model, _, H = tiny
    digest = H.backend.parameter_digest()
    assert digest == H.backend.parameter_digest() and len(digest) == 64
    with torch.no_grad():
        model[2].bias[0] = torch.nextafter(model[2].bias[0], torch.tensor(1.0, dtype=torch.float64))
    assert H.backend.parameter_digest() != digest
