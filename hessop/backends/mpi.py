"""The reduced backend: a rank's local backend whose products are summed over a communicator (one all-reduce each).

The communicator is MPI (mpi4py), torch.distributed or JAX processes, behind :mod:`hessop.backends.comm`; the class
keeps its first name, ``MPIBackend``.  Depends only on :mod:`hessop.backends.base` and :mod:`hessop.backends.comm`;
the user-facing API (:func:`hessop.mpi.reduce_operator`, the maths and the failure handling) is documented in
:mod:`hessop.mpi` and :mod:`hessop.distributed`.  No engine is imported at import.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hessop.backends.base import Backend, WrapperFacts
from hessop.backends.comm import DEFAULT_COMM_TIMEOUT, MPICommunicator, as_communicator, mpi_module

__all__ = ["DEFAULT_COMM_TIMEOUT", "MPIBackend", "install_abort_hook"]

# ---------------------------------------------------------------------------------------------------- abort hook
def install_abort_hook() -> None:
    """Make an uncaught exception on any rank end the whole MPI job instead of leaving the other ranks waiting.

    Replaces :data:`sys.excepthook` (once; later calls do nothing) with a hook that writes the traceback to stderr,
    every line prefixed with ``[hessop rank r/P]`` (rank in ``MPI.COMM_WORLD``), flushes, and calls
    ``MPI.COMM_WORLD.Abort(1)`` (:func:`hessop.backends.comm.install_excepthook` over ``MPI.COMM_WORLD``).
    :func:`hessop.mpi.reduce_operator` and ``comm=`` constructors call it unless ``abort_on_error=False``.  The
    same protection without hessop: run the script as ``python -m mpi4py script.py``.

    Examples
    --------
    At the top of an MPI script (skipped in the doctests: it imports mpi4py, which initialises MPI, and replaces
    this process's ``sys.excepthook``):

    >>> install_abort_hook()  # doctest: +SKIP
    """
    MPICommunicator(mpi_module().COMM_WORLD, timeout=None).install_abort_hook()


# ---------------------------------------------------------------------------------------------------- backend
class MPIBackend(WrapperFacts, Backend):
    """A rank's local backend whose products are summed over a communicator: ``H v = sum_r w_r H_r v``.

    Built by :func:`hessop.mpi.reduce_operator` and the constructors' ``comm=``.  ``n``, ``dtype``, ``name``, the
    namespace, host transfers and the precision of the products (``product_eps``, ``product_dtype``,
    ``half_precision``) are the local backend's, and so is the parameter layout (:attr:`layout`, and ``names``,
    ``unflatten`` ... through :class:`~hessop.backends.base.WrapperFacts`): they are the same on every rank,
    which the construction checks.  What depends on the rank's shard of the data (the loss at a point, block
    backends) is not offered: :attr:`model_backend` is None, so that no analysis gets one rank's loss in place of
    the global one (``H.backend.local`` is the rank's own backend).

    Attributes
    ----------
    local : Backend
        This rank's backend.
    comm : hessop.backends.comm.Communicator
        MPI, torch.distributed or JAX processes (:func:`hessop.backends.comm.as_communicator`); it has mpi4py's
        ``Get_rank()``, ``Get_size()`` and ``bcast``.
    weight : float
        This rank's share ``w_r``: ``N_r / N`` for ``reduction="mean"``, else 1.
    n_samples : int or None
        Global sample count N (``None`` for operators without one, e.g. ``from_matrix``).
    local_n_samples : int or None
        ``N_r``.
    reduction : str
        ``"mean"`` or ``"sum"``.
    n_allreduce : int
        Allreduce calls made so far (one per product or block product).
    allreduce_seconds : float
        Wall time spent in them, including the wait for the slowest rank (load imbalance shows up here).
    timeout : float or None
        ``comm_timeout``: the most seconds one collective may wait (``None``: wait forever).

    Timeout
    -------
    With a ``timeout`` every collective is non-blocking and polled (:class:`hessop.backends.comm.Communicator`):
    a rank that waited ``timeout`` seconds names the ranks that did not arrive (``[hessop rank r/P] timed out:
    rank(s) [..] ... did not reach the Allreduce of product #j within comm_timeout=t s``) and ends the job.  A rank
    that raises is handled by the communicator's excepthook (:func:`install_abort_hook` for MPI); a rank killed by a
    signal is seen by ``mpiexec`` or ``torchrun`` itself.

    Examples
    --------
    Run under ``mpiexec -n 2 python script.py`` (skipped here: it needs an MPI launch), each rank with its own
    shard of the data; the products are the full-data ones on every rank:

    >>> import torch  # doctest: +SKIP
    >>> from mpi4py import MPI  # doctest: +SKIP
    >>> from hessop import HessianOperator  # doctest: +SKIP
    >>> model, loss = torch.nn.Linear(3, 1).double(), torch.nn.MSELoss()  # doctest: +SKIP
    >>> shard = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64))  # doctest: +SKIP
    >>> H = HessianOperator.from_torch(model, loss, shard, comm=MPI.COMM_WORLD)  # doctest: +SKIP
    >>> type(H.backend).__name__, H.backend.comm.size, H.backend.weight  # doctest: +SKIP
    ('MPIBackend', 2, 0.5)
    """

    def __init__(self, local: Backend, comm: Any, *, cuda_aware: bool = False, check_parameters: bool = True,
                 timeout: float | None = DEFAULT_COMM_TIMEOUT) -> None:
        if not isinstance(local, Backend):
            raise TypeError(f"local must be a hessop Backend, got {type(local).__name__}")
        if isinstance(local, MPIBackend):
            raise ValueError("the operator is already reduced over a communicator; reducing it again would count "
                             "every rank's contribution P times. Pass the local (per-rank) operator.")
        self.comm = as_communicator(comm, timeout, cuda_aware=cuda_aware)
        self.timeout = self.comm.timeout
        self.local = local
        self.cuda_aware = bool(getattr(self.comm, "cuda_aware", False))
        self.n = local.n
        self.dtype = np.dtype(local.dtype)
        self.name = local.name

        reduction = getattr(local, "reduction", None)
        local_n = getattr(local, "n_samples", None)
        if reduction not in ("mean", "sum"):
            reduction = "sum"  # from_matrix / from_function: the operators are summed
        if reduction == "mean" and local_n is None:
            raise ValueError("the local operator declares reduction='mean' but has no n_samples attribute: hessop "
                             "cannot weight it by its share of the data.")
        # one collective at construction: dimension, dtype, reduction and sample count of every rank
        digest = local.layout.parameter_digest() if check_parameters and local.layout is not None else None
        self.n_allreduce = 0
        info = self.comm.allgather((int(self.n), self.dtype.str, reduction, None if local_n is None else int(local_n),
                                    digest))
        problems = []
        if len({i[0] for i in info}) > 1:
            problems.append(f"the number of parameters differs between ranks ({[i[0] for i in info]}): every rank "
                            "must build the same model with the same parameter selection")
        if len({i[1] for i in info}) > 1:
            problems.append(f"the dtype differs between ranks ({[np.dtype(i[1]).name for i in info]})")
        if len({i[2] for i in info}) > 1:
            problems.append(f"the reduction differs between ranks ({[i[2] for i in info]})")
        digests = [i[4] for i in info]
        if not problems and None not in digests and len(set(digests)) > 1:
            same = [r for r, d in enumerate(digests) if d == digests[0]]
            problems.append(f"the parameters differ between ranks (ranks {same} agree with rank 0, the others do "
                            "not): every rank must hold bit-identical parameters, e.g. "
                            "model.load_state_dict(comm.bcast(model.state_dict(), root=0)) under MPI, "
                            "torch.distributed.broadcast(p, src=0) for each parameter under torch, before building "
                            "the operator (pass check_parameters=False to reduce_operator to skip this check)")
        if problems:
            raise ValueError("cannot reduce the operator over the communicator: " + "; ".join(problems) + ".")
        self.reduction = reduction
        self.local_n_samples = None if local_n is None else int(local_n)
        counts = [i[3] for i in info]
        self.n_samples = None if any(c is None for c in counts) else int(sum(counts))
        if reduction == "mean":
            if self.n_samples is None or self.n_samples <= 0:
                raise ValueError("reduction='mean' needs a positive sample count on every rank.")
            self.weight = self.local_n_samples / self.n_samples
        else:
            self.weight = 1.0
        self.allreduce_seconds = 0.0

    # ------------------------------------------------------------------ the local backend's facts
    @property
    def wrapped(self) -> Backend:
        """The local backend, whose precision and layout are this one's (:class:`WrapperFacts`)."""
        return self.local

    # ------------------------------------------------------------------ products
    def hvp(self, v: Any) -> Any:
        return self._reduce(self.local.hvp(v))

    def hvp_block(self, V: Any) -> Any:
        return self._reduce(self.local.hvp_block(V))

    def _allreduce(self, buf: Any) -> Any:
        t0 = time.perf_counter()
        self.n_allreduce += 1
        out = self.comm.allreduce(buf, f"the {self.comm.collective} of product #{self.n_allreduce}")
        self.allreduce_seconds += time.perf_counter() - t0
        return out

    def _reduce(self, y: Any) -> Any:
        """``sum_r w_r y_r`` in one in-place all-reduce on a contiguous buffer on ``y``'s device where the
        communicator takes it (NumPy, torch tensors, CUDA-aware device arrays), returned as a native array."""
        buf = self.comm.writable(y, self.weight, self.dtype)
        if buf is not None:
            return self._allreduce(buf)
        # device arrays the communicator cannot take, immutable arrays (JAX) and anything else: through the host
        host = np.array(self.local.to_numpy(y), dtype=self.dtype, order="C", copy=True)
        if self.weight != 1.0:
            host *= self.dtype.type(self.weight)
        return self.local.asarray(self._allreduce(host))

    # ------------------------------------------------------------------ transfers
    def asarray(self, x: np.ndarray) -> Any:
        return self.local.asarray(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return self.local.to_numpy(x)

    @property
    def namespace(self) -> Any:
        return self.local.namespace

    def describe(self) -> str:
        share = f", share {self.local_n_samples}/{self.n_samples}" if self.reduction == "mean" else ", summed"
        return f"{self.comm.describe()}{share} over {self.local.describe()}"

