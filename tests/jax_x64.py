"""JAX's 64-bit mode as a context, shared by the JAX tests (never switched on globally in the pytest process)."""

from __future__ import annotations

import contextlib

import jax


def enable_x64(on: bool = True) -> contextlib.AbstractContextManager:
    """``jax.enable_x64`` in new JAX, ``jax.experimental.enable_x64`` in old."""
    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:  # pragma: no cover - older JAX
        from jax.experimental import enable_x64 as ctx
    return ctx(on)
