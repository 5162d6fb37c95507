"""hessop/backends/base.py: the defaults a backend inherits from the contracts, the data loop and determinism check
of :class:`DataBackend` (its documented subclass contract) and the explicit delegation of a wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from hessop import HessianOperator
from hessop.backends.base import Backend, DataBackend, DataView, LayoutDelegate, from_wrapped, host_free_memory


class Diagonal(Backend):
    """The least a backend supplies: one product and the two transfers."""

    name = "diagonal"

    def __init__(self, d: np.ndarray) -> None:
        self.d, self.n, self.dtype = d, d.size, d.dtype
        self.calls = 0

    def hvp(self, v):
        self.calls += 1
        return self.d * v

    def asarray(self, x):
        return np.asarray(x, dtype=self.dtype)

    def to_numpy(self, x):
        return np.asarray(x)


def test_backend_is_abstract():
    with pytest.raises(TypeError):
        Backend()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_defaults_of_a_minimal_backend(dtype):
    d = np.array([3.0, -1.0, 2.0], dtype=dtype)
    b = Diagonal(d)
    V = np.arange(6.0, dtype=dtype).reshape(3, 2)
    np.testing.assert_array_equal(b.hvp_block(V), d[:, None] * V)  # the columns' products, stacked
    assert b.calls == 2
    assert b.product_eps == float(np.finfo(dtype).eps) and b.product_dtype == np.dtype(dtype).name
    assert b.namespace.__name__.endswith("numpy")
    assert b.layout is None and b.model_backend is None and b.comm is None
    assert (b.half_precision, b.fixed_shapes, b.describe()) == (False, False, "diagonal")
    free = b.free_memory()
    assert free is None or free > 0
    # and an operator over it is exact and counts its products
    H = HessianOperator(b)
    np.testing.assert_array_equal(H @ np.ones(3, dtype=dtype), d)
    assert H.n_hvp == 1
    with pytest.raises(TypeError, match="built from a model"):
        H.model_backend("a test")


def test_host_free_memory_is_positive_or_unknown():
    free = host_free_memory()
    assert free is None or (isinstance(free, int) and free > 0)


class Batches(DataBackend):
    """A loss ``sum_b w_b c_b |theta|^2 / 2`` over batches of given sizes: ``H = (sum_b w_b c_b) I``."""

    name = "batches"

    def __init__(self, sizes, reduction, noise=0.0):
        self.n, self.dtype, self.reduction = 2, np.dtype(np.float64), reduction
        self.noise, self.rng = noise, np.random.default_rng(0)
        self._set_data([np.full(s, float(i + 1)) for i, s in enumerate(sizes)], single_batch=False)
        self._check_deterministic()

    def _size(self, batch):
        return batch.size

    def _batch_loss(self, batch):
        return float(batch[0]) * (1.0 + self.noise * self.rng.standard_normal())

    def hvp(self, v):
        return sum(w * float(b[0]) * v for b, w in self._weighted())

    def asarray(self, x):
        return np.asarray(x, dtype=np.float64)

    def to_numpy(self, x):
        return np.asarray(x)


@pytest.mark.parametrize("reduction, factor", [("mean", (1 * 1 + 3 * 2) / 4), ("sum", 1 + 2)])
def test_batch_weights(reduction, factor):
    # batches of 1 and 3 samples: mean weights |b| / N = 1/4, 3/4; sum weights 1
    b = Batches([1, 3], reduction)
    assert b.n_samples == 4
    assert b.hvp(np.ones(2)).tolist() == [factor, factor]


def test_randomness_in_the_loss_is_caught():
    with pytest.raises(ValueError, match="not deterministic: the total loss"):
        Batches([2, 2], "mean", noise=0.1)


@pytest.mark.parametrize("data, match", [(iter([np.ones(1)]), "one-shot iterator"), (3, "re-iterable")])
def test_data_must_be_re_iterable(data, match):
    b = Batches.__new__(Batches)
    with pytest.raises(TypeError, match=match):
        b._set_data(data, single_batch=False)


def test_empty_data_is_refused():
    with pytest.raises(ValueError, match="data is empty"):
        Batches([], "sum")


def test_data_view_iterates_again():
    view = DataView([1, 2, 3])
    assert list(view) == list(view) == [1, 2, 3]


def test_wrapper_delegates_explicitly():
    class Face(LayoutDelegate):
        product_dtype = from_wrapped("product_dtype")
        layout = from_wrapped("layout")

        def __init__(self, wrapped):
            self.wrapped = wrapped

    plain = Face(Diagonal(np.ones(2, dtype=np.float32)))
    assert plain.product_dtype == "float32"
    with pytest.raises(AttributeError, match="no model parameters"):
        _ = plain.names
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(2, 1).double()
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    wrapped = HessianOperator.from_torch(model, torch.nn.MSELoss(), (x, y)).backend
    face = Face(wrapped)
    assert face.names == ["weight", "bias"] and face.offsets == [0, 2, 3]
    assert face.unflatten(np.arange(3.0))["bias"].tolist() == [2.0]
