"""hessop.diagonal (Hutchinson and Diag++, fixed budget and to a target through the adaptive engine) against exact
answers: prescribed spectra and the small network's dense Hessian.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

import hessop


@pytest.mark.parametrize("name", ["outlier", "network"])
def test_diagonal_within_two_standard_errors(request, name):
    A, _ = request.getfixturevalue(name)
    d = hessop.diagonal(A, 100, seed=1)
    assert d.n_hvp == 100 and d.n_samples == 100 and d.per_parameter is None
    err = np.abs(d.diagonal - np.diag(A))
    assert np.mean(err <= 2 * d.std_error) >= 0.9
    # the standard error is the size of the error, not a loose bound
    assert 0.7 <= np.sqrt(np.mean(err**2) / np.mean(d.std_error**2)) <= 1.3


def test_diagonal_of_diagonal_matrix_is_exact():
    A = np.diag(np.linspace(-1.0, 3.0, 30))
    d = hessop.diagonal(A, 3, block_size=2)
    np.testing.assert_allclose(d.diagonal, np.diag(A), rtol=1e-15)
    np.testing.assert_allclose(d.std_error, 0.0, atol=1e-15)


def test_diagonal_blocks_agree_with_one_pass(outlier):
    A, _ = outlier
    a = hessop.diagonal(A, 37, block_size=5, seed=2)
    b = hessop.diagonal(A, 37, block_size=37, seed=2)
    np.testing.assert_allclose(a.diagonal, b.diagonal, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(a.std_error, b.std_error, rtol=1e-9)


def test_torch_operator_gives_the_dense_diagonal(torch_op, network, torch_problem):
    """Same seed, same probes: the network operator's diagonal (Hutchinson and XDiag) equals that of its dense
    Hessian to rounding, as torch tensors, and comes back split per parameter."""
    torch = pytest.importorskip("torch")
    A, _ = network
    before = torch_op.n_hvp
    d = hessop.diagonal(torch_op, 16, seed=5)
    assert isinstance(d.diagonal, torch.Tensor) and isinstance(d.std_error, torch.Tensor)
    np.testing.assert_allclose(d.diagonal.numpy(), hessop.diagonal(A, 16, seed=5).diagonal, atol=1e-12)
    assert list(d.per_parameter) == torch_problem["names"]
    for (name, piece), p in zip(d.per_parameter.items(), torch_problem["model"].parameters(), strict=True):
        assert piece.shape == p.shape, name
    flat = torch.cat([t.reshape(-1) for t in d.per_parameter.values()])
    assert torch.equal(flat, d.diagonal)
    x = hessop.diagonal(torch_op, 24, seed=5, method="xdiag")
    assert isinstance(x.diagonal, torch.Tensor) and x.per_parameter is not None
    want = hessop.diagonal(A, 24, seed=5, method="xdiag")
    np.testing.assert_allclose(x.diagonal.numpy(), want.diagonal, atol=1e-9 * np.abs(want.diagonal).max())
    assert torch_op.n_hvp - before == 16 + 24


def test_diagonal_to_a_target_on_the_torch_operator_matches_the_dense_hessian(torch_op, network):
    """Diag++ on the PyTorch operator (torch arrays throughout) takes the same decisions as on the dense Hessian
    and gives the same diagonal and standard errors, split per parameter."""
    A, _ = network
    got, want = hessop.diagonal(torch_op, rtol=0.1, seed=3), hessop.diagonal(A, rtol=0.1, seed=3)
    assert (got.method, got.n_hvp, got.rank, got.n_samples) == (want.method, want.n_hvp, want.rank, want.n_samples)
    assert got.method == "diag++"
    np.testing.assert_allclose(got.diagonal.numpy(), want.diagonal, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(got.std_error.numpy(), want.std_error, rtol=1e-5, atol=1e-12)
    assert set(got.per_parameter) == {n for n, _ in torch_op.backend.model.named_parameters()}


@pytest.mark.parametrize("name, target, method", [
    ("flat", {"rtol": 0.1}, "hutchinson"), ("outlier", {"atol": 0.5}, "diag++"), ("outlier", {"rtol": 0.1}, "diag++"),
    ("outlier32", {"rtol": 0.1}, "diag++"), ("network", {"rtol": 0.1}, "diag++")])
def test_diagonal_to_a_target(request, name, target, method):
    """diagonal(rtol= / atol=): the method chosen is the expected one, the RMS 95% half-width meets the target, >= 90%
    of the entries' intervals cover them.  On the outlier matrix rtol=0.1 needs ~24,000 Hutchinson probes (its
    entries' variance ||H||_F^2 / n ~ 60 dwarfs diagonal entries ~1); Diag++ needs about 100 products."""
    A, _ = request.getfixturevalue(name)
    d = hessop.diagonal(A, seed=2, **target)
    exact = np.diag(A.astype(np.float64))
    half = scipy.stats.t.ppf(0.975, d.n_samples - 1) * d.std_error
    goal = max(target.get("rtol", 0) * np.sqrt(np.mean(d.diagonal**2)), target.get("atol", 0))
    assert d.converged and d.method == method and d.n_samples >= 32 and "target met" in d.stop_reason
    assert d.diagonal.dtype == A.dtype and d.std_error.dtype == A.dtype
    assert d.n_hvp > d.n_samples  # beside the batch: its pilot (Hutchinson: two stages since issue 26) or a sketch
    if method == "diag++":
        assert d.rank >= 16 and d.n_hvp <= 300 and "cut the entries' mean variance" in d.choice
    assert np.sqrt(np.mean(half**2)) <= goal * (1 + 1e-5)
    assert np.mean(np.abs(d.diagonal - exact) <= half) >= 0.9
    with pytest.warns(RuntimeWarning, match="diagonal did not reach rtol=0.001"):
        assert not hessop.diagonal(A, rtol=1e-3, max_hvp=48).converged


