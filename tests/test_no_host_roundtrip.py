"""The solvers keep their vectors on the backend: no per-iteration copy of a basis or probe vector to the host.

Every way a length-n native array can reach NumPy is made to fail while a solver runs (the operator's
``to_numpy``, ``numpy.asarray`` / ``array`` / ``asanyarray`` / ``ascontiguousarray``, and the array types' own
conversion methods); only small arrays (the scalars alpha / beta, the projected k x k matrices) may cross.  Each
guard is first shown to catch a deliberate conversion, so the test can fail.  Host-to-device moves of length-n
arrays are counted: one start vector per run (per pair for power iteration), never one per iteration.

The CuPy version of this test is in tests/backends/test_cupy.py (it needs a GPU).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import hessop
from hessop import HessianOperator


class HostGuard:
    """Fails any conversion to NumPy of an array with a dimension equal to ``n``; counts length-n moves in."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, H: HessianOperator, native_type: type) -> None:
        self.n, self.native_type, self.moved_in, self.blocked = H.n, native_type, 0, []
        be = H.backend
        to_numpy, asarray = be.to_numpy, be.asarray

        def guarded_to_numpy(x):
            self.check(x, "H.to_numpy")
            return to_numpy(x)

        def counted_asarray(x):
            if self.n in np.shape(x):
                self.moved_in += 1
            return asarray(x)

        monkeypatch.setattr(be, "to_numpy", guarded_to_numpy)
        monkeypatch.setattr(be, "asarray", counted_asarray)
        for name in ("asarray", "array", "asanyarray", "ascontiguousarray"):
            monkeypatch.setattr(np, name, self.wrap(getattr(np, name), f"numpy.{name}"))

    def check(self, x, how: str) -> None:
        if isinstance(x, self.native_type) and self.n in tuple(x.shape):
            self.blocked.append((how, tuple(x.shape)))
            raise AssertionError(f"{how} of a length-n {type(x).__name__} {tuple(x.shape)}: a host round-trip")

    def wrap(self, fn, how: str):
        """``fn`` (a function of an array, or an unbound method taking the array as ``self``) guarded by
        :meth:`check`."""

        def wrapped(x, *args, **kwargs):
            self.check(x, how)
            return fn(x, *args, **kwargs)

        return wrapped


def run_solvers(H: HessianOperator, guard: HostGuard, native_type: type) -> None:
    """Lanczos (with thick restarts: small max_basis; with its progress bar drawn) and deflated power iteration
    under the guard."""
    lz = hessop.lanczos(H, k=3, max_basis=12, tol=1e-8, progress=True)
    assert lz.n_restarts >= 1 and lz.n_iter > 12  # many iterations ran, so a per-iteration copy would show
    assert isinstance(lz.eigenvectors, native_type)
    # the start vector, one fresh vector per multiplicity check (<= k + 1), and the product-error measurement's one
    # block of 4 seeded vectors (hessop/_product_error.py; once per operator, on the first residual floor)
    assert 1 <= guard.moved_in <= 1 + 4 + 1
    before = guard.moved_in
    pw = hessop.power_iteration(H, k=2, tol=1e-4, max_iter=200)
    assert isinstance(pw.eigenvectors, native_type)
    assert pw.n_iter > 4
    assert guard.moved_in - before == 2  # one start vector per pair (the product error is measured already)
    # the randomised estimators with their progress bars drawn (probe blocks move in; nothing of length n comes out)
    hessop.trace(H, max_hvp=64, block_size=8, progress=True)
    hessop.diagonal(H, 16, block_size=8, progress=True)
    hessop.slq(H, n_iter=8, max_hvp=16, progress=True)
    assert guard.blocked == []


# ---------------------------------------------------------------------------------------------------- torch
@pytest.fixture(scope="module")
def torch_operator():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 10, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (96,), generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    return HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), [(x[:48], y[:48]), (x[48:], y[48:])])


