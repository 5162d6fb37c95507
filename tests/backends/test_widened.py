"""A backend seen through wider vectors: the solver_dtype face and half-precision models, which report the wrapped
backend's precision, parameter layout, model backend and communicator."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hessop import HessianOperator
from hessop.backends.widened import WidenedBackend, half_precision_face


def test_products_in_the_narrow_dtype_vectors_in_the_wide_one():
    A = np.diag([1.0, 1.0 + 2.0**-30]).astype(np.float32)  # the float32 matrix rounds the second entry to 1
    H = HessianOperator.from_matrix(A)
    W = HessianOperator(WidenedBackend(H, np.float64))
    y = W @ np.array([1.0, 1.0 + 2.0**-40])
    assert W.dtype == np.float64 and y.dtype == np.float64
    assert y.tolist() == [1.0, 1.0]  # the vector was cast to float32 before the product
    assert W.product_eps == H.product_eps == np.finfo(np.float32).eps
    assert W.backend.product_dtype == "float32" and not W.backend.half_precision
    assert H.n_hvp == 1 and W.n_hvp == 1
    assert W.backend.layout is None and W.backend.model_backend is None and W.backend.comm is None
    with pytest.raises(AttributeError, match="no model parameters"):
        W.backend.unflatten(np.zeros(2))
    assert not hasattr(W.backend, "names")  # no more attributes than the matrix backend it wraps
    assert half_precision_face(H.backend) is H.backend


def test_half_precision_model_declares_its_precision_through_the_face():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).half()
    data = (torch.randn(8, 4).half(), torch.randint(0, 2, (8,)))
    with pytest.warns(UserWarning, match="the model is float16"):
        H = HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), data)
    assert isinstance(H.backend, WidenedBackend) and H.dtype == np.float32
    assert H.backend.half_precision and H.backend.product_dtype == "float16"
    assert H.product_eps == torch.finfo(torch.float16).eps
    inner = H.backend.wrapped
    assert H.model_backend("landscape") is inner and H.backend.layout is inner
    assert H.backend.names == inner.names and H.backend.modules() == ["0", "0", "2", "2"]
    assert list(H.backend.unflatten(np.zeros(H.n, dtype=np.float32))) == inner.names
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silent: the caller decides about the warning
        block = half_precision_face(inner.restrict(["2.bias"]), warn=False)
    assert isinstance(block, WidenedBackend) and block.dtype == np.float32
