"""The report's two traces on the digits network (issue 21: the density section showed 16.33 +- 0.98 beside the
trace section's 18.23 +- 0.08, exact 18.37): every trace it shows carries a valid 95% interval, and the page says
which one to cite."""

from __future__ import annotations

import numpy as np
import pytest

import hessop
from hessop.report import DensitySection, TraceSection, run_analysis

torch = pytest.importorskip("torch")


def test_both_trace_intervals_cover_the_exact_trace(torch_problem, tmp_path):
    p = torch_problem
    H = hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]))
    exact = float(np.trace(p["hessian"]))
    # the density from 32 draws (enough for a valid interval; 10 steps each: the quadrature of the trace is exact)
    report = run_analysis(H, [TraceSection("auto", 0.01, 2000), DensitySection(10, 32)], tmp_path, seed=0,
                          tol=None, description="digits", command=["test"], spec="test")
    tr, dens = report["sections"]["trace"], report["sections"]["density"]["trace"]
    assert tr["converged"] and dens["valid"] and dens["cite"] == "trace" and dens["n_draws"] == 32
    for interval in (tr["interval_95"], dens["interval_95"]):
        assert interval[0] <= exact <= interval[1], (interval, exact)
    page = (tmp_path / "report.html").read_text()
    assert "trace to cite" in page and "This is the trace to cite" in page and "the one to cite" in page


def test_too_few_draws_show_no_trace_number(torch_problem, tmp_path):
    """The default 5 draws: the density section gives no trace (its interval would not be valid) and points to
    the Trace section."""
    p = torch_problem
    H = hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]))
    out = DensitySection(10, 5).run(H, seed=0, tol=None)
    assert out.data["trace"] == {"n_draws": 5, "valid": False, "cite": "trace", "reason": out.data["trace"]["reason"]}
    assert "cite the Trace section" in out.html and "&plusmn;" not in out.html
