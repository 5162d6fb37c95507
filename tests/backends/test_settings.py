"""hessop/backends/settings.py: the settings objects are the constructors' keywords, whole, and derive correctly."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from hessop import HessianOperator
from hessop.backends.settings import CurvatureSettings, JaxSettings, TorchSettings, keywords


def torch_settings(**change):
    base = dict(params=["0.weight", "0.bias"], reduction="sum", loss_form="outputs", check_deterministic=True,
                batch_size=len, hvp_method="double_backward", cache_memory=123)
    return TorchSettings(**{**base, **change})


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_fields_are_the_constructors_keywords():
    # every field is the keyword of that name of from_torch / from_jax (one object per backend, given whole)
    torch_kw = set(inspect.signature(HessianOperator.from_torch).parameters)
    jax_kw = set(inspect.signature(HessianOperator.from_jax).parameters)
    assert field_names(TorchSettings) <= torch_kw
    assert field_names(JaxSettings) <= jax_kw
    assert field_names(CurvatureSettings) <= torch_kw & jax_kw
    # no defaults: a settings object is always given whole
    for cls in (TorchSettings, JaxSettings, CurvatureSettings):
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls))
        with pytest.raises(TypeError):
            cls()


def test_keywords_are_the_values_themselves():
    params = ["0.weight"]
    s = torch_settings(params=params)
    kw = keywords(s)
    assert list(kw) == [f.name for f in dataclasses.fields(TorchSettings)]
    assert kw["params"] is params and kw["batch_size"] is len  # not copies (unlike dataclasses.asdict)
    assert TorchSettings(**kw) == s


def test_problem_leaves_out_the_product_method():
    s = torch_settings()
    problem = s.problem()
    assert set(problem) == field_names(TorchSettings) - {"hvp_method", "cache_memory"}
    assert all(problem[k] is getattr(s, k) for k in problem)


def test_derived_changes_only_the_parameters_and_product_method():
    s = torch_settings()
    names = ["0.bias"]
    d = s.derived(names, "forward_over_reverse")
    assert d.params == ["0.bias"] and d.params is not names  # a copy: the caller's list may change
    assert (d.check_deterministic, d.hvp_method, d.cache_memory) == (False, "forward_over_reverse", None)
    same = field_names(TorchSettings) - {"params", "check_deterministic", "hvp_method", "cache_memory"}
    assert all(getattr(d, k) is getattr(s, k) for k in same)
    assert s.params == ["0.weight", "0.bias"] and s.hvp_method == "double_backward"  # the original is unchanged


@pytest.mark.parametrize("settings", [torch_settings(),
                                      JaxSettings(reduction="mean", check_deterministic=True, batch_size=None),
                                      CurvatureSettings(curvature="ggn", output_loss=None, mc_samples=1,
                                                        fisher_seed=0)])
def test_frozen(settings):
    name = dataclasses.fields(settings)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, name, None)


def test_from_torch_keeps_its_keywords_in_the_settings():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(2, 1).double()
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    H = HessianOperator.from_torch(model, torch.nn.MSELoss(), (x, y), reduction="mean", cache_memory=0)
    s = H.backend.settings
    assert isinstance(s, TorchSettings)
    assert (s.reduction, s.cache_memory, s.loss_form, s.batch_size) == ("mean", 0, "outputs", None)
    # and the block backend built from it carries the derived settings
    block = H.backend.restrict(["bias"])
    assert block.settings.params == ["bias"] and block.settings.check_deterministic is False
    np.testing.assert_allclose(np.asarray(block.to_numpy(block.hvp(block.asarray(np.ones(1))))), [2.0])
