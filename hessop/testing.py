"""Problems with exactly known answers, used by the tests, the benchmarks and the examples (NumPy only; the PyTorch
one is :func:`hessop.models.linear.linear_least_squares`)."""

from __future__ import annotations

import numpy as np

__all__ = ["FAMILIES", "family_spectrum", "matrix_with_spectrum", "outlier_spectrum", "flat_spectrum"]

FAMILIES = ("uniform", "outliers", "clusters", "multiplicity", "zero_negative", "low_rank")
"""Spectrum families of :func:`family_spectrum` (the property-based tests draw from them)."""


def matrix_with_spectrum(eigenvalues: np.ndarray, seed: int = 0, dtype: type = np.float64) -> np.ndarray:
    """Dense symmetric ``A = U diag(eigenvalues) U^T`` with ``U`` a Haar-random orthogonal matrix (QR of a
    Gaussian matrix with the signs of R's diagonal fixed).

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.testing import matrix_with_spectrum
    >>> A = matrix_with_spectrum([3.0, 2.0, 1.0], seed=0)
    >>> np.round(np.linalg.eigvalsh(A), 6), bool(np.array_equal(A, A.T))
    (array([1., 2., 3.]), True)
    """
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
    returned sorted descending.

    Examples
    --------
    >>> from hessop.testing import outlier_spectrum
    >>> lam = outlier_spectrum(20, n_outliers=2, n_negative=1, seed=0)
    >>> lam.shape, lam[:2].round(2).tolist(), float(lam[-1])
    ((20,), [100.41, 4.98], -1.0)
    """
    rng = np.random.default_rng(seed)
    n_bulk = n - n_outliers - n_negative
    bulk = rng.uniform(-0.05, 0.5, n_bulk)
    outliers = np.geomspace(5.0, 100.0, n_outliers) * (1 + 0.01 * rng.standard_normal(n_outliers))
    negative = -np.linspace(1.0, 3.0, n_negative) if n_negative else np.empty(0)
    return np.sort(np.concatenate([bulk, outliers, negative]))[::-1]


def flat_spectrum(n: int = 2000, seed: int = 0) -> np.ndarray:
    """A spectrum with no outliers: uniform on [0.5, 1.5], sorted descending.

    Examples
    --------
    >>> from hessop.testing import flat_spectrum
    >>> flat_spectrum(5, seed=0).round(3).tolist()
    [1.313, 1.137, 0.77, 0.541, 0.517]
    """
    rng = np.random.default_rng(seed)
    return np.sort(rng.uniform(0.5, 1.5, n))[::-1]


def family_spectrum(family: str, n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """A spectrum of ``n`` eigenvalues (sorted descending, times ``scale``) from one of :data:`FAMILIES`:

    * ``"uniform"``: uniform on [-1, 1];
    * ``"outliers"``: a network-like bulk with large outliers and a few negative values (:func:`outlier_spectrum`);
    * ``"clusters"``: 1-4 tight clusters (relative spread 1e-6) around random centres, so nearly equal values;
    * ``"multiplicity"``: 1-4 distinct values, each repeated exactly;
    * ``"zero_negative"``: about a third each of exact zeros, negative and positive values;
    * ``"low_rank"``: rank ``r = 1 .. max(1, n // 4)`` (random values in [0.5, 2]), the rest exactly zero.

    Examples
    --------
    >>> from hessop.testing import family_spectrum
    >>> family_spectrum("low_rank", 6, seed=0).round(3).tolist()
    [1.455, 0.0, 0.0, 0.0, 0.0, 0.0]
    >>> family_spectrum("multiplicity", 6, seed=1).round(3).tolist()
    [0.901, 0.901, -0.712, -0.712, -0.712, -0.712]
    """
    rng = np.random.default_rng(seed)
    if family == "uniform":
        lam = rng.uniform(-1.0, 1.0, n)
    elif family == "outliers":
        lam = outlier_spectrum(n, n_outliers=min(10, n // 3), n_negative=min(3, n // 6), seed=seed)
    elif family == "clusters":
        centres = rng.uniform(-1.0, 1.0, rng.integers(1, 5))
        lam = centres[rng.integers(0, centres.size, n)] * (1 + 1e-6 * rng.standard_normal(n))
    elif family == "multiplicity":
        values = rng.uniform(-1.0, 1.0, rng.integers(1, 5))
        lam = values[rng.integers(0, values.size, n)]
    elif family == "zero_negative":
        lam = rng.choice([0.0, -1.0, 1.0], n) * rng.uniform(0.1, 1.0, n)
    elif family == "low_rank":
        r = int(rng.integers(1, max(1, n // 4) + 1))
        lam = np.r_[rng.uniform(0.5, 2.0, r), np.zeros(n - r)]
    else:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}")
    return np.sort(lam * scale)[::-1]
