"""hessop: second-order facts about a loss (Hessian eigenpairs, ...) from Hessian-vector products alone.

The Hessian is never formed: a :class:`HessianOperator` supplies products ``H v`` from a PyTorch, JAX, CuPy or
NumPy backend, and backend-agnostic solvers run on the backend's own arrays.
"""

from hessop.blocks import BlockRow, BlockTable, by_block
from hessop.decompose import Decomposition, curvature_of, decompose, residual_operator
from hessop.density import SpectralDensity, slq
from hessop.diagonal import DiagonalEstimate, diagonal
from hessop.lanczos import lanczos
from hessop.landscape import Landscape, landscape
from hessop.operator import HessianOperator, as_operator
from hessop.power import power_iteration
from hessop.results import EigenResult
from hessop.sketch import SketchResult, sketch
from hessop.trace import TraceEstimate, hutchinson, hutchpp, trace, xtrace
from hessop.tracking import Tracker, TrackRecord

__all__ = [
    "DiagonalEstimate", "EigenResult", "HessianOperator", "SketchResult", "SpectralDensity", "TraceEstimate",
    "as_operator", "diagonal", "hutchinson", "hutchpp", "lanczos", "power_iteration", "sketch", "slq", "trace",
    "xtrace", "BlockRow", "BlockTable", "Landscape", "TrackRecord", "Tracker", "by_block", "landscape",
    "Decomposition", "curvature_of", "decompose", "residual_operator",
]
__version__ = "0.1.0"
# ``hessop.trace`` is the function imported above; the module stays importable with ``from hessop.trace import ...``
