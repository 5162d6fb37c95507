"""Worker launched by tests/test_mpi.py under ``mpiexec -n P``; not a test module itself.

``python tests/mpi_worker.py solve WORKDIR``: every rank loads the problem pytest saved in WORKDIR (a trained
SmallResNet and its digits), keeps its own unequal shard, builds the reduced operator with
``from_torch(..., comm=COMM_WORLD)`` and runs the solvers; each rank writes what it found to
``WORKDIR/rank<r>of<P>.json`` (floats written with ``repr``: exact) and its block product to ``.npy``.

``python tests/mpi_worker.py raise WORKDIR``: rank 1 raises in the middle of a Lanczos run while the other ranks
wait in an Allreduce; the job must end (non-zero) instead of hanging.  ``kill``: rank 1 is killed by SIGKILL
there; ``hang``: rank 1 sleeps forever there and the others' ``comm_timeout`` (3 s) must end the job
(``hang-build``: rank 1 never reaches the construction's collective).
``raise-plain`` does the same as ``raise`` with ``abort_on_error=False`` (run it as ``python -m mpi4py``, whose
own handler must then abort).  ``raise-build``: rank 1's ``from_torch(..., comm=)`` raises (empty shard) while
the other ranks wait in the constructor's collective.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import hessop
from hessop.backends.base import Backend
from hessop.mpi import reduce_operator

SEED_BLOCK, SEED_HUTCH, SEED_SLQ = 11, 12, 13
T0 = time.perf_counter()


def shard_bounds(n: int, size: int) -> list[int]:
    """Deliberately unequal contiguous shards: rank r gets a share proportional to r + 1."""
    w = np.arange(1, size + 1)
    return [0] + [int(round(n * c)) for c in np.cumsum(w) / w.sum()]


def save_problem(workdir: Path, n_data: int) -> tuple:
    """Train a float64 SmallResNet briefly on ``n_data`` digits and save it with the data for the workers;
    returns (model, x, y)."""
    import torch

    from hessop.models.digits import SmallResNet, digits, train

    torch.manual_seed(0)
    x, y = digits(n_data)
    model = SmallResNet().double()
    train(model, x, y, steps=60)
    torch.save({"state": model.state_dict(), "x": x, "y": y}, workdir / "problem.pt")
    return model, x, y


def load_shard(workdir: Path, rank: int, size: int) -> tuple:
    """The saved model (eval mode) and rank's unequal shard of the saved data in batches of 40:
    (model, batches, number of local samples)."""
    import torch

    from hessop.models.digits import SmallResNet

    saved = torch.load(workdir / "problem.pt")
    model = SmallResNet().double()
    model.load_state_dict(saved["state"])
    model.eval()
    x, y = saved["x"], saved["y"]
    lo, hi = shard_bounds(len(x), size)[rank: rank + 2]
    return model, [(x[i: min(i + 40, hi)], y[i: min(i + 40, hi)]) for i in range(lo, hi, 40)], hi - lo


def local_matrix(rank: int, n: int = 40) -> np.ndarray:
    """Rank r's symmetric contribution to a summed operator (``from_matrix`` operators are summed)."""
    a = np.random.default_rng(100 + rank).standard_normal((n, n))
    return (a + a.T) / 2


class JaxMatrixBackend(Backend):
    """A mean-reduced local operator ``A_r`` over ``n_samples`` samples on immutable JAX arrays (like the JAX
    backend: it has ``reduction`` and ``n_samples``)."""

    name = "jax"
    reduction = "mean"

    def __init__(self, A: np.ndarray, n_samples: int) -> None:
        import jax

        jax.config.update("jax_enable_x64", True)
        self.jnp = jax.numpy
        self.A = self.jnp.asarray(A)
        self.n, self.dtype, self.n_samples = A.shape[0], np.dtype(np.float64), n_samples

    def hvp(self, v):
        return self.A @ v

    def hvp_block(self, V):
        return self.A @ V

    def asarray(self, x):
        return self.jnp.asarray(x, dtype=self.jnp.float64)

    def to_numpy(self, x):
        return np.asarray(x)


