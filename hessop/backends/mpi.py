"""The MPI backend: a rank's local backend whose products are summed over a communicator (one Allreduce each).

Depends only on :mod:`hessop.backends.base`; the user-facing API (:func:`hessop.mpi.reduce_operator`, the maths
and the failure handling) is documented in :mod:`hessop.mpi`.  mpi4py is imported when a backend is built or the
abort hook installed, never at import.
"""

from __future__ import annotations

import hashlib
import sys
import time
import traceback
from typing import Any

import numpy as np
from array_api_compat import is_cupy_array, is_numpy_array, is_torch_array

from hessop.backends.base import Backend

__all__ = ["MPIBackend", "install_abort_hook"]


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
        try:
            sys.stderr.write("\n".join(lines) + "\n")
            sys.stderr.flush()
        finally:
            world.Abort(1)

    sys.excepthook = hook
    _HOOK["installed"] = True


# ---------------------------------------------------------------------------------------------------- backend
class MPIBackend(Backend):
    """A rank's local backend whose products are summed over a communicator: ``H v = sum_r w_r H_r v``.

    Built by :func:`hessop.mpi.reduce_operator` and the constructors' ``comm=``.  ``n``, ``dtype``, ``name``, the
    namespace and host transfers are the local backend's; other attributes (``unflatten``, ``names``, ``device``,
    ...) are looked up on it too.

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
    """

    def __init__(self, local: Backend, comm: Any, *, cuda_aware: bool = False, check_parameters: bool = True) -> None:
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
        digest = _parameter_digest(local) if check_parameters else None
        info = comm.allgather((int(self.n), self.dtype.str, reduction,
                               None if local_n is None else int(local_n), digest))
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
        self.n_allreduce = 0
        self.allreduce_seconds = 0.0

    def __getattr__(self, item: str) -> Any:
        # only called when normal lookup fails: forward to the local backend (unflatten, names, device, ...)
        if item.startswith("__") or item == "local" or "local" not in self.__dict__:
            raise AttributeError(item)
        return getattr(self.__dict__["local"], item)

    # ------------------------------------------------------------------ products
    def hvp(self, v: Any) -> Any:
        return self._reduce(self.local.hvp(v))

    def hvp_block(self, V: Any) -> Any:
        return self._reduce(self.local.hvp_block(V))

    def _allreduce(self, buf: Any) -> None:
        MPI = self._MPI
        t0 = time.perf_counter()
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - t0
        self.n_allreduce += 1

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


def _parameter_digest(local: Backend) -> str | None:
    """SHA-256 of the local backend's parameters (``params``: a list of arrays, as TorchBackend has), or None when
    the backend exposes none."""
    params = getattr(local, "params", None)
    if not isinstance(params, (list, tuple)) or not params:
        return None
    h = hashlib.sha256()
    try:
        for p in params:
            h.update(np.ascontiguousarray(local.to_numpy(p)).tobytes())
    except (TypeError, AttributeError, ValueError, RuntimeError):
        return None
    return h.hexdigest()


def _synchronize(buf: Any) -> None:
    """Wait for the device stream that produced ``buf`` (CUDA-aware MPI reads the memory directly).  The array's
    library is necessarily imported already: it is looked up, not imported."""
    lib = sys.modules.get(type(buf).__module__.split(".")[0])
    if is_torch_array(buf):
        lib.cuda.current_stream(buf.device).synchronize()
    elif is_cupy_array(buf):
        lib.cuda.get_current_stream().synchronize()
