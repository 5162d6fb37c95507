"""JAX data parallelism: a batch sharded over a 4-device mesh (``--xla_force_host_platform_device_count=4``) and
two ``jax.distributed`` processes (gloo CPU collectives, unequal shards) equal the one-device operator.

Both run tests/jax_dist_worker.py in fresh interpreters (JAX fixes its devices and distributed state at start).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "jax_dist_worker.py"
RTOL = 1e-12
KEYS = ("lanczos", "trace", "slq", "hvp")


def _env(**extra: str) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", JAX_PLATFORMS="cpu", **extra,
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _close(a: dict, b: dict) -> None:
    for key in KEYS:
        ref = np.asarray(a[key])
        np.testing.assert_allclose(b[key], ref, rtol=0, atol=RTOL * np.abs(ref).max(), err_msg=key)
    assert a["n_hvp"] == b["n_hvp"]


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax") / "mesh.json"
    subprocess.run([sys.executable, str(WORKER), "mesh", str(out)], check=True, cwd=ROOT, timeout=300,
                   env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    return json.loads(out.read_text())


def test_mesh_sharded_operator_equals_one_device(mesh_run):
    """``from_jax(..., comm=Mesh(4 devices))``: every batch split over the 4 devices, the products (Lanczos, trace,
    SLQ, one product) equal the one-device operator's to 1e-12 and stay JAX arrays."""
    assert mesh_run["devices"] == 4 and mesh_run["batch_devices"] == 4
    assert "jax mesh (4 devices" in mesh_run["mesh"]["describe"]
    assert mesh_run["mesh"]["type"] == "ArrayImpl"
    _close(mesh_run["one_device"], mesh_run["mesh"])


def test_two_jax_processes_equal_one(mesh_run, tmp_path):
    """Two ``jax.distributed`` processes with unequal shards (32 and 64 samples), ``comm="jax"``: identical results
    on both, equal to the one-process operator on all the data, the products summed through the communicator."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(WORKER), "process", str(tmp_path / f"p{r}.json"), str(r), "2",
                               str(port)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(2)]
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    res = [json.loads((tmp_path / f"p{r}.json").read_text()) for r in range(2)]
    for key in (*KEYS, "n_hvp", "n_samples"):
        assert res[0][key] == res[1][key], key
    assert res[0]["n_samples"] == 96 and res[0]["type"] == "ArrayImpl"
    assert "jax processes (rank 0/2), share 32/96" in res[0]["describe"]
    assert res[0]["n_allreduce"] > res[0]["n_allreduce0"] == 0  # the construction exchange is no product
    _close(mesh_run["one_device"], res[0])
