"""hessop.report.spec: SPEC loading, the PyTorch, JAX and default problems, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hessop.cli import main


def test_jax_and_torch_problems(tmp_path, write_spec):
    pytest.importorskip("jax")
    torch = pytest.importorskip("torch")
    spec = write_spec("""
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
    args = ["--top", "2", "--bottom", "1", "--trace-hvp", "64", "--density-steps", "5", "--density-draws", "2"]
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

    def hf_model_default_loss():
        import torch

        class Output(dict):
            __getattr__ = dict.__getitem__

        class LM(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(3, 2)

            def forward(self, x, labels=None):
                return Output(loss=None, logits=self.lin(x))

        return {"model": LM(), "loss_fn": torch.nn.CrossEntropyLoss(),
                "data": [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))]}

    def mixed_data():
        import torch
        return {"model": torch.nn.Linear(3, 1), "loss_fn": lambda m, b: m(b[0]).sum(), "loss_form": "model",
                "data": (torch.randn(4, 3), "labels")}

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
    ("{file}:hf_model_default_loss", "returned a Output, not a tensor"),
    ("{file}:hf_model_default_loss", "pass loss_fn=None"),
    ("{file}:mixed_data", "mixing tensors with other values (Tensor, str)"),
    ("no_such_package_xyz.mod:f", "no module named 'no_such_package_xyz.mod'"),
    ("{file}", "SPEC must be path/to/file.py:function"),
])
def test_bad_spec_is_one_line_and_exit_code_2(tmp_path, capsys, write_spec, target, message):
    if "non_scalar" in target or "hf_" in target or "mixed" in target:
        pytest.importorskip("torch")
    spec = write_spec(BAD)
    code = main(["analyze", target.format(dir=tmp_path, file=spec), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith("hessop analyze: error: ") and message in lines[0]
    assert "Traceback" not in captured.err and not (tmp_path / "o").exists()


def test_lm_token_batches_in_a_list(tmp_path, write_spec):
    """A list of token tensors with loss_form="model" is a list of batches (before: one batch, and the SPEC failed
    with "list indices must be integers or slices, not tuple" inside the loss)."""
    pytest.importorskip("torch")
    from hessop.report import build_operator, load_problem

    spec = write_spec("""
        import torch

        def lm():
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5))

            def next_token(m, ids):
                return torch.nn.functional.cross_entropy(m(ids[:, :-1]).reshape(-1, 5), ids[:, 1:].reshape(-1))

            return {"model": model, "loss_fn": next_token, "loss_form": "model",
                    "data": [torch.randint(0, 5, (2, 6)) for _ in range(3)]}
    """)
    H, _ = build_operator(load_problem(f"{spec}:lm"))
    assert H.backend.n_samples == 6 and len(H.backend.data) == 3


def test_default_problem_runs(tmp_path):
    """No SPEC: the built-in digits CNN (small budgets here; the defaults take about a minute)."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "default"
    code = main(["analyze", "--out", str(out), "--top", "2", "--bottom", "1", "--trace-hvp", "64",
                 "--density-steps", "10", "--density-draws", "2"])
    rep = json.loads((out / "report.json").read_text())
    assert code == (0 if rep["converged"] else 1)
    assert rep["spec"] == "hessop.models.digits:analyze_problem" and rep["operator"]["n"] == 1706
    top = rep["sections"]["eigenvalues"]["top"]
    assert top["eigenvalues"][0] > top["eigenvalues"][1] > 0 and "torch" in rep["versions"]
