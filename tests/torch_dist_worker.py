"""Worker launched by tests/test_torch_distributed.py under ``torchrun --nproc_per_node P``; not a test module.

``python -m torch.distributed.run --nproc_per_node P tests/torch_dist_worker.py solve WORKDIR``: every rank joins
the default gloo group, loads the problem pytest saved in WORKDIR (a trained float64 SmallResNet and its digits),
keeps its own unequal shard (the shards of tests/mpi_worker.py), builds ``from_torch(..., comm="torch")`` and runs
Lanczos, the trace, SLQ, SciPy's eigsh and a block product; each rank writes what it found to
``WORKDIR/rank<r>of<P>.json`` (floats written with ``repr``: exact).

Failure modes (rank 1 fails in its 4th product while the others wait in the all_reduce; ``comm_timeout=3``):
``raise``, ``kill`` (SIGKILL), ``hang`` (sleeps forever), ``hang-build`` (never reaches the construction's
exchange).  The job must end non-zero within 60 s.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as sla
import torch
import torch.distributed as dist
from mpi_worker import SEED_BLOCK, SEED_HUTCH, SEED_SLQ, failing_operator, load_shard, local_matrix, shard_bounds

import hessop
from hessop.mpi import reduce_operator


def solve(workdir: Path) -> None:
    rank, size = dist.get_rank(), dist.get_world_size()
    model, batches, local_samples = load_shard(workdir, rank, size)
    H = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), batches, comm="torch")
    out: dict = {"rank": rank, "size": size, "local_samples": local_samples, "n_samples": H.backend.n_samples,
                 "describe": repr(H)}
    try:  # an analysis that needs the loss is refused: it would see this rank's shard only
        H.model_backend("landscape")
    except ValueError as e:
        out["shard_only_message"] = str(e)

    # every all_reduce goes through the process group: count them, and the solver's product calls
    calls, reduces, real_all_reduce = [0], [0], dist.all_reduce

    def all_reduce(*args, **kwargs):
        reduces[0] += 1
        return real_all_reduce(*args, **kwargs)

    dist.all_reduce = all_reduce
    for name in ("hvp", "hvp_block"):
        f = getattr(H.backend, name)
        setattr(H.backend, name, lambda v, f=f: (calls.__setitem__(0, calls[0] + 1), f(v))[1])

    res = hessop.lanczos(H, k=5)
    out["lanczos"] = {"eigenvalues": res.eigenvalues.tolist(), "n_hvp": res.n_hvp, "converged": res.converged.tolist()}
    tr = hessop.trace(H, max_hvp=40, seed=SEED_HUTCH)
    out["trace"] = {"estimate": float(tr.estimate), "n_hvp": int(tr.n_hvp)}
    d = hessop.slq(H, n_iter=20, max_hvp=40, seed=SEED_SLQ)
    out["slq"] = {"nodes": np.concatenate(d.nodes).tolist(), "weights": np.concatenate(d.weights).tolist()}
    v0 = np.random.default_rng(SEED_BLOCK).standard_normal(H.n)
    out["eigsh"] = np.sort(sla.eigsh(H, k=3, which="LA", v0=v0, tol=1e-10)[0]).tolist()
    V = H.asarray(np.random.default_rng(SEED_BLOCK).standard_normal((H.n, 3)))
    out["block"] = H.to_numpy(H.hvp_block(V)).ravel()[::97].tolist()
    out["n_all_reduce"], out["n_product_calls"], out["n_hvp"] = reduces[0], calls[0], H.n_hvp
    dist.all_reduce = real_all_reduce

    # a progress bar (rank 0 only) and a checkpoint (rank 0 writes, reads and broadcasts): a second call returns
    # the finished result on every rank, with no product
    ck = workdir / f"hutchinson{size}.npz"
    est = hessop.hutchinson(H, max_hvp=6, seed=SEED_HUTCH, progress=True, checkpoint=ck)
    before = H.n_hvp
    again = hessop.hutchinson(H, max_hvp=6, seed=SEED_HUTCH, checkpoint=ck)
    out["checkpoint"] = [again.estimate == est.estimate, H.n_hvp == before]

    # operators without a sample count are summed over the ranks (host buffers through gloo)
    S = reduce_operator(hessop.HessianOperator.from_matrix(local_matrix(rank)), "torch")
    out["summed"] = hessop.lanczos(S, k=3, which="LM").eigenvalues.tolist()
    # parameters that differ on one rank are refused on every rank
    other = copy.deepcopy(model)
    if rank == size - 1:
        with torch.no_grad():
            other.fc2.bias[0] += 1e-12
    try:
        hessop.HessianOperator.from_torch(other, torch.nn.CrossEntropyLoss(), batches, comm="torch")
        out["param_mismatch"] = None
    except ValueError as e:
        out["param_mismatch"] = str(e)
    (workdir / f"rank{rank}of{size}.json").write_text(json.dumps(out))


def fail(how: str) -> None:
    """Rank 1 fails in its 4th product (or, ``hang-build``, never builds the operator)."""
    rank = dist.get_rank()
    if how == "hang-build" and rank == 1:
        print("rank 1: never building the operator", flush=True)
        time.sleep(10 ** 6)
    H = reduce_operator(failing_operator(rank, how), "torch", comm_timeout=3.0)
    # the failure is counted from the solver's products: the product-error measurement's block (collective, the
    # same seeded vectors on every rank) would take rank 1's 4th single-vector product and shift the numbering
    H.product_error = 0
    hessop.lanczos(H, k=2)
    print(f"rank {rank}: finished, which it should not have", flush=True)


def nccl() -> None:
    """On GPUs: the product is all-reduced by NCCL in the CUDA buffer the local product returned (no host copy),
    and the reduced operator equals the full-data one."""
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank % torch.cuda.device_count())
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (60,), generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double().cuda()
    lo, hi = shard_bounds(len(x), size)[rank: rank + 2]
    loss = torch.nn.CrossEntropyLoss()
    H = hessop.HessianOperator.from_torch(model, loss, (x[lo:hi].cuda(), y[lo:hi].cuda()), comm="torch")
    full = hessop.HessianOperator.from_torch(model, loss, (x.cuda(), y.cuda()))
    seen, real_all_reduce = [], dist.all_reduce
    dist.all_reduce = lambda t, *a, **k: (seen.append((t.device.type, t.data_ptr())), real_all_reduce(t, *a, **k))[1]
    v = H.asarray(np.random.default_rng(0).standard_normal(H.n))
    hv = H.hvp(v)
    dist.all_reduce = real_all_reduce
    assert seen == [("cuda", hv.data_ptr())], seen  # reduced in place, in the returned device buffer
    expected = full.hvp(v)
    assert torch.allclose(hv, expected, rtol=0, atol=1e-12 * float(expected.abs().max())), (hv - expected).abs().max()
    print(f"rank {rank}: nccl ok", flush=True)


if __name__ == "__main__":
    mode, workdir = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_process_group("nccl" if mode == "nccl" else "gloo")
    if mode == "solve":
        solve(workdir)
    elif mode == "nccl":
        nccl()
    else:
        fail(mode)
    dist.destroy_process_group()
