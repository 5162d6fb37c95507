"""What ``solver_dtype=float64`` changes on a float32 model: the test CNN (SmallResNet on digits, float32).

Reference: the dense float64 Hessian of the same float32 parameters and data (torch.func, forward-over-reverse),
so only the solver's arithmetic differs.  Prints, side by side in one run, for the float32 solve and the float64
solve over float32 products: the largest eigenvalue error of lanczos top-5 ("LA") and bottom-3 ("SA") relative
to ||H||, whether the reported residuals bound the true errors, the L1 distance of the SLQ density from the exact
spectrum's density (same grid, same kernel), and the seconds each took.  Timings are noisy on a shared machine.

    python3 benchmarks/solver_precision.py [--samples 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.func import functional_call, grad, jvp, vmap

import hessop
from hessop.models.digits import SmallResNet, digits, train


def dense_hessian(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat):
        ps = {n: t.reshape(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
        return loss_fn(functional_call(model, ps, (x,)), y)

    g = grad(loss_of)
    eye = torch.eye(theta.numel(), dtype=theta.dtype)
    with torch.no_grad():
        cols = [vmap(lambda v: jvp(g, (theta,), (v,))[1])(eye[i: i + 256]) for i in range(0, theta.numel(), 256)]
    D = torch.cat(cols).numpy()
    return (D + D.T) / 2


def exact_density(lam: np.ndarray, grid: np.ndarray, variance: float) -> np.ndarray:
    z = (grid[:, None] - lam[None, :]) ** 2 / (2 * variance)
    phi = np.exp(-z).sum(axis=1) / (lam.size * np.sqrt(2 * np.pi * variance))
    return phi / np.trapezoid(phi, grid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    x, y = digits(args.samples)
    model = SmallResNet().double()
    train(model, x, y, steps=150)
    model = model.float().eval()
    x32 = x.float()
    loss_fn = torch.nn.CrossEntropyLoss()
    ref = SmallResNet().double().eval()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    lam = np.linalg.eigvalsh(dense_hessian(ref, loss_fn, x32.double(), y))
    hnorm = np.abs(lam).max()
    H = hessop.HessianOperator.from_torch(model, loss_fn, (x32, y))
    print(f"test CNN: n = {H.n}, float32, ||H|| = {hnorm:.4g}, lambda_min = {lam[0]:.4g}")

    rows = []
    for label, sd in (("float32 solve", None), ("float64 solve", np.float64)):
        times, errs, honest = [], {}, True
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            top = hessop.lanczos(H, 5, which="LA", solver_dtype=sd)
            bot = hessop.lanczos(H, 3, which="SA", solver_dtype=sd)
            dens = hessop.slq(H, n_iter=60, max_hvp=300, solver_dtype=sd)
            times.append(time.perf_counter() - t0)
        for name, r, want in (("LA", top, lam[::-1][:5]), ("SA", bot, lam[:3])):
            err = np.abs(r.eigenvalues - want)
            errs[name] = err.max() / hnorm
            honest &= bool(np.all(err <= r.residuals))
        grid, phi = dens.density()
        l1 = float(np.trapezoid(np.abs(phi - exact_density(lam, grid, dens.default_variance())), grid))
        rows.append((label, errs["LA"], errs["SA"], honest, l1, float(np.median(times)), top.n_hvp + bot.n_hvp))
    print(f"{'':14s} {'LA err/||H||':>13s} {'SA err/||H||':>13s} {'bounds hold':>11s} {'SLQ L1':>8s} "
          f"{'median s':>9s} {'HVPs':>5s}")
    for label, la, sa, honest, l1, t, nh in rows:
        print(f"{label:14s} {la:13.2e} {sa:13.2e} {str(honest):>11s} {l1:8.4f} {t:9.2f} {nh:5d}")
    print(f"float64 / float32 time ratio: {rows[1][5] / rows[0][5]:.2f}")


if __name__ == "__main__":
    main()
