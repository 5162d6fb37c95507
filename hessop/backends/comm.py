"""Communicators: the few collectives a data-parallel operator needs, over MPI, torch.distributed or JAX processes.

A reduced operator (:class:`hessop.backends.mpi.MPIBackend`) talks to the other ranks only through a
:class:`Communicator`: one in-place sum of a buffer per product (:meth:`Communicator.allreduce`), one exchange of a
small description at construction (:meth:`Communicator.allgather`), a broadcast for checkpoints
(:meth:`Communicator.bcast`) and the end of the whole job on failure (:meth:`Communicator.abort`).  The deadline of
``comm_timeout``, the naming of the ranks that did not arrive and the excepthook that ends the job are written
once, here, for every engine; the engines supply only their non-blocking collectives.

Implementations: :class:`MPICommunicator` (mpi4py, below), :class:`hessop.backends.torch_dist.TorchCommunicator`
(``torch.distributed`` process groups: NCCL on GPUs, gloo on CPUs) and
:class:`hessop.backends.jax_mesh.JaxProcessCommunicator` (several JAX processes).  No engine is imported here at
import time.
"""

from __future__ import annotations

import abc
import contextlib
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np
from array_api_compat import is_cupy_array, is_numpy_array, is_torch_array

__all__ = ["DEFAULT_COMM_TIMEOUT", "Communicator", "MPICommunicator", "as_communicator"]

DEFAULT_COMM_TIMEOUT = 300.0
"""Seconds a rank waits in one collective (a product's all-reduce, the construction's exchange) for the others
before it ends the job naming the ranks that did not arrive."""

_INFO_BYTES = 1024  # fixed size of the pickled per-rank description exchanged at construction
_TIMEOUT_TAG = 7177  # tag of MPI's "I am waiting" messages of timed-out ranks

Pending = tuple[Callable[[], bool], Callable[[], Any]]
"""A started collective: ``(test, finish)``; ``test()`` is True once it completed, ``finish()`` then returns its
result (and raises the engine's error, e.g. a peer that died)."""


