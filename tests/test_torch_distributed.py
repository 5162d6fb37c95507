"""torch.distributed-reduced operators: ``torchrun --nproc_per_node 2`` and ``3`` (gloo, unequal shards) against the
single-process full-data run, and failures (raise, SIGKILL, hang) that end the torchrun job within 60 s.

Each test launches ``python -m torch.distributed.run --standalone`` on tests/torch_dist_worker.py in a subprocess
(its whole process group killed past the timeout); the pytest process never initialises torch.distributed.
NCCL needs a GPU: :func:`test_nccl_all_reduce_on_the_device` runs only where CUDA is present.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse.linalg as sla

import hessop

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "torch_dist_worker.py"
_spec = importlib.util.spec_from_file_location("_hessop_mpi_worker", WORKER.parent / "mpi_worker.py")
_mpi_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mpi_worker)  # the seeds, shards and local matrices the torch worker shares with MPI's
SEED_BLOCK, SEED_HUTCH, SEED_SLQ = _mpi_worker.SEED_BLOCK, _mpi_worker.SEED_HUTCH, _mpi_worker.SEED_SLQ

N_DATA = 192
RTOL = 1e-12


def torchrun(args: list[str], n: int, timeout: float) -> tuple[int, str, float]:
    """``torchrun --standalone --nproc_per_node n WORKER args`` (one thread per rank; its process group killed
    after ``timeout`` s).  Returns (exit code, stdout + stderr, seconds)."""
    return _mpi_worker.run_job([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                str(n), "--monitor-interval", "0.2", str(WORKER), *args], timeout)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """A briefly trained float64 SmallResNet on 192 digits, saved for the workers, and the single-process results
    on all the data (batched differently from any rank's shard)."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        workdir = tmp_path_factory.mktemp("torch_dist")
        model, x, y = _mpi_worker.save_problem(workdir, N_DATA)
        model.eval()
        H = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(),
                                              [(x[i:i + 64], y[i:i + 64]) for i in range(0, N_DATA, 64)])
        r = hessop.lanczos(H, k=5)
        tr = hessop.trace(H, max_hvp=40, seed=SEED_HUTCH)
        d = hessop.slq(H, n_iter=20, max_hvp=40, seed=SEED_SLQ)
        v0 = np.random.default_rng(SEED_BLOCK).standard_normal(H.n)
        V = H.asarray(np.random.default_rng(SEED_BLOCK).standard_normal((H.n, 3)))
        ref = {"lanczos": r.eigenvalues, "lanczos_n_hvp": r.n_hvp, "trace": tr.estimate, "trace_n_hvp": tr.n_hvp,
               "slq_nodes": np.concatenate(d.nodes), "slq_weights": np.concatenate(d.weights),
               "eigsh": np.sort(sla.eigsh(H, k=3, which="LA", v0=v0, tol=1e-10)[0]),
               "block": H.to_numpy(H.hvp_block(V)).ravel()[::97]}
    finally:
        torch.set_num_threads(threads)
    return workdir, ref


