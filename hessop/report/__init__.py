"""``hessop analyze``: analyse a problem given as ``SPEC`` and write ``report.json``, PNG figures and one
self-contained ``report.html``.

The problem
-----------
``SPEC`` is ``path/to/file.py:function`` or ``package.module:function``.  The function takes no required
arguments (it is called with ``device=...`` when ``--device`` is given) and returns one of

* a PyTorch problem: ``{"model": nn.Module, "loss_fn": ..., "data": batches}`` with the optional keys
  ``"params"``, ``"reduction"`` (default ``"mean"``) and ``"loss_form"`` of
  :meth:`hessop.HessianOperator.from_torch`;
* a JAX problem: ``{"loss_fn": loss_fn(params, batch), "params": pytree, "data": batches}`` with the optional key
  ``"reduction"`` of :meth:`hessop.HessianOperator.from_jax`;
* a ready :class:`hessop.HessianOperator` (any backend).

Either dictionary may carry a ``"description"`` string, shown at the top of the report.  Without a SPEC the
built-in digits CNN is analysed (:func:`hessop.models.digits.analyze_problem`; offline, about a minute).

Sections
--------
A report is a list of sections, each a :class:`Section`: it adds its command-line flags, decides from the parsed
flags whether it runs, and returns a :class:`SectionOutput` (JSON data, an HTML fragment, figures).  A new kind of
analysis is one more subclass appended to :data:`SECTIONS`.  The sections: extreme eigenvalues, trace and density
(on by default), per-layer table (``--layers``) and loss landscape (``--landscape line|grid``), the last two for
operators built from a model (``from_torch``, ``from_jax``), and H = G + R (``--curvature``, a PyTorch model with a
cross-entropy or MSE loss).

Layout
------
:mod:`hessop.report.spec` loads the problem (:func:`load_problem`, :func:`build_operator`),
:mod:`hessop.report.sections` holds the sections, :mod:`hessop.report.runner` the resumable runner
(:func:`run_analysis`) and ``hessop.report._render`` the HTML (tables, figures, the page).
Everything public is importable from ``hessop.report``.
"""

from hessop.report.runner import run_analysis
from hessop.report.sections import (
    SECTIONS,
    CurvatureSection,
    DensitySection,
    EigenvaluesSection,
    LandscapeSection,
    LayersSection,
    Section,
    SectionOutput,
    TraceSection,
)
from hessop.report.spec import DEFAULT_SPEC, SpecError, build_operator, load_problem

__all__ = [
    # the problem
    "DEFAULT_SPEC", "SpecError", "build_operator", "load_problem",
    # the sections
    "SECTIONS", "Section", "SectionOutput", "DensitySection", "EigenvaluesSection", "LandscapeSection",
    "LayersSection", "TraceSection", "CurvatureSection",
    # the runner
    "run_analysis",
]
