"""Shared by the tests of :mod:`hessop.report`: SPEC files written to a temporary folder."""

from __future__ import annotations

import textwrap

import pytest

pytest.importorskip("matplotlib")

MATRIX_SPEC = """
    import numpy as np
    import hessop
    from hessop.testing import matrix_with_spectrum, outlier_spectrum

    def problem():
        lam = outlier_spectrum(300, n_outliers=6, n_negative=3, seed=0)
        return hessop.HessianOperator.from_matrix(matrix_with_spectrum(lam, seed=1))
"""


@pytest.fixture
def write_spec(tmp_path):
    """``write_spec(body, name)``: the dedented ``body`` written to ``tmp_path / name``; returns the path."""
    def write(body: str, name: str = "problem.py"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(body))
        return path
    return write


@pytest.fixture
def matrix_spec(write_spec):
    """A SPEC file whose ``problem`` is a 300 x 300 matrix with a known network-like spectrum."""
    return write_spec(MATRIX_SPEC)
