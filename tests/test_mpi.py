"""MPI-reduced operators: ``mpiexec -n 2`` and ``-n 3`` (unequal shards) against the single-process full-data run.

Ordinary pytest tests: each launches ``mpiexec`` on tests/mpi_worker.py in a subprocess (with a timeout, killing
the whole process group if it is exceeded) and compares what every rank wrote with the same solvers run here, in
one process, on all the data.  The pytest process itself never initialises MPI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hessop

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
if importlib.util.find_spec("mpi4py") is None:
    pytest.skip("mpi4py is not installed (pip install 'hessop[mpi]')", allow_module_level=True)
MPIEXEC = shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("mpiexec not found on PATH (the mpich wheel of the 'mpi' extra provides it)", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "mpi_worker.py"
_spec = importlib.util.spec_from_file_location("_hessop_mpi_worker", WORKER)
_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_worker)  # its seeds and local matrices; it imports mpi4py only inside its functions
SEED_BLOCK, SEED_HUTCH, SEED_SLQ, local_matrix = _worker.SEED_BLOCK, _worker.SEED_HUTCH, _worker.SEED_SLQ, \
    _worker.local_matrix

N_DATA = 192
RTOL = 1e-10


def launch(args: list[str], n: int, timeout: float) -> tuple[int, str, float]:
    """Run ``mpiexec -n n args`` with one thread per rank; kill its whole process group after ``timeout`` s.
    Returns (exit code, stdout + stderr, seconds)."""
    return _worker.run_job([MPIEXEC, "-n", str(n), *args], timeout)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """A briefly trained float64 SmallResNet on 192 digits, saved for the workers, and the single-process results
    on all the data (batched differently from any rank's shard)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is as fast, and far faster when the cores are busy
    try:
        return _problem(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _problem(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mpi")
    model, x, y = _worker.save_problem(workdir, N_DATA)

    H = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), [(x[i:i + 64], y[i:i + 64])
                                                                             for i in range(0, N_DATA, 64)])
    ref = {"names": H.backend.names}
    r = hessop.lanczos(H, k=5)
    assert np.all(r.converged)
    ref["lanczos"] = {"eigenvalues": r.eigenvalues, "n_hvp": r.n_hvp}
    r = hessop.power_iteration(H, k=1, tol=1e-7)
    ref["power"] = {"eigenvalues": r.eigenvalues, "n_hvp": r.n_hvp}
    V = H.asarray(np.random.default_rng(SEED_BLOCK).standard_normal((H.n, 3)).astype(H.dtype))
    ref["block"] = H.to_numpy(H.hvp_block(V))
    r = hessop.hutchinson(H, max_hvp=10, seed=SEED_HUTCH)
    ref["hutchinson"] = {"estimate": float(r.estimate), "n_hvp": int(r.n_hvp)}
    r = hessop.slq(H, n_iter=20, max_hvp=40, seed=SEED_SLQ)
    ref["slq"] = {"nodes": [np.asarray(a) for a in r.nodes], "weights": [np.asarray(a) for a in r.weights]}
    return workdir, ref


def run_ranks(problem, n: int) -> list[dict]:
    workdir, _ = problem
    code, out, secs = launch([sys.executable, str(WORKER), "solve", str(workdir)], n, timeout=150)
    assert code == 0, f"mpiexec -n {n} failed (exit {code}, {secs:.0f} s):\n{out[-4000:]}"
    assert out.count("hutchinson:   0%") == 1, out[-4000:]  # one progress bar (drawn once at its start): rank 0
    results = [json.loads((workdir / f"rank{r}of{n}.json").read_text()) for r in range(n)]
    for r, res in enumerate(results):
        res["block"] = np.load(workdir / f"block_rank{r}of{n}.npy")
    return results


def check_identical_on_every_rank(results: list[dict]) -> None:
    first = results[0]
    for res in results[1:]:
        for key in ("lanczos", "power", "hutchinson", "slq", "summed", "jax", "jax_model", "float32", "half",
                    "n_hvp_total", "n_allreduce", "n_product_calls", "n_samples"):
            assert res.get(key) == first.get(key), f"rank {res['rank']} differs from rank 0 in {key}"
        assert np.array_equal(res["block"], first["block"])


def check_half_precision(half: dict) -> None:
    """A float16 model reduced over the ranks reports float16's rounding unit and residual floor (9.8e-4), as the
    single-process operator does, not float32's (1.2e-7) of the vectors it exchanges."""
    import warnings

    from hessop.results import residual_floor

    model, x, y = _worker.half_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        H = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y))
    assert H.product_eps == torch.finfo(torch.float16).eps
    assert half == {"product_eps": H.product_eps, "floor": residual_floor(H, 1.0), "dtype": "float32",
                    "product_dtype": "float16", "half_precision": True}


