"""Randomised estimators of ``tr(H)``, ``diag(H)`` and the spectral density from Hessian-vector products.

Every estimator reports a standard error next to its estimate, takes a ``seed`` (probes are drawn on the host, so
one seed gives the same answer on every backend), takes its budget as ``max_hvp`` (the most Hessian-vector products
the call may spend), pushes its probes through ``H.hvp_block`` in blocks and counts the products it used in
``n_hvp``.

Which one to use
----------------
* :func:`trace` is the entry point for a target accuracy: it chooses Hutchinson or adaptive Hutch++ from the first
  products, grows the budget until the 95% interval meets ``max(rtol * |estimate|, atol)``, and says what it chose
  and why it stopped.  :func:`diagonal` does the same for ``diag(H)`` (Hutchinson or Diag++), or XDiag on a budget.
* :func:`hutchinson` is unbiased for any symmetric H, needs no memory beyond one block, and can stop on a
  confidence-interval rule (``rtol``).  Its variance with Rademacher probes is ``2 (||H||_F^2 - sum_i H_ii^2)``
  per sample: large when a few eigenvalues dominate (trained networks).
* :func:`hutchpp` and :func:`xtrace` spend part of the budget capturing the dominant eigen-directions exactly
  and use random probes only for the rest; on spectra with outliers they are several times more accurate at the
  same number of products.  On flat spectra Hutch++ is up to sqrt(3) less accurate than Hutchinson (two thirds
  of its budget build a sketch that captures nothing special) and XTrace up to sqrt(2) (each probe serves twice,
  so it averages max_hvp / 2 probes).  Both need ``n x (max_hvp / 2)`` memory.
* :func:`slq` estimates the eigenvalue density (and ``tr f(H)``) by stochastic Lanczos quadrature; :func:`sketch`
  gives the small matrix ``S^T H S``.

Modules: one per estimator (``_hutchinson``, ``_hutchpp``, ``_xtrace``, ``_trace``, ``_diagonal``, ``_xdiag``,
``_slq``, ``_sketch``), the adaptive engine of :func:`trace` and :func:`diagonal` (``_adaptive``), the shared
statistics (``_stats``), deflation (``_deflation``), the exact fallbacks (``_exact``) and the run context that owns
checkpoints, progress and product counting (``_run``).
"""

from hessop.estimators._density import SpectralDensity
from hessop.estimators._diagonal import diagonal
from hessop.estimators._estimates import DiagonalEstimate, TraceEstimate
from hessop.estimators._hutchinson import hutchinson
from hessop.estimators._hutchpp import hutchpp
from hessop.estimators._sketch import SketchResult, sketch
from hessop.estimators._slq import slq
from hessop.estimators._trace import trace
from hessop.estimators._xtrace import xtrace

__all__ = [
    "DiagonalEstimate", "SketchResult", "SpectralDensity", "TraceEstimate", "diagonal", "hutchinson", "hutchpp",
    "sketch", "slq", "trace", "xtrace",
]
