"""Byte budgets (hessop/_memory.py, Backend.free_memory) and the Lanczos basis's vector work (hessop/krylov.py):
filled columns only and a second Gram-Schmidt pass only where the first lost orthogonality (issue 21)."""

import numpy as np
import pytest

import hessop
from hessop._memory import FRACTION, budget, lanczos_vectors
from hessop.backends.base import host_free_memory
from hessop.krylov import Krylov, qnorm_bound
from hessop.results import residual_floor
from hessop.testing import matrix_with_spectrum, outlier_spectrum


def _op(n=300, dtype=np.float64, lam=None, seed=1):
    lam = outlier_spectrum(n, seed=0) if lam is None else lam
    return hessop.HessianOperator.from_matrix(matrix_with_spectrum(lam, seed=seed).astype(dtype))


# ------------------------------------------------------------------------------------------- declared backend facts
def test_backends_declare_fixed_shapes_and_free_memory():
    op = _op(50)
    assert op.backend.fixed_shapes is False
    free = op.backend.free_memory()
    assert free is None or (isinstance(free, int) and free > 0)
    assert free == host_free_memory() or free is None or abs(free - host_free_memory()) < 2**30
    wide = hessop.HessianOperator.from_matrix(np.eye(3, dtype=np.float32)).with_solver_dtype(np.float64)
    assert wide.backend.fixed_shapes is False and wide.backend.free_memory() is not None
    torch = pytest.importorskip("torch")
    from hessop.models.linear import linear_least_squares

    H = linear_least_squares()
    assert H.backend.fixed_shapes is False
    assert H.backend.free_memory() > 0
    assert H.backend.cache_memory <= max(int(H.backend.free_memory() * FRACTION), 2**30)
    assert torch is not None


def test_jax_backend_declares_fixed_shapes():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    H = hessop.HessianOperator.from_jax(lambda p, x: jnp.mean((x @ p["w"]) ** 2), {"w": jnp.zeros(2)},
                                        jnp.array([[2.0, 0.0], [0.0, 1.0]]))
    assert H.backend.fixed_shapes is True
    free = H.backend.free_memory()
    assert free is None or free > 0
    K = Krylov(H, H.asarray(np.ones(2, dtype=np.float32)), 2)
    assert K.fixed and tuple(K.Q.shape) == (2, 3) and jax is not None


# ------------------------------------------------------------------------------------------- Gram-Schmidt
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_selective_second_pass_keeps_the_basis_orthonormal(dtype):
    """On a spectrum symmetric about 0 (alpha ~ 0: little cancellation) the DGKS test skips about half the second
    passes; the basis stays orthonormal to working precision and the Ritz values match the fixed-shape path's."""
    n, steps = 400, 60
    eps = np.finfo(dtype).eps
    op = _op(n, dtype, np.linspace(-1.0, 1.0, n))
    v0 = op.cast(np.random.default_rng(0).standard_normal(n))
    K = Krylov(op, v0, steps)
    for _ in range(steps):
        K.step()
    assert not K.fixed and 0 < K.n_second < steps  # some second passes skipped, some run
    Q = np.asarray(K.Q[:, : K.j], dtype=np.float64)
    assert np.linalg.norm(Q.T @ Q - np.eye(K.j), 2) < 10 * np.sqrt(n) * eps
    # the fixed-shape path (JAX's) on the same operator: both passes every step
    op.backend.fixed_shapes = True
    F = Krylov(op, v0, steps)
    for _ in range(steps):
        F.step()
    assert F.fixed and F.n_second == steps
    np.testing.assert_allclose(K.ritz()[0], F.ritz()[0], atol=100 * np.sqrt(n) * eps)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lam", ["symmetric", "outliers"])
def test_residual_bounds_hold_when_second_passes_are_skipped(dtype, lam):
    """The bounds of Krylov.residual_bounds (the computed relation's error with a skipped pass's coefficients zero)
    against the true residuals of the Ritz vectors, dense float64, through thick restarts."""
    n = 300
    spectrum = np.linspace(-1.0, 1.0, n) if lam == "symmetric" else outlier_spectrum(n, seed=0)
    A = matrix_with_spectrum(spectrum, seed=3)
    op = hessop.HessianOperator.from_matrix(A.astype(dtype))
    A64 = np.asarray(op.backend.A, dtype=np.float64)
    K = Krylov(op, op.cast(np.random.default_rng(1).standard_normal(n)), 30)
    for cycle in range(3):
        while K.j < 30:
            K.step()
        theta, S = K.ritz()
        anorm = max(K.anorm, float(np.max(np.abs(theta))))
        unit = residual_floor(op, anorm)
        bound, _ = K.residual_bounds(S, theta, unit, anorm, qnorm_bound(K))
        Y = np.asarray(K.Q[:, : K.j] @ op.cast(S), dtype=np.float64)
        true = np.linalg.norm(A64 @ Y - Y * theta, axis=0)
        assert np.all(true <= bound), (cycle, np.max(true / bound))
        K.thick_restart(S, theta, np.argsort(-theta)[:12])
    assert K.n_second < K.n_mult if lam == "symmetric" else K.n_second <= K.n_mult


