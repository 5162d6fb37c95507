"""Data-parallel Hessian operators over MPI (mpi4py): every rank holds a shard of the data, one Allreduce per product.

Maths
-----
Split the N samples of a data set over the P ranks of a communicator, rank r holding N_r of them
(``sum_r N_r = N``; shards may be unequal).  For a mean-reduced loss the full-data Hessian is

    H = sum_r (N_r / N) H_r,        H_r = Hessian of the mean loss over rank r's N_r samples,

and for a sum-reduced loss ``H = sum_r H_r``.  Each rank computes its local product ``y_r = H_r v``, scales it by
its share ``w_r`` (``N_r / N`` or 1) and one ``Allreduce(SUM)`` of the flat n-vector gives every rank ``H v``
(the data-parallel scheme of the PyHessian paper, Yao et al. 2020, sec. 3, which its code does not ship).  The
global N comes from one collective at construction.  A block product ``H V`` reduces the whole (n, k) block in
one call.

Nothing else is communicated: hessop draws start and probe vectors on the host from a NumPy generator, so the same
seed gives bit-identical vectors on every rank, and since every rank then receives the same reduced product, every
rank runs the same solver through the same floating-point operations, takes the same decisions (convergence,
restarts) and returns the identical result.  No gradient is reduced.  Rank 0 can be the only one that prints.

Use
---
::

    from mpi4py import MPI
    import hessop
    from hessop.mpi import reduce_operator

    comm = MPI.COMM_WORLD
    H = hessop.HessianOperator.from_torch(model, loss_fn, my_batches, comm=comm)   # or:
    H = reduce_operator(hessop.HessianOperator.from_torch(model, loss_fn, my_batches), comm)
    res = hessop.lanczos(H, k=5)            # same call, same result on every rank
    if comm.rank == 0:
        print(res.eigenvalues)

and launch with ``mpiexec -n 4 python script.py``.  Every rank must build its operator and call the same solvers
with the same arguments in the same order (they are collective calls); every rank needs at least one sample.

Failures: if one rank raises while the others wait inside an Allreduce, the job would hang.  When a reduced
operator is built, hessop therefore installs a :data:`sys.excepthook` that prints the uncaught exception's
traceback prefixed with ``[hessop rank r/P]`` and calls ``MPI.COMM_WORLD.Abort(1)``, which ends every process of
the job (``abort_on_error=False`` leaves ``sys.excepthook`` alone).  ``python -m mpi4py script.py`` gives the same
protection for the whole script.  ``SystemExit`` (``sys.exit``) on a single rank is not an error and is not caught.
A rank that stops answering (a hang, a deadlock, a lost node) is caught by ``comm_timeout`` (default 300 s): every
collective is polled with a deadline, and a rank that waited that long names the ranks that did not arrive and
aborts the job.  A rank killed by a signal is noticed by ``mpiexec``, which ends the job.

GPU arrays are copied to host buffers for the Allreduce (device -> host -> Allreduce -> host -> device) unless
``cuda_aware=True``, which hands the device buffer itself to an MPI library built with CUDA support (after
synchronising the device stream, as mpi4py requires).  The ``mpich`` pip wheel is not CUDA-aware; an MPI library
that is not CUDA-aware given a device pointer crashes or returns garbage, so only set the flag when you know yours
is.  JAX arrays are immutable and always go through the host.
"""

from __future__ import annotations

from typing import Any

from hessop.backends.comm import as_communicator
from hessop.backends.mpi import DEFAULT_COMM_TIMEOUT, MPIBackend, install_abort_hook
from hessop.operator import HessianOperator, as_operator

__all__ = ["MPIBackend", "install_abort_hook", "reduce_operator"]