def check_matches_single_process(results: list[dict], ref: dict) -> None:
    res = results[0]
    assert res["n_samples"] == N_DATA
    assert res["unflatten"] == ref["names"]  # the local backend's helpers are reachable through the MPI backend
    # ... but not what sees the rank's shard only (the loss, block operators, the model with its local batches)
    assert res["shard_only"] == {"loss_at": False, "restrict": False, "model": False}
    assert "reduced over a communicator" in res["shard_only_message"]
    assert "this rank's shard of the data only" in res["shard_only_message"]
    check_half_precision(res["half"])
    assert sum(r["local_samples"] for r in results) == N_DATA
    assert len({r["local_samples"] for r in results}) == len(results)  # the shards really are unequal
    for method in ("lanczos", "power"):
        np.testing.assert_allclose(res[method]["eigenvalues"], ref[method]["eigenvalues"], rtol=RTOL, atol=0,
                                   err_msg=method)
        assert res[method]["n_hvp"] == ref[method]["n_hvp"], method
    assert all(res["lanczos"]["converged"])
    scale = np.abs(ref["block"]).max()
    np.testing.assert_allclose(res["block"], ref["block"], rtol=0, atol=RTOL * scale)
    # one Allreduce per product or block product, never one per vector of a block
    assert res["n_allreduce"] == res["n_product_calls"] < res["n_hvp_total"]
    assert res["hutchinson"]["n_hvp"] == ref["hutchinson"]["n_hvp"]
    np.testing.assert_allclose(res["hutchinson"]["estimate"], ref["hutchinson"]["estimate"], rtol=RTOL, atol=0)
    assert len(res["slq"]["nodes"]) == len(ref["slq"]["nodes"])
    for nodes, weights, ref_nodes, ref_weights in zip(res["slq"]["nodes"], res["slq"]["weights"],
                                                     ref["slq"]["nodes"], ref["slq"]["weights"], strict=True):
        np.testing.assert_allclose(nodes, ref_nodes, rtol=0, atol=RTOL * np.abs(ref_nodes).max())
        np.testing.assert_allclose(weights, ref_weights, rtol=0, atol=RTOL)
    # operators without a sample count are summed over the ranks
    summed = sum(local_matrix(r) for r in range(len(results)))
    lam = np.linalg.eigvalsh(summed)
    top = lam[np.argsort(-np.abs(lam))[:3]]
    np.testing.assert_allclose(res["summed"], top, rtol=1e-10)
    # a mean-reduced backend on immutable JAX arrays (staged through the host): H = sum_r (N_r / N) A_r, N_r = r + 1
    p = len(results)
    mean = sum((r + 1) * local_matrix(r) for r in range(p)) / (p * (p + 1) / 2)
    np.testing.assert_allclose(res["jax"]["hvp"], mean.sum(axis=1), rtol=0, atol=1e-12 * np.abs(mean).max())
    np.testing.assert_allclose(res["jax"]["block"], mean[:, :2], rtol=0, atol=1e-12 * np.abs(mean).max())
    assert res["jax"]["type"] == "ArrayImpl"
    assert res["float32"]["dtype"] == "float32"
    np.testing.assert_allclose(res["float32"]["eigenvalues"], top, rtol=1e-5)
    # from_jax(..., comm=) on a real JAX model equals the one-process operator on all the data
    np.testing.assert_allclose(res["jax_model"]["reduced"], res["jax_model"]["full"], rtol=RTOL, atol=0)
    assert res["jax_model"]["n_hvp"][0] == res["jax_model"]["n_hvp"][1]
    # mismatched ranks and a wrong communicator are refused on every rank
    assert all("number of parameters differs" in r["mismatch"] for r in results)
    assert all("mpi4py communicator" in r["bad_comm"] for r in results)
    assert all("parameters differ between ranks" in r["param_mismatch"] for r in results)
    assert all("comm_timeout must be a positive number of seconds or None" in r["bad_timeout"] for r in results)


