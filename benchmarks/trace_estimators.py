"""Error of the trace estimators against the number of Hessian-vector products.

Estimators: Hutchinson (Rademacher), Hutch++, XTrace, the Rademacher sketch tr(S^T H S) and SLQ's trace (10
Lanczos steps per draw, budget / 10 draws: for the identity SLQ is Gaussian-probe Hutchinson that spends 9 of every
10 products on the density, so it shows what the trace costs when it is a by-product).

Problems with exact traces: a flat spectrum and a spectrum with outliers (``hessop.testing``, dense, n = 1000) and
the small PyTorch network of the test suite (SmallResNet on 256 digits, 1,706 parameters, float64; its exact trace
from n products with the identity columns).

Prints a Markdown table (median relative error over seeds, and each method's error ratio to Hutchinson at the same
budget) and writes a log-log plot.

    python benchmarks/trace_estimators.py [PNG_PATH] [--seeds 20] [--net-seeds 5] [--budgets 20 50 100 200 400]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import hessop
from hessop.testing import flat_spectrum, matrix_with_spectrum, outlier_spectrum

METHODS = {
    "hutchinson": lambda H, b, s: hessop.hutchinson(H, max_hvp=b, seed=s).estimate,
    "hutch++": lambda H, b, s: hessop.hutchpp(H, b, seed=s).estimate,
    "xtrace": lambda H, b, s: hessop.xtrace(H, b, seed=s).estimate,
    "sketch": lambda H, b, s: hessop.sketch(H, b, seed=s).trace,
    "slq": lambda H, b, s: hessop.slq(H, n_iter=10, max_hvp=b, seed=s).trace().estimate,
}


def network_problem() -> tuple[hessop.HessianOperator, float]:
    import torch

    from hessop.models.digits import SmallResNet, digits, train

    torch.manual_seed(0)
    x, y = digits(256)
    model = SmallResNet().double()
    train(model, x, y, steps=150)
    model.eval()
    H = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y))
    trace = 0.0
    for start in range(0, H.n, 32):
        cols = np.eye(H.n)[:, start: start + 32]
        trace += float(np.trace(H.to_numpy(H.hvp_block(H.asarray(cols)))[start: start + 32]))
    return H, trace


def run(H, trace: float, budgets: list[int], seeds: int) -> tuple[dict, dict]:
    """median relative error[method][budget] and wall seconds[method] (all budgets and seeds)."""
    err, secs = {}, {}
    for name, f in METHODS.items():
        t0 = time.perf_counter()
        err[name] = {b: float(np.median([abs(f(H, b, s) - trace) / abs(trace) for s in range(seeds)]))
                     for b in budgets}
        secs[name] = time.perf_counter() - t0
    return err, secs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_png = Path(__file__).resolve().parents[1] / "docs" / "trace_estimators.png"
    ap.add_argument("png", nargs="?", default=str(default_png), help="plot path (default docs/trace_estimators.png)")
    ap.add_argument("--seeds", type=int, default=20, help="seeds per budget on the matrices (default 20)")
    ap.add_argument("--net-seeds", type=int, default=5, help="seeds per budget on the network (default 5)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[20, 50, 100, 200, 400])
    ap.add_argument("--net-budgets", type=int, nargs="+", default=[20, 50, 100, 200])
    ap.add_argument("--n", type=int, default=1000, help="size of the prescribed-spectrum matrices (default 1000)")
    args = ap.parse_args(argv)

    problems = {}
    for name, lam in [("flat", flat_spectrum(args.n, seed=0)), ("outliers", outlier_spectrum(args.n, seed=0))]:
        problems[name] = (hessop.HessianOperator.from_matrix(matrix_with_spectrum(lam, seed=1)), float(lam.sum()),
                          args.budgets, args.seeds)
    t0 = time.perf_counter()
    H, tr = network_problem()
    print(f"network: n = {H.n}, exact trace {tr:.6g} from {H.n} products in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    problems["network"] = (H, tr, args.net_budgets, args.net_seeds)

    results = {}
    for name, (op, trace, budgets, seeds) in problems.items():
        t0 = time.perf_counter()
        results[name] = run(op, trace, budgets, seeds)
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    print("Median relative error |estimate - tr H| / |tr H| (in brackets: Hutchinson's error / this method's, "
          "same budget; > 1 is better than Hutchinson).\n")
    for name, (op, trace, budgets, seeds) in problems.items():
        err, secs = results[name]
        print(f"### {name} (n = {op.n}, tr H = {trace:.6g}, {seeds} seeds per budget)\n")
        print("| HVPs | " + " | ".join(METHODS) + " |")
        print("|---:|" + "---:|" * len(METHODS))
        for b in budgets:
            cells = []
            for m in METHODS:
                e = err[m][b]
                cells.append(f"{e:.2e}" if m == "hutchinson" else f"{e:.2e} ({err['hutchinson'][b] / e:.1f}x)")
            print(f"| {b} | " + " | ".join(cells) + " |")
        print("| wall s (all budgets x seeds) | " + " | ".join(f"{secs[m]:.1f}" for m in METHODS) + " |\n")

    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, len(problems))
    for ax, (name, (op, _, budgets, seeds)) in zip(axes, problems.items(), strict=True):
        err, _ = results[name]
        for m in METHODS:
            # the sketch's trace is Hutchinson's estimate with the same probes (scaled): dashed so both show
            style = dict(ls="--", marker="x", ms=9) if m == "sketch" else dict(ls="-", marker="o")
            ax.loglog(budgets, [err[m][b] for b in budgets], label=m, **style)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.xaxis.set_minor_formatter("")
        ax.set_title(f"{name} (n = {op.n}, {seeds} seeds)")
        ax.set_xlabel("Hessian-vector products")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median relative error of tr(H)")
    axes[0].legend()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110, bbox_inches="tight")
    print(f"plot written to {args.png}", file=sys.stderr)


if __name__ == "__main__":
    main()