class Communicator(abc.ABC):
    """The collectives of a reduced operator over P ranks, each bounded by ``timeout`` seconds.

    Subclasses start non-blocking collectives (:meth:`_iallreduce`, :meth:`_iallgather`) and say how to end the
    job; this class waits for them with a deadline.

    Timeout
    -------
    Every collective is started non-blocking and polled: back-to-back for the first millisecond, then with sleeps
    growing to 0.2 ms (``timeout=None``: ``finish()`` blocks, no polling).  If it has not completed ``timeout``
    seconds after this rank entered it, the rank tells the others that it is waiting (:meth:`_waiting_ranks`),
    listens ``min(2, timeout / 2)`` s for theirs, writes ``[hessop rank r/P] timed out: rank(s) [..] of the
    communicator did not reach <the collective> within comm_timeout=t s`` to stderr and ends the job.

    Attributes
    ----------
    timeout : float or None
        ``comm_timeout``; None waits forever.
    collective : str
        The engine's name of an all-reduce, for messages (``"Allreduce"``, ``"all_reduce"``).
    abort_action : str
        How the job ends, for messages.

    Examples
    --------
    Under ``mpiexec -n 2 python script.py`` (skipped here: it needs two ranks), every rank sums its buffer in place:

    >>> from mpi4py import MPI  # doctest: +SKIP
    >>> c = as_communicator(MPI.COMM_WORLD, timeout=60)  # doctest: +SKIP
    >>> c.allreduce(np.full(3, c.rank + 1.0), "a test sum")  # doctest: +SKIP
    array([3., 3., 3.])
    >>> c.allgather(c.rank), c.describe()  # doctest: +SKIP
    ([0, 1], 'mpi(rank 0/2)')
    """

    collective = "all-reduce"
    abort_action = "exiting with status 1"

    def __init__(self, timeout: float | None) -> None:
        if timeout is not None:
            timeout = float(timeout)
            if not timeout > 0 or timeout == float("inf"):
                raise ValueError(f"comm_timeout must be a positive number of seconds or None (wait forever), got "
                                 f"{timeout}")
        self.timeout = timeout
        self._sequence = 0  # collectives started so far: the same number on every rank in step

    # ------------------------------------------------------------------ what an engine supplies
    @property
    @abc.abstractmethod
    def rank(self) -> int:
        """This process's rank in the communicator."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Number of ranks."""

    @abc.abstractmethod
    def _iallreduce(self, buf: Any) -> Pending:
        """Start the in-place sum of ``buf`` (a buffer from :meth:`writable` or a host array) over the ranks."""

    @abc.abstractmethod
    def _iallgather(self, mine: np.ndarray) -> Pending:
        """Start gathering every rank's uint8 vector of ``_INFO_BYTES``; ``finish()`` gives a (P, bytes) array."""

    @abc.abstractmethod
    def bcast(self, obj: Any, root: int = 0) -> Any:
        """``obj`` of rank ``root`` on every rank (pickled; blocking, no timeout: checkpoints only)."""

    @abc.abstractmethod
    def abort(self, message: str) -> NoReturn:
        """Write ``message`` to stderr and end the whole job with a non-zero status."""

    @abc.abstractmethod
    def world(self) -> Communicator:
        """A communicator over every process of the job, without timeout (for the excepthook)."""

    def install_abort_hook(self) -> None:
        """:func:`install_excepthook` over :meth:`world`: an uncaught exception on this rank ends the whole job."""
        install_excepthook(self.world())

    def alive(self) -> bool:
        """Whether the engine is still up (the excepthook falls back to Python's when it is not)."""
        return True

    def _waiting_ranks(self, key: str, listen: float) -> set[int] | None:
        """Tell the other ranks that this one waits in collective ``key``; the ranks heard from within ``listen``
        seconds (this one included), or None when the engine has no side channel to ask."""
        return None

    def _device_ok(self, y: Any) -> bool:
        """Whether a device array (torch CUDA, CuPy) can be handed to the engine as it is."""
        return False

    def describe(self) -> str:
        return f"{type(self).__name__}(rank {self.rank}/{self.size})"

    # ------------------------------------------------------------------ mpi4py-style names (checkpoints, progress)
    def Get_rank(self) -> int:  # noqa: N802 (mpi4py's name, so code written for an mpi4py communicator runs)
        """:attr:`rank`, under mpi4py's name."""
        return self.rank

    def Get_size(self) -> int:  # noqa: N802
        """:attr:`size`, under mpi4py's name."""
        return self.size

    def prefix(self) -> str:
        """``"[hessop rank r/P] "``, the start of every line this rank writes when the job fails."""
        return f"[hessop rank {self.rank}/{self.size}] "

    # ------------------------------------------------------------------ collectives
    def writable(self, y: Any, weight: float, dtype: np.dtype) -> Any:
        """A fresh contiguous copy of ``weight * y`` that :meth:`allreduce` sums in place on ``y``'s own device
        (NumPy, torch CPU tensors, device arrays the engine takes), or None: the caller then stages through the
        host (immutable JAX arrays, device arrays the engine cannot take)."""
        if is_numpy_array(y):
            return np.require(y * weight if weight != 1.0 else np.array(y, copy=True), dtype=dtype,
                              requirements=["C", "W"])
        if is_torch_array(y) and (y.device.type == "cpu" or self._device_ok(y)):
            return (y.detach() * weight).contiguous()
        if is_cupy_array(y) and self._device_ok(y):
            return (y * weight).copy(order="C")
        return None

    def allreduce(self, buf: Any, what: str) -> Any:
        """``buf`` summed over the ranks, in place where the array is mutable; returns the result.  ``what`` names
        the collective in a timeout message ("the all_reduce of product #4")."""
        return self._wait(self._iallreduce(buf), what)

    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's small picklable ``obj`` (at most about 1 KB), in rank order, through fixed-size buffers."""
        data = pickle.dumps(obj)
        if len(data) > _INFO_BYTES - 4:
            raise ValueError("internal: the per-rank description is too large to exchange")
        mine = np.zeros(_INFO_BYTES, dtype=np.uint8)
        mine[:4] = np.frombuffer(np.uint32(len(data)).tobytes(), dtype=np.uint8)
        mine[4: 4 + len(data)] = np.frombuffer(data, dtype=np.uint8)
        every = np.asarray(self._wait(self._iallgather(mine), "the exchange that builds the operator"))
        sizes = every[:, :4].copy().view(np.uint32)[:, 0]
        return [pickle.loads(every[r, 4: 4 + int(sizes[r])].tobytes()) for r in range(len(every))]

    def _wait(self, pending: Pending, what: str) -> Any:
        """Poll a started collective until it completes; end the job if it has not ``timeout`` s from now."""
        test, finish = pending
        self._sequence += 1
        if self.timeout is not None:
            t0 = time.perf_counter()
            spin_until, deadline, pause = t0 + 1e-3, t0 + self.timeout, 1e-5
            while not test():
                now = time.perf_counter()
                if now > deadline:
                    self._abort_after_timeout(what)
                if now > spin_until:
                    time.sleep(pause)
                    pause = min(2 * pause, 2e-4)
        return finish()

    def _abort_after_timeout(self, what: str) -> NoReturn:
        """Find out which ranks are waiting too, name the others, end the job."""
        waiting = self._waiting_ranks(f"hessop-waiting/{self._sequence}", min(2.0, self.timeout / 2))
        prefix = self.prefix()
        if waiting is None:
            who = f"rank {self.rank} waited in {what} for comm_timeout={self.timeout:g} s (which ranks did not " \
                  "arrive is unknown: this engine has no side channel to ask)"
        else:
            who = (f"rank(s) {sorted(set(range(self.size)) - waiting)} of the communicator did not reach {what} "
                   f"within comm_timeout={self.timeout:g} s (ranks {sorted(waiting)} were waiting there)")
        self.world().abort(
            f"{prefix}timed out: {who}. A rank that stopped answering (a hang, a deadlock, a lost node) or one much "
            "slower than the others: raise comm_timeout if the wait is legitimate.\n"
            f"{prefix}aborting the job ({self.abort_action})\n")


