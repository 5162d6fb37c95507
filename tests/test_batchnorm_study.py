"""examples/batchnorm_study.py runs end to end at its reduced size (the full size is documented in docs/analyses.md)."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_batchnorm_study_small(tmp_path):
    spec = importlib.util.spec_from_file_location("batchnorm_study", ROOT / "examples" / "batchnorm_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    results = study.main(["--small", "--out", str(tmp_path)])
    assert [r["variant"] for r in results] == list(study.VARIANTS)
    for name in ("density.png", "stages.png", "landscape.png", "tracking.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["results"]) == 3 and saved["config"] == study.SMALL
    for r in results:
        top, tr = r["top"], r["trace"]
        assert top.all_converged and np.all(top.residuals <= study.SMALL["tol"] * np.abs(top.eigenvalues))
        assert tr.n_hvp == study.SMALL["trace_hvp"] and np.isfinite(tr.estimate)
        # the stages partition the parameters (their accuracy is tested in test_blocks.py)
        rows = list(r["stages"])
        assert sum(row.n for row in rows) == r["n"]
        # the landscape's centre is the loss at theta, the stage's top eigenvalue is below the full one
        assert r["landscape"].losses.shape == (3, 3)
        assert max(row.eigenvalues[0] for row in rows) <= top.eigenvalues[0] * (1 + 1e-3)
    # BatchNorm removed: no BatchNorm parameters in the stem
    assert results[1]["stages"]["stem"].params == ("conv1.weight", "conv1.bias")
    tracked = results[0]["tracker"].records
    assert [rec.step for rec in tracked] == [6, 12] and tracked[1].warm
