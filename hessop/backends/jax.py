"""JAX backend: Hessian-vector products of ``loss_fn(params, batch)`` over a data set, by forward-over-reverse.

Maths
-----
Let ``theta`` be the parameter pytree flattened to one vector (``jax.flatten_util.ravel_pytree`` order: the leaves
of ``jax.tree_util.tree_leaves(params)``, each in row-major order).  For a loss ``L(theta) = sum_b w_b L_b(theta)``
over batches ``b`` (``w_b = |b| / N`` when ``L_b`` is a per-batch mean, ``w_b = 1`` when it is a per-batch sum):

    H v = sum_b w_b  d/dt grad L_b(theta + t v) |_{t=0},

the directional derivative of the gradient: ``jax.jvp`` of ``jax.grad`` (forward-over-reverse, Pearlmutter 1994;
the HVP recommended by the JAX autodiff cookbook).  It costs about 1.2-1.6 gradients (docs/benchmarks.md), against
about 3-5 for reverse-over-reverse.  The per-batch product is compiled once with ``jax.jit`` per loss function,
parameter layout and batch shape, and reused by every product of every operator built from that loss (an operator
rebuilt at a new ``theta`` along training compiles nothing); ``theta`` and the vector are inputs of the compiled
code, never constants in it.  A block ``V = [v_1 .. v_k]`` is one compiled call per batch through ``jax.vmap``.

Precision follows the parameters: float32 parameters give float32 products; float64 parameters need JAX's 64-bit
mode (``jax.config.update("jax_enable_x64", True)``, or the ``jax.enable_x64`` context) for the whole analysis, and
hessop refuses to truncate them silently.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from hessop.backends import _jax_kernels as kernels
from hessop.backends._jax_kernels import Static, unflatten_theta
from hessop.backends.base import DataView, ModelBackend, host_free_memory
from hessop.backends.settings import JaxSettings

__all__ = ["JaxBackend", "split_variables", "x64_enabled"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def x64_enabled() -> bool:
    """Whether JAX's 64-bit mode is on here (globally or through an ``enable_x64`` context).

    Examples
    --------
    >>> import jax
    >>> from hessop.backends.jax import x64_enabled
    >>> with jax.enable_x64(True):
    ...     print(x64_enabled())
    True
    >>> with jax.enable_x64(False):
    ...     print(x64_enabled())
    False
    """
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64)) == np.float64


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def _is_single_batch(data: Any) -> bool:
    """One batch: an array, a mapping, or a tuple / list whose entries are all arrays (e.g. ``(x, y)``)."""
    if _is_array(data) or isinstance(data, Mapping):
        return True
    if isinstance(data, (tuple, list)) and data:
        return all(_is_array(x) for x in data)
    return False


def split_variables(params: Any, loss_fn: Callable, model_fn: Callable | None = None
                    ) -> tuple[Any, Callable, Callable | None, tuple[str, ...]]:
    """Flax ``variables`` passed whole: the ``"params"`` collection is what the Hessian is taken over, and the other
    collections (``"batch_stats"``, ``"cache"``, ...) are held fixed and handed back to ``loss_fn`` (and
    ``model_fn``), which keep taking whole ``variables``.

    ``params`` counts as ``variables`` when it is a mapping (a dict or a flax ``FrozenDict``) with a ``"params"``
    key beside at least one other: BatchNorm's running statistics, for instance, are state, not parameters, and
    differentiating through them would change the matrix (the issue's top eigenvalue 31.9 instead of 29.1).  Any
    other pytree is returned unchanged.  Returns ``(params, loss_fn, model_fn, fixed)``, ``fixed`` naming the held
    collections (empty when nothing was split).  The wrapped functions close over the fixed collections, so an
    operator built from whole ``variables`` compiles its products for itself.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> variables = {"params": {"w": jnp.ones(2)}, "batch_stats": {"mean": jnp.full(2, 3.0)}}
    >>> def loss(v, x):
    ...     return jnp.sum((x - v["batch_stats"]["mean"]) * v["params"]["w"] ** 2)
    >>> params, wrapped, _, fixed = split_variables(variables, loss)
    >>> list(params), fixed, float(wrapped({"w": jnp.ones(2)}, jnp.zeros(2)))
    (['w'], ('batch_stats',), -6.0)
    """
    if not (isinstance(params, Mapping) and "params" in params and len(params) > 1):
        return params, loss_fn, model_fn, ()
    state = {k: v for k, v in params.items() if k != "params"}

    def with_state(fn: Callable | None) -> Callable | None:
        if fn is None:
            return None

        def whole(p: Any, batch: Any) -> Any:
            return fn({**state, "params": p}, batch)

        whole.__wrapped__ = fn  # type: ignore[attr-defined]
        return whole

    return params["params"], with_state(loss_fn), with_state(model_fn), tuple(sorted(state))


def _x64_message(what: str) -> str:
    return (f"{what} float64 but JAX's 64-bit mode is off, so JAX would silently truncate to float32. Enable it "
            "for the whole analysis with jax.config.update('jax_enable_x64', True) (or run inside "
            "`with jax.enable_x64(True):`), or cast the parameters to float32.")


def _leaves_dtype(params: Any) -> tuple[np.dtype, list[str], list[tuple[int, ...]]]:
    """Check every leaf of ``params`` and return (common dtype, leaf names, leaf shapes)."""
    with_path, _ = jax.tree_util.tree_flatten_with_path(params)
    if not with_path:
        raise ValueError("params holds no arrays: pass the pytree of parameter arrays the loss depends on.")
    names, shapes, dtypes = [], [], set()
    for path, leaf in with_path:
        name = jax.tree_util.keystr(path) or "<root>"
        if not _is_array(leaf):
            raise TypeError(f"params leaf {name} is a {type(leaf).__name__}, not an array; parameters must be "
                            "jax or numpy arrays (wrap scalars with jnp.asarray(..., dtype=...)).")
        dt = np.dtype(leaf.dtype)
        if dt.kind in "iub":
            raise TypeError(f"params leaf {name} has integer dtype {dt}: a loss has no derivative with respect to "
                            "integers. Keep integer state (step counters, indices) out of params and close over it "
                            "in loss_fn, or cast the leaf to a float dtype.")
        if dt not in _FLOATS:
            raise TypeError(f"params leaf {name} has dtype {dt}; hessop supports float32 and float64 parameters "
                            "(half precision products are too inexact for eigensolvers; complex is not a real "
                            "Hessian).")
        names.append(name)
        shapes.append(tuple(int(s) for s in leaf.shape))
        dtypes.add(dt)
    if len(dtypes) > 1:
        raise TypeError(f"params mixes dtypes {sorted(map(str, dtypes))}; cast every leaf to one dtype, e.g. "
                        "jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params).")
    return dtypes.pop(), names, shapes


def jax_free_memory(devices: Any) -> int | None:
    """The least free memory over ``devices`` (bytes): ``bytes_limit - bytes_in_use`` of their ``memory_stats()``,
    or the host's available memory for a device without statistics (the CPU).

    Examples
    --------
    >>> free = jax_free_memory(jax.local_devices()[:1])
    >>> free is None or free > 0
    True
    """
    free = []
    for d in devices:
        stats = None
        with contextlib.suppress(Exception):  # backends without statistics raise or return None
            stats = d.memory_stats()
        if stats and "bytes_limit" in stats:
            free.append(max(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 0))
        else:
            free.append(host_free_memory())
    known = [f for f in free if f is not None]
    return min(known) if known else None


class JaxBackend(ModelBackend):
    """Hessian of ``loss_fn(params, batch)`` over ``data`` with respect to every leaf of ``params``.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(params, batch) -> scalar`` (a 0-d float array), a pure JAX function of a pytree shaped like
        ``params`` and of one batch.  Anything else it needs (model definition, frozen state, rngs) it closes
        over; a loss that draws fresh randomness per call makes ``H v`` random and is refused by the check below.
    params : pytree
        The point ``theta``: nested dicts / lists / tuples (flax, equinox, haiku style) of float32 or float64 jax
        or numpy arrays, all of one dtype.  The Hessian is taken with respect to all of them (pass only the subtree
        you want and close over the rest in ``loss_fn`` for a diagonal block).
    data :
        One batch (an array, a dict, or a tuple / list of arrays such as ``(x, y)``) or a re-iterable of batches
        (a list of such batches, a loader object that can be iterated many times).  All batches must share one
        pytree structure.  A one-shot iterator or generator is refused (the data are traversed once per product).
        Batches held as numpy arrays are copied to the device at every product; hold them as jax arrays
        (``jax.device_put``) when they fit on the device.
    settings : hessop.backends.settings.JaxSettings
        The keywords of :meth:`hessop.HessianOperator.from_jax` (whose defaults are given here), as fields:

        * ``reduction`` ({"mean", "sum"}):
          What ``loss_fn`` does over a batch.  ``"mean"``: the Hessian of the mean loss over all N samples,
          ``H = sum_b (|b| / N) H_b`` (batches may differ in size).  ``"sum"``: ``H = sum_b H_b``.
        * ``check_deterministic`` (bool):
          At construction, compare the total loss over two passes and two products of one vector, and refuse data
          or losses that make ``H v`` random (a loader that changes the samples, augmentation, a fresh rng per
          call).  Costs two loss passes and two products.  Default True.
        * ``batch_size`` (callable, optional):
          ``batch_size(batch) -> int`` for the weights; default: the leading dimension of the batch's first leaf.

    Attributes
    ----------
    n, dtype, n_samples, reduction, device, names (leaf key paths), shapes, sizes, offsets (into the flat vector).

    Examples
    --------
    The mean of ``(x . w)^2`` over the samples ``(2, 0)`` and ``(0, 1)`` has the Hessian ``diag(4, 1)``:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from hessop.backends.jax import JaxBackend
    >>> from hessop.backends.settings import JaxSettings
    >>> def loss(params, x):
    ...     return jnp.mean((x @ params["w"]) ** 2)
    >>> x = jnp.array([[2.0, 0.0], [0.0, 1.0]], dtype=jnp.float32)
    >>> settings = JaxSettings(reduction="mean", check_deterministic=True, batch_size=None)
    >>> backend = JaxBackend(loss, {"w": jnp.zeros(2, dtype=jnp.float32)}, x, settings)
    >>> backend.n, backend.dtype, backend.names, backend.n_samples
    (2, dtype('float32'), ["['w']"], 2)
    >>> backend.to_numpy(backend.hvp(backend.asarray(np.ones(2)))).tolist()
    [4.0, 1.0]
    """

    name = "jax"
    fixed_shapes = True  # every new array shape is a new XLA program
    _randomness_hint = "a loss that draws fresh randomness per call (e.g. dropout with a new key)"

    def __init__(self, loss_fn: Callable[[Any, Any], Any], params: Any, data: Any, settings: JaxSettings) -> None:
        reduction, batch_size = settings.reduction, settings.batch_size
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(params, batch), got {type(loss_fn).__name__}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum' (what loss_fn does over a batch), got {reduction!r}")
        if batch_size is not None and not callable(batch_size):
            raise TypeError(f"batch_size must be a callable batch -> int, got {type(batch_size).__name__}")
        self.loss_fn, self.reduction, self._batch_size, self.settings = loss_fn, reduction, batch_size, settings

        # ---- parameters: one dtype, x64 respected, flattened once
        self.dtype, self.names, self.shapes = _leaves_dtype(params)
        if self.dtype == np.float64 and not x64_enabled():
            raise TypeError(_x64_message("the parameters are"))
        self.jax_dtype = jnp.dtype(self.dtype)
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()
        self.n = int(self.offsets[-1])
        if self.n == 0:
            raise ValueError("params holds only empty arrays: there is no Hessian to take.")
        leaves = jax.tree_util.tree_leaves(params)
        on_device = [leaf for leaf in leaves if isinstance(leaf, jax.Array)]
        self.device = next(iter(on_device[0].devices())) if on_device else jax.local_devices()[0]
        self.treedef = jax.tree_util.tree_structure(params)
        self._layout = (self.treedef, tuple(self.shapes), self.dtype.str)
        theta, _ = ravel_pytree(jax.tree_util.tree_map(lambda p: jnp.asarray(p, self.jax_dtype), params))
        self.theta = jax.device_put(theta, self.device)

        # ---- data: one batch or a re-iterable of batches of one structure
        self._set_data(data, _is_single_batch(data))

        # ---- the compiled functions, built once and reused for every product
        self._jit = self._compile()

        sizes, first = self._scan_data()
        self.n_samples = sum(sizes)
        if self.n_samples <= 0:
            raise ValueError("data holds no samples.")
        self._check_loss_output(first)

        if settings.check_deterministic:
            self._check_deterministic()

    # ------------------------------------------------------------------ compiled pieces
    def _compile(self) -> dict[str, Callable]:
        static = {"fn": Static(self.loss_fn), "layout": self._layout}
        jitted = {"loss": kernels.loss_jit, "first": kernels.hvp_first_jit, "acc": kernels.hvp_acc_jit,
                  "block_first": kernels.hvp_block_first_jit, "block_acc": kernels.hvp_block_acc_jit}
        return {name: functools.partial(f, **static) for name, f in jitted.items()}

    # ------------------------------------------------------------------ data
    def _size(self, batch: Any) -> int:
        if self._batch_size is not None:
            size = self._batch_size(batch)
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
                raise TypeError(f"batch_size(batch) must return an int, got {type(size).__name__}")
            return int(size)
        leaves = jax.tree_util.tree_leaves(batch)
        first = leaves[0] if leaves else None
        if first is None or not hasattr(first, "shape") or len(first.shape) == 0:
            raise ValueError("cannot tell the batch size: pass batch_size=callable(batch) -> int, or batches whose "
                             "first leaf has the samples along axis 0.")
        return int(first.shape[0])

    def _scan_data(self) -> tuple[list[int], Any]:
        """One pass over the data without computing: batch sizes, and one structure for every batch."""
        sizes, first, ref = [], None, None
        for i, batch in enumerate(self._batches()):
            tdef = jax.tree_util.tree_structure(batch)
            if ref is None:
                ref, first = tdef, batch
            elif tdef != ref:
                raise ValueError(
                    f"data batches have mixed structure: batch {i} is {tdef} but batch 0 is {ref}. Every batch "
                    "must be the same pytree (e.g. all (inputs, targets)). If data is a single batch of nested "
                    "structure, wrap it in a list: data=[batch]."
                )
            size = self._size(batch)
            if size <= 0:
                raise ValueError(f"batch {i} holds no samples.")
            sizes.append(size)
        return sizes, first

    def _check_loss_output(self, batch: Any) -> None:
        static = {"fn": Static(self.loss_fn), "layout": self._layout}
        out = jax.eval_shape(functools.partial(kernels.raw_loss_jit, **static), self.theta, batch)
        if not isinstance(out, jax.ShapeDtypeStruct):
            raise TypeError(f"loss_fn returned {type(out).__name__}, expected one scalar array. If it returns "
                            "(loss, aux), pass lambda p, b: loss_fn(p, b)[0].")
        if int(np.prod(out.shape, dtype=np.int64)) != 1:
            raise ValueError(
                f"loss_fn returned an array of shape {tuple(out.shape)}, not a scalar: reduce it over the batch "
                "(e.g. jnp.mean) and tell hessop which reduction with reduction='mean' or 'sum'."
            )
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise TypeError(f"loss_fn returned a {out.dtype} array; the loss must be a real floating-point scalar.")

    def _batch_loss(self, batch: Any) -> float:
        return float(self._jit["loss"](self.theta, batch))

    # ------------------------------------------------------------------ products
    def _check_native(self, x: Any) -> None:
        if not isinstance(x, jax.Array):
            raise TypeError(f"the jax backend takes jax arrays, got {type(x).__name__} "
                            "(use H.asarray(x) to move a NumPy array in).")
        if np.dtype(x.dtype) != self.dtype:
            raise TypeError(f"vectors must be {self.dtype}, got {x.dtype} (use H.asarray(x)).")

    def _product(self, v: jax.Array, first: Callable, acc: Callable) -> jax.Array:
        self._check_native(v)
        out = None
        for batch, w in self._weighted():
            out = first(self.theta, batch, v, w) if out is None else acc(out, self.theta, batch, v, w)
        return out

    def hvp(self, v: jax.Array) -> jax.Array:
        return self._product(v, self._jit["first"], self._jit["acc"])

    def hvp_block(self, V: jax.Array) -> jax.Array:
        return self._product(V, self._jit["block_first"], self._jit["block_acc"])

    # ------------------------------------------------------------------ host transfers and layout
    def asarray(self, x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        if x.dtype.kind == "c":
            raise TypeError("the Hessian of a real loss is real; got a complex array")
        out = jax.device_put(np.asarray(x, dtype=self.dtype), self.device)
        if np.dtype(out.dtype) != self.dtype:
            raise TypeError(_x64_message("this operator is"))
        return out

    def to_numpy(self, x: jax.Array) -> np.ndarray:
        return np.array(jax.device_get(x))

    def free_memory(self) -> int | None:
        """Bytes free on the device(s) holding the vectors: ``bytes_limit - bytes_in_use`` of
        ``Device.memory_stats()`` (the least over the devices of a replicated vector), the host's available memory
        where a device reports none (the CPU)."""
        return jax_free_memory(self.asarray(np.zeros(1)).devices())

    def unflatten(self, v: Any) -> Any:
        """A flat vector (native or NumPy, shape (n,)) as a pytree shaped like ``params`` (jax arrays), e.g. an
        eigenvector ``result.eigenvectors[:, 0]`` as per-parameter directions."""
        if tuple(getattr(v, "shape", ())) != (self.n,):
            raise ValueError(f"unflatten expects a flat vector of shape ({self.n},), got {tuple(np.shape(v))}; "
                             "for an (n, k) block unflatten each column.")
        if not isinstance(v, jax.Array):
            v = self.asarray(v)
        return unflatten_theta(v.astype(self.jax_dtype), self._layout)

    def flatten(self, tree: Any) -> jax.Array:
        """A pytree shaped like ``params`` as a flat native vector (the inverse of :meth:`unflatten`)."""
        if jax.tree_util.tree_structure(tree) != self.treedef:
            raise ValueError(f"flatten expects a pytree shaped like params ({self.treedef}), got "
                             f"{jax.tree_util.tree_structure(tree)}")
        shapes = [tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)]
        if shapes != self.shapes:
            raise ValueError(f"flatten: leaf shapes {shapes} differ from the parameters' {self.shapes}")
        flat, _ = ravel_pytree(jax.tree_util.tree_map(lambda x: jnp.asarray(x, self.jax_dtype), tree))
        return jax.device_put(flat, self.device)

    def describe(self) -> str:
        return (f"jax ({self.device}, {len(self.shapes)} parameter arrays, {self.n_samples} samples, "
                f"reduction={self.reduction!r})")

    # ------------------------------------------------------------------ analyses: loss at a point, blocks, layout
    filter_axis = -1
    """Axis of a weight that indexes its filters (output channels / units): the last one in flax, haiku and
    equinox layouts (``(kh, kw, in, out)``, ``(in, out)``)."""

    def parameters_flat(self) -> jax.Array:
        """The point ``theta`` as one flat vector (jax arrays are immutable: no copy needed)."""
        return self.theta

    def modules(self) -> list[str]:
        """For each leaf, the key path of the node holding it (``"['conv1']"`` for ``"['conv1']['w']"``; ``""``
        for a leaf at the root)."""
        paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(self.unflatten(self.theta))[0]]
        return [jax.tree_util.keystr(p[:-1]) for p in paths]

    def parameter_digest(self) -> None:
        """None: JAX parameters are not fingerprinted (an immutable pytree the caller holds; MPI ranks and
        checkpoints check the dimension and dtype only)."""
        return None

    def loss_at(self, delta: jax.Array) -> float:
        """The loss over the data (the reduction of the products: ``sum_b w_b L_b``) at ``theta + delta``.  The
        point ``theta`` is an immutable array and is put back afterwards, also when the loss raises."""
        self._check_native(delta)
        if tuple(delta.shape) != (self.n,):
            raise ValueError(f"delta must have shape ({self.n},), got {tuple(delta.shape)}")
        theta = self.theta
        self.theta = theta + delta
        try:
            return self._loss_pass()[1]
        finally:
            self.theta = theta

    def restrict(self, names: list[str]) -> JaxBackend:
        """A backend for the diagonal block of the leaves ``names`` (a subset of :attr:`names`): the other leaves
        are held fixed at ``theta`` (closed over by a new loss of the selected leaves); same data, reduction and
        batch sizes; the determinism check is not repeated.  ``names`` keep the full pytree's key paths."""
        unknown = [n for n in names if n not in self.names]
        if unknown or not names:
            raise ValueError(f"restrict takes a non-empty subset of this operator's leaves; unknown: {unknown}")
        idx = [self.names.index(n) for n in names]
        leaves = jax.tree_util.tree_leaves(self.unflatten(self.theta))
        treedef, loss_fn = self.treedef, self.loss_fn

        def block_loss(sub: list, batch: Any) -> Any:
            full = list(leaves)
            for i, leaf in zip(idx, sub, strict=True):
                full[i] = leaf
            return loss_fn(jax.tree_util.tree_unflatten(treedef, full), batch)

        sub = JaxBackend(block_loss, [leaves[i] for i in idx], DataView(self.data),
                         replace(self.settings, check_deterministic=False))
        sub.names = [self.names[i] for i in idx]
        return sub
