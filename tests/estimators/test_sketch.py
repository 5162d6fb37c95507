"""The Rademacher sketch S^T H S against exact answers (50-seed statistics on the network use its dense Hessian;
the PyTorch operator is shown to give the same sketch for the same seed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import hessop
from hessop._array import make_rng
from hessop._probes import draw
from hessop.testing import flat_spectrum, matrix_with_spectrum, outlier_spectrum

SEEDS = range(50)


@pytest.fixture(scope="module")
def flat():
    lam = flat_spectrum(400, seed=3)
    return matrix_with_spectrum(lam, seed=4), lam


@pytest.fixture(scope="module")
def outlier():
    lam = outlier_spectrum(400, seed=3)
    return matrix_with_spectrum(lam, seed=4), lam


@pytest.fixture(scope="module")
def network(torch_problem):
    return torch_problem["hessian"], torch_problem["eigenvalues"]


PROBLEMS = ["flat", "outlier", "network"]


@pytest.mark.parametrize("name", PROBLEMS)
def test_trace_is_unbiased(request, name):
    """The mean of tr(S^T H S) over 50 seeds matches tr(H) within two of its standard errors (measured: within
    one on all three problems, |z| = 0.96, 0.31, 0.86), and each run's reported standard error is the size of its
    actual error.  d = 50, a typical sketch size: at d = 10..20 the traces of the outlier spectrum are so skewed
    (a chi-square with few degrees of freedom on lambda_max) that a 50-seed mean is a poor normal statistic."""
    A, lam = request.getfixturevalue(name)
    results = [hessop.sketch(A, 50, seed=s) for s in SEEDS]
    traces = np.array([r.trace for r in results])
    se = traces.std(ddof=1) / math.sqrt(len(traces))
    assert abs(traces.mean() - lam.sum()) <= 2 * se, (traces.mean(), lam.sum(), se)
    ratio = math.sqrt(np.mean([r.trace_std_error**2 for r in results]) / np.mean((traces - lam.sum()) ** 2))
    assert 2 / 3 <= ratio <= 1.5


@pytest.mark.parametrize("name", PROBLEMS)
def test_top_eigenvalues_sit_at_or_above_the_true_ones(request, name):
    """As reported for network Hessians: the sketch's top eigenvalues overestimate (the bulk adds about
    tr(H_bulk) / d to each).  At d = 10, over 50 seeds, most of the top-5 sketch eigenvalues are at or above the
    true ones and the top one is at or above lambda_max in the median."""
    A, lam = request.getfixturevalue(name)
    top = np.array([hessop.sketch(A, 10, seed=s).eigenvalues[:5] for s in SEEDS])
    assert np.mean(top >= lam[:5]) > 0.5
    assert np.median(top[:, 0]) >= lam[0]


def test_sketch_matches_its_definition(outlier):
    A, _ = outlier
    r = hessop.sketch(A, 21, seed=9, block_size=8)
    S = draw(make_rng(9), A.shape[0], 21, scale=1 / math.sqrt(21))
    assert set(np.unique(np.abs(S))) == {1 / math.sqrt(21)}
    np.testing.assert_allclose(r.matrix, S.T @ A @ S, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(r.matrix, r.matrix.T)
    np.testing.assert_allclose(r.eigenvalues, np.linalg.eigvalsh(S.T @ A @ S)[::-1], rtol=1e-10, atol=1e-10)
    assert np.all(np.diff(r.eigenvalues) <= 0)
    assert r.trace == pytest.approx(np.trace(S.T @ A @ S), rel=1e-12)
    assert r.n_hvp == 21 and r.size == 21


def test_sketch_uses_block_products(outlier, block_only):
    A, _ = outlier
    op, calls = block_only(A)
    r = hessop.sketch(op, 40, block_size=16)
    assert calls == [16, 16, 8] and r.n_hvp == 40 == op.n_hvp
    np.testing.assert_allclose(r.matrix, hessop.sketch(A, 40, block_size=40).matrix, rtol=1e-12, atol=1e-12)


def test_torch_operator_gives_the_dense_sketch(torch_problem):
    p = torch_problem
    op = hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]))
    got = hessop.sketch(op, 10, seed=2)
    want = hessop.sketch(p["hessian"], 10, seed=2)
    np.testing.assert_allclose(got.matrix, want.matrix, atol=1e-10 * np.abs(want.matrix).max())
    assert isinstance(got.matrix, np.ndarray) and got.n_hvp == 10


@pytest.mark.parametrize("size, error, match", [
    (30, ValueError, r"max_hvp = 30 \(the sketch size\) must be below n = 30"),
    (45, ValueError, "must be below n"),
    (0, ValueError, "max_hvp = 0 is too small for a sketch of size 1"),
    (2.0, TypeError, "max_hvp must be an integer"),
])
def test_bad_size_raises(size, error, match):
    with pytest.raises(error, match=match):
        hessop.sketch(np.diag(np.arange(1.0, 31.0)), size)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_product_raises(nan_operator):
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        hessop.sketch(nan_operator, 5)