def diagonal_coverage(A, seeds, **kw):
    """Over ``seeds``: the fraction of (seed, entry) pairs whose 95% Student-t interval covers the exact entry, the
    root mean square of the reported standard errors over the root-mean-square error, and the runs."""
    exact = np.diag(A.astype(np.float64))
    rs = [hessop.diagonal(A, seed=s, **kw) for s in seeds]
    err = np.array([r.diagonal - exact for r in rs])
    se = np.array([r.std_error for r in rs])
    q = np.array([scipy.stats.t.ppf(0.975, r.n_samples - 1) for r in rs])[:, None]
    return np.mean(np.abs(err) <= q * se), math.sqrt(np.mean(se**2) / np.mean(err**2)), rs


@pytest.mark.parametrize("name, rtol, method", [
    ("flat", 0.03, "hutchinson"), ("outlier", 0.1, "diag++"), ("outlier", 0.03, "diag++"),
    ("outlier32", 0.03, "diag++"), ("network", 0.05, "diag++")])
def test_diagonal_intervals_are_true(request, name, rtol, method):
    """Over 40 seeds (200 in the slow test): the entries' 95% intervals cover the exact diagonal in >= 93% of
    (seed, entry) pairs and the reported standard errors are the true error within 25% (measured 0.95-0.96 and
    0.99-1.00; the outlier matrix at rtol=0.03 doubles the rank to 48)."""
    A, _ = request.getfixturevalue(name)
    covered, ratio, rs = diagonal_coverage(A, range(40), rtol=rtol)
    assert covered >= 0.93, covered
    assert 0.75 <= ratio <= 1.25, ratio
    assert all(r.converged and r.method == method for r in rs)


@pytest.mark.slow
@pytest.mark.parametrize("name, rtol", [("flat", 0.03), ("outlier", 0.03), ("outlier32", 0.1), ("network", 0.05)])
def test_diagonal_intervals_are_true_over_200_seeds(request, name, rtol):
    A, _ = request.getfixturevalue(name)
    covered, ratio, _ = diagonal_coverage(A, range(200), rtol=rtol)
    assert covered >= 0.93, covered
    assert 0.75 <= ratio <= 1.25, ratio


def test_diag_plus_plus_is_exact_on_a_low_rank_operator():
    """rank(H) = 5 <= the sketch's 16 columns: the exact part diag(PH + HP - PHP) is diag(H) and every residual
    sample is 0, so the estimate is exact with zero standard error, from the first planned batch."""
    rng = np.random.default_rng(1)
    U = np.linalg.qr(rng.standard_normal((200, 5)))[0]
    A = (U * np.array([9.0, 4.0, -2.0, 1.0, 0.5])) @ U.T
    d = hessop.diagonal(A, rtol=0.01, method="diag++")
    np.testing.assert_allclose(d.diagonal, np.diag(A), atol=1e-13)
    assert np.all(d.std_error <= 1e-13) and d.method == "diag++" and d.rank == 16
    assert d.n_hvp == 16 + 16 + 2 * 32  # sketch, its products, pilot, batch


def test_diagonal_on_a_flat_spectrum_costs_about_what_hutchinson_does(flat):
    """method="auto" tries deflation (one block) only when Hutchinson is predicted to need >= 8 blocks, and the
    try's plain samples are kept: over 10 seeds at most 1.3x Hutchinson's products."""
    A, _ = flat
    auto = [hessop.diagonal(A, rtol=0.03, seed=s) for s in range(10)]
    plain = [hessop.diagonal(A, rtol=0.03, seed=s, method="hutchinson") for s in range(10)]
    assert all(r.method == "hutchinson" and "only" in r.choice for r in auto)
    assert np.median([r.n_hvp for r in auto]) <= 1.3 * np.median([r.n_hvp for r in plain])
