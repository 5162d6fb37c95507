"""hessop.Tracker: warm-started values equal independent runs to the solver's tolerance, with fewer products."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hessop
from hessop.testing import matrix_with_spectrum
from hessop.tracking import Tracker

torch = pytest.importorskip("torch")


def agree(warm, cold):
    """Both runs' eigenvalues are within their residuals of the true ones, so of each other."""
    for a, b in zip(warm, cold, strict=True):
        assert a.step == b.step and a.converged and b.converged
        bound = a.top_residuals + b.top_residuals + 1e-12 * np.abs(b.top)
        assert np.all(np.abs(a.top - b.top) <= bound)
        if b.bottom.size:
            assert np.all(np.abs(a.bottom - b.bottom) <= a.bottom_residuals + b.bottom_residuals
                          + 1e-12 * np.abs(b.top[0]))


@pytest.fixture
def small_torch():
    pytest.importorskip("sklearn")
    from hessop.models.digits import SmallResNet, digits, train

    torch.manual_seed(0)
    x, y = digits(64)
    model = SmallResNet(channels=2, hidden=8).double()
    train(model, x, y, steps=30)
    return model, x, y


def test_torch_tracking_with_the_optimizer_hook(small_torch, tmp_path):
    model, x, y = small_torch
    H = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y))
    warm = Tracker(H, every=2, top_k=3, tol=1e-8, path=tmp_path / "warm.jsonl")
    cold = Tracker(H, every=2, top_k=3, tol=1e-8, warm_start=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    handles = [warm.attach(opt), cold.attach(opt)]
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for h in handles:
        h.remove()
    assert [r.step for r in warm.records] == [2, 4, 6]
    assert [r.warm for r in warm.records] == [False, True, True]
    assert not any(r.warm for r in cold.records)
    agree(warm.records, cold.records)
    # the Hessian changed along training (else the test would not test tracking)
    assert abs(warm.records[-1].top[0] - warm.records[0].top[0]) > 1e3 * warm.records[0].top_residuals[0]
    assert warm.records[0].lanczos_hvp == cold.records[0].lanczos_hvp
    assert sum(r.lanczos_hvp for r in warm.records) < sum(r.lanczos_hvp for r in cold.records)
    # the JSON-lines file holds the same records
    loaded = Tracker.load(tmp_path / "warm.jsonl")
    assert [r.step for r in loaded] == [2, 4, 6]
    np.testing.assert_array_equal(loaded[-1].top, warm.records[-1].top)
    assert json.loads((tmp_path / "warm.jsonl").read_text().splitlines()[0])["lanczos_hvp"] > 0


def test_trace_density_records_and_plot(small_torch, tmp_path):
    model, x, y = small_torch
    H = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y))
    t = Tracker(H, top_k=1, trace=True, density=True, density_options={"n_iter": 15, "max_hvp": 30},
                trace_options={"max_hvp": 30}, path=tmp_path / "t.jsonl")
    assert t.update(3) is not None and t.update(4) is not None
    t2 = Tracker(H, every=5, top_k=1)
    assert t2.update(3) is None and t2.records == []
    rec = t.records[0]
    assert rec.trace is not None and rec.trace_std_error > 0 and rec.density.n_vectors == 2
    assert rec.n_hvp == rec.lanczos_hvp + 30 + 30
    assert t.n_hvp == sum(r.n_hvp for r in t.records)
    loaded = Tracker.load(tmp_path / "t.jsonl")
    np.testing.assert_array_equal(loaded[1].density.nodes[0], t.records[1].density.nodes[0])
    assert loaded[1].density.trace().estimate == t.records[1].density.trace().estimate
    pytest.importorskip("matplotlib")
    fig = t.plot(tmp_path / "t.png")
    assert len(fig.axes) == 4  # eigenvalues, trace, density and its colour bar
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_default_trace_budget_gives_the_exact_trace_of_a_small_operator():
    """Without trace_options the trace has 64 products: n = 5 unit vectors give the exact trace (the rule shared with
    hessop.by_block's blocks), and a budget given in trace_options is spent instead."""
    M = hessop.HessianOperator.from_matrix(np.diag(np.arange(1.0, 6.0)))
    rec = Tracker(M, top_k=0, trace=True).record(0)
    assert rec.trace == 15.0 and rec.trace_std_error <= 1e-12 and rec.n_hvp == 5
    big = hessop.HessianOperator.from_matrix(matrix_with_spectrum(np.linspace(1.0, 2.0, 100)))
    assert Tracker(big, top_k=0, trace=True).record(0).n_hvp == 64
    rec = Tracker(big, top_k=0, trace=True, trace_options={"max_hvp": 30, "method": "hutchinson"}).record(0)
    assert rec.n_hvp == 30 and rec.trace_std_error > 0