@pytest.mark.parametrize("n_ranks", [2, 3])
def test_reduced_operator_matches_single_process(problem, n_ranks):
    """Top-5 Lanczos eigenvalues, deflated power iteration, a block product, Hutchinson, SLQ and a JAX model over
    unequal shards equal the single-process full-data results to 1e-10 relative, bit-identical on every rank, with
    the same HVP counts."""
    results = run_ranks(problem, n_ranks)
    check_identical_on_every_rank(results)
    check_matches_single_process(results, problem[1])


@pytest.mark.parametrize(("runner", "mode", "n", "messages"), [
    ([], "raise", 2, ["deliberate failure in the 4th product on rank 1", "[hessop rank 1/2]"]),
    ([], "raise", 3, ["deliberate failure in the 4th product on rank 1", "[hessop rank 1/3]"]),
    (["-m", "mpi4py"], "raise-plain", 3, ["deliberate failure in the 4th product on rank 1"]),
    ([], "raise-build", 2, ["data is empty", "[hessop rank 1/2]"]),
    # SIGKILL: the rank cannot report; mpiexec sees the process die and ends the job
    ([], "kill", 2, ["rank 1: failing (kill)", "BAD TERMINATION", "signal 9"]),
    ([], "kill", 3, ["rank 1: failing (kill)", "BAD TERMINATION", "signal 9"]),
    # a rank that stops answering: the others' comm_timeout (3 s) names it and the product, and aborts
    ([], "hang", 2, ["rank 1: failing (hang)", "timed out: rank(s) [1] of the communicator did not reach the "
                     "Allreduce of product #4 within comm_timeout=3 s (ranks [0] were waiting"]),
    ([], "hang", 3, ["rank 1: failing (hang)", "timed out: rank(s) [1] of the communicator did not reach the "
                     "Allreduce of product #4 within comm_timeout=3 s (ranks [0, 2] were waiting"]),
    ([], "hang-build", 3, ["rank 1: never building the operator", "timed out: rank(s) [1] of the communicator did "
                           "not reach the exchange that builds the operator within comm_timeout=3 s"]),
])
def test_failing_rank_aborts_the_job(tmp_path, runner, mode, n, messages):
    """A rank that raises, is killed by SIGKILL or stops answering mid-run, while the others wait in an Allreduce,
    ends the job with a non-zero exit within 60 s, its failure (with its rank) in the output: through hessop's
    excepthook, through ``python -m mpi4py`` when the hook is disabled, through mpiexec for a killed rank, through
    ``comm_timeout`` for a silent one.  Also when the error comes while ``from_torch(comm=)`` builds the local
    operator and the other ranks already wait in its collective."""
    code, out, secs = launch([sys.executable, *runner, str(WORKER), mode, str(tmp_path)], n, timeout=60)
    _worker.check_failed_job(code, out, secs, messages)


def test_import_does_not_initialise_mpi():
    """``import hessop.mpi`` must not import mpi4py (MPI is initialised only when a reduced operator is built)."""
    code = ("import sys, hessop, hessop.mpi, hessop.operator; "
            "assert 'mpi4py' not in sys.modules, sorted(m for m in sys.modules if 'mpi' in m)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
