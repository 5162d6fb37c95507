"""JAX data parallelism: batches sharded over a device mesh (one process), and several JAX processes.

* ``from_jax(loss_fn, params, data, comm=mesh)`` with a ``jax.sharding.Mesh``: :class:`MeshJaxBackend`.  Every
  batch is placed with its leading (sample) axis split over all the mesh's devices, the parameters and vectors are
  replicated, and each batch's product stays the one jitted call of :class:`hessop.backends.jax.JaxBackend`: XLA's
  SPMD partitioner inserts the reduction over the devices.  No hessop collective is involved.  The GGN, Fisher and
  empirical Fisher (``curvature=``) likewise: :class:`MeshJaxCurvatureBackend`, the jitted products of
  :class:`hessop.backends.jax_curvature.JaxCurvatureBackend` on sharded batches (the Fisher's draws are the same
  as on one device: JAX's random numbers do not depend on the sharding).
* ``comm="jax"`` after ``jax.distributed.initialize`` (several processes, each with its own shard):
  :class:`JaxProcessCommunicator`, a :class:`hessop.backends.comm.Communicator` whose sum is one jitted reduction
  over a global array holding one row per process (XLA's cross-process collectives: NCCL on GPUs, gloo on CPUs with
  ``jax.config.update("jax_cpu_collectives_implementation", "gloo")``).
"""

from __future__ import annotations

import functools
import pickle
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hessop.backends.comm import DEFAULT_COMM_TIMEOUT, Communicator, Pending, exit_job
from hessop.backends.jax import JaxBackend
from hessop.backends.jax_curvature import JaxCurvatureBackend
from hessop.backends.settings import JaxSettings

__all__ = ["JaxProcessCommunicator", "MeshJaxBackend", "MeshJaxCurvatureBackend"]


class _Sharded:
    """What a mesh adds to a JAX backend (the class after it in the MRO): batches sharded over the mesh's devices
    by their leading axis, the parameters and vectors replicated."""

    mesh: Mesh

    def __init__(self, *args: Any, mesh: Mesh, **kwargs: Any) -> None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
        self.mesh = mesh
        self._data_sharding = NamedSharding(mesh, P(mesh.axis_names))
        self._placed, self._check_pending = False, False
        super().__init__(*args, **kwargs)  # its determinism check waits until the parameters are placed
        self.device = NamedSharding(mesh, P())  # parameters and vectors: replicated on every device
        self.theta = jax.device_put(self.theta, self.device)
        self._placed = True
        if self._check_pending:
            self._check_deterministic()

    def _check_deterministic(self) -> None:
        if not self._placed:
            self._check_pending = True
            return
        super()._check_deterministic()

    def _batches(self) -> Any:
        for batch in super()._batches():
            sizes = {int(np.shape(leaf)[0]) for leaf in jax.tree_util.tree_leaves(batch) if np.ndim(leaf)}
            if any(s % self.mesh.size for s in sizes):
                raise ValueError(f"a batch of {sorted(sizes)} samples cannot be split evenly over the "
                                 f"{self.mesh.size} devices of the mesh: use batch sizes that are multiples of "
                                 f"{self.mesh.size} (the last batch of a loader included: drop or pad it).")
            yield jax.device_put(batch, self._data_sharding)

    def _mesh_words(self) -> str:
        return f"{self.mesh.size} devices over axes {self.mesh.axis_names}"


