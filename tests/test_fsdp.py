"""FSDP2-wrapped models (``torch.distributed.fsdp.fully_shard``: parameters are DTensors) are refused at
construction with a message naming the problem and the way out, on every rank, wrapped whole or per module (they
used to give top eigenvalues 0 with residual 0, reported converged, or fail with a storage error).  2 processes,
gloo on CPU, one torchrun job."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)
pytest.importorskip("torch.distributed.fsdp", reason="no FSDP2 in this torch")
if not hasattr(torch.distributed.fsdp, "fully_shard"):
    pytest.skip("this torch has no FSDP2 fully_shard", allow_module_level=True)

WORKER = Path(__file__).resolve().parent / "fsdp_worker.py"
_spec = importlib.util.spec_from_file_location("_hessop_mpi_worker", WORKER.parent / "mpi_worker.py")
_mpi_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mpi_worker)  # run_job: a launcher in its own process group, killed past the timeout


def test_fsdp2_models_are_refused_on_every_rank(tmp_path):
    code, out, secs = _mpi_worker.run_job(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "--monitor-interval", "0.2", str(WORKER), str(tmp_path)], timeout=240)
    assert code == 0, f"torchrun failed (exit {code}, {secs:.0f} s):\n{out[-4000:]}"
    for rank in (0, 1):
        found = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(found) == {"whole", "per-module", "whole-after-forward", "per-module-params"}
        for how, result in found.items():
            assert result["type"] == "TypeError", (rank, how, result)
            message = result["message"]
            for words in ("fully_shard", "sharded", "unwrapped copy", "full_state_dict", "comm='torch'"):
                assert words in message, (rank, how, words, message)