# ------------------------------------------------------------------------------------------- byte budgets
def test_lanczos_shaped_to_a_small_budget_gives_the_same_eigenvalues():
    op = _op(400)
    vec = 400 * 8
    full = hessop.lanczos(op, k=5)
    small = hessop.lanczos(op, k=5, memory=lanczos_vectors(12, 5) * vec)  # a basis of 12 instead of 40
    assert small.n_restarts > full.n_restarts
    assert small.all_converged and full.all_converged
    np.testing.assert_allclose(small.eigenvalues, full.eigenvalues, rtol=1e-8)
    # an explicit max_basis is a count, as before; with a memory too it is checked against it
    assert hessop.lanczos(op, k=5, max_basis=12).n_restarts == small.n_restarts
    with pytest.raises(ValueError, match=r"lanczos\(k=5, max_basis=30\) needs .*lower max_basis to 12"):
        hessop.lanczos(op, k=5, max_basis=30, memory=lanczos_vectors(12, 5) * vec)


def test_lanczos_budget_messages_name_the_knob(monkeypatch):
    op = _op(400)
    with pytest.raises(ValueError, match=r"lanczos\(k=5\) needs at least 27 vectors of 3.12 KiB.*memory="):
        hessop.lanczos(op, k=5, memory=20 * 400 * 8)
    with pytest.raises(TypeError, match="memory"):
        hessop.lanczos(op, k=5, memory=1.5e9)
    with pytest.raises(ValueError, match="memory"):
        hessop.lanczos(op, k=5, memory=0)
    # the default: a quarter of the free memory the backend reports, read at call time
    monkeypatch.setattr(type(op.backend), "free_memory", lambda self: 4 * 20 * 400 * 8)
    with pytest.raises(ValueError, match=r"a quarter of the .* free on the numpy backend's device"):
        hessop.lanczos(op, k=5)
    monkeypatch.setattr(type(op.backend), "free_memory", lambda self: 4 * lanczos_vectors(12, 5) * 400 * 8)
    shaped = hessop.lanczos(op, k=5)
    np.testing.assert_allclose(shaped.eigenvalues, hessop.lanczos(op, k=5, max_basis=12).eigenvalues, rtol=0)
    monkeypatch.setattr(type(op.backend), "free_memory", lambda self: None)  # unknown: the count default
    assert budget(op, None).bytes is None and hessop.lanczos(op, k=5).all_converged


def test_slq_shaped_to_the_free_memory_gives_identical_rules(monkeypatch):
    A = matrix_with_spectrum(outlier_spectrum(300, seed=0), seed=1)
    op = hessop.HessianOperator.from_matrix(A)
    ref = hessop.slq(op, n_iter=20, max_hvp=200, seed=4)
    assert ref.blocks == (10,)
    monkeypatch.setattr(type(op.backend), "free_memory", lambda self: 4 * 2 * 24 * 300 * 8)  # 2 draws fit
    sd = hessop.slq(op, n_iter=20, max_hvp=200, seed=4)
    assert sd.blocks == (2, 2, 2, 2, 2)
    for x, y in zip(sd.nodes + sd.weights, ref.nodes + ref.weights, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)  # the same draws (products of other widths)
    monkeypatch.setattr(type(op.backend), "free_memory", lambda self: 4 * 23 * 300 * 8)
    with pytest.raises(ValueError, match=r"slq\(n_iter=20\) needs 24 vectors .* per draw.*a quarter of .*memory="):
        hessop.slq(op, n_iter=20)


def test_budget_counts_the_solver_dtype():
    op = hessop.HessianOperator.from_matrix(np.eye(1000, dtype=np.float32))
    assert budget(op, 4000).vectors == 1 and budget(op.with_solver_dtype(np.float64), 4000).vectors == 0
