"""pytest configuration of the repository root: doctest collection of hessop's own modules (``python3 -m pytest``
runs the ``>>>`` examples in hessop/).

A module whose optional dependency is absent (CuPy on a machine without a GPU; PyTorch, JAX or scikit-learn in a
minimal install) is reported as skipped, with the missing package as the reason, instead of failing collection.
Examples that need a GPU or ``mpiexec`` are marked ``# doctest: +SKIP`` in the docstring itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from _pytest.doctest import DoctestModule

# module (a dotted prefix: a package covers its submodules) -> the packages its import or its examples need
OPTIONAL = {
    "hessop.backends.cupy": ("cupy",),
    "hessop.backends.jax": ("jax",),
    "hessop.backends.torch": ("torch",),
    "hessop.models": ("torch", "sklearn"),
    "hessop.demo": ("torch", "sklearn"),
    # framework-free modules whose examples build a PyTorch operator (a loss is needed: from_torch or from_jax)
    "hessop.landscape": ("torch",),
    "hessop.blocks": ("torch",),
    "hessop.backends.base": ("torch",),
}

_ROOT = Path(__file__).resolve().parent  # the repository root
_PACKAGE = _ROOT / "hessop"


def _module_name(path: Path) -> str:
    parts = path.resolve().relative_to(_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _missing(name: str) -> list[str]:
    needs = [p for prefix, pkgs in OPTIONAL.items() if name == prefix or name.startswith(prefix + ".") for p in pkgs]
    return sorted({p for p in needs if importlib.util.find_spec(p) is None})


class _Unavailable(pytest.File):
    """Stands in for the doctests of a module that cannot be imported here: collecting it is a skip."""

    def __init__(self, *, reason: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def collect(self):
        pytest.skip(self.reason)


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    collected = yield
    if file_path.suffix != ".py":
        return collected
    if _PACKAGE not in file_path.resolve().parents:
        # tests/, benchmarks/, examples/: their test functions only (importing them as doctest modules would clash
        # on the several conftest.py of tests/)
        return [c for c in collected if not isinstance(c, DoctestModule)]
    missing = _missing(_module_name(file_path))
    if not missing:
        return collected
    reason = f"doctests of {_module_name(file_path)} need {', '.join(missing)} (not installed)"
    return [_Unavailable.from_parent(parent, path=file_path, reason=reason)]
