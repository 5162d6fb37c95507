"""Progress bars: with progress=True every long loop draws a tqdm bar with its fields on stderr; the bar changes
neither the result (bit for bit) nor the number of products; by default it is drawn only on a terminal, and under
MPI only on rank 0."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import hessop
from hessop._progress import enabled
from hessop.testing import matrix_with_spectrum, outlier_spectrum


def operator():
    A = matrix_with_spectrum(outlier_spectrum(100, n_outliers=5, n_negative=2, seed=2), seed=3)
    return hessop.HessianOperator.from_matrix(A)


CALLS = {
    "lanczos": (lambda H, p: hessop.lanczos(H, 3, progress=p), ["lanczos LA", "step", "converged=3/3",
                                                                 "worst residual="]),
    "slq": (lambda H, p: hessop.slq(H, n_iter=10, max_hvp=40, block_size=2, progress=p),
            ["slq", "40/40", "HVP", "step=10/10"]),
    "hutchinson": (lambda H, p: hessop.hutchinson(H, rtol=0.3, block_size=8, progress=p),
                   ["hutchinson", "sample", "estimate=", "half95="]),
    "hutchpp": (lambda H, p: hessop.hutchpp(H, 30, progress=p), ["hutch++", "30/30", "HVP", "estimate=",
                                                                  "half95="]),
    "xtrace": (lambda H, p: hessop.xtrace(H, 30, progress=p), ["xtrace", "30/30", "estimate=", "half95="]),
    "diagonal": (lambda H, p: hessop.diagonal(H, rtol=2.0, max_hvp=64, block_size=16, progress=p),
                 ["diagonal", "HVP", "half95 (rms)="]),
    "trace": (lambda H, p: hessop.trace(H, rtol=0.01, block_size=8, progress=p),
              ["trace", "HVP", "method=hutch++", "rank=", "estimate=", "half95="]),
}


def _same(a, b):
    for name in vars(a):
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert np.array_equal(x, y, equal_nan=True), name
        elif isinstance(x, list):
            assert all(np.array_equal(u, v) for u, v in zip(x, y, strict=True)), name
        else:
            assert x == y or x != x, name  # x != x: NaN


@pytest.mark.parametrize("name", sorted(CALLS))
def test_bar_fields_and_no_effect(name, capsys):
    call, fields = CALLS[name]
    H_off, H_on = operator(), operator()
    off = call(H_off, False)
    assert capsys.readouterr().err == ""
    on = call(H_on, True)
    err = capsys.readouterr().err
    for text in fields:
        assert text in err, (text, err)
    _same(on, off)
    assert H_on.n_hvp == H_off.n_hvp


def test_default_is_a_terminal_only(capsys, monkeypatch):
    hessop.hutchinson(operator(), max_hvp=8)  # captured stderr is not a terminal
    assert capsys.readouterr().err == ""

    class Terminal(types.SimpleNamespace):
        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    term = Terminal(text="")
    monkeypatch.setattr(sys, "stderr", term)
    hessop.hutchinson(operator(), max_hvp=8)
    assert "hutchinson" in term.text and "estimate=" in term.text
    with pytest.raises(TypeError, match="progress must be"):
        hessop.hutchinson(operator(), max_hvp=8, progress="yes")


def test_only_rank_0_draws_under_mpi():
    def op(rank, widened=False):
        H = hessop.HessianOperator.from_matrix(np.eye(3, dtype=np.float32))
        H.backend.comm = types.SimpleNamespace(Get_rank=lambda: rank)  # as an MPIBackend declares it
        return H.with_solver_dtype(np.float64) if widened else H  # solver_dtype: the communicator seen through

    assert enabled(True, op(0)) and enabled(True, op(0, widened=True))
    assert not enabled(True, op(1)) and not enabled(True, op(2, widened=True))
    assert enabled(True, operator())


def test_by_block_and_tracker_bars(capsys, tiny_torch_problem):
    _, H = tiny_torch_problem
    table = hessop.by_block(H, progress=True)
    err = capsys.readouterr().err
    spent = sum(r.n_hvp for r in table)  # the bar counts products; it ends at those spent
    assert "by_block" in err and f"{spent}/{spent}" in err and "HVP" in err and "group=2" in err and "trace=" in err
    tracker = hessop.Tracker(H, top_k=1, trace=True, progress=True)
    for step in range(3):
        tracker.update(step)
    del tracker  # the bar ends with the tracker
    err = capsys.readouterr().err
    assert "Tracker" in err and "record" in err and "step=2" in err and "lambda_max=" in err
