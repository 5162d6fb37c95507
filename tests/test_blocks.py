"""hessop.by_block against the dense diagonal blocks of exact Hessians (the test CNN in PyTorch, an MLP in JAX)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import hessop
from hessop.blocks import _resolve_groups

torch = pytest.importorskip("torch")


def check_rows(table, names, offsets, dense):
    """Every row's eigenvalues within their residuals of the dense block's, and its trace exact or within 5 s.e."""
    for row in table:
        idx = np.concatenate([np.arange(offsets[names.index(p)], offsets[names.index(p) + 1]) for p in row.params])
        block = dense[np.ix_(idx, idx)]
        true = np.linalg.eigvalsh(block)[::-1][: len(row.eigenvalues)]
        scale = np.abs(true[0])
        assert row.n == idx.size and row.converged.all()
        assert np.all(np.abs(row.eigenvalues - true) <= row.residuals + 1e-10 * scale), row.name
        tr = np.trace(block)
        if row.trace.exact:
            assert row.trace.method.startswith("exact")
            assert abs(row.trace.estimate - tr) <= 1e-10 * np.abs(block).sum(), row.name
        else:
            assert abs(row.trace.estimate - tr) <= 5 * row.trace.std_error, row.name
            lo, hi = row.trace.interval(0.999)
            assert lo <= tr <= hi


@pytest.fixture(scope="module")
def cnn_table(torch_problem):
    p = torch_problem
    H = hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]))
    return H, hessop.by_block(H, k=2, tol=1e-8, trace_options={"max_hvp": 30})


def test_torch_blocks_match_dense_diagonal_blocks(torch_problem, cnn_table):
    H, table = cnn_table
    assert [r.name for r in table] == ["conv1", "bn1", "conv2", "fc1", "fc2"]
    assert table["fc1"].params == ("fc1.weight", "fc1.bias") and table["bn1"].n == 8
    check_rows(table, H.backend.names, H.backend.offsets, torch_problem["hessian"])
    # the blocks partition the parameters: their traces add up to the full trace (within the errors)
    total = sum(r.trace.estimate for r in table)
    se = np.sqrt(sum(r.trace.std_error**2 for r in table))
    assert abs(total - np.trace(torch_problem["hessian"])) <= 5 * se


def test_table_prints_saves_and_plots(cnn_table, tmp_path):
    _, table = cnn_table
    text = str(table)
    assert all(r.name in text for r in table) and "lambda_max" in text
    table.to_csv(tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("name,n,eigenvalue_0,eigenvalue_1") and len(lines) == 1 + len(table)
    assert float(lines[1].split(",")[2]) == table[0].eigenvalues[0]
    table.to_json(tmp_path / "t.json")
    rows = json.loads((tmp_path / "t.json").read_text())
    assert rows[3]["name"] == "fc1" and rows[3]["trace"] == table["fc1"].trace.estimate
    pytest.importorskip("matplotlib")
    fig = table.plot(tmp_path / "t.png")
    assert len(fig.axes) == 2 and (tmp_path / "t.png").stat().st_size > 1000
    with pytest.raises(KeyError, match="no group"):
        table["layer9"]


def test_group_specifications():
    names = ["conv1.weight", "conv1.bias", "bn1.weight", "layer1.0.conv.weight", "layer10.weight", "fc.weight"]
    modules = [n.rpartition(".")[0] for n in names]
    assert [g for g, _ in _resolve_groups(None, names, modules)] == ["conv1", "bn1", "layer1.0.conv", "layer10",
                                                                    "fc"]
    assert _resolve_groups(["layer1"], names, modules) == [("layer1", ["layer1.0.conv.weight"])]
    stages = {"stem": ["conv1", "bn1"], "head": re.compile(r"^fc"), "one": "conv1.bias"}
    assert _resolve_groups(stages, names, modules) == [
        ("stem", ["conv1.weight", "conv1.bias", "bn1.weight"]), ("head", ["fc.weight"]), ("one", ["conv1.bias"])]
    jax_names = ["['conv']['w']", "['conv']['b']", "['dense']['w']"]
    assert _resolve_groups(["['conv']"], jax_names, ["['conv']", "['conv']", "['dense']"]) == [
        ("['conv']", ["['conv']['w']", "['conv']['b']"])]
    with pytest.raises(ValueError, match="matches no parameter"):
        _resolve_groups(["conv2"], names, modules)
    with pytest.raises(TypeError, match="groups must be"):
        _resolve_groups(3, names, modules)
    with pytest.raises(TypeError, match="group 'x'"):
        _resolve_groups({"x": [1]}, names, modules)


def test_refusals():
    A = np.diag(np.arange(1.0, 6.0))
    M = hessop.HessianOperator.from_matrix(A)
    with pytest.raises(TypeError, match="parameter names"):
        hessop.by_block(M)
    with pytest.raises(TypeError, match="HessianOperator"):
        hessop.by_block(A)


def test_mpi_operators_are_refused(torch_problem):
    pytest.importorskip("mpi4py")
    from mpi4py import MPI

    from hessop.mpi import reduce_operator

    p = torch_problem
    H = hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"][:8], p["y"][:8]))
    R = reduce_operator(H, MPI.COMM_SELF, abort_on_error=False)
    with pytest.raises(ValueError, match="MPI"):
        hessop.by_block(R)
    with pytest.raises(ValueError, match="MPI"):
        hessop.landscape(R, np.ones(H.n))


@pytest.mark.slow  # 18 s on 2 cores; by_block against dense blocks runs over torch in the default suite
def test_jax_blocks_match_dense_diagonal_blocks():
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    pytest.importorskip("sklearn")
    from jax.flatten_util import ravel_pytree
    from jax_x64 import enable_x64
    from sklearn.datasets import load_digits

    with enable_x64(True):
        ds = load_digits()
        x, y = jnp.asarray(ds.data[:128] / 16.0), jnp.asarray(ds.target[:128])
        rng = np.random.default_rng(0)
        params = {"hidden": {"w": jnp.asarray(rng.standard_normal((64, 6)) / 8), "b": jnp.zeros(6)},
                  "out": {"w": jnp.asarray(rng.standard_normal((6, 10)) / 3), "b": jnp.zeros(10)}}

        def loss(p, batch):
            xb, yb = batch
            logits = jnp.tanh(xb @ p["hidden"]["w"] + p["hidden"]["b"]) @ p["out"]["w"] + p["out"]["b"]
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))

        theta, unravel = ravel_pytree(params)
        dense = np.asarray(jax.hessian(lambda t: loss(unravel(t), (x, y)))(theta))
        H = hessop.HessianOperator.from_jax(loss, params, [(x[:64], y[:64]), (x[64:], y[64:])])
        table = hessop.by_block(H, k=2, tol=1e-8)
        assert [r.name for r in table] == ["['hidden']", "['out']"]
        check_rows(table, H.backend.names, H.backend.offsets, (dense + dense.T) / 2)
        stages = hessop.by_block(H, {"weights": re.compile(r"\['w'\]$")}, k=1, tol=1e-8)
        assert stages[0].params == ("['hidden']['w']", "['out']['w']")
        check_rows(stages, H.backend.names, H.backend.offsets, (dense + dense.T) / 2)


def _float32_mlp():
    """A float32 MLP (Linear-Tanh-Linear: groups "0" with 56 and "2" with 27 parameters) and its data."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return model.float(), torch.randn(64, 6), torch.randint(0, 3, (64,))