def test_jax_tracking_with_an_operator_callable():
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    from jax_x64 import enable_x64

    with enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((64, 8)))
        y = jnp.asarray(rng.integers(0, 3, 64))
        state = {"params": {"w1": jnp.asarray(rng.standard_normal((8, 6)) / 3),
                            "w2": jnp.asarray(rng.standard_normal((6, 3)) / 3)}}

        def loss(p, batch):
            xb, yb = batch
            logits = jnp.tanh(xb @ p["w1"]) @ p["w2"]
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))

        def make():
            return hessop.HessianOperator.from_jax(loss, state["params"], (x, y))

        with pytest.raises(ValueError, match="callable"):
            Tracker(make())
        warm = Tracker(make, top_k=2, bottom_k=1, tol=1e-8)
        cold = Tracker(make, top_k=2, bottom_k=1, tol=1e-8, warm_start=False)
        grad = jax.jit(jax.grad(loss))
        for step in range(5):
            warm.update(step)
            cold.update(step)
            g = grad(state["params"], (x, y))
            state["params"] = jax.tree_util.tree_map(lambda p, d: p - 0.5 * d, state["params"], g)
        agree(warm.records, cold.records)
        assert sum(r.lanczos_hvp for r in warm.records) < sum(r.lanczos_hvp for r in cold.records)


def test_warm_runs_keep_the_multiplicity_check_after_a_repeated_eigenvalue(monkeypatch):
    """A warm start is one vector (one copy of each eigenvalue in its Krylov space): a record whose wanted
    eigenvalues repeat makes the next warm run check for copies again; distinct ones let it skip the check."""
    import hessop.tracking as tracking

    checks = []

    def spy(*args, **kwargs):
        checks.append(kwargs["check_multiplicity"])
        return hessop.lanczos(*args, **kwargs)

    monkeypatch.setattr(tracking, "lanczos", spy)
    lam = np.concatenate([[5.0, 5.0, 4.0], np.linspace(0.1, 1.0, 37)])
    for spectrum, want in ((lam, [True, True, True]), (lam[1:], [True, False, False])):
        H = hessop.HessianOperator.from_matrix(matrix_with_spectrum(spectrum, seed=2))
        tracker = Tracker(lambda H=H: H, top_k=3, tol=1e-8)
        checks.clear()
        for step in range(3):
            tracker.update(step)
        assert [r.warm for r in tracker.records] == [False, True, True] and checks == want
        for r in tracker.records:
            np.testing.assert_allclose(r.top, np.sort(spectrum)[::-1][:3], rtol=1e-7)


def test_bad_input():
    M = hessop.HessianOperator.from_matrix(np.eye(3))
    with pytest.raises(ValueError, match="nothing to track"):
        Tracker(M, top_k=0)
    with pytest.raises(TypeError, match="callable"):
        Tracker(3)
    with pytest.raises(TypeError, match="returned"):
        Tracker(lambda: np.eye(3)).record(0)
    with pytest.raises(ValueError, match="every"):
        Tracker(M, every=0)
    with pytest.raises(ValueError, match="no records"):
        Tracker(M).plot()