def jax_model(comm, rank: int, size: int) -> dict:
    """Top-3 eigenvalues of a float64 JAX MLP's Hessian: reduced over unequal shards vs one process, all data."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((90, 6)), rng.integers(0, 3, 90)
    params = {"w1": jnp.asarray(0.5 * rng.standard_normal((6, 12))), "b1": jnp.zeros(12),
              "w2": jnp.asarray(0.5 * rng.standard_normal((12, 3))), "b2": jnp.zeros(3)}

    def loss(p, batch):
        xb, yb = batch
        logits = jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, yb[:, None], 1)[:, 0])

    lo, hi = shard_bounds(len(x), size)[rank: rank + 2]
    local = [(jnp.asarray(x[i: min(i + 25, hi)]), jnp.asarray(y[i: min(i + 25, hi)])) for i in range(lo, hi, 25)]
    reduced = hessop.HessianOperator.from_jax(loss, params, local, comm=comm)
    full = hessop.HessianOperator.from_jax(loss, params, (jnp.asarray(x), jnp.asarray(y)))
    a, b = hessop.lanczos(reduced, 3), hessop.lanczos(full, 3)
    return {"reduced": a.eigenvalues.tolist(), "full": b.eigenvalues.tolist(), "n_hvp": [a.n_hvp, b.n_hvp]}


def half_model() -> tuple:
    """A float16 MLP and 24 samples, the same on every rank and in the pytest process."""
    import torch

    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).half()
    x, y = torch.randn(24, 4).half(), torch.randint(0, 2, (24,))
    return model, x, y


def half_precision(comm, rank: int, size: int) -> dict:
    """The precision facts of a float16 model reduced over the ranks (each holding a shard of the data)."""
    import warnings

    import torch

    from hessop.results import residual_floor

    model, x, y = half_model()
    lo, hi = shard_bounds(len(x), size)[rank: rank + 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the half-precision accuracy warning
        H = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x[lo:hi], y[lo:hi]), comm=comm)
    return {"product_eps": H.product_eps, "floor": residual_floor(H, 1.0), "dtype": str(H.dtype),
            "product_dtype": H.backend.product_dtype, "half_precision": H.backend.half_precision}


def solve(workdir: Path) -> None:
    import torch
    from mpi4py import MPI

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    model, batches, local_samples = load_shard(workdir, rank, size)
    H = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), batches, comm=comm)

    out: dict = {"seconds_to_operator": time.perf_counter() - T0, "rank": rank, "size": size,
                 "local_samples": local_samples, "n_samples": H.backend.n_samples,
                 "describe": repr(H), "unflatten": list(H.backend.unflatten(np.zeros(H.n))),
                 "shard_only": {name: hasattr(H.backend, name) for name in ("loss_at", "restrict", "model")}}
    try:
        H.model_backend("landscape")
    except ValueError as e:
        out["shard_only_message"] = str(e)
    # count the operator's product calls (a block counts once) to compare with the Allreduce count
    mpi_backend, calls, allreduce0 = H.backend, [0], H.backend.n_allreduce

    def counting(f):
        def counted(x):
            calls[0] += 1
            return f(x)
        return counted

    mpi_backend.hvp, mpi_backend.hvp_block = counting(mpi_backend.hvp), counting(mpi_backend.hvp_block)
    res = hessop.lanczos(H, k=5)
    out["lanczos"] = {"eigenvalues": res.eigenvalues.tolist(), "n_hvp": res.n_hvp, "converged": res.converged.tolist()}
    res = hessop.power_iteration(H, k=1, tol=1e-7)
    out["power"] = {"eigenvalues": res.eigenvalues.tolist(), "n_hvp": res.n_hvp}
    V = H.asarray(np.random.default_rng(SEED_BLOCK).standard_normal((H.n, 3)).astype(H.dtype))
    np.save(workdir / f"block_rank{rank}of{size}.npy", H.to_numpy(H.hvp_block(V)))
    # with a progress bar (drawn by rank 0 only) and a checkpoint (written by rank 0, read by rank 0 and broadcast):
    # calling again returns the finished result on every rank, with no product (a rank reading a file that rank 0
    # has not written yet would take a product alone and hang the job)
    ck = workdir / f"hutchinson{size}.npz"
    est = hessop.hutchinson(H, max_hvp=10, seed=SEED_HUTCH, progress=True, checkpoint=ck)
    again = hessop.hutchinson(H, max_hvp=10, seed=SEED_HUTCH, checkpoint=ck)
    assert again.estimate == est.estimate and again.n_hvp == est.n_hvp
    out["hutchinson"] = {"estimate": float(est.estimate), "n_hvp": int(est.n_hvp)}
    d = hessop.slq(H, n_iter=20, max_hvp=40, seed=SEED_SLQ)
    out["slq"] = {"nodes": [np.asarray(a).tolist() for a in d.nodes],
                  "weights": [np.asarray(a).tolist() for a in d.weights]}
    out["n_hvp_total"] = H.n_hvp
    out["n_allreduce"] = H.backend.n_allreduce - allreduce0
    out["n_product_calls"] = calls[0]

    # operators with no sample count are summed: H = sum_r A_r
    S = reduce_operator(hessop.HessianOperator.from_matrix(local_matrix(rank)), comm)
    out["summed"] = hessop.lanczos(S, k=3, which="LM").eigenvalues.tolist()

    out["seconds_to_torch_done"] = time.perf_counter() - T0
    # immutable device-style arrays (JAX) are staged through host buffers; a mean-reduced generic backend is
    # weighted by its share of the samples
    J = reduce_operator(hessop.HessianOperator(JaxMatrixBackend(local_matrix(rank), n_samples=rank + 1)), comm)
    hv = J.hvp(J.asarray(np.ones(J.n, J.dtype)))
    out["jax"] = {"hvp": J.to_numpy(hv).tolist(), "type": type(hv).__name__,
                  "block": J.to_numpy(J.hvp_block(J.asarray(np.eye(J.n, dtype=J.dtype)[:, :2]))).tolist()}
    # a real JAX model: from_jax(..., comm=) on this rank's shard equals from_jax on all the data in one process
    out["jax_model"] = jax_model(comm, rank, size)
    out["half"] = half_precision(comm, rank, size)
    # float32 buffers
    F = reduce_operator(hessop.HessianOperator.from_matrix(local_matrix(rank).astype(np.float32)), comm)
    res = hessop.lanczos(F, k=3, which="LM", tol=1e-4)
    ones = F.asarray(np.ones(F.n, F.dtype))
    out["float32"] = {"eigenvalues": res.eigenvalues.tolist(), "dtype": str(F.hvp(ones).dtype)}

    # a mismatch between ranks is refused on every rank (no hang, no rank left inside a collective)
    try:
        reduce_operator(hessop.HessianOperator.from_matrix(local_matrix(rank, n=10 + (rank == size - 1))), comm)
        out["mismatch"] = None
    except ValueError as e:
        out["mismatch"] = str(e)
    other = copy.deepcopy(model)
    if rank == size - 1:
        with torch.no_grad():
            other.fc2.bias[0] += 1e-12
    try:
        hessop.HessianOperator.from_torch(other, torch.nn.CrossEntropyLoss(), batches, comm=comm)
        out["param_mismatch"] = None
    except ValueError as e:
        out["param_mismatch"] = str(e)
    try:
        reduce_operator(hessop.HessianOperator.from_matrix(local_matrix(rank)), comm, comm_timeout=0)
        out["bad_timeout"] = None
    except ValueError as e:
        out["bad_timeout"] = str(e)
    try:
        reduce_operator(hessop.HessianOperator.from_matrix(local_matrix(rank)), "COMM_WORLD")
        out["bad_comm"] = None
    except TypeError as e:
        out["bad_comm"] = str(e)
    out["seconds"] = time.perf_counter() - T0
    (workdir / f"rank{rank}of{size}.json").write_text(json.dumps(out))


def run_job(cmd: list[str], timeout: float) -> tuple[int, str, float]:
    """Run a launcher command (``mpiexec``, ``torchrun``) with one thread per rank and hessop on the path; kill its
    whole process group after ``timeout`` s.  Returns (exit code, stdout + stderr, seconds); -999 on a timeout."""
    import signal
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=root, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -999, out, time.perf_counter() - t0
    return proc.returncode, out, time.perf_counter() - t0


def check_failed_job(code: int, out: str, secs: float, messages: list[str]) -> None:
    """What :func:`run_job` returned for a job with a failing rank: it ended (no kill at the timeout) with a
    non-zero exit within 60 s, every expected message in its output, and no rank finished."""
    assert code != -999, f"the job hung (killed after 60 s):\n{out[-4000:]}"
    assert code != 0, out
    assert secs < 60
    for message in messages:
        assert message in out, out[-4000:]
    assert "finished, which it should not have" not in out


def failing_operator(rank: int, how: str) -> hessop.HessianOperator:
    """Rank r's local operator; on rank 1 its 4th product raises, kills the process by SIGKILL, or never returns
    (``how``: "raise", "kill", "hang")."""
    import signal

    calls = [0]
    A = local_matrix(rank)

    def hvp(v: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if rank == 1 and calls[0] == 4:
            print(f"rank 1: failing ({how}) in the 4th product", flush=True)
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "hang":
                time.sleep(10 ** 6)
            raise RuntimeError("deliberate failure in the 4th product on rank 1")
        return A @ v

    return hessop.HessianOperator.from_function(hvp, A.shape[0], check_symmetric=False)


def fail_midway(abort_on_error: bool, how: str = "raise") -> None:
    """Rank 1 fails in its 4th product while the other ranks wait in the Allreduce: it raises, is killed by
    SIGKILL, or stops answering (sleeps forever; the others' comm_timeout of 3 s must end the job)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    H = reduce_operator(failing_operator(rank, how), comm, abort_on_error=abort_on_error, comm_timeout=3.0)
    # the failure is counted from the solver's products: the product-error measurement's block (collective, the
    # same seeded vectors on every rank) would take rank 1's 4th single-vector product and shift the numbering
    H.product_error = 0
    hessop.lanczos(H, k=2)
    print(f"rank {rank}: finished, which it should not have", flush=True)


def hang_while_building() -> None:
    """Rank 1 never reaches the construction's collective; the others' comm_timeout (3 s) must end the job."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_rank() == 1:
        print("rank 1: never building the operator", flush=True)
        time.sleep(10 ** 6)
    reduce_operator(hessop.HessianOperator.from_matrix(local_matrix(comm.Get_rank())), comm, comm_timeout=3.0)
    print(f"rank {comm.Get_rank()}: finished, which it should not have", flush=True)


def fail_while_building() -> None:
    import torch
    from mpi4py import MPI

    from hessop.models.digits import SmallResNet

    comm = MPI.COMM_WORLD
    x = torch.zeros(4, 1, 8, 8, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    data = [(x, y)] if comm.Get_rank() != 1 else []  # rank 1's shard is empty: TorchBackend refuses it
    hessop.HessianOperator.from_torch(SmallResNet().double().eval(), torch.nn.CrossEntropyLoss(), data, comm=comm)
    print(f"rank {comm.Get_rank()}: finished, which it should not have", flush=True)


if __name__ == "__main__":
    mode, workdir = sys.argv[1], Path(sys.argv[2])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if mode == "solve":
        solve(workdir)
    elif mode == "raise":
        fail_midway(abort_on_error=True)
    elif mode == "raise-build":
        fail_while_building()
    elif mode == "hang-build":
        hang_while_building()
    elif mode in ("kill", "hang"):
        fail_midway(abort_on_error=True, how=mode)
    elif mode == "raise-plain":
        fail_midway(abort_on_error=False)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
