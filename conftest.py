"""pytest configuration of the repository root, for ``pytest --doctest-modules hessop``: a backend module whose
framework is not installed (CuPy without a GPU, most often) cannot be imported, so its doctests are not collected
rather than failing the run.  The tests' own fixtures live in tests/conftest.py."""

from __future__ import annotations

import importlib.util

_BACKENDS = {"cupy": "hessop/backends/cupy.py", "torch": "hessop/backends/torch", "jax": "hessop/backends/jax.py"}

collect_ignore = [path for module, path in _BACKENDS.items() if importlib.util.find_spec(module) is None]
