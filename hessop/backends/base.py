"""The interfaces a backend implements: Hessian-vector products on native arrays, plus host transfers
(:class:`Backend`); the loss over batches of data (:class:`DataBackend`); and, for a model's parameters, what the
analyses need beyond products (:class:`ParameterLayout`, :class:`ModelBackend`)."""

from __future__ import annotations

import abc
import contextlib
from types import SimpleNamespace
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from hessop._array import vector_norm


def host_free_memory() -> int | None:
    """Bytes of host memory available now: ``MemAvailable`` of /proc/meminfo (Linux), else the available pages of
    ``os.sysconf``, capped by the cgroup (v2) limit less its usage where a container sets one; None where none can
    be read (e.g. macOS).

    Examples
    --------
    >>> free = host_free_memory()
    >>> free is None or free > 0
    True
    """
    import os

    free = None
    with contextlib.suppress(OSError, ValueError, StopIteration, IndexError):
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    if free is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                left = max(int(limit) - int(f.read().strip()), 0)
            free = left if free is None else min(free, left)
    return free


class Backend(abc.ABC):
    """Supplies ``H v`` for one fixed Hessian on a backend's own arrays.

    Attributes
    ----------
    n : int
        Dimension (number of parameters).
    dtype : numpy.dtype
        The parameters' dtype; products are computed and returned in it.
    name : str
        Short backend name ("numpy", "torch", "jax", "cupy").

    Examples
    --------
    An operator's products come from its backend (here a NumPy matrix's):

    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> from hessop.backends.base import Backend
    >>> backend = HessianOperator.from_matrix(np.diag([2.0, 1.0]).astype(np.float32)).backend
    >>> isinstance(backend, Backend), backend.name, backend.n, backend.product_dtype, backend.layout
    (True, 'numpy', 2, 'float32', None)
    >>> backend.to_numpy(backend.hvp(backend.asarray(np.ones(2)))).tolist()
    [2.0, 1.0]
    """

    n: int
    dtype: np.dtype
    name: str
    comm: Any = None
    """The MPI communicator the products are summed over (:class:`hessop.backends.mpi.MPIBackend`), else None."""
    half_precision: bool = False
    """True when the products are computed in float16 / bfloat16 (the operator then shows float32 vectors:
    :func:`hessop.backends.widened.half_precision_face`)."""
    fixed_shapes: bool = False
    """True when the backend compiles its array operations per shape (JAX: each new shape is a new XLA program), so
    solvers keep their arrays at one shape across steps (the Lanczos basis with zero columns past the filled ones,
    :class:`hessop.krylov.Krylov`); False (NumPy, PyTorch, CuPy): solvers work on the filled part only."""

    def free_memory(self) -> int | None:
        """Bytes free now on the device that holds this backend's vectors, or None where it cannot be read.

        The one place solvers learn it (:mod:`hessop._memory` turns a share of it into a number of vectors).
        Default: the host's available memory (:func:`host_free_memory`), right for NumPy and other CPU backends;
        GPU backends override it."""
        return host_free_memory()

    @abc.abstractmethod
    def hvp(self, v: Any) -> Any:
        """``H v`` for a native vector of shape (n,)."""

    def hvp_block(self, V: Any) -> Any:
        """``H V`` for a native block of shape (n, k).  Backends override this when they can batch."""
        xp = self.namespace
        cols = [self.hvp(V[:, j]) for j in range(V.shape[1])]
        return xp.stack(cols, axis=1)

    @abc.abstractmethod
    def asarray(self, x: np.ndarray) -> Any:
        """Move a host array into the backend (its dtype and device).  Used once per probe block."""

    @abc.abstractmethod
    def to_numpy(self, x: Any) -> np.ndarray:
        """Copy a native array to the host."""

    @property
    def product_eps(self) -> float:
        """Unit roundoff of a product (the floor of every accuracy a solver reports)."""
        return float(np.finfo(self.dtype).eps)

    @property
    def namespace(self) -> Any:
        """The array-API namespace of this backend's arrays."""
        return array_namespace(self.asarray(np.zeros(1, dtype=self.dtype)))

    @property
    def product_dtype(self) -> str:
        """Name of the dtype the products are computed in (``dtype``'s, unless the backend says otherwise)."""
        return self.dtype.name

    @property
    def layout(self) -> ParameterLayout | None:
        """How this backend's vectors split into a model's parameters (shared by every MPI rank), or None for an
        operator without parameters (``from_matrix``, ``from_function``, ``from_cupy``)."""
        return None

    @property
    def model_backend(self) -> ModelBackend | None:
        """The model backend whose loss and data this backend's products are of, when the whole loss is here: None
        for an operator without a model, and for one reduced over a communicator (each rank holds a shard of the
        data only).  :meth:`hessop.HessianOperator.model_backend` raises a clear error in place of None."""
        return None

    def describe(self) -> str:
        """One line for ``repr``."""
        return self.name


