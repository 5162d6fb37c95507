"""``HessianOperator``: a SciPy ``LinearOperator`` whose products are Hessian-vector products from a backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.sparse.linalg import LinearOperator

from hessop._constructors import as_operator, checked_symmetric, cupy_operator, jax_operator, torch_operator
from hessop._product_error import ProductPrecision
from hessop._scipy_face import SciPyFace
from hessop._validate import check_cast, check_native
from hessop.backends.base import Backend, ModelBackend
from hessop.backends.mpi import DEFAULT_COMM_TIMEOUT
from hessop.backends.numpy import FunctionBackend, MatrixBackend
from hessop.backends.settings import CurvatureSettings, JaxSettings, TorchSettings
from hessop.backends.widened import WidenedBackend

__all__ = ["HessianOperator", "as_operator"]  # as_operator: from hessop._constructors


class HessianOperator(ProductPrecision, SciPyFace, LinearOperator):
    """The Hessian of a loss at fixed parameters, as a symmetric linear operator that is never formed.

    It has two faces:

    * the SciPy face: ``H @ x``, ``H.matvec(x)``, ``H.matmat(X)`` on NumPy arrays, so
      ``scipy.sparse.linalg.eigsh(H, k=5, which="LA")`` works.  Inputs are never down-cast silently: a float64
      vector given to a float32 operator raises ``TypeError`` (the one casting policy of hessop, which
      :meth:`asarray` and the solvers' ``v0`` and ``solver_dtype`` follow too).
    * the native face: :meth:`hvp` and :meth:`hvp_block` take and return the backend's own flat arrays (torch
      tensors, jax arrays, cupy arrays) on the backend's device, with no copy to the host.  hessop's solvers use
      this face.

    ``shape == (n, n)`` with n the number of parameters and ``dtype`` the parameters' dtype.  ``n_hvp`` counts
    products (a block of k vectors counts k).

    Build one with :meth:`from_torch`, :meth:`from_jax`, :meth:`from_cupy`, :meth:`from_matrix` or
    :meth:`from_function`.

    Examples
    --------
    >>> H = HessianOperator.from_matrix(np.diag([3.0, 1.0, 2.0]))
    >>> H.shape, H.n_hvp
    ((3, 3), 0)
    >>> H @ np.ones(3), H.n_hvp
    (array([3., 1., 2.]), 1)
    """

    def __init__(self, backend: Backend) -> None:
        if not isinstance(backend, Backend):
            raise TypeError(f"backend must be a hessop Backend, got {type(backend).__name__}")
        self.backend = backend
        self._n_hvp = 0
        super().__init__(dtype=np.dtype(backend.dtype), shape=(backend.n, backend.n))
        self.xp = backend.namespace
        self._ref = backend.asarray(np.zeros(1, dtype=self.dtype))  # type, dtype and device of native vectors

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_matrix(cls, A: Any) -> HessianOperator:
        """Operator for an explicit symmetric matrix (NumPy array or SciPy sparse matrix).

        float32 and float64 keep their dtype; integer matrices become float64.  Raises ``ValueError`` for a
        non-square or non-symmetric matrix (tolerance ``sqrt(eps) * max|A|``).

        Examples
        --------
        >>> H = HessianOperator.from_matrix(np.array([[2, 1], [1, 2]]))
        >>> H.dtype, H @ np.array([1.0, -1.0])
        (dtype('float64'), array([ 1., -1.]))
        """
        return cls(MatrixBackend(A))

    @classmethod
    def from_function(
        cls,
        hvp: Callable[[np.ndarray], np.ndarray],
        n: int,
        dtype: Any = np.float64,
        *,
        hvp_block: Callable[[np.ndarray], np.ndarray] | None = None,
        check_symmetric: bool = True,
    ) -> HessianOperator:
        """Operator for any callable ``hvp(v) -> H v`` on NumPy vectors of length ``n``.

        ``hvp_block(V)``, if given, maps an (n, k) block to H V in one call.  The callable must represent a
        symmetric matrix.  ``check_symmetric=True`` (default) tests that cheaply at construction: two products of
        random vectors (one ``hvp_block`` call of 2 columns, or 2 ``hvp`` calls; not counted in ``n_hvp``) and
        ``u . (H w)`` must equal ``w . (H u)`` to ``sqrt(eps)`` relative, else ``ValueError`` (see
        :func:`hessop._validate.check_symmetric_product`: it catches an antisymmetric part above about
        ``sqrt(n eps)`` of ``||H||_F``, not every tiny one).

        Examples
        --------
        >>> H = HessianOperator.from_function(lambda v: 2.0 * v, 3)  # H = 2 I
        >>> H @ np.arange(3.0)
        array([0., 2., 4.])
        """
        return checked_symmetric(cls(FunctionBackend(hvp, n, dtype, hvp_block)), check_symmetric)

    @classmethod
    def from_torch(
        cls,
        model: Any,
        loss_fn: Callable | None,
        data: Any,
        *,
        params: Any = None,
        reduction: str = "mean",
        loss_form: str = "outputs",
        check_deterministic: bool = True,
        batch_size: Callable[[Any], int] | None = None,
        hvp_method: str = "auto",
        cache_memory: int | None = None,
        curvature: str = "hessian",
        output_loss: str | None = None,
        mc_samples: int = 1,
        fisher_seed: int = 0,
        comm: Any = None,
        comm_timeout: float | None = DEFAULT_COMM_TIMEOUT,
        check_symmetric: bool = False,
    ) -> HessianOperator:
        """Hessian (or GGN, Fisher, empirical Fisher) of a PyTorch model's loss over a data set; see
        :class:`hessop.backends.torch.TorchBackend`.

        Parameters
        ----------
        model : torch.nn.Module
            Its train/eval mode, ``.grad`` and buffers are left as they are.
        loss_fn : callable or None
            ``loss_fn(model(inputs), targets) -> scalar`` (``loss_form="outputs"``, e.g.
            ``torch.nn.CrossEntropyLoss()``) or ``loss_fn(model, batch) -> scalar`` (``loss_form="model"``).
            None: the model computes its own loss (a Hugging Face model, ``model(**batch).loss``): each batch is
            passed as ``model(**batch)`` (dict), ``model(*batch)`` (tuple or list) or ``model(batch)``, and the loss
            is the output's ``.loss`` (or ``["loss"]``, or the output itself when a tensor); Hessian only.  When
            the model's output is not a tensor and ``loss_fn(outputs, targets)`` fails on it, the error says to
            pass ``loss_fn=None`` or ``loss_form="model"``.
        data :
            One batch, or a re-iterable of batches (a list, a ``DataLoader``; not a one-shot generator).  Batches
            are moved to the parameters' device inside the product loop.  Read by one rule
            (:data:`hessop.backends.torch._batches.READING_RULE`): a tensor or a dict is one batch; under
            ``loss_form="outputs"`` a pair ``(x, y)`` / ``[x, y]`` ending in a tensor is one batch; under
            ``loss_form="model"`` (or ``loss_fn=None``) a *tuple* of tensors is one batch and a *list* of tensors a
            list of batches (language-model token batches); other tuples and lists are collections of batches; a
            ``DataLoader`` yields one batch per item.  Tuples or lists the rule cannot read (tensors mixed with
            other values; a list of tensors of different dtypes or dimensions, or floating-point ones of different
            trailing shapes, under ``"model"``) raise a
            ``ValueError`` with the fix; ``data=[batch]`` is always one batch.  A ``DataLoader``'s batches are read
            once and kept when they fit ``min(1 GiB, free host memory / 4)`` bytes (the same batches at every
            product, no worker restarts; the determinism check makes one more pass over the loader); otherwise the
            loader is iterated per product with one warning advising ``persistent_workers=True`` (and
            ``shuffle=False`` for a shuffling loader).
        params :
            ``None`` (every parameter with ``requires_grad``), a submodule, or a list of parameter names (a
            submodule's name selects its parameters) or tensors: the operator is then that diagonal block of H.
        reduction : {"mean", "sum"}
            What ``loss_fn`` does over a batch: ``"mean"`` gives the Hessian of the mean loss over all samples
            (batches may differ in size), ``"sum"`` the sum of the batches' Hessians.
        loss_form : {"outputs", "model"}
            How ``loss_fn`` is called (above).
        check_deterministic : bool
            At construction, compare two loss passes and two products of one vector and refuse a random ``H v``
            (dropout, augmentation); default True.
        batch_size : callable, optional
            ``batch_size(batch) -> int`` for the weights when ``loss_form="model"`` (default: the first dimension
            of the batch's first tensor).
        hvp_method : {"auto", "forward_over_reverse", "double_backward", "finite_difference"}
            ``"auto"`` (double backward; on a GPU, blocks forward-over-reverse with a fallback),
            ``"forward_over_reverse"`` (``torch.func.jvp`` of ``grad``, ``vmap`` over blocks),
            ``"double_backward"`` (these three exact up to rounding), or ``"finite_difference"``: central
            differences of gradients, ``(g(theta + h v) - g(theta - h v)) / (2 h)`` with
            ``h = eps^(1/3) max(1, ||theta||) / ||v||``, through the model's own forward and backward passes (for
            kernels without a second derivative: fused attention or losses); two gradients per vector, the
            parameters restored bit for bit.  Its error is measured (steps ``h`` and ``2 h``) and included in
            :attr:`product_error`, so residuals and ``converged`` stay bounds (about 1e-3 relative in float32,
            1e-6 in float64 on the test CNN).  Not with ``comm``.
        cache_memory : int, optional
            Bytes allowed for keeping each batch's gradient graph between products (data given as a list or tuple
            of batches); default None: 1 GiB or a quarter of the free memory, whichever is less; 0 keeps nothing.
        curvature : {"hessian", "ggn", "fisher", "empirical_fisher"}
            The matrix: the Hessian (default), the generalised Gauss-Newton, the Monte-Carlo Fisher or the
            empirical Fisher (:mod:`hessop.curvature`; :class:`hessop.backends.torch.TorchCurvatureBackend`).
            The last three need ``loss_form="outputs"`` and a cross-entropy or MSE ``loss_fn``; ``hvp_method`` does
            not apply to them, ``cache_memory`` only where forward mode fails on the model (reverse fallback).
        output_loss : {"cross_entropy", "mse"}, optional
            What ``loss_fn`` computes, for a callable hessop does not recognise (``torch.nn.CrossEntropyLoss``,
            ``MSELoss`` and their functional forms are); checked on the first batch.
        mc_samples : int
            Labels drawn per sample for ``curvature="fisher"``; default 1.
        fisher_seed : int
            Seed of the Fisher's draws (fixed per batch, so the operator is one matrix); default 0.
        comm : mpi4py.MPI.Intracomm, "torch" or torch.distributed.ProcessGroup, optional
            ``data`` is then this rank's shard only and the operator is the Hessian over the union of all ranks'
            data: see :mod:`hessop.distributed` (an mpi4py communicator, ``"torch"`` for the default
            ``torch.distributed`` process group as under ``torchrun``, or a ``ProcessGroup``).  A collective call;
            an uncaught exception on any rank then ends the job (see :func:`hessop.mpi.install_abort_hook`); to
            keep your own ``sys.excepthook`` build the local operator and call ``reduce_operator(H, comm,
            abort_on_error=False)``.
        comm_timeout : float or None
            Seconds (default 300) a collective may wait: a rank that stops answering makes the others end the job
            naming it (see :mod:`hessop.distributed`).
        check_symmetric : bool
            Add the randomised symmetry test of :meth:`from_function` (two products at construction).  Off by
            default: the Hessian of a scalar loss is symmetric by construction, up to rounding.

        Returns
        -------
        HessianOperator
            Over the model's dtype (float32 vectors for a float16 / bfloat16 model, whose products are computed in
            its own dtype, with a warning stating their accuracy).

        Examples
        --------
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1).double()
        >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
        >>> H = HessianOperator.from_torch(model, torch.nn.MSELoss(), (x, y))
        >>> H.shape, H.backend.names
        ((4, 4), ['weight', 'bias'])
        >>> float((H @ np.r_[0.0, 0.0, 0.0, 1.0])[3])  # d2/db2 of mean (w.x + b - y)^2
        2.0
        >>> G = HessianOperator.from_torch(model, torch.nn.MSELoss(), (x, y), curvature="ggn")
        >>> bool(np.allclose(G @ np.eye(4), H @ np.eye(4)))  # a linear model: G = H
        True
        """
        settings = TorchSettings(params=params, reduction=reduction, loss_form=loss_form,
                                 check_deterministic=check_deterministic, batch_size=batch_size,
                                 hvp_method=hvp_method, cache_memory=cache_memory)
        curvature_settings = CurvatureSettings(curvature=curvature, output_loss=output_loss, mc_samples=mc_samples,
                                               fisher_seed=fisher_seed)
        return torch_operator(cls, model, loss_fn, data, settings, curvature_settings, comm, comm_timeout,
                              check_symmetric)

    @classmethod
    def from_jax(
        cls,
        loss_fn: Callable[[Any, Any], Any],
        params: Any,
        data: Any,
        *,
        reduction: str = "mean",
        check_deterministic: bool = True,
        batch_size: Callable[[Any], int] | None = None,
        curvature: str = "hessian",
        model_fn: Callable[[Any, Any], Any] | None = None,
        output_loss: str | None = None, mc_samples: int = 1, fisher_seed: int = 0,  # the curvature family, below
        comm: Any = None, comm_timeout: float | None = DEFAULT_COMM_TIMEOUT,  # distributed runs
        check_symmetric: bool = False,
    ) -> HessianOperator:
        """Hessian of a JAX loss ``loss_fn(params, batch) -> scalar`` over a data set, with respect to the pytree
        ``params``, by forward-over-reverse products; see :class:`hessop.backends.jax.JaxBackend` for the maths and
        every argument, and ``H.backend.unflatten(v)`` to shape a flat vector (an eigenvector) like ``params``.

        With ``comm`` (an mpi4py communicator, or ``"jax"`` for every process of a ``jax.distributed`` job)
        ``data`` is this rank's shard only and the operator is the Hessian over the union of all ranks' data,
        reduced with one all-reduce per product (see :mod:`hessop.distributed`); ``comm_timeout`` bounds the wait
        in each collective, as in :meth:`from_torch`.  ``comm=jax.sharding.Mesh(...)`` instead splits every batch
        over the mesh's devices in this process (:class:`hessop.backends.jax_mesh.MeshJaxBackend`: XLA reduces).
        ``check_symmetric=True`` adds the randomised symmetry test of :meth:`from_function` (off by default, as in
        :meth:`from_torch`).

        The GGN, Fisher or empirical Fisher instead of the Hessian (:mod:`hessop.curvature`;
        :class:`hessop.backends.jax_curvature.JaxCurvatureBackend`): every batch is then ``(inputs, targets)`` and

        * ``curvature`` : ``"hessian"`` (default), ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``;
        * ``model_fn`` : ``model_fn(params, inputs) -> outputs`` (a JAX loss is a plain function, so the outputs
          it is computed from must be given);
        * ``output_loss`` : ``"cross_entropy"`` or ``"mse"``, the loss in those outputs (checked against
          ``loss_fn`` on the first batch);
        * ``mc_samples``, ``fisher_seed`` : labels drawn per sample for ``"fisher"`` (default 1) and their seed
          (default 0).

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> def loss(p, batch):
        ...     x, y = batch
        ...     return jnp.mean((x @ p["w"] - y) ** 2)
        >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
        >>> H = HessianOperator.from_jax(loss, {"w": jnp.zeros(2)}, (x, jnp.zeros(2)))
        >>> H.to_numpy(H.hvp(H.asarray(np.array([1.0, 1.0], dtype=np.float32))))  # H = x^T x (2 / 2 samples)
        array([1., 4.], dtype=float32)
        >>> G = HessianOperator.from_jax(loss, {"w": jnp.zeros(2)}, (x, jnp.zeros(2)), curvature="ggn",
        ...                              model_fn=lambda p, inputs: inputs @ p["w"], output_loss="mse")
        >>> G @ np.array([1.0, 1.0], dtype=np.float32)  # a linear model: G = H
        array([1., 4.], dtype=float32)
        """
        settings = JaxSettings(reduction=reduction, check_deterministic=check_deterministic, batch_size=batch_size)
        curvature_settings = CurvatureSettings(curvature=curvature, output_loss=output_loss, mc_samples=mc_samples,
                                               fisher_seed=fisher_seed)
        return jax_operator(cls, loss_fn, params, data, settings, curvature_settings, model_fn, comm, comm_timeout,
                            check_symmetric)

    @classmethod
    def from_cupy(
        cls,
        A: Any,
        n: int | None = None,
        dtype: Any = None,
        *,
        hvp_block: Callable[[Any], Any] | None = None,
        check_symmetric: bool = True,
    ) -> HessianOperator:
        """Operator whose products run on a GPU through CuPy; see :mod:`hessop.backends.cupy`.

        ``A`` is one of

        * a symmetric ``cupy.ndarray`` (``H v = A v`` by cuBLAS),
        * a symmetric ``cupyx.scipy.sparse`` matrix (stored as CSR, ``H v = A v`` by cuSPARSE),
        * a callable ``hvp(v) -> H v`` on CuPy vectors of length ``n`` (required), computed in ``dtype``
          (default float64), with an optional ``hvp_block(V) -> H V`` for (n, k) blocks (default: column by
          column).

        Matrices keep float32 / float64 (integers become float64) and are checked square and symmetric to
        ``sqrt(eps) * max|A|`` on the device (two scalars come to the host).  The solvers then hold every vector on
        the GPU; only their small projected matrices and scalars come to the host.  Host (NumPy / SciPy) matrices
        are refused: use :meth:`from_matrix` for them.  ``check_symmetric`` (default True) applies the randomised
        symmetry test of :meth:`from_function` to a callable (a matrix is checked exactly).

        Examples
        --------
        Needs CuPy and a CUDA GPU (skipped where there is none):

        >>> import cupy  # doctest: +SKIP
        >>> H = HessianOperator.from_cupy(cupy.diag(cupy.arange(1.0, 4.0)))  # doctest: +SKIP
        >>> H @ np.ones(3)  # doctest: +SKIP
        array([1., 2., 3.])
        """
        return cupy_operator(cls, A, n, dtype, hvp_block, check_symmetric)

    # ------------------------------------------------------------------ native face
    @property
    def n(self) -> int:
        """Number of parameters (the operator is n x n).

        Examples
        --------
        >>> HessianOperator.from_matrix(np.eye(3)).n
        3
        """
        return self.shape[0]

    @property
    def n_hvp(self) -> int:
        """Hessian-vector products computed through this operator so far (a block of k counts k).

        Examples
        --------
        >>> H = HessianOperator.from_matrix(np.eye(3))
        >>> _ = H @ np.ones((3, 2))
        >>> H.n_hvp
        2
        """
        return self._n_hvp

    def hvp(self, v: Any) -> Any:
        """``H v`` for a native flat vector of shape (n,), returned on the backend's device.

        Examples
        --------
        >>> H = HessianOperator.from_matrix(np.diag([1.0, 2.0]))
        >>> H.hvp(H.asarray(np.ones(2))), H.n_hvp
        (array([1., 2.]), 1)
        """
        check_native(v, self._ref, "the vector given to hvp")
        if tuple(v.shape) != (self.n,):
            raise ValueError(f"hvp expects a vector of shape ({self.n},), got {tuple(v.shape)}")
        self._n_hvp += 1
        return self.backend.hvp(v)

    def hvp_block(self, V: Any) -> Any:
        """``H V`` for a native block of shape (n, k): k products, batched where the backend can.

        Examples
        --------
        >>> H = HessianOperator.from_matrix(np.diag([1.0, 2.0]))
        >>> H.hvp_block(H.asarray(np.eye(2))), H.n_hvp  # a block of 2 counts 2
        (array([[1., 0.],
               [0., 2.]]), 2)
        """
        check_native(V, self._ref, "the block given to hvp_block")
        if len(V.shape) != 2 or V.shape[0] != self.n:
            raise ValueError(f"hvp_block expects a block of shape ({self.n}, k), got {tuple(V.shape)}")
        self._n_hvp += int(V.shape[1])
        return self.backend.hvp_block(V)

    def model_backend(self, purpose: str) -> ModelBackend:
        """The model backend behind this operator (through a half-precision or ``solver_dtype`` face), for an
        analysis that needs the model's parameters, loss and data (the loss at a point, block operators).

        Parameters
        ----------
        purpose : str
            What needs it, for the error message (e.g. ``"landscape"``).

        Raises
        ------
        TypeError
            The operator was not built from a model (``from_matrix``, ``from_function``, ``from_cupy``).
        ValueError
            The operator is reduced over a communicator (MPI, torch.distributed or JAX processes): each rank holds
            a shard of the data only.

        Examples
        --------
        >>> H = HessianOperator.from_matrix(np.eye(2))
        >>> H.model_backend("landscape")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: landscape needs an operator built from a model ...; this one was built from numpy (dense matrix).
        """
        backend = self.backend.model_backend
        if backend is not None:
            return backend
        if self.backend.comm is not None:
            raise ValueError(f"{purpose} does not support operators reduced over a communicator (MPI, "
                             "torch.distributed or JAX processes) yet (it would see this rank's shard of the data "
                             "only): build it from a local operator over the data to analyse (for blocks: "
                             "from_torch(..., params=names, comm=comm) on every rank).")
        raise TypeError(f"{purpose} needs an operator built from a model (HessianOperator.from_torch or from_jax), "
                        f"which has parameter names, a loss and data; this one was built from "
                        f"{self.backend.describe()}.")

    def asarray(self, x: np.ndarray) -> Any:
        """A host array moved into the backend's array type, dtype and device.  A float array wider than the
        operator's dtype raises ``TypeError`` (no silent down-cast; see :func:`hessop._validate.check_cast`).

        Examples
        --------
        >>> H = HessianOperator.from_matrix(np.eye(2, dtype=np.float32))
        >>> H.asarray(np.ones(2, dtype=np.float32)).dtype
        dtype('float32')
        >>> H.asarray(np.ones(2))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: ...
        """
        check_cast(np.asarray(x).dtype, self.dtype, f"the array given to a {self.dtype} operator")
        return self.backend.asarray(x)

    def cast(self, x: np.ndarray) -> Any:
        """A host array hessop made itself (a float64 random draw, a small float64 matrix) rounded on purpose to
        the operator's dtype on its device.  User data goes through :meth:`asarray`, which refuses down-casts.

        Examples
        --------
        >>> H = HessianOperator.from_matrix(np.eye(2, dtype=np.float32))
        >>> H.cast(np.array([0.1, 0.2])).dtype
        dtype('float32')
        """
        return self.backend.asarray(x)

    def with_solver_dtype(self, dtype: Any) -> HessianOperator:
        """This operator seen in a wider ``dtype``: vectors, and so a solver's basis, recurrences and probes, are
        held in ``dtype`` while each product is still taken in the operator's own dtype (the vector is cast down,
        multiplied and the product cast back, all on the backend's device: no host copy).  Products are counted
        here and on ``self``.  ``dtype=None`` or the operator's dtype returns ``self``; a narrower dtype raises
        ``TypeError`` (no silent down-cast), as does half precision (solvers need float32 or wider).

        Examples
        --------
        >>> H = HessianOperator.from_matrix(np.diag([1.0, 2.0]).astype(np.float32))
        >>> W = H.with_solver_dtype(np.float64)
        >>> W.dtype, W @ np.ones(2), H.n_hvp  # counted on H too
        (dtype('float64'), array([1., 2.]), 1)
        """
        if dtype is None:
            return self
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"solver_dtype must be float32 or float64 (a solver needs float32 or wider), got {dtype}")
        check_cast(self.dtype, dtype, f"the {self.dtype} operator given solver_dtype={dtype.name}")
        return self if dtype == self.dtype else HessianOperator(WidenedBackend(self, dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        """A native array copied to the host as NumPy.

        Examples
        --------
        >>> H = HessianOperator.from_matrix(np.eye(2))
        >>> H.to_numpy(H.hvp(H.asarray(np.ones(2))))
        array([1., 1.])
        """
        return self.backend.to_numpy(x)

    def __repr__(self) -> str:
        pe = self._product_error  # shown once measured (measuring costs products)
        pe = "" if pe is None else f", product_error={pe}"
        return f"<{self.n}x{self.n} HessianOperator, dtype={self.dtype}, backend={self.backend.describe()}{pe}>"