def exit_job(message: str) -> NoReturn:
    """Write ``message`` to stderr and leave with status 1 at once (``os._exit``: no exit handler may block on a
    collective that will never complete).  The launcher (``torchrun``, Slurm) sees the failed process and stops
    the others.

    Examples
    --------
    Skipped in the doctests: it ends this process.

    >>> exit_job("[hessop rank 1/2] giving up")  # doctest: +SKIP
    """
    try:
        sys.stderr.write(message)
        sys.stderr.flush()
        sys.stdout.flush()
    finally:
        os._exit(1)


# ---------------------------------------------------------------------------------------------------- excepthook
_HOOK: dict[str, Any] = {"installed": False, "previous": None}


def install_excepthook(world: Communicator) -> None:
    """Make an uncaught exception on any rank end the whole job instead of leaving the other ranks waiting.

    Replaces :data:`sys.excepthook` (once per process; later calls do nothing) with a hook that writes the
    traceback to stderr, every line prefixed with ``[hessop rank r/P]`` (``world.prefix()``), and calls
    ``world.abort``.  ``KeyboardInterrupt``, and exceptions once the engine has shut down, go to the previous hook.

    Examples
    --------
    Under ``torchrun`` (skipped here: it needs a process group, and it replaces this process's ``sys.excepthook``):

    >>> install_excepthook(as_communicator("torch"))  # doctest: +SKIP
    """
    if _HOOK["installed"]:
        return
    _HOOK["previous"] = sys.excepthook

    def hook(etype: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(etype, KeyboardInterrupt) or not world.alive():
            _HOOK["previous"](etype, value, tb)
            return
        prefix = world.prefix()
        text = "".join(traceback.format_exception(etype, value, tb))
        lines = [prefix + line for line in text.rstrip("\n").split("\n")]
        lines.append(prefix + f"uncaught exception: aborting the job ({world.abort_action})")
        world.abort("\n".join(lines) + "\n")

    sys.excepthook = hook
    _HOOK["installed"] = True


# ---------------------------------------------------------------------------------------------------- MPI
def mpi_module() -> Any:
    """mpi4py's ``MPI`` module, imported on first use (never when hessop is imported), or an ImportError that names
    what to install."""
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "hessop's MPI operators need mpi4py and an MPI library: pip install 'hessop[mpi]' (mpi4py and the mpich "
            "wheel, no system MPI needed)"
        ) from e
    return MPI


