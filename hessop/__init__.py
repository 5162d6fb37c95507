"""hessop: second-order facts about a loss (Hessian eigenpairs, ...) from Hessian-vector products alone.

The Hessian is never formed: a :class:`HessianOperator` supplies products ``H v`` from a PyTorch, JAX, CuPy or
NumPy backend, and backend-agnostic solvers run on the backend's own arrays.
"""

from hessop.blocks import BlockRow, BlockTable, by_block
from hessop.estimators import (
    DiagonalEstimate,
    SketchResult,
    SpectralDensity,
    TraceEstimate,
    diagonal,
    hutchinson,
    hutchpp,
    sketch,
    slq,
    trace,
    xtrace,
)
from hessop.lanczos import lanczos
from hessop.landscape import Landscape, landscape
from hessop.operator import HessianOperator, as_operator
from hessop.power import power_iteration
from hessop.results import EigenResult
from hessop.tracking import Tracker, TrackRecord

__all__ = [
    "DiagonalEstimate", "EigenResult", "HessianOperator", "SketchResult", "SpectralDensity", "TraceEstimate",
    "as_operator", "diagonal", "hutchinson", "hutchpp", "lanczos", "power_iteration", "sketch", "slq", "trace",
    "xtrace", "BlockRow", "BlockTable", "Landscape", "TrackRecord", "Tracker", "by_block", "landscape",
]
__version__ = "0.1.0"
