"""Problems with exactly known answers, used by the tests and the benchmarks (NumPy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["matrix_with_spectrum", "outlier_spectrum", "flat_spectrum"]


def matrix_with_spectrum(eigenvalues: np.ndarray, seed: int = 0, dtype: type = np.float64) -> np.ndarray:
    """Dense symmetric ``A = U diag(eigenvalues) U^T`` with ``U`` a Haar-random orthogonal matrix (QR of a
    Gaussian matrix with the signs of R's diagonal fixed)."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    n = lam.size
    rng = np.random.default_rng(seed)
    U, R = np.linalg.qr(rng.standard_normal((n, n)))
    U *= np.sign(np.diag(R))
    A = (U * lam) @ U.T
    return ((A + A.T) / 2).astype(dtype)


def outlier_spectrum(n: int = 2000, n_outliers: int = 10, n_negative: int = 3, seed: int = 0) -> np.ndarray:
    """A spectrum shaped like a trained network's Hessian: a bulk near zero (uniform on [-0.05, 0.5]), a few
    well separated negative eigenvalues (about -1 .. -3) and ``n_outliers`` large ones (about 5 .. 100),
    returned sorted descending."""
    rng = np.random.default_rng(seed)
    n_bulk = n - n_outliers - n_negative
    bulk = rng.uniform(-0.05, 0.5, n_bulk)
    outliers = np.geomspace(5.0, 100.0, n_outliers) * (1 + 0.01 * rng.standard_normal(n_outliers))
    negative = -np.linspace(1.0, 3.0, n_negative) if n_negative else np.empty(0)
    return np.sort(np.concatenate([bulk, outliers, negative]))[::-1]


def flat_spectrum(n: int = 2000, seed: int = 0) -> np.ndarray:
    """A spectrum with no outliers: uniform on [0.5, 1.5], sorted descending."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.uniform(0.5, 1.5, n))[::-1]