class MPICommunicator(Communicator):
    """An mpi4py intra-communicator: ``Iallreduce`` / ``Iallgather`` polled with ``Request.Test``; the waiting
    ranks are found by point-to-point messages (a context apart from the collectives); the job ends by
    ``MPI.COMM_WORLD.Abort(1)``.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        E.g. ``MPI.COMM_WORLD``.
    timeout : float or None
        ``comm_timeout`` in seconds; default :data:`DEFAULT_COMM_TIMEOUT` (300); None waits forever.
    cuda_aware : bool
        Hand device buffers (torch CUDA, CuPy) to MPI directly, after synchronising their stream.  Only for an MPI
        library built with CUDA support; default False (they are staged through the host).

    Examples
    --------
    Under ``mpiexec -n 2`` (skipped in the doctests: importing mpi4py initialises MPI):

    >>> from mpi4py import MPI  # doctest: +SKIP
    >>> c = MPICommunicator(MPI.COMM_WORLD, timeout=120)  # doctest: +SKIP
    >>> c.collective, c.timeout, c.size  # doctest: +SKIP
    ('Allreduce', 120, 2)
    """

    collective = "Allreduce"
    abort_action = "MPI.COMM_WORLD.Abort(1)"

    def __init__(self, comm: Any, timeout: float | None = DEFAULT_COMM_TIMEOUT, *, cuda_aware: bool = False) -> None:
        MPI = mpi_module()
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"comm must be an mpi4py communicator (e.g. mpi4py.MPI.COMM_WORLD), got "
                            f"{type(comm).__name__}")
        if comm == MPI.COMM_NULL:
            raise ValueError("comm is MPI.COMM_NULL: this process is not part of the communicator.")
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError("comm must be an intra-communicator (e.g. MPI.COMM_WORLD or comm.Split(...)); "
                            "inter-communicators are not supported.")
        super().__init__(timeout)
        self._MPI, self.comm, self.cuda_aware = MPI, comm, bool(cuda_aware)

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    def _device_ok(self, y: Any) -> bool:
        return self.cuda_aware

    def _iallreduce(self, buf: Any) -> Pending:
        MPI = self._MPI
        if is_torch_array(buf) and buf.device.type == "cpu":
            buf, out = buf.numpy(), buf  # reduced in place through its NumPy view
        else:
            out = buf
            if not is_numpy_array(buf):
                _synchronize(buf)  # CUDA-aware MPI reads the device memory directly
        if self.timeout is None:
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            return (lambda: True), (lambda: out)
        request = self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return request.Test, lambda: out

    def _iallgather(self, mine: np.ndarray) -> Pending:
        every = np.empty((self.size, mine.size), dtype=np.uint8)
        request = self.comm.Iallgather(mine, every)
        return request.Test, lambda: (request.Wait(), every)[1]

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def world(self) -> Communicator:
        return MPICommunicator(self._MPI.COMM_WORLD, timeout=None)

    def prefix(self) -> str:
        world = self._MPI.COMM_WORLD
        return f"[hessop rank {world.Get_rank()}/{world.Get_size()}] "

    def alive(self) -> bool:
        return bool(self._MPI.Is_initialized() and not self._MPI.Is_finalized())

    def abort(self, message: str) -> NoReturn:
        """Write ``message``, then ``MPI.COMM_WORLD.Abort(1)``.  The half-second pause lets mpiexec forward the
        message before the job is torn down (otherwise another rank's Abort can kill the forwarding first); it is
        paid only on the way out of a failed job."""
        try:
            sys.stderr.write(message)
            sys.stderr.flush()
            time.sleep(0.5)
        finally:
            self._MPI.COMM_WORLD.Abort(1)
        raise SystemExit(1)  # pragma: no cover - Abort does not return

    def _waiting_ranks(self, key: str, listen: float) -> set[int]:
        MPI, rank = self._MPI, self.rank
        with contextlib.suppress(MPI.Exception):
            for r in range(self.size):
                if r != rank:
                    self.comm.isend(rank, dest=r, tag=_TIMEOUT_TAG)
        waiting, end = {rank}, time.perf_counter() + listen
        with contextlib.suppress(MPI.Exception):
            while time.perf_counter() < end and len(waiting) < self.size:
                status = MPI.Status()
                if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TIMEOUT_TAG, status=status):
                    waiting.add(self.comm.recv(source=status.Get_source(), tag=_TIMEOUT_TAG))
                else:
                    time.sleep(1e-3)
        return waiting

    def describe(self) -> str:
        return f"mpi(rank {self.rank}/{self.size}{', cuda-aware' if self.cuda_aware else ''})"


