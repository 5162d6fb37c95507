"""Result objects: everything a user needs to trust an answer travels with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EigenResult"]


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs of a symmetric operator.

    Attributes
    ----------
    eigenvalues : numpy.ndarray, shape (k,)
        Host float64 values, in the order the solver's ``which`` asks for (see each solver).
    eigenvectors : array, shape (n, k)
        Orthonormal columns in the backend's own array type and device (torch tensor, jax array, ...);
        column ``i`` belongs to ``eigenvalues[i]``.
    residuals : numpy.ndarray, shape (k,)
        ``||H v_i - lambda_i v_i||_2`` for each pair.  For a symmetric H, ``|lambda_i - lambda_true| <= residual``
        and the error is usually far smaller (about residual**2 / gap).
    converged : numpy.ndarray of bool, shape (k,)
        Whether pair ``i`` met the stopping rule ``residual <= tol * max(|lambda_i|, eps**(2/3) * ||H||)``.
    n_hvp : int
        Hessian-vector products the solver used.
    n_iter : int
        Iterations (Lanczos steps or power-iteration steps) taken.
    method : str
        Which solver produced the result.
    n_restarts : int
        Thick restarts (Lanczos only).
    """

    eigenvalues: np.ndarray
    eigenvectors: Any
    residuals: np.ndarray
    converged: np.ndarray
    n_hvp: int
    n_iter: int
    method: str
    n_restarts: int = 0

    @property
    def all_converged(self) -> bool:
        """True when every requested pair met the stopping rule."""
        return bool(np.all(self.converged))

    def __repr__(self) -> str:
        vals = np.array2string(self.eigenvalues, precision=6)
        res = np.array2string(self.residuals, precision=1)
        return (
            f"EigenResult(method={self.method!r}, eigenvalues={vals}, residuals={res}, "
            f"converged={int(np.sum(self.converged))}/{len(self.converged)}, n_hvp={self.n_hvp}, "
            f"n_iter={self.n_iter})"
        )
