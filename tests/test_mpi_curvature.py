"""GGN and empirical Fisher over MPI: ``mpiexec -n 2`` with unequal shards (6 and 7 samples) against the
single-process operator on all 13 samples (the same matrix to rounding)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from test_mpi import launch  # noqa: E402  (skips this module too where mpiexec or mpi4py is missing)

import hessop  # noqa: E402

WORKER = """
    import sys
    from pathlib import Path

    import numpy as np
    import torch
    from mpi4py import MPI

    import hessop

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x, y = torch.randn(13, 4, dtype=torch.float64), torch.randint(0, 3, (13,))
    lo, hi = [(0, 6), (6, 13)][rank]
    for curvature in ("ggn", "empirical_fisher"):
        op = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), [(x[lo:hi], y[lo:hi])],
                                               curvature=curvature, comm=comm)
        dense = op @ np.eye(op.n)
        np.save(Path(sys.argv[1]) / f"{curvature}_rank{rank}.npy", dense)
"""


def test_curvature_operators_over_mpi(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    code, out, secs = launch([sys.executable, str(script), str(tmp_path)], 2, timeout=300)
    assert code == 0, f"mpiexec -n 2 failed (exit {code}, {secs:.0f} s):\n{out[-4000:]}"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x, y = torch.randn(13, 4, dtype=torch.float64), torch.randint(0, 3, (13,))
    for curvature in ("ggn", "empirical_fisher"):
        op = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y), curvature=curvature)
        ref = op @ np.eye(op.n)
        for rank in (0, 1):  # every rank holds the full-data operator
            got = np.load(tmp_path / f"{curvature}_rank{rank}.npy")
            assert np.max(np.abs(got - ref)) < 1e-12 * np.max(np.abs(ref)), (curvature, rank)