def _synchronize(buf: Any) -> None:
    """Wait for the device stream that produced ``buf``.  The array's library is necessarily imported already: it
    is looked up, not imported."""
    lib = sys.modules.get(type(buf).__module__.split(".")[0])
    if is_torch_array(buf):
        lib.cuda.current_stream(buf.device).synchronize()
    elif is_cupy_array(buf):
        lib.cuda.get_current_stream().synchronize()


# ---------------------------------------------------------------------------------------------------- dispatch
def as_communicator(comm: Any, timeout: float | None = DEFAULT_COMM_TIMEOUT, *,
                    cuda_aware: bool = False) -> Communicator:
    """The :class:`Communicator` for what a user passes as ``comm=``.

    Parameters
    ----------
    comm : Communicator, mpi4py.MPI.Intracomm, torch.distributed.ProcessGroup, "torch" or "jax"
        An mpi4py communicator; a ``torch.distributed`` process group, or ``"torch"`` for the default group (after
        ``torch.distributed.init_process_group``, as under ``torchrun``); ``"jax"`` for every process of a
        multi-process JAX job (after ``jax.distributed.initialize``); a :class:`Communicator` is returned as is.
    timeout : float or None
        ``comm_timeout`` (seconds, default 300); None waits forever.
    cuda_aware : bool
        MPI only: hand device buffers to a CUDA-aware MPI (default False).  ``torch.distributed`` always reduces
        tensors on their own device.

    Raises
    ------
    TypeError
        For anything else, naming what is accepted.

    Examples
    --------
    >>> as_communicator(4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: comm must be an mpi4py communicator (e.g. mpi4py.MPI.COMM_WORLD), a torch.distributed process ...

    Under ``torchrun --nproc_per_node 2`` (skipped here: it needs a process group):

    >>> as_communicator("torch", timeout=60).describe()  # doctest: +SKIP
    'torch.distributed(gloo, rank 0/2)'
    """
    if isinstance(comm, Communicator):
        return comm
    module = type(comm).__module__.split(".")[0]
    if module == "mpi4py":
        return MPICommunicator(comm, timeout, cuda_aware=cuda_aware)
    if comm == "torch" or module == "torch":
        from hessop.backends.torch_dist import TorchCommunicator

        return TorchCommunicator(comm, timeout)
    if comm == "jax":
        from hessop.backends.jax_mesh import JaxProcessCommunicator

        return JaxProcessCommunicator(timeout)
    raise TypeError(f"comm must be an mpi4py communicator (e.g. mpi4py.MPI.COMM_WORLD), a torch.distributed "
                    f"process group, 'torch' (the default process group, as under torchrun) or 'jax' (every process "
                    f"of a jax.distributed job); got {type(comm).__name__}")