class MeshJaxBackend(_Sharded, JaxBackend):
    """:class:`~hessop.backends.jax.JaxBackend` with every batch sharded over the devices of ``mesh``.

    Maths
    -----
    Unchanged: ``H = sum_b w_b H_b`` over the batches; a batch of B samples is split into ``B / D`` samples on each
    of the D devices, and the jitted product of the batch (the mean loss's forward-over-reverse derivative) is
    computed by XLA as the sum of the devices' partial products, one all-reduce inserted by the compiler.

    Parameters
    ----------
    loss_fn, params, data, settings
        As :class:`~hessop.backends.jax.JaxBackend`.
    mesh : jax.sharding.Mesh
        The devices; the batch's leading axis is split over all of its axes (``PartitionSpec(mesh.axis_names)``).
        Each batch's leading dimension must be a multiple of ``mesh.size``.

    Raises
    ------
    ValueError
        For a batch whose size is not a multiple of the number of devices.

    Examples
    --------
    Through :meth:`hessop.HessianOperator.from_jax` with ``comm=`` a mesh (here of one device; with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` a CPU has four):

    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> def loss(p, batch):
    ...     x, y = batch
    ...     return jnp.mean((x @ p["w"] - y) ** 2)
    >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> H = HessianOperator.from_jax(loss, {"w": jnp.zeros(2)}, (x, jnp.zeros(2)), comm=mesh)
    >>> type(H.backend).__name__, H.to_numpy(H.hvp(H.asarray(np.ones(2, dtype=np.float32))))
    ('MeshJaxBackend', array([1., 4.], dtype=float32))
    """

    def __init__(self, loss_fn: Any, params: Any, data: Any, settings: JaxSettings, *, mesh: Mesh) -> None:
        super().__init__(loss_fn, params, data, settings, mesh=mesh)

    def describe(self) -> str:
        return (f"jax mesh ({self._mesh_words()}, {len(self.shapes)} parameter arrays, {self.n_samples} samples, "
                f"reduction={self.reduction!r})")


class MeshJaxCurvatureBackend(_Sharded, JaxCurvatureBackend):
    """:class:`~hessop.backends.jax_curvature.JaxCurvatureBackend` (GGN, Fisher, empirical Fisher) with every batch
    sharded over the devices of ``mesh``, as :class:`MeshJaxBackend` for the Hessian: each batch's product is the
    one jitted call of the one-device backend on a sharded batch and XLA reduces over the devices.  Blocks
    (:meth:`restrict`) are one-device backends of the same block.

    Parameters
    ----------
    loss_fn, params, data, check_deterministic, curvature, model_fn, output_loss, mc_samples, fisher_seed
        As :class:`~hessop.backends.jax_curvature.JaxCurvatureBackend`.
    mesh : jax.sharding.Mesh
        As :class:`MeshJaxBackend`: each batch's leading dimension must be a multiple of ``mesh.size``.
    **kwargs
        ``reduction`` and ``batch_size``.

    Examples
    --------
    >>> from hessop import HessianOperator
    >>> def model_fn(p, inputs):
    ...     return inputs @ p["w"]
    >>> def loss(p, batch):
    ...     return jnp.mean((model_fn(p, batch[0]) - batch[1]) ** 2)
    >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> G = HessianOperator.from_jax(loss, {"w": jnp.zeros((2, 1))}, (x, jnp.zeros((2, 1))), comm=mesh,
    ...                              curvature="ggn", model_fn=model_fn, output_loss="mse")
    >>> type(G.backend).__name__, G @ np.ones(2, dtype=np.float32)
    ('MeshJaxCurvatureBackend', array([1., 4.], dtype=float32))
    """

    def describe(self) -> str:
        return f"jax mesh ({self._mesh_words()}, {JaxCurvatureBackend.describe(self).split('(', 1)[1]}"


