"""``import hessop`` and the framework-free solvers need only numpy, scipy and array-api-compat."""

from __future__ import annotations

import pathlib
import subprocess
import sys

CODE = """
import sys
BLOCKED = {"torch", "jax", "jaxlib", "cupy", "cupyx", "mpi4py", "matplotlib", "sklearn"}


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked in this test)", name=name)
        return None


sys.meta_path.insert(0, Block())
import numpy as np
import hessop
from hessop.testing import matrix_with_spectrum
A = matrix_with_spectrum(np.linspace(-1.0, 2.0, 60))
H = hessop.HessianOperator.from_matrix(A)
assert abs(hessop.lanczos(H, 1).eigenvalues[0] - 2.0) < 1e-10
assert hessop.power_iteration(H, 1).n_hvp > 0
r = hessop.hutchinson(H, max_hvp=64)  # tr A = 30: within 5 standard errors, and the error is not zero
assert 0 < r.std_error and abs(r.estimate - 30.0) <= 5 * r.std_error
assert hessop.slq(H, n_iter=10, max_hvp=20).n_hvp == 20
try:
    hessop.HessianOperator.from_torch(None, None, None)
except ImportError as e:
    assert "HessianOperator.from_torch needs PyTorch: pip install torch" in str(e), str(e)
else:
    raise AssertionError("from_torch without torch should raise ImportError")
assert not BLOCKED & set(m.split(".")[0] for m in sys.modules)
print("ok")
"""


def test_import_needs_no_framework():
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_operator_and_mpi_import_in_either_order():
    """``hessop.operator`` and ``hessop.mpi`` do not import each other in a circle: either can be imported first
    in a fresh interpreter, and the MPI backend module depends on ``hessop.backends.base`` and the communicators
    (``hessop.backends.comm``, which imports no hessop module) only."""
    root = pathlib.Path(__file__).resolve().parents[1]
    for first, second in (("hessop.mpi", "hessop.operator"), ("hessop.operator", "hessop.mpi"),
                          ("hessop.backends.mpi", "hessop.mpi")):
        code = (f"import importlib, sys; importlib.import_module({first!r}); importlib.import_module({second!r}); "
                "from hessop.mpi import MPIBackend, install_abort_hook, reduce_operator; "
                "from hessop.backends.mpi import MPIBackend as B; assert MPIBackend is B; print('ok')")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "ok", (first, out.stderr)
    src = (root / "hessop" / "backends" / "mpi.py").read_text()
    imports = [line for line in src.splitlines() if line.startswith(("from hessop", "import hessop"))]
    assert [line.split(" import")[0] for line in imports] == ["from hessop.backends.base",
                                                                "from hessop.backends.comm"], imports
    comm_src = (root / "hessop" / "backends" / "comm.py").read_text()
    assert not [line for line in comm_src.splitlines() if line.startswith(("from hessop", "import hessop"))]
    assert "hessop.mpi" not in "".join(
        line for line in (root / "hessop" / "operator.py").read_text().splitlines() if "import" in line)
