"""Fixtures of the PyTorch backend's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["forward_over_reverse", "double_backward"])
def each_method(request, monkeypatch):
    """The test runs with each product method as from_torch's default ("auto", the library default, runs in the
    rest of the suite)."""
    pytest.importorskip("torch")
    from hessop import HessianOperator

    monkeypatch.setitem(HessianOperator.from_torch.__kwdefaults__, "hvp_method", request.param)
    return request.param
