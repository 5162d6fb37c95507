"""The ``hessop demo`` command runs end to end and prints the comparison table."""

from __future__ import annotations

import pytest

from hessop.cli import main


def test_demo_prints_table(capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    code = main(["demo", "--seconds", "0.5", "--samples", "200", "--max-power-iter", "50"])
    out = capsys.readouterr().out
    assert code == 0
    for text in ("lanczos top-5 (LA)", "power iteration top-5", "lanczos bottom-3 (SA)", "power iteration bottom-3",
                 "HVPs", "1706 parameters"):
        assert text in out


def test_demo_rejects_bad_options():
    with pytest.raises(SystemExit):
        main(["demo", "--tol", "0"])
    with pytest.raises(SystemExit):
        main(["nothing"])