def reduce_operator(H: Any, comm: Any, *, cuda_aware: bool = False, abort_on_error: bool = True,
                    check_parameters: bool = True,
                    comm_timeout: float | None = DEFAULT_COMM_TIMEOUT) -> HessianOperator:
    """The full-data Hessian from this rank's local operator: every product is summed over ``comm``.

    Maths
    -----
    ``H v = sum_r w_r H_r v`` with one in-place ``Allreduce(SUM)`` of the flat vector per product (of the whole
    (n, k) block per block product).  ``w_r = N_r / N`` when the local operator is the Hessian of a mean loss
    (``reduction="mean"``: ``from_torch`` and ``from_jax`` default), with ``N = sum_r N_r`` from one collective at
    construction, so ranks may hold unequal shards; ``w_r = 1`` for ``reduction="sum"`` and for operators that have
    no sample count (``from_matrix``, ``from_function``, SciPy operators, arrays): those are *summed*,
    ``H = sum_r H_r``.  This is the data-parallel scheme described in the PyHessian paper (Yao et al. 2020).

    This is a collective call: every rank of ``comm`` must call it, with operators of the same size, dtype and
    reduction and, for backends that expose their parameters (torch), bit-identical parameters (all checked in the
    one collective; a mismatch raises ``ValueError`` on every rank).  Solvers then run unchanged; every rank
    must call them with the same arguments (same ``seed``) and gets the identical result.

    Parameters
    ----------
    H : HessianOperator (or anything :func:`hessop.as_operator` accepts)
        This rank's local operator (the Hessian over this rank's data only).
    comm : mpi4py.MPI.Intracomm, torch.distributed.ProcessGroup, "torch" or "jax"
        E.g. ``MPI.COMM_WORLD``; ``"torch"``: the default ``torch.distributed`` group (see :mod:`hessop.distributed`);
        anything :func:`hessop.backends.comm.as_communicator` takes.
    cuda_aware : bool
        Hand device (torch CUDA, CuPy) buffers to MPI directly.  Only for an MPI library built with CUDA support;
        default False: device arrays are staged through host buffers.
    abort_on_error : bool
        Install the communicator's excepthook (:func:`install_abort_hook` for MPI) so that an uncaught exception
        on one rank aborts the job instead of hanging it.  Default True.
    check_parameters : bool
        Compare a SHA-256 digest of the local backend's parameters across ranks (one pass over the parameters).
        Default True.
    comm_timeout : float or None
        Most seconds one collective (each product's Allreduce, the exchange at construction) waits for the other
        ranks; past it the rank aborts the job, naming the ranks that did not arrive and the product number.
        Default 300 (:data:`hessop.backends.mpi.DEFAULT_COMM_TIMEOUT`); ``None`` waits forever (blocking
        ``Allreduce``).  Raise it when one rank may legitimately spend longer than that between two products
        (very uneven shards, I/O on rank 0 between solver calls).  Cost: the collectives are non-blocking and
        polled, measured at the noise level per product (docs/benchmarks.md).

    Returns
    -------
    HessianOperator
        With an :class:`MPIBackend`; ``n_hvp`` counts products as usual (identical on every rank).

    Examples
    --------
    Each rank runs this under ``mpiexec -n 2 python script.py`` with its own shard of the data (skipped in the
    doctests: it initialises MPI and needs the other ranks):

    >>> import numpy as np
    >>> from mpi4py import MPI  # doctest: +SKIP
    >>> local = HessianOperator.from_matrix(np.eye(3) * (MPI.COMM_WORLD.Get_rank() + 1))  # doctest: +SKIP
    >>> H = reduce_operator(local, MPI.COMM_WORLD)  # doctest: +SKIP
    >>> H @ np.ones(3)  # on every rank: (1 + 2) * ones  # doctest: +SKIP
    array([3., 3., 3.])
    """
    communicator = as_communicator(comm, comm_timeout, cuda_aware=cuda_aware)
    if abort_on_error:
        communicator.install_abort_hook()
    op = as_operator(H)
    return HessianOperator(MPIBackend(op.backend, communicator, check_parameters=check_parameters))
