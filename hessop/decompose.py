"""``hessop.decompose``: the spectra of the Hessian H, its Gauss-Newton part G and the residual R = H - G, side by
side (Sagun et al. 2017; Papyan 2019, 2020)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hessop._validate import check_int
from hessop.backends.base import Backend
from hessop.backends.widened import half_precision_face
from hessop.curvature import check_curvature
from hessop.estimators import SpectralDensity, slq
from hessop.lanczos import lanczos
from hessop.operator import HessianOperator, as_operator
from hessop.results import EigenResult

__all__ = ["Decomposition", "DifferenceBackend", "curvature_of", "decompose", "residual_operator"]

PARTS = ("H", "G", "R")


class DifferenceBackend(Backend):
    """Products ``(A - B) v = A v - B v`` of two operators of one shape, dtype and array type.

    Each product of the difference is one product of ``A`` and one of ``B`` (both counted in their ``n_hvp``);
    with ``A = H`` and ``B = G`` on the same data it is the residual ``R = H - G`` of :mod:`hessop.curvature`, so
    ``H = G + R`` holds to the rounding of one subtraction.  Rounding: ``eps (||A v|| + ||B v||)``, which is
    ``product_eps`` relative to ``||A|| + ||B||``, not to ``||A - B||``.

    Examples
    --------
    >>> A = HessianOperator.from_matrix(np.diag([3.0, 2.0]))
    >>> B = HessianOperator.from_matrix(np.diag([1.0, 1.0]))
    >>> DifferenceBackend(A, B).hvp(np.ones(2)).tolist()
    [2.0, 1.0]
    """

    def __init__(self, A: HessianOperator, B: HessianOperator) -> None:
        if A.shape != B.shape or A.dtype != B.dtype:
            raise ValueError(f"the two operators differ in shape or dtype ({A.shape} {A.dtype} vs {B.shape} "
                             f"{B.dtype}): build them on the same model, parameters and data.")
        if A.backend.name != B.backend.name:
            raise TypeError(f"the two operators use different backends ({A.backend.name} vs {B.backend.name}).")
        self.A, self.B, self.n, self.dtype, self.name = A, B, A.n, A.dtype, A.backend.name

    def hvp(self, v: Any) -> Any:
        return self.A.hvp(v) - self.B.hvp(v)

    def hvp_block(self, V: Any) -> Any:
        return self.A.hvp_block(V) - self.B.hvp_block(V)

    def asarray(self, x: np.ndarray) -> Any:
        return self.A.backend.asarray(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return self.A.to_numpy(x)

    @property
    def product_eps(self) -> float:
        return max(self.A.product_eps, self.B.product_eps)

    @property
    def namespace(self) -> Any:
        return self.A.xp

    def describe(self) -> str:
        return f"difference of ({self.A.backend.describe()}) and ({self.B.backend.describe()})"


def residual_operator(H: HessianOperator, G: HessianOperator) -> HessianOperator:
    """The residual ``R = H - G`` as an operator (:class:`DifferenceBackend`): one product of H and one of G per
    product of R, so ``R v + G v = H v`` up to one rounding.

    Examples
    --------
    >>> H = HessianOperator.from_matrix(np.array([[2.0, 1.0], [1.0, 0.0]]))
    >>> G = HessianOperator.from_matrix(np.array([[1.0, 0.0], [0.0, 0.0]]))
    >>> R = residual_operator(H, G)
    >>> (R @ np.eye(2)).tolist(), R.n_hvp, H.n_hvp
    ([[1.0, 1.0], [1.0, 0.0]], 2, 2)
    """
    return HessianOperator(DifferenceBackend(H, G))


def curvature_of(H: HessianOperator, curvature: str = "ggn", *, output_loss: str | None = None,
                 mc_samples: int = 1, fisher_seed: int = 0) -> HessianOperator:
    """The GGN (or ``"fisher"``, ``"empirical_fisher"``) of the loss behind a model operator ``H``: same model,
    loss, data, parameters and reduction, through its model backend's ``curvature_backend``
    (:meth:`HessianOperator.model_backend`; for PyTorch
    :class:`hessop.backends.torch.TorchCurvatureBackend`).  A JAX operator carries no model function: build its
    ``G`` with ``from_jax(..., curvature="ggn", model_fn=..., output_loss=...)``.  ``output_loss``,
    ``mc_samples`` and ``fisher_seed`` as in :meth:`HessianOperator.from_torch`.

    Raises
    ------
    TypeError
        ``H`` was not built from a model, or its backend cannot derive the curvature (JAX).
    ValueError
        ``H`` is MPI-reduced, or the loss is not one of :data:`hessop.curvature.OUTPUT_LOSSES`.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 1).double()
    >>> data = (torch.ones(4, 2, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64))
    >>> H = HessianOperator.from_torch(model, torch.nn.MSELoss(), data)
    >>> G = curvature_of(H, "ggn")
    >>> G.backend.curvature, bool(np.allclose(G @ np.eye(3), H @ np.eye(3)))  # a linear model: G = H
    ('ggn', True)
    """
    check_curvature(curvature, mc_samples, fisher_seed, output_loss)
    if curvature == "hessian":
        raise ValueError("curvature_of gives the GGN, Fisher or empirical Fisher of H's loss; H is the Hessian.")
    backend = H.model_backend("curvature_of").curvature_backend(curvature, mc_samples=mc_samples,
                                                                fisher_seed=fisher_seed, output_loss=output_loss)
    return HessianOperator(half_precision_face(backend))


@dataclass(frozen=True)
class Decomposition:
    """The spectra of ``H``, ``G`` and ``R = H - G`` from :func:`decompose`.

    Attributes
    ----------
    eigen : dict of str to EigenResult
        ``"H"``, ``"G"``, ``"R"``: the ``k`` largest eigenpairs of each (Lanczos, same seed), with their residuals
        and converged flags; ``"R-"``: the ``k`` smallest of R (its negative curvature), when asked for.
    densities : dict of str to SpectralDensity
        SLQ densities of ``"H"``, ``"G"``, ``"R"`` (same seed, so the same start vectors), when asked for.
    overlaps : dict of str to float
        ``"H,G"``, ``"H,R"``, ``"G,R"``: ``||V_a^T V_b||_F^2 / k`` for the top-k eigenvectors ``V_a``, ``V_b``
        (orthonormal): 1 when the two top eigenspaces coincide, ``k / n`` on average for random ones.
    cosines : dict of str to numpy.ndarray
        For the same pairs, the cosines of the principal angles between the two spaces (singular values of
        ``V_a^T V_b``, descending).
    n_hvp : dict of str to int
        Products each part's solvers used (a product of R is one of H and one of G).

    Examples
    --------
    >>> H = HessianOperator.from_matrix(np.diag([4.0, 2.0, 1.0, -1.0]))
    >>> G = HessianOperator.from_matrix(np.diag([3.0, 2.0, 0.0, 0.0]))
    >>> d = decompose(H, G, k=1, max_hvp=0)
    >>> [round(float(d.eigen[p].eigenvalues[0]), 6) for p in ("H", "G", "R", "R-")]
    [4.0, 3.0, 1.0, -1.0]
    >>> round(d.overlaps["H,G"], 6), d.densities
    (1.0, {})
    """

    eigen: dict[str, EigenResult]
    densities: dict[str, SpectralDensity] = field(repr=False)
    overlaps: dict[str, float]
    cosines: dict[str, np.ndarray] = field(repr=False)
    n_hvp: dict[str, int]

    def summary(self) -> str:
        """A few lines: each part's top eigenvalues with residuals, and the overlaps.

        Examples
        --------
        >>> H = HessianOperator.from_matrix(np.diag([4.0, 2.0, 1.0, -1.0]))
        >>> G = HessianOperator.from_matrix(np.diag([3.0, 2.0, 0.0, 0.0]))
        >>> print(decompose(H, G, k=1, max_hvp=0).summary())  # doctest: +ELLIPSIS
        H: 4 (±...); converged 1/1, 4 products
        G: 3 (±...); converged 1/1, 4 products
        R: 1 (±...); converged 1/1, 8 products
        R-: -1 (±...); converged 1/1, 8 products
        overlap of top eigenspaces: H,G 1.000, H,R ..., G,R ...
        """
        lines = []
        for name, res in self.eigen.items():
            pairs = ", ".join(f"{v:.6g} (±{r:.1e})" for v, r in zip(res.eigenvalues, res.residuals, strict=True))
            lines.append(f"{name}: {pairs}; converged {int(np.sum(res.converged))}/{len(res.converged)}, "
                         f"{self.n_hvp[name.rstrip('-')]} products")
        lines.append("overlap of top eigenspaces: " + ", ".join(f"{k} {v:.3f}" for k, v in self.overlaps.items()))
        return "\n".join(lines)

    def plot(self, path: Any = None, *, variance: float | None = None) -> Any:
        """The three SLQ densities on one log-scale plot (one grid spanning all three, each part's top-k eigenvalues
        as ticks); returns the matplotlib Figure, saved to ``path`` when given.  matplotlib is imported only here.

        Examples
        --------
        >>> import pathlib, pytest, tempfile
        >>> _ = pytest.importorskip("matplotlib")
        >>> H = HessianOperator.from_matrix(np.diag([4.0, 2.0, 1.0, -1.0]))
        >>> G = HessianOperator.from_matrix(np.diag([3.0, 2.0, 0.0, 0.0]))
        >>> d = decompose(H, G, k=1, n_iter=4, max_hvp=8)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     fig = d.plot(pathlib.Path(tmp) / "decomposition.png")
        ...     saved = (pathlib.Path(tmp) / "decomposition.png").exists()
        >>> saved, [line.get_label() for line in fig.axes[0].lines if not line.get_label().startswith("_")]
        (True, ['H (n = 4)', 'G (n = 4)', 'R (n = 4)'])
        """
        if not self.densities:
            raise ValueError("this decomposition has no densities: run decompose(..., max_hvp=None or >= n_iter).")
        from matplotlib.figure import Figure

        lo = min(d.support()[0] for d in self.densities.values())
        hi = max(d.support()[1] for d in self.densities.values())
        grid = np.linspace(lo, hi, 10_000)
        fig = Figure(figsize=(7, 4.2))
        ax = fig.add_subplot()
        for name, d in self.densities.items():
            x, y = d.density(grid, variance)
            line, = ax.semilogy(x, np.maximum(y, 1e-300), lw=1, label=f"{name} (n = {d.n})")
            if name in self.eigen:
                for lam in self.eigen[name].eigenvalues:
                    ax.axvline(lam, color=line.get_color(), lw=0.5, alpha=0.5, ls=":")
        ax.set_ylim(1e-10, 1e2)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (Gaussian-smoothed)")
        ax.set_title("H = G + R: SLQ densities, top eigenvalues dotted")
        ax.legend()
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
        return fig


def _overlap(op: HessianOperator, A: EigenResult, B: EigenResult) -> tuple[float, np.ndarray]:
    xp = op.xp
    C = op.to_numpy(xp.matmul(xp.matrix_transpose(A.eigenvectors), B.eigenvectors)).astype(np.float64)
    return float(np.sum(C**2)) / C.shape[0], np.linalg.svd(C, compute_uv=False)


def decompose(
    H: Any,
    G: Any,
    *,
    k: int = 5,
    smallest: bool = True,
    tol: float | None = None,
    max_iter: int | None = None,
    n_iter: int = 90,
    max_hvp: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> Decomposition:
    """Top eigenpairs, SLQ densities and top-eigenspace overlaps of the Hessian ``H``, its Gauss-Newton part ``G``
    and the residual ``R = H - G`` (:func:`residual_operator`), as Sagun et al. (2017) and Papyan (2019, 2020) put
    them side by side: where ``G``'s outliers (about one per class on classifiers) and ``R``'s negative curvature
    show in ``H``.

    Maths
    -----
    ``H = G + R`` with ``G = sum_i J_i^T grad_f^2 l_i J_i`` (PSD for convex losses) and
    ``R = sum_i sum_c (d l_i / d f_c) grad^2 f_{ic}`` (:mod:`hessop.curvature`).  Each part gets
    :func:`hessop.lanczos` (``k``, ``which="LA"``, ``tol``, ``seed``) and, unless ``max_hvp=0``,
    :func:`hessop.slq` (``n_iter``, ``max_hvp``, ``seed``): the same seeds, so the same start vectors for the
    three.  The overlap of two top-k spaces is ``||V_a^T V_b||_F^2 / k`` in [0, 1].

    Parameters
    ----------
    H, G : HessianOperator
        The Hessian and the GGN of one loss on the same data and parameters (e.g. ``from_torch(...)`` and
        ``from_torch(..., curvature="ggn")``); any pair of symmetric operators of one shape is accepted (a Fisher
        as ``G`` gives ``H - F``).
    k : int
        Eigenpairs per part; default 5 (10 or more to see a C-class classifier's C outliers).
    smallest : bool
        Also the ``k`` smallest eigenpairs of R (key ``"R-"``); default True.
    tol : float, optional
        Lanczos tolerance (:func:`hessop.lanczos`'s default when None).
    max_iter : int, optional
        Most Lanczos steps per eigen-solve (:func:`hessop.lanczos`'s default when None); pairs not converged by
        then are returned with ``converged=False`` (R's smallest eigenvalues, inside a dense bulk, can need many).
    n_iter : int
        SLQ steps per draw (default 90, as :func:`hessop.slq`; at most the dimension).
    max_hvp : int, optional
        The most products each part's density may spend, as :func:`hessop.slq`'s: a draw costs ``n_iter``, so
        it buys ``max_hvp // n_iter`` draws (default: 10 draws); ``max_hvp=0`` skips the
        densities.
    seed : int
        Seed of every solver; default 0.
    progress : bool, optional
        Progress bars of the solvers (their default when None).

    Returns
    -------
    Decomposition

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> J = rng.standard_normal((3, 8))
    >>> H = HessianOperator.from_matrix(J.T @ J + np.diag(np.linspace(-0.1, 0.1, 8)))
    >>> G = HessianOperator.from_matrix(J.T @ J)
    >>> d = decompose(H, G, k=2, n_iter=8, max_hvp=16)
    >>> bool(d.eigen["R"].all_converged), round(float(d.eigen["R"].eigenvalues[0]), 6)
    (True, 0.1)
    >>> d.densities["H"].n_vectors, d.densities["H"].n_hvp  # 16 products: two draws of 8 steps
    (2, 16)
    """
    H, G = as_operator(H), as_operator(G)
    k = check_int(k, "k", 1, H.n - 1)
    if max_hvp is not None:
        max_hvp = check_int(max_hvp, "max_hvp", 0)
    ops = {"H": H, "G": G, "R": residual_operator(H, G)}
    eigen: dict[str, EigenResult] = {}
    densities: dict[str, SpectralDensity] = {}
    n_hvp: dict[str, int] = {}
    for name, op in ops.items():
        start = op.n_hvp
        eigen[name] = lanczos(op, k, tol=tol, max_iter=max_iter, seed=seed, progress=progress)
        if name == "R" and smallest:
            eigen["R-"] = lanczos(op, k, which="SA", tol=tol, max_iter=max_iter, seed=seed, progress=progress)
        if max_hvp != 0:
            densities[name] = slq(op, n_iter=min(n_iter, op.n), max_hvp=max_hvp, seed=seed, progress=progress)
        n_hvp[name] = op.n_hvp - start
    pairs = [("H", "G"), ("H", "R"), ("G", "R")]
    found = {f"{a},{b}": _overlap(H, eigen[a], eigen[b]) for a, b in pairs}
    return Decomposition(eigen=eigen, densities=densities, overlaps={p: v[0] for p, v in found.items()},
                         cosines={p: v[1] for p, v in found.items()}, n_hvp=n_hvp)