class JaxProcessCommunicator(Communicator):
    """Every process of a multi-process JAX job (``jax.distributed.initialize``), one device each for the sums.

    A buffer is placed as row ``r`` of a global ``(P, ...)`` array sharded over one device per process, and one
    jitted ``sum(axis=0)`` with a replicated output gives every process the total on its own device (no host
    copy of JAX arrays).  Completion is polled with ``Array.is_ready()`` against ``comm_timeout``; JAX offers no
    side channel here, so a timeout does not name the missing ranks.  ``abort`` exits the process with status 1
    (``os._exit``); the job's launcher (Slurm, a shell loop) must stop the others.

    Parameters
    ----------
    timeout : float or None
        ``comm_timeout`` in seconds; default 300; None waits forever.

    Examples
    --------
    In each of two processes after ``jax.distributed.initialize(...)`` (skipped here: it needs several processes):

    >>> c = JaxProcessCommunicator(timeout=60)  # doctest: +SKIP
    >>> c.allreduce(jnp.full(3, c.rank + 1.0), "a test sum")  # doctest: +SKIP
    Array([3., 3., 3.], dtype=float32)
    """

    collective = "cross-process sum"

    def __init__(self, timeout: float | None = DEFAULT_COMM_TIMEOUT) -> None:
        if not jax.distributed.is_initialized():
            raise RuntimeError("comm='jax' needs a multi-process JAX job: call jax.distributed.initialize(...) in "
                               "every process first (on CPUs also jax.config.update("
                               "'jax_cpu_collectives_implementation', 'gloo')). For several devices of one process "
                               "pass comm=jax.sharding.Mesh(...) instead.")
        super().__init__(timeout)
        devices = [jax.local_devices(process_index=p)[0] for p in range(jax.process_count())]
        self._device = devices[jax.process_index()]
        mesh = Mesh(np.array(devices), ("processes",))
        self._rows, replicated = NamedSharding(mesh, P("processes")), NamedSharding(mesh, P())
        # compiled once per shape: the rows summed, or gathered, replicated on every process
        self._sum = jax.jit(functools.partial(jnp.sum, axis=0), out_shardings=replicated)
        self._gather = jax.jit(lambda rows: rows, out_shardings=replicated)

    @property
    def rank(self) -> int:
        return jax.process_index()

    @property
    def size(self) -> int:
        return jax.process_count()

    def writable(self, y: Any, weight: float, dtype: np.dtype) -> Any:
        """JAX arrays are summed where they are (a new array: they are immutable); others as the base class.  The
        local product is waited for first (JAX dispatches asynchronously), so that ``allreduce_seconds`` counts the
        collective and the wait for the other processes, not this process's own product."""
        if isinstance(y, jax.Array):
            y.block_until_ready()
            return y * jnp.asarray(weight, dtype=y.dtype) if weight != 1.0 else y
        return super().writable(y, weight, dtype)

    def _start(self, buf: Any, collective: Any) -> Pending:
        row = jax.device_put(jnp.asarray(buf)[None], self._device)
        rows = jax.make_array_from_single_device_arrays((self.size, *row.shape[1:]), self._rows, [row])
        local = collective(rows).addressable_data(0)
        host = isinstance(buf, np.ndarray)
        return local.is_ready, (lambda: np.asarray(local)) if host else (lambda: local)

    def _iallreduce(self, buf: Any) -> Pending:
        return self._start(buf, self._sum)

    def _iallgather(self, mine: np.ndarray) -> Pending:
        return self._start(mine, self._gather)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        source = self.rank == root
        data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if source else np.zeros(0, np.uint8)
        length = int(multihost_utils.broadcast_one_to_all(np.int64(data.size), is_source=source))
        padded = data if source else np.zeros(length, np.uint8)
        return pickle.loads(np.asarray(multihost_utils.broadcast_one_to_all(padded, is_source=source)).tobytes())

    def world(self) -> Communicator:
        return JaxProcessCommunicator(timeout=None)

    def alive(self) -> bool:
        return jax.distributed.is_initialized()

    def abort(self, message: str) -> NoReturn:
        exit_job(message)

    def describe(self) -> str:
        return f"jax processes (rank {self.rank}/{self.size})"


def mesh_backend(comm: Any, curvature: bool = False) -> tuple[Any, Any]:
    """``(MeshJaxBackend bound to comm, None)`` when ``comm`` is a ``jax.sharding.Mesh`` (the devices reduce inside
    XLA, no communicator), else ``(JaxBackend, comm)``; with ``curvature=True`` the curvature backends
    (:class:`MeshJaxCurvatureBackend`, :class:`~hessop.backends.jax_curvature.JaxCurvatureBackend`) instead;
    :meth:`hessop.HessianOperator.from_jax` calls it.

    Examples
    --------
    >>> mesh_backend("jax")
    (<class 'hessop.backends.jax.JaxBackend'>, 'jax')
    >>> mesh_backend(None, curvature=True)[0].__name__
    'JaxCurvatureBackend'
    """
    if isinstance(comm, Mesh):
        return functools.partial(MeshJaxCurvatureBackend if curvature else MeshJaxBackend, mesh=comm), None
    return (JaxCurvatureBackend if curvature else JaxBackend), comm