@pytest.mark.parametrize("n_ranks", [2, 3])
def test_torchrun_matches_single_process(problem, n_ranks):
    """Lanczos, trace, SLQ, SciPy's eigsh and a block product over unequal shards equal the single-process results
    to 1e-12 relative, bit-identical on every rank, with one all_reduce per product or block product; one progress
    bar, one checkpoint writer; parameters differing on one rank are refused on every rank."""
    workdir, ref = problem
    code, out, secs = torchrun(["solve", str(workdir)], n_ranks, timeout=240)
    assert code == 0, f"torchrun with {n_ranks} workers failed (exit {code}, {secs:.0f} s):\n{out[-4000:]}"
    assert out.count("hutchinson:   0%") == 1, out[-4000:]  # one progress bar: rank 0's
    results = [json.loads((workdir / f"rank{r}of{n_ranks}.json").read_text()) for r in range(n_ranks)]
    for res in results[1:]:
        for key in ("lanczos", "trace", "slq", "eigsh", "block", "summed", "n_all_reduce", "n_hvp", "n_samples"):
            assert res[key] == results[0][key], f"rank {res['rank']} differs from rank 0 in {key}"
    res = results[0]
    assert res["n_samples"] == N_DATA and sum(r["local_samples"] for r in results) == N_DATA
    assert len({r["local_samples"] for r in results}) == n_ranks  # the shards really are unequal
    assert "torch.distributed(gloo, rank 0/" in res["describe"]
    assert "reduced over a communicator (MPI, torch.distributed or JAX processes)" in res["shard_only_message"]
    np.testing.assert_allclose(res["lanczos"]["eigenvalues"], ref["lanczos"], rtol=RTOL, atol=0)
    assert res["lanczos"]["n_hvp"] == ref["lanczos_n_hvp"] and all(res["lanczos"]["converged"])
    np.testing.assert_allclose(res["trace"]["estimate"], ref["trace"], rtol=RTOL, atol=0)
    assert res["trace"]["n_hvp"] == ref["trace_n_hvp"]
    scale = np.abs(ref["slq_nodes"]).max()
    np.testing.assert_allclose(res["slq"]["nodes"], ref["slq_nodes"], rtol=0, atol=RTOL * scale)
    np.testing.assert_allclose(res["slq"]["weights"], ref["slq_weights"], rtol=0, atol=RTOL)
    np.testing.assert_allclose(res["eigsh"], ref["eigsh"], rtol=RTOL, atol=0)
    np.testing.assert_allclose(res["block"], ref["block"], rtol=0, atol=RTOL * np.abs(ref["block"]).max())
    # one all_reduce per product call (a block counts once), never one per vector of a block
    assert res["n_all_reduce"] == res["n_product_calls"] < res["n_hvp"]
    assert all(r["checkpoint"] == [True, True] for r in results)
    summed = sum(_mpi_worker.local_matrix(r) for r in range(n_ranks))
    lam = np.linalg.eigvalsh(summed)
    np.testing.assert_allclose(res["summed"], lam[np.argsort(-np.abs(lam))[:3]], rtol=1e-10)
    assert all("parameters differ between ranks" in r["param_mismatch"] for r in results)


@pytest.mark.parametrize(("mode", "n", "messages"), [
    ("raise", 2, ["deliberate failure in the 4th product on rank 1", "[hessop rank 1/2]", "exitcode"]),
    # SIGKILL: the rank cannot report; torchrun sees it die (the others' gloo all_reduce fails too) and ends the job
    ("kill", 2, ["rank 1: failing (kill)", "Signal 9"]),
    # a rank that stops answering: the others' comm_timeout (3 s) names it and the product
    ("hang", 3, ["rank 1: failing (hang)", "timed out: rank(s) [1] of the communicator did not reach the all_reduce "
                 "of product #4 within comm_timeout=3 s (ranks [0, 2] were waiting"]),
    ("hang-build", 2, ["rank 1: never building the operator", "timed out: rank(s) [1] of the communicator did not "
                       "reach the exchange that builds the operator within comm_timeout=3 s"]),
])
def test_failing_rank_ends_the_torchrun_job(tmp_path, mode, n, messages):
    """A rank that raises, is killed by SIGKILL or stops answering (mid-run or before building the operator) while
    the others wait in a collective ends the whole torchrun job with a non-zero exit within 60 s, naming the rank."""
    code, out, secs = torchrun([mode, str(tmp_path)], n, timeout=60)
    _mpi_worker.check_failed_job(code, out, secs, messages)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NCCL needs a CUDA GPU (none here)")
def test_nccl_all_reduce_on_the_device(tmp_path):
    """Under NCCL the product is reduced in the GPU buffer itself (run on a GPU machine only)."""
    n = min(2, torch.cuda.device_count())  # NCCL refuses two ranks on one GPU
    code, out, secs = torchrun(["nccl", str(tmp_path)], n, timeout=120)
    assert code == 0, out[-4000:]
    assert out.count("nccl ok") == n, out[-4000:]


def test_comm_errors_name_the_fix():
    """``comm="torch"`` before ``init_process_group`` and an unknown ``comm`` raise errors that say what to do (no
    excepthook is installed by a refused call)."""
    from hessop.distributed import reduce_operator

    H = hessop.HessianOperator.from_matrix(np.eye(3))
    hook = sys.excepthook
    with pytest.raises(RuntimeError, match=r"init_process_group\(backend="):
        reduce_operator(H, "torch")
    with pytest.raises(TypeError, match="'torch' \\(the default process group"):
        reduce_operator(H, object())
    assert sys.excepthook is hook
