"""Products per second of one data-parallel Hessian operator on 1 and 2 processes through every engine hessop
reduces over: mpi4py, torch.distributed (gloo), JAX devices (a 2-device mesh in one process) and JAX processes
(``jax.distributed``), and the time each product spends in its collective.

Run (from the repository root; needs torch, jax, scikit-learn, mpi4py and the mpich wheel)::

    python benchmarks/distributed_scaling.py               # every configuration, one after the other; a table
    python benchmarks/distributed_scaling.py --reps 20     # fewer products per configuration

Model: the same float32 MLP 64-256-256-10 (tanh; 85,002 parameters; torch's initialisation with seed 0, copied
into a JAX pytree for the JAX rows) on 1,796 digits, mean cross-entropy; each process holds ``1796 / P`` samples in
batches of 300 (JAX mesh: the same batches split over the devices).  One thread per process.  Per configuration:
2 warm-up products, then ``--reps`` timed products (a barrier, where there is one, before each); the median is
reported.  "collective" is the time rank 0 spent in the all-reduce of a product (``H.backend.allreduce_seconds``),
the wait for the slower rank included; inside XLA (the mesh) it cannot be separated from the product.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
N_DATA, BATCH, WIDTH = 1796, 300, 256


def torch_model() -> tuple:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, WIDTH), torch.nn.Tanh(),
                                torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh(), torch.nn.Linear(WIDTH, 10))
    from hessop.models.digits import digits

    x, y = digits(N_DATA, dtype=torch.float32)
    return model, x.reshape(len(x), 64), y


def operator(engine: str, rank: int, size: int) -> tuple:
    """The operator over this process's shard, and a barrier."""
    import hessop

    model, x, y = torch_model()
    lo, hi = rank * N_DATA // size, (rank + 1) * N_DATA // size
    if engine in ("torch-1", "mpi", "torch"):
        import torch

        comm, barrier = None, (lambda: None)
        if engine == "mpi":
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
            barrier = comm.Barrier
        elif engine == "torch":
            comm, barrier = "torch", torch.distributed.barrier
        batches = [(x[i: min(i + BATCH, hi)], y[i: min(i + BATCH, hi)]) for i in range(lo, hi, BATCH)]
        return hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), batches, comm=comm), barrier
    import jax
    import jax.numpy as jnp

    layers = [m for m in model if hasattr(m, "weight")]
    params = [(jnp.asarray(m.weight.detach().numpy().T), jnp.asarray(m.bias.detach().numpy())) for m in layers]

    def loss(p, batch):
        h = batch[0]
        for i, (w, b) in enumerate(p):
            h = h @ w + b if i == len(p) - 1 else jnp.tanh(h @ w + b)
        return jnp.mean(jax.nn.logsumexp(h, axis=1) - jnp.take_along_axis(h, batch[1][:, None], 1)[:, 0])

    xs, ys = x.numpy(), y.numpy()
    batches = [(jnp.asarray(xs[i: min(i + BATCH, hi)]), jnp.asarray(ys[i: min(i + BATCH, hi)]))
               for i in range(lo, hi, BATCH)]
    comm = {"jax-1": None, "jax-mesh": jax.sharding.Mesh(np.array(jax.devices()), ("data",)), "jax": "jax"}[engine]
    barrier = (lambda: None) if engine != "jax" else (
        lambda: jax.experimental.multihost_utils.sync_global_devices("hessop"))
    return hessop.HessianOperator.from_jax(loss, params, batches, comm=comm), barrier


def worker(engine: str, reps: int, rank: int, size: int) -> None:
    if engine == "torch":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, size = dist.get_rank(), dist.get_world_size()
    elif engine == "mpi":
        from mpi4py import MPI

        rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    H, barrier = operator(engine, rank, size)
    v = H.asarray(np.random.default_rng(0).standard_normal(H.n).astype(np.float32))

    def in_collective() -> float:
        return getattr(H.backend, "allreduce_seconds", 0.0)

    for _ in range(2):
        H.to_numpy(H.hvp(v))  # warm-up (compilation)
    times, coll = [], []
    for _ in range(reps):
        barrier()
        c0, t0 = in_collective(), time.perf_counter()
        H.to_numpy(H.hvp(v))  # to the host: the product has completed (JAX dispatches asynchronously)
        times.append(time.perf_counter() - t0)
        coll.append(in_collective() - c0)
    if rank == 0:
        print("RESULT " + json.dumps({"n": H.n, "seconds": float(np.median(times)),
                                      "collective": float(np.median(coll))}), flush=True)
    os._exit(0)  # no teardown of the engines to wait for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


CONFIGS = [
    ("torch, 1 process", "torch-1", 1),
    ("mpi4py, 2 ranks", "mpi", 2),
    ("torch.distributed (gloo), 2 ranks", "torch", 2),
    ("JAX, 1 process, 1 device", "jax-1", 1),
    ("JAX mesh, 1 process, 2 devices", "jax-mesh", 1),
    ("JAX, 2 processes (jax.distributed)", "jax", 2),
]


def launch(engine: str, size: int, reps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    me = [str(Path(__file__).resolve()), "--worker", engine, "--reps", str(reps)]
    if engine == "mpi":
        cmds = [[shutil.which("mpiexec") or "mpiexec", "-n", str(size), sys.executable, *me]]
    elif engine == "torch":
        cmds = [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(size), *me]]
    elif engine == "jax":
        port = free_port()
        cmds = [[sys.executable, *me, "--rank", str(r), "--size", str(size), "--port", str(port)] for r in range(size)]
    else:
        cmds = [[sys.executable, *me]]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
             for c in cmds]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    lines = [line for out in outs for line in out.splitlines() if line.startswith("RESULT ")]
    if len(lines) != 1:
        raise SystemExit(f"{engine}: no result\n" + "\n".join(o[-3000:] for o in outs))
    return json.loads(lines[0][7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", default=None)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.worker == "jax":
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{args.port}", num_processes=args.size, process_id=args.rank)
    if args.worker:
        worker(args.worker, args.reps, args.rank, args.size)
        return
    print(f"reps={args.reps}, load average before: {os.getloadavg()[0]:.2f}")
    print("| configuration | products / s | ms / product | collective, ms / product |")
    print("|---|---:|---:|---:|")
    for label, engine, size in CONFIGS:
        r = launch(engine, size, args.reps)
        coll = "inside XLA" if engine == "jax-mesh" else ("-" if size == 1 else f"{1e3 * r['collective']:.2f}")
        print(f"| {label} | {1 / r['seconds']:.1f} | {1e3 * r['seconds']:.2f} | {coll} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
