"""A DataLoader's batches kept in memory (``hessop.backends.torch._loader``): read once, so that products neither
restart the workers nor see new batches from a shuffling loader; over the budget, one warning naming the fix."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from hessop import HessianOperator  # noqa: E402
from hessop.backends.torch import _loader  # noqa: E402


class CountingLoader(torch.utils.data.DataLoader):
    """A DataLoader that counts its passes (each pass of a loader with workers starts them afresh)."""

    passes = 0

    def __iter__(self):
        type(self).passes += 1
        return super().__iter__()


class Noisy(torch.utils.data.Dataset):
    """Random augmentation: a fresh draw at every read."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn_like(self.x[i]), self.y[i]


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(24, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (24,))
    return model, nn.CrossEntropyLoss(), x, y


def forwards_per_product(H, model, v, products=3):
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        H @ v  # the first product may build the kept graphs
        calls.clear()
        for _ in range(products):
            H @ v
    finally:
        handle.remove()
    return len(calls) / products


def test_shuffled_loader_with_workers_equals_the_list_of_batches(problem):
    model, loss_fn, x, y = problem
    ds = torch.utils.data.TensorDataset(x, y)
    loader = CountingLoader(ds, batch_size=8, shuffle=True, num_workers=2,
                            generator=torch.Generator().manual_seed(0))
    CountingLoader.passes = 0
    H = HessianOperator.from_torch(model, loss_fn, loader)
    built = CountingLoader.passes  # the read plus one pass of the determinism check
    assert H.backend.batches_kept and built == 2
    H_list = HessianOperator.from_torch(model, loss_fn, [(x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)])
    V = np.random.default_rng(0).standard_normal((H.n, 2))
    first = H @ V
    np.testing.assert_allclose(first, H_list @ V, rtol=1e-12, atol=1e-14)  # the same matrix (other batches)
    np.testing.assert_array_equal(H @ V, first)  # the same batches at every product: bit for bit
    np.testing.assert_array_equal(H.backend.hvp_block(torch.as_tensor(V)).numpy(), first)
    v = V[:, 0]
    assert forwards_per_product(H, model, v) == forwards_per_product(H_list, model, v) == 0  # kept graphs
    assert CountingLoader.passes == built  # no product iterates the loader: no worker start-up


def test_loader_over_the_budget_warns_once_with_the_fix(problem, monkeypatch):
    model, loss_fn, x, y = problem
    monkeypatch.setattr(_loader, "DATA_MEMORY", 64)  # bytes: less than one batch
    ds = torch.utils.data.TensorDataset(x, y)
    loader = CountingLoader(ds, batch_size=8, shuffle=True, num_workers=2)
    with pytest.warns(UserWarning, match=r"more than the 64 bytes.*2 worker processes start afresh at every "
                                         r"product: pass persistent_workers=True.*shuffles.*shuffle=False"):
        H = HessianOperator.from_torch(model, loss_fn, loader)
    assert not H.backend.batches_kept and H.backend.data is loader
    CountingLoader.passes = 0
    v = np.random.default_rng(1).standard_normal(H.n)
    H_list = HessianOperator.from_torch(model, loss_fn, (x, y))
    np.testing.assert_allclose(H @ v, H_list @ v, rtol=1e-12, atol=1e-14)
    assert CountingLoader.passes == 1  # one pass per product
    quiet = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=0)  # nothing to warn about
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HessianOperator.from_torch(model, loss_fn, quiet)


def test_kept_batches_still_refuse_augmentation(problem):
    """The batches read once are one draw of the augmentation: the check's pass over the loader sees another."""
    model, loss_fn, x, y = problem
    loader = torch.utils.data.DataLoader(Noisy(x, y), batch_size=8)
    with pytest.raises(ValueError, match="not deterministic.*kept batches"):
        HessianOperator.from_torch(model, loss_fn, loader)
    H = HessianOperator.from_torch(model, loss_fn, loader, check_deterministic=False)  # one fixed draw
    v = np.random.default_rng(2).standard_normal(H.n)
    np.testing.assert_array_equal(H @ v, H @ v)