class DataBackend(Backend):
    """Shared by backends whose Hessian is that of a loss summed over batches of data (PyTorch, JAX).

    ``H = sum_b w_b H_b`` with ``w_b = |b| / N`` for ``reduction="mean"`` (each batch loss a mean; batches may
    differ in size) and ``w_b = 1`` for ``"sum"``.  Subclasses supply ``_size(batch)``, ``_batch_loss(batch)``
    (a host float) and the products; this class holds the data, the weights and the determinism check.

    Examples
    --------
    >>> from hessop.backends.base import DataBackend
    >>> from hessop.models.linear import linear_least_squares
    >>> backend = linear_least_squares().backend
    >>> isinstance(backend, DataBackend), backend.reduction, backend.n_samples
    (True, 'mean', 2)
    """

    reduction: str
    n_samples: int
    _randomness_hint = "randomness in the loss (e.g. dropout)"

    def _set_data(self, data: Any, single_batch: bool) -> None:
        """Keep ``data`` (one batch, wrapped in a list, or a re-iterable of batches); refuse one-shot iterators."""
        from collections.abc import Iterable

        if single_batch:
            data = [data]
        elif not isinstance(data, Iterable):
            raise TypeError(f"data must be a batch or a re-iterable of batches, got {type(data).__name__}")
        elif iter(data) is data:
            raise TypeError(
                "data is a one-shot iterator or generator: hessop traverses the data once per Hessian-vector "
                "product, so it needs a re-iterable (a list of batches, a DataLoader). Wrap it with list(...)."
            )
        self.data = data

    def _batches(self) -> Any:
        empty = True
        for batch in self.data:
            empty = False
            yield batch
        if empty:
            raise ValueError("data is empty: it yielded no batch.")

    def _size(self, batch: Any) -> int:
        raise NotImplementedError

    def _batch_loss(self, batch: Any) -> float:
        raise NotImplementedError

    def _weighted(self) -> Any:
        """``(batch, w_b)`` for every batch of one pass."""
        for batch in self._batches():
            size = self._size(batch)
            if size <= 0:
                raise ValueError("a batch holds no samples.")
            yield batch, (size / self.n_samples if self.reduction == "mean" else 1.0)

    def _loss_pass(self) -> tuple[int, float]:
        """(number of samples, total loss) over one pass."""
        sizes_losses = [(self._size(b), self._batch_loss(b)) for b in self._batches()]
        count = sum(s for s, _ in sizes_losses)
        if count <= 0:
            raise ValueError("data holds no samples.")
        total = sum((s / count if self.reduction == "mean" else 1.0) * x for s, x in sizes_losses)
        if not np.isfinite(total):
            raise ValueError(f"the loss over the data is {total} at these parameters; check the data and model.")
        return count, total

    def _check_deterministic(self) -> None:
        """Compare the total loss over two passes and two products of one vector; they must agree to sqrt(eps)
        (only the summation order may differ, as with a shuffling loader).  Sets ``n_samples``."""
        rtol = float(np.sqrt(self.product_eps))
        self.n_samples, total1 = self._loss_pass()
        n2, total2 = self._loss_pass()
        if n2 != self.n_samples:
            self._not_deterministic(f"number of samples ({self.n_samples} vs {n2})")
        if abs(total1 - total2) > rtol * max(abs(total1), abs(total2)):
            self._not_deterministic(f"total loss ({total1!r} vs {total2!r})")
        xp = self.namespace
        v = self.asarray(np.random.default_rng(12345).standard_normal(self.n))
        h1, h2 = self.hvp(v), self.hvp(v)
        with np.errstate(over="ignore"):  # rescaled below when the squares over- or underflow
            plain = self.to_numpy(xp.stack([xp.linalg.vector_norm(h1), xp.linalg.vector_norm(h1 - h2)]))
        norm1, diff = (vector_norm(SimpleNamespace(xp=xp, to_numpy=self.to_numpy), x, plain=p)
                       for x, p in ((h1, plain[0]), (h1 - h2, plain[1])))
        if not np.isfinite(norm1):
            raise ValueError("the Hessian-vector product is NaN or Inf at these parameters; check the loss.")
        if diff > rtol * norm1:
            self._not_deterministic(f"Hessian-vector product of one vector (relative difference "
                                    f"{diff / max(norm1, 1e-300):.2e})")

    def _not_deterministic(self, what: str) -> None:
        raise ValueError(
            f"H v is not deterministic: the {what} differs between two passes over the data. Likely causes: "
            f"{self._randomness_hint}, random data augmentation, or a loader that does not visit every sample "
            "exactly once per pass. Shuffling alone is fine. If you know the cause is harmless, pass "
            "check_deterministic=False."
        )


