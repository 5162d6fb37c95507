"""Hessian eigenvalues of a network's loss over a data set sharded across MPI ranks.

Run from the repository root (``pip install 'hessop[mpi,torch]' scikit-learn``; the ``mpich`` wheel provides
``mpiexec``, no system MPI is needed)::

    OMP_NUM_THREADS=1 mpiexec -n 2 python -m mpi4py examples/mpi_spectrum.py

``-n`` sets the number of ranks (one per core is the sweet spot; OMP_NUM_THREADS=1 keeps each rank on one core).
``python -m mpi4py`` makes any uncaught exception abort the whole job; hessop also installs such a hook when a
reduced operator is built, so plain ``mpiexec -n 2 python examples/mpi_spectrum.py`` is safe as well.

What happens: rank 0 trains a small residual network on the bundled digits and broadcasts its parameters (every
rank must hold bit-identical parameters; hessop checks); each rank keeps its own share of the 1,797 images;
``from_torch(..., comm=COMM_WORLD)`` gives every rank the operator of the full-data Hessian (one Allreduce per
product); the solvers run unchanged on every rank and return the same numbers there; rank 0 prints.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from mpi4py import MPI

import hessop
from hessop.models.digits import SmallResNet, digits, train


def main() -> None:
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()

    x, y = digits(dtype=torch.float64)
    torch.manual_seed(0)
    model = SmallResNet().double()
    if rank == 0:
        train(model, x, y, steps=200)
    model.load_state_dict(comm.bcast(model.state_dict() if rank == 0 else None, root=0))
    model.eval()

    # this rank's shard (shards may differ in size; equal ones balance the work, so no rank waits for another)
    lo, hi = rank * len(x) // size, (rank + 1) * len(x) // size
    shard = [(x[i: min(i + 256, hi)], y[i: min(i + 256, hi)]) for i in range(lo, hi, 256)]

    H = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), shard, comm=comm)
    t0 = time.perf_counter()
    top = hessop.lanczos(H, k=5, seed=0)
    t_top = time.perf_counter() - t0
    bottom = hessop.lanczos(H, k=2, which="SA", seed=1)

    shards = comm.gather(hi - lo, root=0)
    if rank == 0:
        print(f"{size} ranks holding {shards} of {H.backend.n_samples} samples; {H.n:,} parameters")
        print(f"top-5 eigenvalues   {np.array2string(top.eigenvalues, precision=6)}  "
              f"({top.n_hvp} HVPs, {t_top:.2f} s, residuals <= {top.residuals.max():.1e})")
        print(f"most negative two   {np.array2string(bottom.eigenvalues, precision=6)}  ({bottom.n_hvp} HVPs)")
        print(f"time in Allreduce: {H.backend.allreduce_seconds:.3f} s over {H.backend.n_allreduce} calls "
              "(including waits for the slowest rank)")
    if hasattr(hessop, "hutchinson"):
        tr = hessop.hutchinson(H, max_hvp=50, seed=2)
        if rank == 0:
            print(f"trace (Hutchinson, 50 probes)  {tr.estimate:.6g}")


if __name__ == "__main__":
    main()
