"""Worker of tests/test_jax_sharding.py (run in fresh interpreters: JAX reads its device count and distributed
settings once); not a test module.

``python tests/jax_dist_worker.py mesh OUT``: with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``, the
operator of a float64 MLP over all the data on one device and the same with ``comm=Mesh(4 devices)``; writes both
results to OUT.json.  ``python tests/jax_dist_worker.py process OUT RANK P PORT``: one of P JAX processes
(``jax.distributed.initialize``, gloo CPU collectives), each with its unequal shard, ``comm="jax"``.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from mpi_worker import SEED_HUTCH, SEED_SLQ, shard_bounds

import hessop

jax.config.update("jax_enable_x64", True)
N, BATCH = 96, 16


def problem() -> tuple:
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((N, 6)), rng.integers(0, 3, N)
    params = {"w1": 0.5 * rng.standard_normal((6, 12)), "b1": np.zeros(12), "w2": 0.5 * rng.standard_normal((12, 3)),
              "b2": np.zeros(3)}

    def loss(p, batch):
        xb, yb = batch
        logits = jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, yb[:, None], 1)[:, 0])

    return loss, params, x, y


def results(H: hessop.HessianOperator) -> dict:
    lan = hessop.lanczos(H, k=3)
    tr = hessop.trace(H, max_hvp=30, seed=SEED_HUTCH)
    d = hessop.slq(H, n_iter=15, max_hvp=30, seed=SEED_SLQ)
    hv = H.hvp(H.asarray(np.linspace(-1, 1, H.n)))
    return {"lanczos": lan.eigenvalues.tolist(), "n_hvp": lan.n_hvp, "trace": float(tr.estimate),
            "slq": np.concatenate(d.nodes).tolist(), "hvp": H.to_numpy(hv).tolist(), "type": type(hv).__name__,
            "describe": repr(H)}


def batches(x: np.ndarray, y: np.ndarray, lo: int, hi: int) -> list:
    return [(jnp.asarray(x[i: min(i + BATCH, hi)]), jnp.asarray(y[i: min(i + BATCH, hi)]))
            for i in range(lo, hi, BATCH)]


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    loss, params, x, y = problem()
    if mode == "mesh":
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
        full = hessop.HessianOperator.from_jax(loss, params, batches(x, y, 0, N))
        sharded = hessop.HessianOperator.from_jax(loss, params, batches(x, y, 0, N), comm=mesh)
        placed = next(iter(sharded.backend._batches()))[0]
        report = {"devices": len(jax.devices()), "one_device": results(full), "mesh": results(sharded),
                  "batch_devices": len(placed.sharding.device_set)}
    else:
        rank, size, port = (int(a) for a in sys.argv[3:6])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", num_processes=size, process_id=rank)
        lo, hi = shard_bounds(N, size)[rank: rank + 2]
        H = hessop.HessianOperator.from_jax(loss, params, batches(x, y, lo, hi), comm="jax")
        report = {"rank": rank, "n_samples": H.backend.n_samples, "n_allreduce0": H.backend.n_allreduce,
                  **results(H), "n_allreduce": H.backend.n_allreduce}
    with open(out, "w") as f:
        json.dump(report, f)
