"""``torch.distributed`` as a hessop communicator: one ``all_reduce`` per product on the tensor's own device.

Used by ``comm="torch"`` (the default process group, as ``torchrun`` sets it up) or ``comm=<ProcessGroup>`` in
:meth:`hessop.HessianOperator.from_torch` and :func:`hessop.distributed.reduce_operator`.  A product on a GPU is
summed by NCCL in the device buffer itself (no host staging); on CPU tensors gloo sums in place.  Failures end the
job the way ``torchrun`` expects: the failing process exits with status 1 (``os._exit``, after writing the reason
prefixed with ``[hessop rank r/P]``), and ``torchrun`` then stops the other workers and exits non-zero.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist

from hessop.backends.comm import DEFAULT_COMM_TIMEOUT, Communicator, Pending, exit_job

__all__ = ["TorchCommunicator"]


class TorchCommunicator(Communicator):
    """A ``torch.distributed`` process group.

    ``all_reduce(async_op=True)`` and ``all_gather(async_op=True)`` are polled with ``Work.is_completed`` against
    ``comm_timeout``.  The ranks waiting in a timed-out collective are found through the default group's key-value
    store (each writes a key, then reads the others'), which works whatever the group's backend.

    Parameters
    ----------
    group : "torch" or torch.distributed.ProcessGroup
        ``"torch"``: the default group.  ``torch.distributed.init_process_group`` must have been called (``torchrun``
        sets the environment it reads: ``init_process_group(backend="nccl")`` on GPUs, ``"gloo"`` on CPUs).
    timeout : float or None
        ``comm_timeout`` in seconds; default 300; None waits forever.

    Notes
    -----
    Host (NumPy) buffers, as ``from_matrix`` operators give, are wrapped without a copy for gloo; under NCCL they
    are copied to the current CUDA device and back.  torch tensors, on the CPU or a GPU, are reduced where they are.

    Examples
    --------
    Under ``torchrun --nproc_per_node 2 script.py`` (skipped here: it needs a process group):

    >>> import torch  # doctest: +SKIP
    >>> torch.distributed.init_process_group("gloo")  # doctest: +SKIP
    >>> c = TorchCommunicator("torch", timeout=60)  # doctest: +SKIP
    >>> c.allreduce(torch.full((3,), c.rank + 1.0), "a test sum")  # doctest: +SKIP
    tensor([3., 3., 3.])
    """

    collective = "all_reduce"
    abort_action = "os._exit(1); torchrun then stops the other workers"

    def __init__(self, group: Any = "torch", timeout: float | None = DEFAULT_COMM_TIMEOUT) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("comm='torch' needs an initialised default process group: call "
                               "torch.distributed.init_process_group(backend='nccl' on GPUs, 'gloo' on CPUs) first, "
                               "in a script launched by torchrun (which sets RANK, WORLD_SIZE, MASTER_ADDR, ...).")
        if group == "torch":
            group = None
        elif not isinstance(group, dist.ProcessGroup):
            raise TypeError(f"comm must be 'torch' or a torch.distributed ProcessGroup, got {type(group).__name__}")
        super().__init__(timeout)
        self.group = group
        self.backend = str(dist.get_backend(group))
        if self.rank < 0:
            raise ValueError("this process is not a member of the process group given as comm.")
        on_gpu = "nccl" in self.backend
        self._device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def size(self) -> int:
        return dist.get_world_size(self.group)

    def _device_ok(self, y: Any) -> bool:
        return True  # torch tensors are reduced on their own device (NCCL reads GPU memory, gloo CPU and GPU)

    def _start(self, start: Any, result: Any) -> Pending:
        if self.timeout is None:
            start().wait()
            return (lambda: True), result
        work = start()
        return work.is_completed, lambda: (work.wait(), result())[1]

    def _iallreduce(self, buf: Any) -> Pending:
        if isinstance(buf, torch.Tensor):
            tensor, result = buf, lambda: buf
        else:  # a host array: a view for gloo, a device copy for NCCL
            host = torch.from_numpy(buf)
            tensor = host.to(self._device)
            result = (lambda: buf) if tensor is host else (lambda: (host.copy_(tensor.cpu()), buf)[1])
        return self._start(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group, async_op=True),
                           result)

    def _iallgather(self, mine: np.ndarray) -> Pending:
        t = torch.from_numpy(mine).to(self._device)
        every = [torch.empty_like(t) for _ in range(self.size)]
        return self._start(lambda: dist.all_gather(every, t, group=self.group, async_op=True),
                           lambda: np.stack([e.cpu().numpy() for e in every]))

    def bcast(self, obj: Any, root: int = 0) -> Any:
        box = [obj]
        src = root if self.group is None else dist.get_global_rank(self.group, root)
        dist.broadcast_object_list(box, src=src, group=self.group, device=self._device)
        return box[0]

    def world(self) -> Communicator:
        return TorchCommunicator("torch", timeout=None)

    def alive(self) -> bool:
        return dist.is_initialized()

    def prefix(self) -> str:
        return f"[hessop rank {dist.get_rank()}/{dist.get_world_size()}] "

    def abort(self, message: str) -> NoReturn:
        """:func:`hessop.backends.comm.exit_job`: ``torchrun`` sees the failed worker and stops the others."""
        exit_job(message)

    def _waiting_ranks(self, key: str, listen: float) -> set[int] | None:
        """Through the default group's key-value store (the ``torchrun`` / ``init_process_group`` rendezvous
        store; torch offers no public accessor, so a missing one gives None: the ranks are then not named)."""
        try:
            from torch.distributed import distributed_c10d

            store = distributed_c10d._get_default_store()
            prefix = f"{key}/ranks{dist.get_process_group_ranks(self.group or dist.group.WORLD)}/"
            store.set(prefix + str(self.rank), "1")
        except Exception:  # noqa: BLE001 - the diagnosis is best effort; the job ends anyway
            return None
        waiting, end = {self.rank}, time.perf_counter() + listen
        with contextlib.suppress(Exception):
            while time.perf_counter() < end and len(waiting) < self.size:
                waiting |= {r for r in range(self.size) if r not in waiting and store.check([prefix + str(r)])}
                time.sleep(0.05)
        return waiting

    def describe(self) -> str:
        return f"torch.distributed({self.backend}, rank {self.rank}/{self.size})"
