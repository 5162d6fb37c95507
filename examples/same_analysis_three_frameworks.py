"""One analysis code for every framework: the same ``analyse(H)`` on a PyTorch, a JAX and (with a GPU) a CuPy operator.

An MLP (64-12-10, tanh, 910 parameters) with identical float64 weights is written once in PyTorch and once in JAX
and evaluated on the same 256 digits in the same three batches.  ``analyse`` knows nothing about frameworks: it
calls hessop's solvers, which keep their vectors on the operator's own device.  The CuPy operator holds the dense
Hessian on the GPU (computed here by JAX), so all rows of the table must agree.

Run:  python examples/same_analysis_three_frameworks.py
Needs torch, jax and scikit-learn; cupy and a CUDA GPU for the third row.
"""

from __future__ import annotations

import numpy as np

import hessop
from hessop import HessianOperator


def analyse(H: HessianOperator) -> dict[str, float]:
    """Top eigenvalues, the most negative eigenvalue and the trace of a Hessian, by the same calls on any backend."""
    top = hessop.lanczos(H, k=3, tol=1e-10, seed=0)
    bottom = hessop.lanczos(H, k=1, which="SA", tol=1e-10, seed=0)
    row = {f"lambda_{i + 1}": float(v) for i, v in enumerate(top.eigenvalues)}
    row["lambda_min"] = float(bottom.eigenvalues[0])
    if hasattr(hessop, "hutchinson"):
        row["trace (Hutchinson, 50)"] = float(hessop.hutchinson(H, max_hvp=50, seed=0).estimate)
    if hasattr(hessop, "slq"):
        density = hessop.slq(H, n_iter=40, max_hvp=120, seed=0)
        row["largest SLQ node"] = float(max(np.max(nodes) for nodes in density.nodes))
    row["HVPs"] = float(top.n_hvp + bottom.n_hvp)
    return row


def build_operators() -> dict[str, HessianOperator]:
    import jax
    import jax.numpy as jnp
    import torch
    from jax.flatten_util import ravel_pytree
    from sklearn.datasets import load_digits

    jax.config.update("jax_enable_x64", True)  # float64 JAX parameters, like the float64 torch model
    ds = load_digits()
    x, y = ds.data[:256] / 16.0, ds.target[:256]
    splits = (100, 200)  # batches of 100, 100 and 56: weighted |b| / N in both frameworks
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((12, 64)) / 8.0, 0.1 * rng.standard_normal(12)
    w2, b2 = rng.standard_normal((10, 12)) / np.sqrt(12), 0.1 * rng.standard_normal(10)

    # PyTorch
    model = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.Tanh(), torch.nn.Linear(12, 10)).double().eval()
    with torch.no_grad():
        for p, value in zip(model.parameters(), (w1, b1, w2, b2), strict=True):
            p.copy_(torch.as_tensor(value))
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    batches_t = list(zip(torch.tensor_split(xt, splits), torch.tensor_split(yt, splits), strict=True))
    ops = {"PyTorch": HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), batches_t)}

    # JAX: the same network as a pure function of a parameter pytree
    def loss(params, batch):
        (v1, c1), (v2, c2) = params
        xb, yb = batch
        logits = jnp.tanh(xb @ v1.T + c1) @ v2.T + c2
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))

    params = [(jnp.asarray(w1), jnp.asarray(b1)), (jnp.asarray(w2), jnp.asarray(b2))]
    batches_j = [(jnp.asarray(a), jnp.asarray(b))
                 for a, b in zip(np.split(x, splits), np.split(y, splits), strict=True)]
    ops["JAX"] = HessianOperator.from_jax(loss, params, batches_j)

    # CuPy: the dense Hessian on the GPU, if there is one
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() > 0:
            theta, unravel = ravel_pytree(params)
            full = (jnp.asarray(x), jnp.asarray(y))
            dense = np.asarray(jax.jit(jax.hessian(lambda t: loss(unravel(t), full)))(theta))
            ops["CuPy (GPU)"] = HessianOperator.from_cupy(cp.asarray((dense + dense.T) / 2))
    except ImportError:
        print("(no CuPy row: CuPy is not installed)")
    except Exception as e:  # CuPy without a driver or a device
        print(f"(no CuPy row: {type(e).__name__}: {e})")
    return ops


def main() -> None:
    ops = build_operators()
    rows = {name: analyse(H) for name, H in ops.items()}
    columns = list(next(iter(rows.values())))
    print(f"{'':12s}" + "".join(f"{c:>24s}" for c in columns))
    for name, row in rows.items():
        print(f"{name:12s}" + "".join(f"{row[c]:24.12g}" for c in columns))
    ref = rows["PyTorch"]
    worst = max(abs(row[c] - ref[c]) / max(abs(ref[c]), 1e-300)
                for row in rows.values() for c in columns if c != "HVPs")
    print(f"largest relative difference between frameworks: {worst:.1e}")


if __name__ == "__main__":
    main()
