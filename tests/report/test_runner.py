"""hessop.report.runner: the report's numbers against exact answers, its files and the self-contained page."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np

from hessop.cli import main
from hessop.testing import outlier_spectrum

SMALL = ["--top", "4", "--bottom", "2", "--trace-rtol", "0.02", "--density-steps", "40", "--density-draws", "4"]


def _png_pixels(data: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(data), format="png")


def test_report_numbers_match_the_exact_spectrum(tmp_path, capsys, matrix_spec):
    spec = matrix_spec
    out = tmp_path / "rep"
    code = main(["analyze", f"{spec}:problem", "--out", str(out), "--seed", "3", "--tol", "1e-8", *SMALL])
    assert code == 0
    assert "report.html" in capsys.readouterr().out
    lam = outlier_spectrum(300, n_outliers=6, n_negative=3, seed=0)
    rep = json.loads((out / "report.json").read_text())
    eig = rep["sections"]["eigenvalues"]
    for name, truth in (("top", lam[:4]), ("bottom", lam[::-1][:2])):
        got, res = np.array(eig[name]["eigenvalues"]), np.array(eig[name]["residuals"])
        assert all(eig[name]["converged"]) and np.all(res <= 1e-8 * np.abs(got))
        assert np.all(np.abs(got - truth) <= res + 1e-12)  # the reported residual bounds the error
        # verify="auto": a verification product only for a pair whose product-free residual bound fails
        assert eig[name]["n_iter"] <= eig[name]["n_hvp"] <= eig[name]["n_iter"] + len(got)
    tr = rep["sections"]["trace"]
    assert tr["requested_method"] == "auto" and tr["method"] == "hutch++" and tr["converged"] and tr["rank"] >= 6
    lo, hi = tr["interval_95"]
    assert hi - lo <= 2 * 0.02 * abs(tr["estimate"])  # the 2% target, met
    assert abs(tr["estimate"] - lam.sum()) <= 3.5 * tr["std_error"]  # (the 95% interval misses 1 seed in 20)
    assert lo < tr["estimate"] < hi  # not symmetric about it: the interval is corrected for the samples' skewness
    assert "target met" in tr["stop_reason"] and tr["n_hvp"] <= tr["max_hvp"] == 2000
    dens = rep["sections"]["density"]
    assert dens["n_hvp"] == 4 * 40 and len(dens["nodes"]) == 4
    assert dens["support"][0] < lam.min() < lam.max() < dens["support"][1] + 0.02
    total = sum(s["section_n_hvp"] for s in rep["sections"].values())
    assert rep["n_hvp"] == total == eig["top"]["n_hvp"] + eig["bottom"]["n_hvp"] + tr["n_hvp"] + 160
    assert rep["seed"] == 3 and rep["command"][:3] == ["hessop", "analyze", f"{spec}:problem"]
    assert rep["operator"]["n"] == 300 and rep["versions"]["hessop"] and rep["seconds"] > 0
    assert rep["figures"] == ["convergence.png", "density.png"]

    # the page is self-contained: both figures embedded, byte for byte the PNG files; no external resources
    page = (out / "report.html").read_text()
    embedded = [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert embedded == [(out / "convergence.png").read_bytes(), (out / "density.png").read_bytes()]
    assert not re.search(r'(src|href)="(?!data:)', page)
    for text in ("Extreme eigenvalues", "Trace", "Spectral density", f"{lam[0]:.6g}"[:6]):
        assert text in page
    pixels = _png_pixels(embedded[1])
    assert pixels.ndim == 3 and pixels.shape[1] > 500 and np.ptp(pixels[..., :3]) > 0.5  # a drawn picture
