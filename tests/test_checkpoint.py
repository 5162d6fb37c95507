"""Resumable runs: a run SIGKILLed midway (in a subprocess) and resumed from its checkpoint returns exactly the
result of an uninterrupted run, with fewer products; a finished checkpoint returns at once; another call's file and
a damaged file are refused with a clear message."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hessop

WORKER = Path(__file__).resolve().parent / "checkpoint_worker.py"
_spec = importlib.util.spec_from_file_location("_hessop_checkpoint_worker", WORKER)
_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_worker)
CALLS, operator = _worker.CALLS, _worker.operator

# (estimator, the block product during which the interrupted run is killed)
KILLS = [("hutchinson", 4), ("hutchinson_rtol", 5), ("hutchpp", 2), ("hutchpp", 3), ("xtrace", 2),
         ("diagonal", 3), ("diagonal_rtol", 3), ("diagonal_rtol", 14), ("diagonal_exact", 9),
         ("trace", 4), ("trace", 9), ("trace_exact", 9), ("slq", 20),
         ("tracker", 40)]


def assert_identical(a, b):
    """Every field equal: arrays by np.array_equal, floats exactly (NaN equal to NaN), lists elementwise (a
    tracker's records: every field but the wall time ``seconds``)."""
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_identical(x, y)
        return
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "seconds":
            continue
        if dataclasses.is_dataclass(x):
            assert_identical(x, y)
        elif isinstance(x, list):
            assert len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y, strict=True)), f.name
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y, equal_nan=True), f.name
        elif isinstance(x, float):
            assert x == y or (math.isnan(x) and math.isnan(y)), (f.name, x, y)
        else:
            assert x == y, (f.name, x, y)