def test_torch_solvers_make_no_host_roundtrip(torch_operator, monkeypatch):
    import torch

    H = torch_operator
    guard = HostGuard(monkeypatch, H, torch.Tensor)
    for name in ("__array__", "numpy", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, guard.wrap(getattr(torch.Tensor, name), f"Tensor.{name}"))
    v = torch.ones(H.n, dtype=torch.float64)
    # the guards catch a deliberate round-trip ...
    for convert in (lambda: np.asarray(v), lambda: v.numpy(), lambda: v.tolist(), lambda: H.to_numpy(v),
                    lambda: np.array(v)):
        with pytest.raises(AssertionError, match="host round-trip"):
            convert()
    guard.blocked.clear()
    # ... and small arrays pass
    assert H.to_numpy(torch.ones(2, dtype=torch.float64)).shape == (2,)
    run_solvers(H, guard, torch.Tensor)


# ---------------------------------------------------------------------------------------------------- jax
@pytest.fixture(scope="module")
def jax_operator():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((96, 10)).astype(np.float32), rng.integers(0, 3, 96)
    params = {"w1": rng.standard_normal((10, 16)).astype(np.float32) / 3, "b1": np.zeros(16, np.float32),
              "w2": rng.standard_normal((16, 3)).astype(np.float32) / 4, "b2": np.zeros(3, np.float32)}

    def loss(p, batch):
        xb, yb = batch
        logits = jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))

    data = [(jnp.asarray(x[:48]), jnp.asarray(y[:48])), (jnp.asarray(x[48:]), jnp.asarray(y[48:]))]
    return HessianOperator.from_jax(loss, params, data)


H2D = re.compile(r"host-to-device transfer: aval=ShapedArray\(\w+\[([\d,\s]*)\]")


def test_jax_solvers_make_no_host_roundtrip(jax_operator, monkeypatch, capfd):
    import jax
    from jax._src.array import ArrayImpl

    H = jax_operator
    guard = HostGuard(monkeypatch, H, jax.Array)
    for name in ("__array__", "tolist", "__dlpack__"):
        monkeypatch.setattr(ArrayImpl, name, guard.wrap(getattr(ArrayImpl, name), f"Array.{name}"))
    value = ArrayImpl._value

    def guarded_value(self):  # behind float(), .item(), jax.device_get, printing
        guard.check(self, "Array._value")
        return value.fget(self)

    monkeypatch.setattr(ArrayImpl, "_value", property(guarded_value))
    v = H.asarray(np.ones(H.n, H.dtype))
    guard.moved_in = 0
    for convert in (lambda: np.asarray(v), lambda: np.array(v), lambda: v.tolist(), lambda: H.to_numpy(v),
                    lambda: jax.device_get(v), lambda: np.from_dlpack(v)):
        with pytest.raises(AssertionError, match="host round-trip"):
            convert()
    guard.blocked.clear()
    assert H.to_numpy(jax.numpy.ones(2, dtype=jax.numpy.float32)).shape == (2,)

    # implicit host-to-device transfers (the way back of a round-trip) are logged by JAX's transfer guard
    capfd.readouterr()
    with jax.transfer_guard_host_to_device("log"):
        jax.numpy.asarray(np.ones(H.n, np.float32)).block_until_ready()  # a deliberate one, to see the log works
        control = [tuple(int(d) for d in m.split(",") if d.strip()) for m in H2D.findall(capfd.readouterr().err)]
        run_solvers(H, guard, jax.Array)
        logged = [tuple(int(d) for d in m.split(",") if d.strip()) for m in H2D.findall(capfd.readouterr().err)]
    if (H.n,) in control:  # this JAX logs transfers where the test can read them: none of length n may appear
        assert [s for s in logged if H.n in s] == []
    else:  # pragma: no cover - depends on the JAX version's logging
        pytest.skip("this JAX version does not log host-to-device transfers to stderr; the conversion guards passed")
