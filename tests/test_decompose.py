"""hessop.decompose: H, G and R = H - G side by side, against the dense matrices of a small float64 MLP."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hessop  # noqa: E402


@pytest.fixture(scope="module")
def operators():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()
    data = [(torch.randn(9, 5, dtype=torch.float64), torch.randint(0, 4, (9,))),
            (torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 4, (6,)))]
    H = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), data)
    G = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), data, curvature="ggn")
    dense = {name: op @ np.eye(op.n) for name, op in (("H", H), ("G", G))}
    dense["R"] = dense["H"] - dense["G"]
    return H, G, dense


def test_decomposition_against_dense(operators, tmp_path):
    H, G, dense = operators
    k = 3
    out = hessop.decompose(H, G, k=k, n_iter=20, max_hvp=40, seed=1)
    vecs = {}
    for name in ("H", "G", "R"):
        lam, U = np.linalg.eigh((dense[name] + dense[name].T) / 2)
        res = out.eigen[name]
        assert res.all_converged
        assert np.all(np.abs(res.eigenvalues - lam[::-1][:k]) <= res.residuals)
        vecs[name] = U[:, ::-1][:, :k]
        assert out.densities[name].n_vectors == 2 and out.n_hvp[name] > 0
    lam_r = np.linalg.eigvalsh(dense["R"])
    assert np.all(np.abs(out.eigen["R-"].eigenvalues - lam_r[:k]) <= out.eigen["R-"].residuals)
    assert lam_r[0] < 0  # R has negative curvature here
    for pair, value in out.overlaps.items():
        a, b = pair.split(",")
        expected = float(np.sum((vecs[a].T @ vecs[b]) ** 2)) / k
        assert abs(value - expected) < 1e-8
        assert np.all((out.cosines[pair] >= 0) & (out.cosines[pair] <= 1 + 1e-12))
    assert "overlap" in out.summary()
    pytest.importorskip("matplotlib")
    out.plot(tmp_path / "hgr.png")
    assert (tmp_path / "hgr.png").stat().st_size > 0


def test_residual_operator_is_exact_difference(operators):
    H, G, dense = operators
    V = np.random.default_rng(0).standard_normal((H.n, 2))
    R = hessop.residual_operator(H, G)
    assert np.max(np.abs(R @ V - dense["R"] @ V)) < 1e-13 * np.max(np.abs(dense["H"]))
    assert "difference" in repr(R)


def test_refusals(operators):
    H, G, _ = operators
    with pytest.raises(ValueError, match="differ in shape"):
        hessop.residual_operator(H, hessop.HessianOperator.from_matrix(np.eye(4)))
    with pytest.raises(ValueError, match="k must be"):
        hessop.decompose(H, G, k=0)


@pytest.mark.slow
def test_example_small(tmp_path):
    """examples/curvature_decomposition.py end to end at its reduced size (about 2 minutes on 2 idle cores)."""
    import importlib.util
    import json
    import pathlib

    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "curvature_decomposition.py"
    spec = importlib.util.spec_from_file_location("curvature_decomposition", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--small", "--out", str(tmp_path)])
    assert (tmp_path / "hgr.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results.json").read_text())["config"] == module.SMALL
    for r in results.values():
        assert all(r[name]["converged"] for name in ("H", "G", "R"))


def test_curvature_of_refusals():
    H = hessop.HessianOperator.from_matrix(np.eye(3))
    with pytest.raises(TypeError, match="built from a model"):
        hessop.curvature_of(H)
    with pytest.raises(ValueError, match="H is the Hessian"):
        hessop.curvature_of(H, "hessian")
