"""Every code block of the README runs as written: the Python blocks in order in one namespace (with smaller sizes
so the suite stays fast), the JAX block on a small JAX problem, and the shell commands that need no install."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parents[1]
TEXT = (ROOT / "README.md").read_text()
PYTHON = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
BASH = re.findall(r"```bash\n(.*?)```", TEXT, flags=re.S)

# sizes made smaller for the test; each replacement must apply, so an edited README cannot silently skip one
SMALLER = {
    "x, y = digits()": "x, y = digits(120)",
    "steps=100": "steps=20",
    "rtol=0.01": "rtol=0.5",
    "n_iter=90, max_hvp=900": "n_iter=15, max_hvp=30",
    "sketch(H, 50)": "sketch(H, 12)",
    "n_points=21": "n_points=5",
    "every=50": "every=2",
    "range(200)": "range(4)",
}


def _shrink(code: str) -> str:
    for old, new in SMALLER.items():
        code = code.replace(old, new)
    return code


def _jax_placeholders() -> dict:
    """``loss_fn``, ``params`` and ``batches`` of the README's JAX block: a small two-layer regression."""
    import jax
    import jax.numpy as jnp

    def loss_fn(params, batch):
        x, y = batch
        return jnp.mean((jnp.tanh(x @ params["w1"]) @ params["w2"] - y) ** 2)

    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (40, 3))
    params = {"w1": jax.random.normal(key, (3, 4)), "w2": jnp.ones((4, 1)) / 4}
    return {"loss_fn": loss_fn, "params": params, "batches": [(x[:20], x[:20, :1]), (x[20:], x[20:, :1])]}


def test_readme_blocks_are_all_covered():
    assert len(PYTHON) == 4, "a Python block was added or removed: run it in test_readme_python_blocks_run"
    joined = "".join(PYTHON)
    for old in SMALLER:
        assert old in joined, f"README no longer contains {old!r}: update SMALLER"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the blocks write figures and tables to the working directory
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    namespace: dict = {}
    for i, block in enumerate(PYTHON):
        code = _shrink(block)
        if "from_jax" in code:
            pytest.importorskip("jax")
            namespace.update(_jax_placeholders())
            if "from_cupy" in code:
                try:
                    import cupy  # noqa: F401
                    namespace["A_gpu"] = cupy.eye(5)
                except ImportError:  # no GPU here: the CuPy line alone is left out (tests/backends/test_cupy.py)
                    code = "\n".join(line for line in code.splitlines() if "from_cupy" not in line)
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
        CHECKS[i](namespace)


def _check_usage(ns: dict) -> None:
    top, bottom = ns["top"], ns["bottom"]
    assert top.all_converged and bottom.all_converged and top.eigenvalues[0] > 0 > bottom.eigenvalues[0]
    assert tuple(ns["v"].shape) == (ns["H"].n,)


def _check_trace(ns: dict) -> None:
    assert ns["est"].converged and ns["phi"].size == ns["grid"].size == 10_000


def _check_analyses(ns: dict) -> None:
    land, stages, tracker = ns["land"], ns["stages"], ns["tracker"]
    assert land.losses.shape == (5, 5) and np.isfinite(land.losses).all()
    assert [row.name for row in stages.rows] == ["stem", "block", "head"]
    assert [r.step for r in tracker.records] == [2, 4]
    assert all(pathlib.Path(f).stat().st_size > 0 for f in ("landscape.png", "stages.png", "stages.csv",
                                                             "hessian.jsonl", "tracking.png"))


def _check_jax(ns: dict) -> None:
    assert ns["r"].all_converged and set(ns["top"]) == {"w1", "w2"}
    assert ns["top"]["w1"].shape == ns["params"]["w1"].shape


CHECKS = [_check_usage, _check_trace, _check_analyses, _check_jax]


def test_readme_mpi_command_runs():
    pytest.importorskip("mpi4py")
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    (command,) = [line for block in BASH for line in block.splitlines() if "mpiexec" in line]
    env_part, _, rest = command.partition(" mpiexec ")
    args = shlex.split("mpiexec " + rest)
    args[args.index("python")] = sys.executable
    env = dict(os.environ, PYTHONPATH=str(ROOT), **dict(kv.split("=") for kv in shlex.split(env_part)))
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "top-5 eigenvalues" in proc.stdout


def test_readme_other_commands_are_tested_elsewhere():
    """The install commands are CI's own (``.ci/run`` also builds the docs); ``hessop demo`` runs in test_cli.py,
    ``hessop analyze`` in tests/report/."""
    commands = [line for block in BASH for line in block.splitlines() if line.strip()]
    for line in commands:
        assert "mpiexec" in line or "pip install" in line or line.startswith("hessop "), line
    assert "python3 -m pip install -e \".[docs]\" && mkdocs serve" in commands
    assert "mkdocs build --strict" in (ROOT / ".ci" / "run").read_text()
    assert "python3 -m pip install -e \".[test]\" && python3 -m pytest" in commands
