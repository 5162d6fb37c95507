"""hessop: second-order facts about a loss (Hessian eigenpairs, ...) from Hessian-vector products alone.

The Hessian is never formed: a :class:`HessianOperator` supplies products ``H v`` from a PyTorch, JAX, CuPy or
NumPy backend, and backend-agnostic solvers run on the backend's own arrays.
"""

from hessop.lanczos import lanczos
from hessop.operator import HessianOperator, as_operator
from hessop.power import power_iteration
from hessop.results import EigenResult

__all__ = ["EigenResult", "HessianOperator", "as_operator", "lanczos", "power_iteration"]
__version__ = "0.1.0"
