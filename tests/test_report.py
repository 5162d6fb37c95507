"""``hessop analyze``: SPEC loading, the report's numbers against exact answers, its files, and one-line errors."""

from __future__ import annotations

import base64
import io
import json
import re
import textwrap

import numpy as np
import pytest

from hessop.cli import main
from hessop.testing import matrix_with_spectrum, outlier_spectrum

pytest.importorskip("matplotlib")


def _write(tmp_path, body: str, name: str = "problem.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


MATRIX_SPEC = """
    import numpy as np
    import hessop
    from hessop.testing import matrix_with_spectrum, outlier_spectrum

    def problem():
        lam = outlier_spectrum(300, n_outliers=6, n_negative=3, seed=0)
        return hessop.HessianOperator.from_matrix(matrix_with_spectrum(lam, seed=1))
"""

SMALL = ["--top", "4", "--bottom", "2", "--trace-rtol", "0.02", "--density-steps", "40", "--density-draws", "4"]


def _png_pixels(data: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(data), format="png")


def test_report_numbers_match_the_exact_spectrum(tmp_path, capsys):
    spec = _write(tmp_path, MATRIX_SPEC)
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
        assert eig[name]["n_hvp"] == eig[name]["n_iter"] + len(got) > len(got)  # + k products verifying residuals
    tr = rep["sections"]["trace"]
    assert tr["requested_method"] == "auto" and tr["method"] == "hutch++" and tr["converged"] and tr["rank"] >= 6
    lo, hi = tr["interval_95"]
    assert hi - lo <= 2 * 0.02 * abs(tr["estimate"])  # the 2% target, met
    assert abs(tr["estimate"] - lam.sum()) <= 3.5 * tr["std_error"]  # (the 95% interval misses 1 seed in 20)
    assert tr["interval_95"] == pytest.approx([tr["estimate"] - (hi - lo) / 2, tr["estimate"] + (hi - lo) / 2])
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


def test_convergence_history_and_density_axes(tmp_path):
    """The figures' data: Ritz values per Lanczos step end at the reported eigenvalues; the density axis is log."""
    from hessop import HessianOperator
    from hessop.report import DensitySection, EigenvaluesSection

    lam = outlier_spectrum(200, n_outliers=5, n_negative=2, seed=2)
    H = HessianOperator.from_matrix(matrix_with_spectrum(lam, seed=0))
    out = EigenvaluesSection(3, 2).run(H, seed=0, tol=1e-9)
    axes = out.figures["convergence"].axes
    assert len(axes) == 4
    for ax, name in ((axes[0], "top"), (axes[1], "bottom")):
        lines = ax.get_lines()
        assert len(lines) == len(out.data[name]["eigenvalues"])
        finals = [line.get_ydata()[-1] for line in lines]
        assert finals == pytest.approx(out.data[name]["eigenvalues"], rel=1e-12)
        assert lines[0].get_xdata()[-1] == out.data[name]["n_iter"]
    assert axes[2].get_yscale() == "log" and axes[2].get_lines()[0].get_ydata()[-1] == pytest.approx(
        out.data["top"]["residuals"][0], rel=1e-9, abs=1e-300)
    dens = DensitySection(30, 3).run(H, seed=0, tol=1e-9)
    ax = dens.figures["density"].axes[0]
    assert ax.get_yscale() == "log"
    x, y = ax.get_lines()[0].get_data()
    assert x[0] < lam.min() and x[-1] > lam.max() and np.max(y) > 1


def test_jax_and_torch_problems(tmp_path):
    pytest.importorskip("jax")
    torch = pytest.importorskip("torch")
    spec = _write(tmp_path, """
        import jax.numpy as jnp
        import numpy as np
        import torch

        A = np.diag(np.arange(1.0, 9.0)).astype(np.float32)

        def jax_problem():
            return {"loss_fn": lambda p, b: 0.5 * jnp.sum(p["w"] * (b[0] @ p["w"])),
                    "params": {"w": jnp.ones(8, dtype=jnp.float32)}, "data": jnp.asarray(A)[None],
                    "description": "quadratic"}

        def torch_problem():
            torch.manual_seed(0)
            model = torch.nn.Linear(3, 2)
            x, y = torch.randn(16, 3), torch.randn(16, 2)
            return {"model": model, "loss_fn": torch.nn.MSELoss(), "data": [(x, y)], "reduction": "mean"}
    """)
    out = tmp_path / "jax"
    args = ["--top", "2", "--bottom", "1", "--trace-hvp", "32", "--density-steps", "5", "--density-draws", "2"]
    assert main(["analyze", f"{spec}:jax_problem", "--out", str(out), *args]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["description"] == "quadratic" and rep["operator"]["dtype"] == "float32"
    assert rep["sections"]["eigenvalues"]["top"]["eigenvalues"] == pytest.approx([8, 7], rel=1e-5)
    assert rep["sections"]["eigenvalues"]["bottom"]["eigenvalues"] == pytest.approx([1], rel=1e-5)
    assert "jax" in rep["versions"]
    out = tmp_path / "torch"
    assert main(["analyze", f"{spec}:torch_problem", "--out", str(out), *args, "--trace", "hutchinson",
                 "--trace-hvp", "400", "--trace-rtol", "0.02"]) == 0
    rep = json.loads((out / "report.json").read_text())
    torch.manual_seed(0)
    torch.nn.Linear(3, 2)  # the SPEC's draws, in the same order
    x = torch.randn(16, 3)
    # MSE (mean over 16 x 2 entries): per output the Hessian block is [x 1]^T [x 1] / 16, twice (kron(I_2, block))
    X = torch.cat([x, torch.ones(16, 1)], 1).double()
    block = (X.T @ X).numpy() / 16
    lam = np.sort(np.linalg.eigvalsh(block))[::-1]
    assert rep["sections"]["eigenvalues"]["top"]["eigenvalues"] == pytest.approx([lam[0], lam[0]], rel=1e-4)
    lo, hi = rep["sections"]["trace"]["interval_95"]
    assert lo < 2 * lam.sum() < hi and rep["sections"]["trace"]["converged"]
    assert "torch" in rep["versions"]


BAD = """
    import numpy as np

    def returns_list():
        return [1, 2, 3]

    def missing_keys():
        return {"model": None, "loss_fn": None}

    def needs_argument(x):
        return x

    def raises():
        raise RuntimeError("no data here")

    not_a_function = 3

    def non_scalar_loss():
        import torch
        model = torch.nn.Linear(3, 1)
        return {"model": model, "loss_fn": torch.nn.MSELoss(reduction="none"),
                "data": [(torch.randn(4, 3), torch.randn(4, 1))]}
"""


@pytest.mark.parametrize(("target", "message"), [
    ("{dir}/missing.py:f", "no such file"),
    ("{file}:nothing", "has no function 'nothing'"),
    ("{file}:not_a_function", "not a function"),
    ("{file}:returns_list", "returned a list"),
    ("{file}:missing_keys", "missing ['data']"),
    ("{file}:needs_argument", "must be callable with no arguments"),
    ("{file}:raises", "RuntimeError: no data here"),
    ("{file}:non_scalar_loss", "not a scalar"),
    ("no_such_package_xyz.mod:f", "no module named 'no_such_package_xyz.mod'"),
    ("{file}", "SPEC must be path/to/file.py:function"),
])
def test_bad_spec_is_one_line_and_exit_code_2(tmp_path, capsys, target, message):
    if "non_scalar" in target:
        pytest.importorskip("torch")
    spec = _write(tmp_path, BAD)
    code = main(["analyze", target.format(dir=tmp_path, file=spec), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith("hessop analyze: error: ") and message in lines[0]
    assert "Traceback" not in captured.err and not (tmp_path / "o").exists()


def test_bad_options_exit_2():
    for argv in (["--top", "-1"], ["--tol", "0"], ["--trace-hvp", "2"], ["--trace-rtol", "0"], ["--density-draws", "1"],
                 ["--layers", "--layers-k", "0"], ["--landscape", "line", "--landscape-points", "4"],
                 ["--landscape", "grid", "--landscape-radius", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(["analyze", *argv])
        assert e.value.code == 2


def test_default_problem_runs(tmp_path):
    """No SPEC: the built-in digits CNN (small budgets here; the defaults take about a minute)."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "default"
    code = main(["analyze", "--out", str(out), "--top", "2", "--bottom", "1", "--trace-hvp", "32",
                 "--density-steps", "10", "--density-draws", "2"])
    rep = json.loads((out / "report.json").read_text())
    assert code == (0 if rep["converged"] else 1)
    assert rep["spec"] == "hessop.models.digits:analyze_problem" and rep["operator"]["n"] == 1706
    top = rep["sections"]["eigenvalues"]["top"]
    assert top["eigenvalues"][0] > top["eigenvalues"][1] > 0 and "torch" in rep["versions"]


LAYERED = """
    import jax.numpy as jnp

    def problem():
        # L = 0.5 sum_i i * w_i^2 over w = (a, b) = (w_1..w_3, w_4..w_8): H = diag(1..8), blocks diag(1..3), diag(4..8)
        def loss_fn(p, batch):
            w = jnp.concatenate([p["a"]["w"], p["b"]["w"]])
            return 0.5 * jnp.sum(batch[0] * w * w)
        return {"loss_fn": loss_fn, "params": {"a": {"w": jnp.ones(3)}, "b": {"w": jnp.ones(5)}},
                "data": [jnp.arange(1.0, 9.0)[None]]}
"""


def test_layers_and_landscape_sections(tmp_path):
    """--layers: each module's block (exact top eigenvalue and trace); --landscape: the loss along the top two
    eigenvectors equals the closed form of the quadratic, and its fitted curvature the eigenvalues."""
    pytest.importorskip("jax")
    spec = _write(tmp_path, LAYERED)
    out = tmp_path / "rep"
    args = ["--top", "2", "--bottom", "0", "--trace-hvp", "32", "--no-density", "--layers", "--layers-k", "2",
            "--landscape", "grid", "--landscape-points", "5", "--landscape-radius", "0.5"]
    assert main(["analyze", f"{spec}:problem", "--out", str(out), *args]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["figures"] == ["convergence.png", "landscape.png", "layers.png"]
    rows = {r["name"]: r for r in rep["sections"]["layers"]["rows"]}
    assert set(rows) == {"['a']", "['b']"}  # JAX names: the pytree path of each module
    for name, diag in (("['a']", [1.0, 2, 3]), ("['b']", [4.0, 5, 6, 7, 8])):
        assert rows[name]["n"] == len(diag)
        assert rows[name]["eigenvalues"] == pytest.approx(sorted(diag)[::-1][:2], rel=1e-6)
        assert rows[name]["trace"] == pytest.approx(sum(diag), rel=1e-6)
        assert rows[name]["trace_std_error"] <= 1e-5 * sum(diag)  # exact, up to float32 rounding
    land = rep["sections"]["landscape"]
    assert land["eigenvalues"] == pytest.approx([8, 7], rel=1e-6)
    a, b, f = np.array(land["alphas"]), np.array(land["betas"]), np.array(land["losses"])
    assert a.tolist() == pytest.approx([-0.5, -0.25, 0, 0.25, 0.5])
    # along unit eigenvectors +-e_8, +-e_7 of the diagonal H at w = 1 (signs as Lanczos returned them)
    grad = np.array([8.0, 7.0])
    lam = np.array([8.0, 7.0])
    f0 = 0.5 * np.sum(np.arange(1.0, 9.0))
    closed = f0 + 0.5 * lam[0] * a[:, None] ** 2 + 0.5 * lam[1] * b[None, :] ** 2
    slope = (f[-1, 2] - f[0, 2]) / 1.0, (f[2, -1] - f[2, 0]) / 1.0  # = +-grad_i: the sign of each eigenvector
    closed = closed + np.sign(slope[0]) * grad[0] * a[:, None] + np.sign(slope[1]) * grad[1] * b[None, :]
    assert f == pytest.approx(closed, rel=1e-6)
    assert land["curvature_at_origin"] == pytest.approx([8, 7], rel=1e-5)
    page = (out / "report.html").read_text()
    assert "Per-layer curvature" in page and "Loss landscape" in page and "matches the eigenvalue" in page


def test_layers_and_landscape_need_a_model(tmp_path):
    """On a matrix operator the two sections say why they are not available, and the rest of the report runs."""
    spec = _write(tmp_path, MATRIX_SPEC)
    out = tmp_path / "rep"
    args = ["--top", "1", "--bottom", "0", "--trace", "none", "--no-density", "--layers", "--landscape", "line"]
    assert main(["analyze", f"{spec}:problem", "--out", str(out), *args]) == 0
    rep = json.loads((out / "report.json").read_text())
    for key in ("layers", "landscape"):
        assert rep["sections"][key]["available"] is False
        assert "no model parameters and loss" in rep["sections"][key]["reason"]
    assert rep["figures"] == ["convergence.png"]
