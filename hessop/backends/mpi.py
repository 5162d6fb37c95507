"""The MPI backend: a rank's local backend whose products are summed over a communicator (one Allreduce each).

Depends only on :mod:`hessop.backends.base`; the user-facing API (:func:`hessop.mpi.reduce_operator`, the maths
and the failure handling) is documented in :mod:`hessop.mpi`.  mpi4py is imported when a backend is built or the
abort hook installed, never at import.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import time
import traceback
from typing import Any

import numpy as np
from array_api_compat import is_cupy_array, is_numpy_array, is_torch_array

from hessop.backends.base import Backend, WrapperFacts

__all__ = ["DEFAULT_COMM_TIMEOUT", "MPIBackend", "install_abort_hook"]

DEFAULT_COMM_TIMEOUT = 300.0
"""Seconds a rank waits in one collective (a product's Allreduce, the construction's exchange) for the others
before it aborts the job naming the ranks that did not arrive."""

_TIMEOUT_TAG = 7177  # tag of the "I am waiting" messages of timed-out ranks
_INFO_BYTES = 1024  # fixed size of the pickled per-rank description exchanged at construction


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "hessop's MPI operators need mpi4py and an MPI library: pip install 'hessop[mpi]' (mpi4py and the mpich "
            "wheel, no system MPI needed)"
        ) from e
    return MPI


# ---------------------------------------------------------------------------------------------------- abort hook
_HOOK: dict[str, Any] = {"installed": False, "previous": None}


def install_abort_hook() -> None:
    """Make an uncaught exception on any rank end the whole MPI job instead of leaving the other ranks waiting.

    Replaces :data:`sys.excepthook` (once; later calls do nothing) with a hook that writes the traceback to stderr,
    every line prefixed with ``[hessop rank r/P]`` (rank in ``MPI.COMM_WORLD``), flushes, and calls
    ``MPI.COMM_WORLD.Abort(1)``.  :func:`hessop.mpi.reduce_operator` and ``comm=`` constructors call it unless
    ``abort_on_error=False``.  The same protection without hessop: run the script as ``python -m mpi4py script.py``.

    Examples
    --------
    At the top of an MPI script (skipped in the doctests: it imports mpi4py, which initialises MPI, and replaces
    this process's ``sys.excepthook``):

    >>> install_abort_hook()  # doctest: +SKIP
    """
    if _HOOK["installed"]:
        return
    MPI = _mpi()
    _HOOK["previous"] = sys.excepthook

    def hook(etype: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(etype, KeyboardInterrupt) or not MPI.Is_initialized() or MPI.Is_finalized():
            _HOOK["previous"](etype, value, tb)
            return
        world = MPI.COMM_WORLD
        prefix = f"[hessop rank {world.Get_rank()}/{world.Get_size()}] "
        text = "".join(traceback.format_exception(etype, value, tb))
        lines = [prefix + line for line in text.rstrip("\n").split("\n")]
        lines.append(prefix + "uncaught exception: aborting the MPI job (MPI.COMM_WORLD.Abort(1))")
        _abort(world, "\n".join(lines) + "\n")

    sys.excepthook = hook
    _HOOK["installed"] = True


# ---------------------------------------------------------------------------------------------------- backend
def _abort(world: Any, message: str) -> None:
    """Write ``message`` to stderr and abort the whole job.  The half-second pause lets mpiexec forward the message
    before the job is torn down (otherwise another rank's Abort can kill the forwarding first); it is paid only on
    the way out of a failed job."""
    try:
        sys.stderr.write(message)
        sys.stderr.flush()
        time.sleep(0.5)
    finally:
        world.Abort(1)


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
    comm : mpi4py.MPI.Intracomm
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
    With a ``timeout`` every collective is non-blocking (``Iallreduce``, ``Iallgather``) and polled with
    ``Request.Test``: back-to-back for the first millisecond, then with sleeps growing to 0.2 ms.  If it has not
    completed ``timeout`` seconds after this rank entered it, the rank tells the others that it is waiting
    (point-to-point messages, which MPI keeps apart from collectives), listens ``min(2, timeout / 2)`` s for the
    same message from them, writes ``[hessop rank r/P] timed out: rank(s) [..] ... did not reach the Allreduce of
    product #j within comm_timeout=t s`` to stderr and calls ``MPI.COMM_WORLD.Abort(1)``.  A rank that raises is
    handled by :func:`install_abort_hook`; a rank killed by a signal is seen by ``mpiexec`` itself.

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
        MPI = _mpi()
        if not isinstance(local, Backend):
            raise TypeError(f"local must be a hessop Backend, got {type(local).__name__}")
        if isinstance(local, MPIBackend):
            raise ValueError("the operator is already reduced over a communicator; reducing it again would count "
                             "every rank's contribution P times. Pass the local (per-rank) operator.")
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"comm must be an mpi4py communicator (e.g. mpi4py.MPI.COMM_WORLD), got "
                            f"{type(comm).__name__}")
        if comm == MPI.COMM_NULL:
            raise ValueError("comm is MPI.COMM_NULL: this process is not part of the communicator.")
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError("comm must be an intra-communicator (e.g. MPI.COMM_WORLD or comm.Split(...)); "
                            "inter-communicators are not supported.")
        if timeout is not None:
            timeout = float(timeout)
            if not timeout > 0 or timeout == float("inf"):
                raise ValueError(f"comm_timeout must be a positive number of seconds or None (wait forever), got "
                                 f"{timeout}")
        self.timeout = timeout
        self._MPI = MPI
        self.local = local
        self.comm = comm
        self.cuda_aware = bool(cuda_aware)
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
        info = self._allgather((int(self.n), self.dtype.str, reduction, None if local_n is None else int(local_n),
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
                            "model.load_state_dict(comm.bcast(model.state_dict(), root=0)) before building the "
                            "operator (pass check_parameters=False to reduce_operator to skip this check)")
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

    def _allreduce(self, buf: Any) -> None:
        MPI = self._MPI
        t0 = time.perf_counter()
        self.n_allreduce += 1
        if self.timeout is None:
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        else:
            self._wait(self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), t0,
                       f"the Allreduce of product #{self.n_allreduce}")
        self.allreduce_seconds += time.perf_counter() - t0

    def _allgather(self, obj: Any) -> list[Any]:
        """``comm.allgather(obj)`` of a small picklable object, bounded by the timeout (fixed-size byte buffers)."""
        if self.timeout is None:
            return self.comm.allgather(obj)
        data = pickle.dumps(obj)
        if len(data) > _INFO_BYTES - 4:
            raise ValueError("internal: the per-rank description is too large to exchange")
        mine = np.zeros(_INFO_BYTES, dtype=np.uint8)
        mine[:4] = np.frombuffer(np.uint32(len(data)).tobytes(), dtype=np.uint8)
        mine[4: 4 + len(data)] = np.frombuffer(data, dtype=np.uint8)
        every = np.empty((self.comm.Get_size(), _INFO_BYTES), dtype=np.uint8)
        self._wait(self.comm.Iallgather(mine, every), time.perf_counter(), "the exchange that builds the operator")
        sizes = every[:, :4].copy().view(np.uint32)[:, 0]
        return [pickle.loads(every[r, 4: 4 + int(sizes[r])].tobytes()) for r in range(len(every))]

    def _wait(self, request: Any, t0: float, what: str) -> None:
        """Poll ``request`` until it completes; abort the job if it has not ``timeout`` s after ``t0``."""
        spin_until, deadline, pause = t0 + 1e-3, t0 + self.timeout, 1e-5
        while not request.Test():
            now = time.perf_counter()
            if now > deadline:
                self._abort_after_timeout(what)
            if now > spin_until:
                time.sleep(pause)
                pause = min(2 * pause, 2e-4)

    def _abort_after_timeout(self, what: str) -> None:
        """Find out which ranks are waiting too (they send the same message), name the others, abort the job."""
        MPI, diag = self._MPI, self.comm  # point-to-point messages: a context apart from the collectives
        rank, size = diag.Get_rank(), diag.Get_size()
        world = MPI.COMM_WORLD
        with contextlib.suppress(MPI.Exception):
            for r in range(size):
                if r != rank:
                    diag.isend(rank, dest=r, tag=_TIMEOUT_TAG)
        waiting = {rank}
        end = time.perf_counter() + min(2.0, self.timeout / 2)
        with contextlib.suppress(MPI.Exception):
            while time.perf_counter() < end and len(waiting) < size:
                status = MPI.Status()
                if diag.Iprobe(source=MPI.ANY_SOURCE, tag=_TIMEOUT_TAG, status=status):
                    waiting.add(diag.recv(source=status.Get_source(), tag=_TIMEOUT_TAG))
                else:
                    time.sleep(1e-3)
        missing = sorted(set(range(size)) - waiting)
        prefix = f"[hessop rank {world.Get_rank()}/{world.Get_size()}] "
        _abort(
            world,
            f"{prefix}timed out: rank(s) {missing} of the communicator did not reach {what} within "
            f"comm_timeout={self.timeout:g} s (ranks {sorted(waiting)} were waiting there). A rank that stopped "
            "answering (a hang, a deadlock, a lost node) or one much slower than the others: raise comm_timeout if "
            "the wait is legitimate.\n"
            f"{prefix}aborting the MPI job (MPI.COMM_WORLD.Abort(1))\n")

    def _reduce(self, y: Any) -> Any:
        """``sum_r w_r y_r`` in one in-place Allreduce on a contiguous buffer, returned as a native array."""
        w = self.weight
        if is_numpy_array(y):
            buf = np.require(y * w if w != 1.0 else np.array(y, copy=True), dtype=self.dtype, requirements=["C", "W"])
            self._allreduce(buf)
            return buf
        if is_torch_array(y) and y.device.type == "cpu":
            buf = (y.detach() * w).contiguous()  # a fresh tensor: reduced in place through its NumPy view
            self._allreduce(buf.numpy())
            return buf
        if self.cuda_aware and (is_torch_array(y) or is_cupy_array(y)):
            buf = (y.detach() * w).contiguous() if is_torch_array(y) else (y * w).copy(order="C")
            _synchronize(buf)
            self._allreduce(buf)
            return buf
        # device arrays without a CUDA-aware MPI, immutable arrays (JAX) and anything else: stage through the host
        host = np.array(self.local.to_numpy(y), dtype=self.dtype, order="C", copy=True)
        if w != 1.0:
            host *= self.dtype.type(w)
        self._allreduce(host)
        return self.local.asarray(host)

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
        return (f"mpi(rank {self.comm.Get_rank()}/{self.comm.Get_size()}{share}"
                f"{', cuda-aware' if self.cuda_aware else ''}) over {self.local.describe()}")


def _synchronize(buf: Any) -> None:
    """Wait for the device stream that produced ``buf`` (CUDA-aware MPI reads the memory directly).  The array's
    library is necessarily imported already: it is looked up, not imported."""
    lib = sys.modules.get(type(buf).__module__.split(".")[0])
    if is_torch_array(buf):
        lib.cuda.current_stream(buf.device).synchronize()
    elif is_cupy_array(buf):
        lib.cuda.get_current_stream().synchronize()
