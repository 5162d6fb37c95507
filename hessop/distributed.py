"""Data-parallel Hessian operators on the engine a job already runs: torch.distributed, JAX, or MPI.

Maths
-----
Split the N samples over P ranks, rank r holding N_r (``sum_r N_r = N``; shards may be unequal).  For a
mean-reduced loss ``H = sum_r (N_r / N) H_r`` (``H = sum_r H_r`` for a sum), so every product is

    H v = sum_r w_r H_r v,        w_r = N_r / N (mean) or 1 (sum),

one all-reduce of the flat n-vector (of the (n, k) block for a block product).  The global N comes from one
exchange at construction, which also checks that every rank has the same dimension, dtype, reduction and
bit-identical parameters.  Start and probe vectors are drawn on the host from a seeded NumPy generator, so they are
identical on every rank; every rank then receives the same sums, runs the same solver through the same
floating-point operations and returns the identical result.  No gradient is reduced.

Engines (``comm=`` of :meth:`hessop.HessianOperator.from_torch` / :meth:`~hessop.HessianOperator.from_jax`, or
:func:`reduce_operator`)
-----------------------------------------------------------------------------------------------------------------
``"torch"`` or a ``torch.distributed.ProcessGroup``
    ``torch.distributed.all_reduce`` on the product's own device: NCCL sums a GPU product in place (no host
    staging), gloo a CPU one.  Launch with ``torchrun --nproc_per_node P script.py`` after
    ``torch.distributed.init_process_group("nccl" or "gloo")``.
``jax.sharding.Mesh`` (one process, several devices; ``from_jax`` only)
    Every batch is split over the mesh's devices and each batch's product stays one jitted call; XLA inserts the
    reduction.  No communicator.
``"jax"`` (several processes, ``jax.distributed.initialize``)
    One jitted cross-process sum per product over a global array with one row per process.
an ``mpi4py`` communicator
    ``Allreduce`` (see :mod:`hessop.mpi`; device arrays are staged through the host unless ``cuda_aware=True``).

Failures
--------
A collective that has not completed after ``comm_timeout`` seconds (default 300) ends the job; the rank writes
``[hessop rank r/P] timed out: rank(s) [..] ... did not reach the all_reduce of product #j ...`` (the missing ranks
are named through MPI messages or torch's rendezvous store; JAX cannot name them).  An uncaught exception on any
rank ends the job (an excepthook installed when the operator is built: ``MPI.COMM_WORLD.Abort(1)`` under MPI,
``os._exit(1)`` under torch and JAX, after which ``torchrun`` stops the other workers).  A rank killed by a signal
is seen by ``mpiexec`` or ``torchrun`` itself.

Use
---
In a script launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ..., and
``LOCAL_RANK``): initialise the default process group (``torch.distributed.init_process_group("nccl")``), put each
rank on its GPU (``torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))``), build the operator over the rank's own
batches with ``H = hessop.HessianOperator.from_torch(model, loss_fn, my_batches, comm="torch")`` and call the solver
as in one process, ``res = hessop.lanczos(H, k=5)``: the same call gives the same result on every rank.

Examples
--------
Under ``torchrun --standalone --nproc_per_node 2 script.py`` (skipped in the doctests: it needs a process group),
each rank with its own shard of the data; the operator is the full-data one on every rank:

>>> import torch  # doctest: +SKIP
>>> import hessop  # doctest: +SKIP
>>> torch.distributed.init_process_group("gloo")  # doctest: +SKIP
>>> model, loss = torch.nn.Linear(3, 1).double(), torch.nn.MSELoss()  # doctest: +SKIP
>>> shard = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64))  # doctest: +SKIP
>>> H = hessop.HessianOperator.from_torch(model, loss, shard, comm="torch")  # doctest: +SKIP
>>> isinstance(H.backend, ReducedBackend), H.backend.comm.describe(), H.backend.weight  # doctest: +SKIP
(True, 'torch.distributed(gloo, rank 0/2)', 0.5)
"""

from __future__ import annotations

from hessop.backends.comm import DEFAULT_COMM_TIMEOUT, Communicator, as_communicator
from hessop.backends.mpi import MPIBackend as ReducedBackend
from hessop.mpi import reduce_operator

__all__ = ["DEFAULT_COMM_TIMEOUT", "Communicator", "ReducedBackend", "as_communicator", "reduce_operator"]
