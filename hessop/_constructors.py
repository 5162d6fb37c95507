"""How :class:`~hessop.operator.HessianOperator`'s constructors build an operator: the backend of a PyTorch model,
a JAX loss or a CuPy matrix (imported only when asked for), the randomised symmetry check, and the reduction over a
communicator.  The public constructors (``HessianOperator.from_torch``, ``from_jax``, ``from_cupy``, ...) keep
their signatures and documentation in :mod:`hessop.operator` and call these."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from hessop._validate import check_symmetric_product
from hessop.backends.comm import as_communicator
from hessop.backends.mpi import MPIBackend
from hessop.backends.settings import CurvatureSettings, JaxSettings, TorchSettings, keywords
from hessop.backends.widened import half_precision_face
from hessop.curvature import check_curvature

if TYPE_CHECKING:
    from hessop.operator import HessianOperator

__all__ = ["as_operator", "checked_symmetric", "cupy_operator", "jax_operator", "reduced_over", "torch_operator"]

SYMMETRY_SEED = 0x5E77
"""Seed of the two random vectors of the symmetry check (the same on every MPI rank)."""


def checked_symmetric(op: HessianOperator, check: bool) -> HessianOperator:
    """``op``, after the randomised symmetry test of :func:`hessop._validate.check_symmetric_product` if
    ``check``: one block product of two seeded Gaussian vectors through the backend (not counted in ``n_hvp``).

    Examples
    --------
    >>> from hessop import HessianOperator
    >>> H = HessianOperator.from_function(lambda v: np.array([[1.0, 2.0], [0.0, 1.0]]) @ v, 2, check_symmetric=False)
    >>> checked_symmetric(H, True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...
    """
    if check:
        U = np.random.default_rng(SYMMETRY_SEED).standard_normal((op.n, 2))
        Y = op.to_numpy(op.backend.hvp_block(op.cast(U)))
        check_symmetric_product(U[:, 0], U[:, 1], Y[:, 0], Y[:, 1], op.dtype)
    return op


def reduced_over(make: Callable[[], HessianOperator], comm: Any, comm_timeout: float | None) -> HessianOperator:
    """``make()`` without a communicator; with one, the local operator ``make()`` summed over ``comm`` (see
    :func:`hessop.mpi.reduce_operator`; ``comm``: anything :func:`hessop.backends.comm.as_communicator` takes).
    Every constructor taking ``comm=`` ends with this call.  The abort hook is
    installed before the local operator is built, so that an error while building it on one rank (bad data,
    non-deterministic loss) aborts the job instead of leaving the other ranks waiting in the constructor's
    collective.

    Examples
    --------
    >>> from hessop import HessianOperator
    >>> reduced_over(lambda: HessianOperator.from_matrix(np.eye(2)), None, None).backend.describe()
    'numpy (dense matrix)'
    """
    if comm is None:
        return make()
    communicator = as_communicator(comm, comm_timeout)  # imports mpi4py / torch.distributed / JAX, only now
    communicator.install_abort_hook()
    local = make()
    return type(local)(MPIBackend(local.backend, communicator))


def torch_operator(cls: type[HessianOperator], model: Any, loss_fn: Callable | None, data: Any, settings: TorchSettings,
                   curvature: CurvatureSettings, comm: Any, comm_timeout: float | None,
                   check_symmetric: bool) -> HessianOperator:
    """:meth:`hessop.HessianOperator.from_torch` (which documents every argument), its keywords gathered in
    ``settings`` and ``curvature``: a :class:`~hessop.backends.torch.TorchBackend` (the Hessian) or a
    :class:`~hessop.backends.torch.TorchCurvatureBackend`, through the half-precision face, reduced over ``comm``.

    Examples
    --------
    >>> import torch
    >>> from hessop import HessianOperator
    >>> data = (torch.ones(4, 1, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64))
    >>> settings = TorchSettings(params=None, reduction="mean", loss_form="outputs", check_deterministic=True,
    ...                          batch_size=None, hvp_method="auto", cache_memory=None)
    >>> hessian = CurvatureSettings(curvature="hessian", output_loss=None, mc_samples=1, fisher_seed=0)
    >>> H = torch_operator(HessianOperator, torch.nn.Linear(1, 1).double(), torch.nn.MSELoss(), data, settings,
    ...                    hessian, None, None, False)
    >>> H @ np.array([0.0, 1.0])  # d2/db2 and d2/dwdb of mean (w + b)^2
    array([2., 2.])
    """
    try:
        from hessop.backends.torch import TorchBackend, TorchCurvatureBackend
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != "torch":
            raise
        raise ImportError("HessianOperator.from_torch needs PyTorch: pip install torch (see pytorch.org for the "
                          "wheel matching your CUDA).") from e
    check_curvature(**keywords(curvature))
    if loss_fn is None and curvature.curvature != "hessian":
        raise ValueError(f"curvature={curvature.curvature!r} needs the model's outputs and a loss_fn(outputs, targets) "
                         "(cross-entropy or MSE); loss_fn=None (the model's own loss) gives the Hessian only.")
    if settings.hvp_method == "finite_difference" and comm is not None:
        raise ValueError("hvp_method='finite_difference' is not supported with comm= yet: the error of a "
                         "finite-difference product is measured on one process's loss, not on the reduced one. "
                         "Use an exact hvp_method ('auto') with comm=, or finite differences without comm.")

    def make() -> HessianOperator:
        if curvature.curvature == "hessian":
            backend = TorchBackend(model, loss_fn, data, settings)
        else:
            backend = TorchCurvatureBackend(model, loss_fn, data, **keywords(curvature), **settings.problem(),
                                            cache_memory=settings.cache_memory)
        return checked_symmetric(cls(half_precision_face(backend)), check_symmetric)

    return reduced_over(make, comm, comm_timeout)


def jax_operator(cls: type[HessianOperator], loss_fn: Callable, params: Any, data: Any, settings: JaxSettings,
                 curvature: CurvatureSettings, model_fn: Callable | None, comm: Any, comm_timeout: float | None,
                 check_symmetric: bool) -> HessianOperator:
    """:meth:`hessop.HessianOperator.from_jax` (which documents every argument), its keywords gathered in
    ``settings`` and ``curvature``: a :class:`~hessop.backends.jax.JaxBackend` (the Hessian; sharded over a
    ``jax.sharding.Mesh`` given as ``comm``) or a :class:`~hessop.backends.jax_curvature.JaxCurvatureBackend`,
    reduced over any other ``comm``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from hessop import HessianOperator
    >>> settings = JaxSettings(reduction="mean", check_deterministic=True, batch_size=None)
    >>> hessian = CurvatureSettings(curvature="hessian", output_loss=None, mc_samples=1, fisher_seed=0)
    >>> H = jax_operator(HessianOperator, lambda p, x: jnp.mean((x @ p) ** 2), jnp.zeros(1), jnp.ones((3, 1)),
    ...                  settings, hessian, None, None, None, False)
    >>> H @ np.ones(1, dtype=np.float32)
    array([2.], dtype=float32)
    """
    try:
        from hessop.backends.jax import split_variables
        from hessop.backends.jax_mesh import mesh_backend
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in ("jax", "jaxlib"):
            raise
        raise ImportError("HessianOperator.from_jax needs JAX: pip install jax (or jax[cuda12] for a GPU).") from e
    check_curvature(**keywords(curvature), model_fn=model_fn)
    params, loss_fn, model_fn, _ = split_variables(params, loss_fn, model_fn)  # flax variables: their "params"
    hessian_backend, reduce_over = mesh_backend(comm)  # a Mesh: its sharded backend, nothing left to reduce
    curvature_backend = mesh_backend(comm, curvature=True)[0]

    def make() -> HessianOperator:
        if curvature.curvature == "hessian":
            backend = hessian_backend(loss_fn, params, data, settings)
        else:
            backend = curvature_backend(loss_fn, params, data, model_fn=model_fn, **keywords(curvature),
                                          **keywords(settings))
        return checked_symmetric(cls(backend), check_symmetric)

    return reduced_over(make, reduce_over, comm_timeout)


def cupy_operator(cls: type[HessianOperator], A: Any, n: int | None, dtype: Any, hvp_block: Callable | None,
                  check_symmetric: bool) -> HessianOperator:
    """:meth:`hessop.HessianOperator.from_cupy` (which documents every argument): the backend of
    :func:`hessop.backends.cupy.cupy_backend`, with the randomised symmetry check for a callable.

    Examples
    --------
    Needs CuPy and a CUDA GPU (skipped where there is none):

    >>> import cupy  # doctest: +SKIP
    >>> from hessop import HessianOperator  # doctest: +SKIP
    >>> cupy_operator(HessianOperator, cupy.eye(2), None, None, None, True) @ np.ones(2)  # doctest: +SKIP
    array([1., 1.])
    """
    try:
        from hessop.backends.cupy import cupy_backend
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in ("cupy", "cupyx"):
            raise
        raise ImportError(
            "HessianOperator.from_cupy needs CuPy and a CUDA GPU: pip install cupy-cuda12x (or the wheel "
            "matching your CUDA). Without a GPU use HessianOperator.from_matrix or from_function on NumPy."
        ) from e
    return checked_symmetric(cls(cupy_backend(A, n, dtype, hvp_block=hvp_block)), check_symmetric and callable(A))


def as_operator(H: Any) -> HessianOperator:
    """Accept a HessianOperator, a square SciPy ``LinearOperator`` (its symmetry checked by the randomised test of
    :meth:`HessianOperator.from_function`: two extra products), a NumPy array or a SciPy sparse matrix, and return a
    HessianOperator.

    Examples
    --------
    >>> from scipy.sparse.linalg import aslinearoperator
    >>> as_operator(np.eye(2)).shape
    (2, 2)
    >>> as_operator(aslinearoperator(np.diag([1.0, 2.0]))) @ np.ones(2)
    array([1., 2.])
    """
    from hessop.operator import HessianOperator  # the operator's module imports this one

    if isinstance(H, HessianOperator):
        return H
    if isinstance(H, np.ndarray) or sp.issparse(H):
        return HessianOperator.from_matrix(H)
    if isinstance(H, LinearOperator):
        if H.shape[0] != H.shape[1]:
            raise ValueError(f"the operator must be square; got shape {H.shape}")
        return HessianOperator.from_function(H.matvec, H.shape[0], H.dtype, hvp_block=H.matmat)
    raise TypeError(
        f"expected a HessianOperator, a scipy LinearOperator, a numpy array or a scipy sparse matrix, "
        f"got {type(H).__name__}"
    )
