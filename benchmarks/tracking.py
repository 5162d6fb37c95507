"""Warm-started tracking vs independent Lanczos runs over checkpoints of a training run.

A float64 SmallResNet is trained with Adam on the digits; every ``--every`` steps (``--checkpoints`` times) the top
``--k`` eigenpairs of the Hessian (mean cross-entropy over ``--samples`` digits, eval mode) are computed twice, side
by side at the same parameters: by a ``hessop.Tracker`` that warm-starts each Lanczos run from the previous Ritz
vectors, and by one that starts every run from a random vector.  Prints per checkpoint the eigenvalues' largest
difference (bounded by the residuals), the products and seconds of each, and the totals and their ratios.

    python benchmarks/tracking.py [--checkpoints 10 --every 20 --k 3 --tol 1e-8 --samples 256]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

import hessop
from hessop.models.digits import SmallResNet, digits, end_training, minibatch_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-8)
    ap.add_argument("--samples", type=int, default=256)
    args = ap.parse_args()

    torch.manual_seed(0)
    x, y = digits(dtype=torch.float64)
    model = SmallResNet().double().eval()
    H = hessop.HessianOperator.from_torch(model, nn.CrossEntropyLoss(), (x[: args.samples], y[: args.samples]))
    warm = hessop.Tracker(H, top_k=args.k, tol=args.tol)
    cold = hessop.Tracker(H, top_k=args.k, tol=args.tol, warm_start=False)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    print(f"SmallResNet ({H.n} parameters, float64), Hessian over {args.samples} digits, top-{args.k} at "
          f"tol={args.tol:g}, {args.checkpoints} checkpoints every {args.every} Adam steps")
    print(f"{'step':>5}{'lambda_1':>11}{'max |diff|':>12}{'max resid':>11}{'HVP warm':>10}{'HVP cold':>10}"
          f"{'s warm':>8}{'s cold':>8}")
    step = 0
    for _ in range(args.checkpoints):
        for _ in range(args.every):
            minibatch_step(model, opt, x, y, gen)
            step += 1
        end_training(model)
        a, b = warm.record(step), cold.record(step)
        print(f"{step:>5}{a.top[0]:>11.5g}{np.max(np.abs(a.top - b.top)):>12.1e}"
              f"{max(a.top_residuals.max(), b.top_residuals.max()):>11.1e}{a.lanczos_hvp:>10}{b.lanczos_hvp:>10}"
              f"{a.seconds:>8.2f}{b.seconds:>8.2f}")
    hw, hc = sum(r.lanczos_hvp for r in warm.records), sum(r.lanczos_hvp for r in cold.records)
    sw, sc = sum(r.seconds for r in warm.records), sum(r.seconds for r in cold.records)
    print(f"total: warm {hw} HVPs in {sw:.1f} s, independent {hc} HVPs in {sc:.1f} s; warm / independent = "
          f"{hw / hc:.2f} (HVPs), {sw / sc:.2f} (seconds); after the first checkpoint "
          f"{sum(r.lanczos_hvp for r in warm.records[1:]) / sum(r.lanczos_hvp for r in cold.records[1:]):.2f}")


if __name__ == "__main__":
    main()