class DataView:
    """The batches of an existing backend's data, handed to a new backend as a re-iterable (so a single batch the
    first backend wrapped is never mistaken for a list of batches).  Used to restrict a backend to a block.

    Examples
    --------
    >>> from hessop.backends.base import DataView
    >>> view = DataView([(1, 2), (3, 4)])
    >>> list(view), list(view)
    ([(1, 2), (3, 4)], [(1, 2), (3, 4)])
    """

    def __init__(self, data: Any) -> None:
        self.data = data

    def __iter__(self) -> Any:
        return iter(self.data)


class ParameterLayout(abc.ABC):
    """How a flat vector splits into a model's parameters, the same on every MPI rank.

    Attributes
    ----------
    names : list of str
        The selected parameters (PyTorch) or pytree leaves (JAX), in the order of the flat vector.
    shapes : list of tuple of int
    sizes : list of int
    offsets : list of int
        Parameter ``i`` is ``v[offsets[i]:offsets[i + 1]]``.
    filter_axis : int
        Axis of a weight that indexes its filters (for filter-normalised directions).

    Examples
    --------
    The layout of a ``torch.nn.Linear(3, 1)`` (:func:`hessop.models.linear.linear_least_squares`):

    >>> import numpy as np
    >>> from hessop.backends.base import ParameterLayout
    >>> from hessop.models.linear import linear_least_squares
    >>> layout = linear_least_squares().backend.layout
    >>> isinstance(layout, ParameterLayout), layout.names, layout.shapes, layout.sizes, layout.offsets
    (True, ['weight', 'bias'], [(1, 3), (1,)], [3, 1], [0, 3, 4])
    >>> {k: v.tolist() for k, v in layout.unflatten(np.arange(4.0)).items()}
    {'weight': [[0.0, 1.0, 2.0]], 'bias': [3.0]}
    >>> layout.modules(), layout.parameters_flat().tolist()
    (['', ''], [0.0, 0.0, 0.0, 0.0])
    """

    names: list[str]
    shapes: list[tuple[int, ...]]
    sizes: list[int]
    offsets: list[int]
    filter_axis: int

    @abc.abstractmethod
    def unflatten(self, v: Any) -> Any:
        """Split a flat vector (native or NumPy) into the parameters' shapes (a dict of tensors, a pytree)."""

    @abc.abstractmethod
    def parameters_flat(self) -> Any:
        """The parameters' current values as one flat native vector (the point ``theta``)."""

    @abc.abstractmethod
    def modules(self) -> list[str]:
        """For each parameter, the name of the module (PyTorch) or pytree node (JAX) holding it."""

    @abc.abstractmethod
    def parameter_digest(self) -> str | None:
        """SHA-256 of the parameters' values (checked equal on every MPI rank and stored in checkpoints), or None
        where the backend does not fingerprint them."""


class ModelBackend(DataBackend, ParameterLayout):
    """A backend for the Hessian of a model's loss over data: products, plus the loss at a point and the
    backends of diagonal blocks.  Implemented by :class:`hessop.backends.torch.TorchBackend` and
    :class:`hessop.backends.jax.JaxBackend`.

    Examples
    --------
    The loss ``((2 w_1 + b)^2 + (w_2 + b)^2) / 2`` of :func:`hessop.models.linear.linear_least_squares`:

    >>> import numpy as np
    >>> from hessop.backends.base import ModelBackend
    >>> from hessop.models.linear import linear_least_squares
    >>> H = linear_least_squares()
    >>> isinstance(H.backend, ModelBackend), H.backend.model_backend is H.backend
    (True, True)
    >>> round(H.backend.loss_at(H.backend.asarray(np.array([1.0, 0.0, 0.0, 0.0]))), 6)
    2.0
    >>> bias = H.backend.restrict(["bias"])
    >>> bias.n, bias.to_numpy(bias.hvp(bias.asarray(np.ones(1)))).tolist()
    (1, [2.0])
    """

    @property
    def layout(self) -> ParameterLayout:
        return self

    @property
    def model_backend(self) -> ModelBackend:
        return self

    @abc.abstractmethod
    def loss_at(self, delta: Any) -> float:
        """The loss over the data at ``theta + delta`` (a native flat vector); the parameters are restored."""

    @abc.abstractmethod
    def restrict(self, names: list[str]) -> ModelBackend:
        """A backend for the diagonal block of the parameters ``names`` (a non-empty subset of :attr:`names`)."""

    def curvature_backend(self, curvature: str, *, mc_samples: int = 1, fisher_seed: int = 0,
                          output_loss: str | None = None) -> ModelBackend:
        """A backend for the GGN, Fisher or empirical Fisher (:mod:`hessop.curvature`) of this backend's loss,
        parameters and data; default: ``TypeError`` (a loss function alone does not give the model's outputs)."""
        raise TypeError(f"a {self.name} operator carries no model function, so its {curvature} cannot be derived "
                        "from it: build that operator with its constructor (from_jax(..., curvature=..., "
                        "model_fn=..., output_loss=...)).")


