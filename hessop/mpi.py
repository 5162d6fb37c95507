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

GPU arrays are copied to host buffers for the Allreduce (device -> host -> Allreduce -> host -> device) unless
``cuda_aware=True``, which hands the device buffer itself to an MPI library built with CUDA support (after
synchronising the device stream, as mpi4py requires).  The ``mpich`` pip wheel is not CUDA-aware; an MPI library
that is not CUDA-aware given a device pointer crashes or returns garbage, so only set the flag when you know yours
is.  JAX arrays are immutable and always go through the host.
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
from hessop.operator import HessianOperator, as_operator

__all__ = ["MPIBackend", "install_abort_hook", "reduce_operator"]


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
    ``MPI.COMM_WORLD.Abort(1)``.  :func:`reduce_operator` calls it unless ``abort_on_error=False``.  The same
    protection without hessop: run the script as ``python -m mpi4py script.py``.
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

    Built by :func:`reduce_operator`.  ``n``, ``dtype``, ``name``, the namespace and host transfers are the local
    backend's; other attributes (``unflatten``, ``names``, ``device``, ...) are looked up on it too.

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


# ---------------------------------------------------------------------------------------------------- public API
def reduce_operator(H: Any, comm: Any, *, cuda_aware: bool = False, abort_on_error: bool = True,
                    check_parameters: bool = True) -> HessianOperator:
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
    comm : mpi4py.MPI.Intracomm
        E.g. ``MPI.COMM_WORLD``.
    cuda_aware : bool
        Hand device (torch CUDA, CuPy) buffers to MPI directly.  Only for an MPI library built with CUDA support;
        default False: device arrays are staged through host buffers.
    abort_on_error : bool
        Install :func:`install_abort_hook` so that an uncaught exception on one rank aborts the job instead of
        hanging it.  Default True.
    check_parameters : bool
        Compare a SHA-256 digest of the local backend's parameters across ranks (one pass over the parameters).
        Default True.

    Returns
    -------
    HessianOperator
        With an :class:`MPIBackend`; ``n_hvp`` counts products as usual (identical on every rank).
    """
    if abort_on_error:
        install_abort_hook()
    op = as_operator(H)
    return HessianOperator(MPIBackend(op.backend, comm, cuda_aware=cuda_aware, check_parameters=check_parameters))
