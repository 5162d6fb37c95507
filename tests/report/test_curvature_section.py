"""``hessop analyze --curvature``: the H / G / R section against the dense matrices of a small PyTorch MLP, and
its refusal on an operator without a model."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from hessop.cli import main

pytest.importorskip("matplotlib")
torch = pytest.importorskip("torch")

SPEC = """
    import numpy as np
    import torch
    import hessop

    def mlp():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()
        data = [(torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 4, (12,)))]
        return {"model": model, "loss_fn": torch.nn.CrossEntropyLoss(), "data": data}

    def matrix():
        return hessop.HessianOperator.from_matrix(np.diag(np.arange(1.0, 9.0)))
"""
QUIET = ["--top", "1", "--bottom", "0", "--trace", "none", "--no-density"]


def test_curvature_section_matches_dense(tmp_path):
    spec = tmp_path / "p.py"
    spec.write_text(textwrap.dedent(SPEC))
    out = tmp_path / "rep"
    args = [*QUIET, "--curvature", "--curvature-k", "3", "--curvature-steps", "15", "--curvature-draws", "2"]
    assert main(["analyze", f"{spec}:mlp", "--out", str(out), *args]) == 0
    sec = json.loads((out / "report.json").read_text())["sections"]["curvature"]
    ns = {}
    exec(textwrap.dedent(SPEC), ns)  # the same model and data, rebuilt
    import hessop

    p = ns["mlp"]()
    H = hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], p["data"])
    G = hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], p["data"], curvature="ggn")
    dense = {"H": H @ np.eye(H.n), "G": G @ np.eye(G.n)}
    dense["R"] = dense["H"] - dense["G"]
    for name in ("H", "G", "R"):
        exact = np.linalg.eigvalsh(dense[name])[::-1][:3]
        got = sec["eigen"][name]
        assert np.all(np.abs(np.array(got["eigenvalues"]) - exact) <= np.array(got["residuals"]))
    assert set(sec["overlaps"]) == {"H,G", "H,R", "G,R"}
    assert (out / "curvature.png").stat().st_size > 0
    assert "Gauss-Newton" in (out / "report.html").read_text()


def test_curvature_section_needs_a_torch_model(tmp_path):
    spec = tmp_path / "p.py"
    spec.write_text(textwrap.dedent(SPEC))
    out = tmp_path / "rep"
    assert main(["analyze", f"{spec}:matrix", "--out", str(out), *QUIET, "--curvature"]) == 0
    sec = json.loads((out / "report.json").read_text())["sections"]["curvature"]
    assert sec["available"] is False and "built from a model" in sec["reason"]
