"""hessop.report.sections: each section's numbers and figures, its flags, and the model-only sections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hessop.cli import main
from hessop.testing import matrix_with_spectrum, outlier_spectrum


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


@pytest.mark.parametrize("argv", [
    ["--top", "-1"], ["--tol", "0"], ["--tol", "inf"], ["--trace-hvp", "2"], ["--trace-hvp", "63"],
    ["--trace-rtol", "0"],
    ["--trace-rtol", "1"], ["--density-draws", "1"], ["--density-steps", "0"], ["--layers", "--layers-k", "0"],
    ["--landscape", "line", "--landscape-points", "4"], ["--landscape", "grid", "--landscape-radius", "-1"]])
def test_bad_options_exit_2(capsys, argv):
    """A bad flag stops the command before any work, with exit code 2 and a message naming the flag."""
    with pytest.raises(SystemExit) as e:
        main(["analyze", *argv])
    assert e.value.code == 2
    flag = [a for a in argv if a.startswith("--") and a not in ("--layers", "--landscape")][-1]
    assert f"error: {flag} must be" in capsys.readouterr().err


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


def test_layers_and_landscape_sections(tmp_path, write_spec):
    """--layers: each module's block (exact top eigenvalue and trace); --landscape: the loss along the top two
    eigenvectors equals the closed form of the quadratic, and its fitted curvature the eigenvalues."""
    pytest.importorskip("jax")
    spec = write_spec(LAYERED)
    out = tmp_path / "rep"
    args = ["--top", "2", "--bottom", "0", "--trace-hvp", "64", "--no-density", "--layers", "--layers-k", "2",
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


def test_layers_and_landscape_need_a_model(tmp_path, matrix_spec):
    """On a matrix operator the two sections say why they are not available, and the rest of the report runs."""
    spec = matrix_spec
    out = tmp_path / "rep"
    args = ["--top", "1", "--bottom", "0", "--trace", "none", "--no-density", "--layers", "--landscape", "line"]
    assert main(["analyze", f"{spec}:problem", "--out", str(out), *args]) == 0
    rep = json.loads((out / "report.json").read_text())
    for key in ("layers", "landscape"):
        assert rep["sections"][key]["available"] is False
        assert "needs an operator built from a model" in rep["sections"][key]["reason"]
    assert rep["figures"] == ["convergence.png"]
