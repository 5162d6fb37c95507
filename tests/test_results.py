"""hessop.results: what an EigenResult carries and the tolerance and precision-floor rules every solver shares."""

from __future__ import annotations

import math

import numpy as np
import pytest

import hessop
from hessop.results import EigenResult, residual_floor, residual_threshold, resolve_tol
from hessop.testing import matrix_with_spectrum


def test_eigen_result_summary_and_flags():
    r = EigenResult(eigenvalues=np.array([2.0, 1.0]), eigenvectors=np.eye(3)[:, :2], residuals=np.array([1e-9, 0.5]),
                    converged=np.array([True, False]), n_hvp=12, n_iter=10, method="lanczos")
    assert not r.all_converged and r.n_restarts == 0
    assert repr(r) == ("EigenResult(method='lanczos', eigenvalues=[2. 1.], residuals=[1.e-09 5.e-01], converged=1/2, "
                       "n_hvp=12, n_iter=10)")


def test_precision_floor_and_default_tolerance():
    """The floor is sqrt(n) eps ||H|| in the products' precision; the default tol is raised to 10 sqrt(n) eps."""
    H64 = hessop.HessianOperator.from_matrix(np.eye(100))
    H32 = hessop.HessianOperator.from_matrix(np.eye(100, dtype=np.float32))
    assert residual_floor(H64, 2.0) == 10 * np.finfo(np.float64).eps * 2.0
    assert residual_floor(H32, 2.0) == 10 * float(np.finfo(np.float32).eps) * 2.0
    assert resolve_tol(None, 1e-8, H64) == 1e-8
    assert resolve_tol(None, 1e-8, H32) == pytest.approx(100 * float(np.finfo(np.float32).eps))
    assert resolve_tol(1e-3, 1e-8, H32) == 1e-3


def test_unreachable_tolerance_warns_and_never_converges():
    A = matrix_with_spectrum(np.linspace(1.0, 2.0, 50), dtype=np.float32)
    with pytest.warns(UserWarning, match="below what float32 products"):
        r = hessop.lanczos(A, 1, tol=1e-12, max_iter=200)
    assert not r.all_converged


def test_residual_threshold_rule():
    """ARPACK's rule tol * max(|theta|, eps^(2/3) ||H||), and under the default tol never below 10 x floor."""
    theta = np.array([10.0, 1e-9])
    thr = residual_threshold(1e-6, False, theta, anorm=10.0, floor=1e-7, eps23=1e-5)
    assert thr.tolist() == pytest.approx([1e-5, 1e-10])
    thr = residual_threshold(1e-6, True, theta, anorm=10.0, floor=1e-7, eps23=1e-5)
    assert thr.tolist() == pytest.approx([1e-5, 1e-6])
    assert math.isclose(float(residual_threshold(1e-6, False, np.array([-4.0]), 1.0, 0.0, 0.0)[0]), 4e-6)
