"""Argument checks shared by the solvers: one clear message per mistake."""

from __future__ import annotations

import numbers

__all__ = ["check_choice", "check_int", "check_k", "check_tol"]


def check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; TypeError / ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return value


def check_k(k: object, n: int) -> int:
    """Number of eigenpairs: 1 <= k < n (for k >= n use a dense eigensolver on the explicit matrix)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {k!r}")
    if not 1 <= k < n:
        raise ValueError(
            f"k must satisfy 1 <= k < n = {n}, got k = {k}; for all eigenvalues of a small operator form the "
            "dense matrix and use numpy.linalg.eigh."
        )
    return int(k)


def check_tol(tol: object, name: str = "tol") -> float:
    """A positive finite tolerance."""
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {tol!r}")
    tol = float(tol)
    if not (tol > 0 and tol < float("inf")):
        raise ValueError(f"{name} must be a positive finite number, got {tol}")
    return tol


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return str(value)