def test_default_tol_is_dtype_aware_and_warns_once():
    """float32 products cannot resolve 1e-6: by default every row converges without a warning (issue 21: each
    float32 row warned), the eigenvalues agree with the float64 model's within their residuals, and a tol no row can
    meet draws one summary warning naming the groups, not one per row."""
    import warnings

    model, x, y = _float32_mlp()
    H32 = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t32 = hessop.by_block(H32)
    assert not [w for w in caught if "lanczos" in str(w.message) or "by_block" in str(w.message)]
    assert all(r.converged.all() for r in t32)
    ref = hessop.by_block(hessop.HessianOperator.from_torch(model.double(), torch.nn.CrossEntropyLoss(),
                                                            (x.double(), y)))
    assert all(r.converged.all() for r in ref)
    for a, b in zip(t32, ref, strict=True):
        assert np.all(np.abs(a.eigenvalues - b.eigenvalues) <= a.residuals + b.residuals)
    model.float()
    with pytest.warns(UserWarning, match=r"by_block: the Lanczos runs of 2 of 2 groups \(0, 2\)") as record:
        hessop.by_block(H32, k=1, tol=1e-12)
    assert len([w for w in record if "lanczos" in str(w.message) or "by_block" in str(w.message)]) == 1


def test_planned_products_and_progress_total(capsys):
    """The planned cost is known before the run (trace budget + a typical Lanczos count per group) and is the
    progress bar's first total; the bar ends at the products actually spent."""
    model, x, y = _float32_mlp()
    H = hessop.HessianOperator.from_torch(model.double(), torch.nn.CrossEntropyLoss(), (x.double(), y))
    plan = hessop.blocks.planned_products(H)
    assert plan == {"0": 56 + 12, "2": 27 + 12}  # exact traces of 56 and 27 columns, ~12 Lanczos steps each
    table = hessop.by_block(H, progress=True)
    err = capsys.readouterr().err
    spent = sum(r.n_hvp for r in table)
    assert f"/{sum(plan.values())}" in err and f"{spent}/{spent}" in err and "HVP" in err
    assert all(r.n_hvp > r.n for r in table)  # the exact trace (n products) and the Lanczos steps
