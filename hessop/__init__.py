"""hessop: second-order facts about a loss (Hessian eigenpairs, ...) from Hessian-vector products alone.

The Hessian is never formed: a :class:`HessianOperator` supplies products ``H v`` from a PyTorch, JAX, CuPy or
NumPy backend, and backend-agnostic solvers run on the backend's own arrays.
"""

# the imports are grouped by kind, like __all__
# isort: off
# operators
from hessop.operator import HessianOperator, as_operator
from hessop.decompose import curvature_of, residual_operator

# eigenpairs
from hessop.lanczos import lanczos
from hessop.power import power_iteration

# trace & diagonal
from hessop.estimators import DiagonalEstimate, TraceEstimate, diagonal, hutchinson, hutchpp, trace, xtrace

# spectral density & sketch
from hessop.estimators import SketchResult, SpectralDensity, sketch, slq

# analyses
from hessop.blocks import BlockRow, BlockTable, by_block
from hessop.decompose import Decomposition, decompose
from hessop.landscape import Landscape, landscape
from hessop.tracking import Tracker, TrackRecord

# results
from hessop.results import EigenResult
# isort: on

__all__ = [
    # operators
    "HessianOperator", "as_operator", "curvature_of", "residual_operator",
    # eigenpairs
    "lanczos", "power_iteration",
    # trace & diagonal
    "trace", "hutchinson", "hutchpp", "xtrace", "diagonal",
    # spectral density & sketch
    "slq", "sketch",
    # analyses
    "by_block", "landscape", "Tracker", "decompose",
    # results
    "EigenResult", "TraceEstimate", "DiagonalEstimate", "SpectralDensity", "SketchResult", "BlockRow", "BlockTable",
    "Landscape", "TrackRecord", "Decomposition",
]
__version__ = "0.1.0"