def kill_midway(name: str, path: Path, kill_at: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(WORKER.parents[1])}  # the worker imports this checkout's hessop
    proc = subprocess.run([sys.executable, str(WORKER), name, str(path), str(kill_at)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert path.exists()


@pytest.mark.parametrize(("name", "kill_at"), KILLS)
def test_killed_run_resumes_bit_identical(tmp_path, name, kill_at):
    H = operator()
    reference = CALLS[name](H, None)
    path = tmp_path / "state.npz"
    kill_midway(name, path, kill_at)
    H2 = operator()
    resumed = CALLS[name](H2, path)
    assert_identical(resumed, reference)
    assert 0 < H2.n_hvp < H.n_hvp  # the products of the saved blocks were not taken again
    H3 = operator()
    again = CALLS[name](H3, path)  # a finished checkpoint: the same result, no product
    assert_identical(again, reference)
    assert H3.n_hvp == 0


@pytest.mark.parametrize("name", sorted(CALLS))
def test_uninterrupted_run_with_checkpoint_is_unchanged(tmp_path, name):
    H, H2 = operator(), operator()
    assert_identical(CALLS[name](H2, tmp_path / "c.npz"), CALLS[name](H, None))
    assert H2.n_hvp == H.n_hvp


def test_progress_and_checkpoint_together(tmp_path):
    H = operator()
    a = hessop.slq(H, n_iter=10, max_hvp=40, block_size=2, seed=1, checkpoint=tmp_path / "s.npz", progress=True)
    assert_identical(a, hessop.slq(operator(), n_iter=10, max_hvp=40, block_size=2, seed=1))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "h.npz"
    hessop.hutchinson(operator(), max_hvp=16, block_size=8, seed=3, checkpoint=path)
    return path


@pytest.mark.parametrize(("call", "field", "there", "here"), [
    (lambda H, p: hessop.hutchinson(H, max_hvp=16, block_size=8, seed=4, checkpoint=p), "seed", "3", "4"),
    (lambda H, p: hessop.hutchinson(H, max_hvp=16, block_size=4, seed=3, checkpoint=p), "block_size", "8", "4"),
    (lambda H, p: hessop.hutchinson(H, max_hvp=24, block_size=8, seed=3, checkpoint=p), "max_hvp", "16", "24"),
    (lambda H, p: hessop.hutchinson(H, max_hvp=16, block_size=8, seed=3, distribution="gaussian", checkpoint=p),
     "distribution", "'rademacher'", "'gaussian'"),
    (lambda H, p: hessop.xtrace(H, 16, seed=3, checkpoint=p), "function", "'hutchinson'", "'xtrace'"),
    (lambda H, p: hessop.hutchinson(operator(n=100), max_hvp=16, block_size=8, seed=3, checkpoint=p), "n",
     "120", "100"),
    (lambda H, p: hessop.hutchinson(operator(dtype=np.float32), max_hvp=16, block_size=8, seed=3, checkpoint=p),
     "dtype", "'float64'", "'float32'"),
])
def test_another_calls_checkpoint_names_the_field(saved, call, field, there, here):
    with pytest.raises(ValueError, match=rf"{field} is {there} there and {here} here\. Delete the file"):
        call(operator(), saved)


def test_damaged_checkpoint_is_refused(saved):
    data = saved.read_bytes()
    for damaged in (data[: len(data) // 2], b"garbage" * 100, data[:200] + bytes([data[200] ^ 0xFF]) + data[201:]):
        saved.write_bytes(damaged)
        with pytest.raises(ValueError, match="is damaged"):
            hessop.hutchinson(operator(), max_hvp=16, block_size=8, seed=3, checkpoint=saved)


def test_checkpoint_of_another_format_is_refused(tmp_path, monkeypatch):
    """A file written by another version of the state layout (FORMAT_VERSION) is refused, saying so."""
    import hessop._checkpoint

    path = tmp_path / "old.npz"
    with monkeypatch.context() as m:
        m.setattr(hessop._checkpoint, "FORMAT_VERSION", hessop._checkpoint.FORMAT_VERSION - 1)
        hessop.hutchinson(operator(), max_hvp=16, block_size=8, seed=3, checkpoint=path)
    with pytest.raises(ValueError, match="has format 1, written by another version of hessop"):
        hessop.hutchinson(operator(), max_hvp=16, block_size=8, seed=3, checkpoint=path)


def test_checkpoint_needs_an_integer_seed(tmp_path):
    with pytest.raises(ValueError, match="integer seed"):
        hessop.hutchinson(operator(), max_hvp=8, seed=None, checkpoint=tmp_path / "x.npz")


def test_no_temporary_files_left(tmp_path):
    hessop.diagonal(operator(), 24, block_size=8, seed=0, checkpoint=tmp_path / "d.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]


KILL_SPEC = """
import os
import signal

import hessop
from hessop.testing import matrix_with_spectrum, outlier_spectrum


def problem():
    A = matrix_with_spectrum(outlier_spectrum(150, n_outliers=6, n_negative=3, seed=0), seed=1)
    kill_at, count = int(os.environ.get("HESSOP_TEST_KILL_AT", "0")), [0]

    def block(V):
        count[0] += V.shape[1]
        if kill_at and count[0] >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return A @ V

    H = hessop.HessianOperator.from_function(lambda v: block(v[:, None])[:, 0], 150, hvp_block=block,
                                             check_symmetric=False)
    # the memory free, as the backend reports it: slq's default budget (a quarter) then holds 4 draws of 80 steps
    # (84 vectors of 150 float64 each), so the density runs in blocks of 4 and 2 draws
    H.backend.free_memory = lambda: 4 * 4 * 84 * 150 * 8
    return H
"""

ANALYZE = ["--top", "3", "--bottom", "2", "--trace-rtol", "0.05", "--trace-hvp", "100", "--density-steps", "80",
           "--density-draws", "6"]


def _numbers(data):
    """The report's sections without the wall times and this run's product counts (at every level)."""
    if isinstance(data, dict):
        return {k: _numbers(v) for k, v in data.items() if k not in ("seconds", "section_n_hvp")}
    return data


def test_analyze_resume_after_a_kill(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import json
    import os

    from hessop.cli import main

    spec = tmp_path / "killable.py"
    spec.write_text(KILL_SPEC)
    ref_dir, out = tmp_path / "ref", tmp_path / "out"
    assert main(["analyze", f"{spec}:problem", "--out", str(ref_dir), *ANALYZE]) == 0
    ref = json.loads((ref_dir / "report.json").read_text())
    # killed in the middle of the density's second block of draws (the last 160 products)
    env = {**os.environ, "HESSOP_TEST_KILL_AT": str(ref["n_hvp"] - 40)}
    proc = subprocess.run([sys.executable, "-m", "hessop.cli", "analyze", f"{spec}:problem", "--out", str(out),
                           *ANALYZE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (out / "report.json").exists()
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"eigenvalues.json", "trace.json", "trace.npz",
                                                                 "density.npz"}
    capsys.readouterr()
    assert main(["analyze", f"{spec}:problem", "--out", str(out), "--resume", *ANALYZE]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert _numbers(rep["sections"]) == _numbers(ref["sections"])
    assert rep["reused_sections"] == ["eigenvalues", "trace"]
    assert rep["n_hvp"] == rep["sections"]["density"]["section_n_hvp"] == 2 * 80  # only the interrupted block
    assert "starting over" not in capsys.readouterr().out
    # a finished run resumed: nothing computed; without --resume: everything again, said in one line
    assert main(["analyze", f"{spec}:problem", "--out", str(out), "--resume", *ANALYZE]) == 0
    assert json.loads((out / "report.json").read_text())["n_hvp"] == 0
    assert main(["analyze", f"{spec}:problem", "--out", str(out), *ANALYZE]) == 0
    assert "checkpoints; starting over (pass --resume" in capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert _numbers(rep["sections"]) == _numbers(ref["sections"]) and rep["n_hvp"] == ref["n_hvp"]


def test_torch_checkpoint_knows_the_parameters(tmp_path, tiny_torch_problem):
    import torch

    model, H = tiny_torch_problem
    path = tmp_path / "d.npz"
    first = hessop.diagonal(H, 16, block_size=8, checkpoint=path)
    used = H.n_hvp
    again = hessop.diagonal(H, 16, block_size=8, checkpoint=path)
    assert H.n_hvp == used and torch.equal(again.diagonal, first.diagonal)
    assert torch.equal(again.std_error, first.std_error)
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-3  # another model of the same size and dtype
    with pytest.raises(ValueError, match=r"parameters \(SHA-256\) is '[0-9a-f]{64}' there and '[0-9a-f]{64}' here"):
        hessop.diagonal(H, 16, block_size=8, checkpoint=path)