def from_wrapped(name: str) -> property:
    """A read-only property of a backend that wraps another: :attr:`Backend` attribute ``name`` of its ``wrapped``
    backend.  A wrapper declares each attribute it takes from the wrapped backend this way, one a line (none is
    probed with ``__getattr__``).

    Examples
    --------
    >>> class Face:
    ...     product_dtype = from_wrapped("product_dtype")
    ...     def __init__(self, wrapped):
    ...         self.wrapped = wrapped
    >>> from hessop.backends.numpy import MatrixBackend
    >>> Face(MatrixBackend(np.eye(2, dtype=np.float32))).product_dtype
    'float32'
    """
    return property(lambda self: getattr(self.wrapped, name), doc=f":attr:`Backend.{name}` of the wrapped backend.")


def from_layout(name: str, role: str = "attr") -> property:
    """A read-only property of a backend that wraps another: the :class:`ParameterLayout` member ``name`` (an
    attribute, or a method for ``role="meth"``) of the wrapped backend's layout, through the wrapper's
    ``_layout()`` (``AttributeError`` where there is none); see :class:`LayoutDelegate`."""
    return property(lambda self: getattr(self._layout(), name),
                    doc=f":{role}:`ParameterLayout.{name}` of the wrapped backend.")


class LayoutDelegate:
    """The :class:`ParameterLayout` members of a backend that wraps another (an MPI reduction, a wider dtype),
    each delegated explicitly to :attr:`Backend.layout`.  Without one (the wrapped backend has no parameters) they
    raise ``AttributeError``, so that the wrapper has no more attributes than the backend it wraps.

    Examples
    --------
    :class:`hessop.backends.widened.WidenedBackend` is one:

    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> from hessop.backends.widened import WidenedBackend
    >>> from hessop.models.linear import linear_least_squares
    >>> WidenedBackend(linear_least_squares(), np.float64).names
    ['weight', 'bias']
    >>> WidenedBackend(HessianOperator.from_matrix(np.eye(2)), np.float64).names
    Traceback (most recent call last):
    ...
    AttributeError: this operator has no model parameters (it was not built with from_torch / from_jax)
    """

    layout: ParameterLayout | None

    def _layout(self) -> ParameterLayout:
        if self.layout is None:
            raise AttributeError("this operator has no model parameters (it was not built with from_torch / "
                                 "from_jax)")
        return self.layout

    names = from_layout("names")
    shapes = from_layout("shapes")
    sizes = from_layout("sizes")
    offsets = from_layout("offsets")
    unflatten = from_layout("unflatten", "meth")
    parameters_flat = from_layout("parameters_flat", "meth")
    modules = from_layout("modules", "meth")


class WrapperFacts(LayoutDelegate):
    """The facts of a backend that wraps another (an MPI reduction, a wider dtype): its products' precision and
    its parameter layout are those of :attr:`wrapped`, the one attribute a wrapper declares.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> from hessop.backends.widened import WidenedBackend
    >>> W = WidenedBackend(HessianOperator.from_matrix(np.eye(2, dtype=np.float32)), np.float64)
    >>> W.product_dtype, W.product_eps == float(np.finfo(np.float32).eps), W.half_precision, W.layout
    ('float32', True, False, None)
    >>> W.fixed_shapes, W.free_memory() is None or W.free_memory() > 0
    (False, True)
    """

    wrapped: Backend

    @property
    def product_eps(self) -> float:
        """:attr:`Backend.product_eps` of the wrapped backend."""
        return float(self.wrapped.product_eps)

    product_dtype = from_wrapped("product_dtype")
    half_precision = from_wrapped("half_precision")
    fixed_shapes = from_wrapped("fixed_shapes")
    layout = from_wrapped("layout")

    def free_memory(self) -> int | None:
        """:meth:`Backend.free_memory` of the wrapped backend (its vectors are on the same device)."""
        return self.wrapped.free_memory()
