"""Cost of one Hessian-vector product relative to one gradient, JAX backend, on a small MLP.

Times (wall clock, after compilation; median, interquartile range and minimum over interleaved repeats, the
minimum being the least disturbed by other processes on a shared machine):

* ``grad``        : ``jax.jit(jax.grad(loss))(params, batch)``, the reference;
* ``hvp (raw)``   : a jitted forward-over-reverse product written directly with ``jax.jvp(jax.grad(loss))``;
* ``H.hvp``       : hessop's operator product (same maths, plus the batch loop and weighting);
* ``H.hvp_block`` : hessop's vmapped block product, per vector (k vectors in one call).

Usage::

    python benchmarks/jax_hvp_cost.py [--hidden 256] [--batch 512] [--repeats 30] [--block 8] [--x64]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from hessop import HessianOperator


def mlp_loss(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    h = jnp.tanh(h @ params["w2"] + params["b2"])
    logits = h @ params["w3"] + params["b3"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def timed(fn, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--block", type=int, default=8)
    ap.add_argument("--x64", action="store_true", help="float64 parameters (enables jax_enable_x64)")
    args = ap.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dtype = np.float64 if args.x64 else np.float32

    rng = np.random.default_rng(0)
    d, h, c = args.inputs, args.hidden, args.classes
    params = {
        "w1": rng.standard_normal((d, h)) / np.sqrt(d), "b1": np.zeros(h),
        "w2": rng.standard_normal((h, h)) / np.sqrt(h), "b2": np.zeros(h),
        "w3": rng.standard_normal((h, c)) / np.sqrt(h), "b3": np.zeros(c),
    }
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
    batch = (jnp.asarray(rng.standard_normal((args.batch, d)), dtype), jnp.asarray(rng.integers(0, c, args.batch)))

    H = HessianOperator.from_jax(mlp_loss, params, batch)
    grad = jax.jit(jax.grad(mlp_loss))

    @jax.jit
    def raw_hvp(p, b, t):
        return jax.jvp(lambda q: jax.grad(mlp_loss)(q, b), (p,), (t,))[1]

    v = H.asarray(rng.standard_normal(H.n))
    tangent = H.backend.unflatten(v)
    V = H.asarray(rng.standard_normal((H.n, args.block)))
    cases = {
        "grad": lambda: grad(params, batch),
        "hvp (raw jvp of grad)": lambda: raw_hvp(params, batch, tangent),
        "H.hvp": lambda: H.hvp(v),
        f"H.hvp_block (k={args.block}), per vector": lambda: H.hvp_block(V),
    }
    per = {name: (args.block if name.startswith("H.hvp_block") else 1) for name in cases}
    for fn in cases.values():  # compile and warm up
        for _ in range(3):
            timed(fn)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved, so load changes hit every case alike
        for name, fn in cases.items():
            samples[name].append(timed(fn) / per[name])

    g = statistics.median(samples["grad"])
    g_min = min(samples["grad"])
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform} ({platform.processor() or platform.machine()}), "
          f"{np.dtype(dtype).name}, MLP {d}-{h}-{h}-{c} ({H.n:,} parameters), batch {args.batch}, "
          f"median of {args.repeats}")
    print(f"{'case':40s} {'median ms':>10s} {'IQR ms':>14s} {'/ grad':>7s} {'min ms':>8s} {'/ grad':>7s}")
    for name, ts in samples.items():
        q1, med, q3 = np.percentile(ts, [25, 50, 75])
        print(f"{name:40s} {1e3 * med:10.3f} {1e3 * q1:6.3f}-{1e3 * q3:<7.3f} {med / g:7.2f} "
              f"{1e3 * min(ts):8.3f} {min(ts) / g_min:7.2f}")


if __name__ == "__main__":
    main()
