"""Helpers shared by the PyTorch backend's test modules (not a test module itself)."""

from __future__ import annotations

import numpy as np

from hessop import HessianOperator

METHODS = ["auto", "forward_over_reverse", "double_backward"]


def unequal_batches(p):
    cuts = [0, 100, 130, 256]
    return [(p["x"][a:b], p["y"][a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def op(problem, data=None, **kw):
    p = problem
    return HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]) if data is None else data, **kw)
