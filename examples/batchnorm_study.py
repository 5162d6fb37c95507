"""PyHessian's BatchNorm / residual question on the digits, end to end: how do BatchNorm and the skip connection
change the curvature of a small ResNet's loss?

Three variants of ``hessop.models.digits.SmallResNet`` (float64) are trained the same way (same seed, Adam, mini
batches of 64): with BatchNorm and the residual connection, without BatchNorm, and without the residual
connection.  For each, at the end of training (eval mode: BatchNorm with its running statistics) over the first
``hessian_samples`` digits:

* top eigenvalues with residuals (Lanczos), trace with standard error (Hutch++), spectral density (SLQ),
* the per-stage table (stem = conv1 + bn1, residual block = conv2, head = fc1 + fc2) with ``hessop.by_block``,
* the 2-D loss landscape along the top two eigenvectors with ``hessop.landscape``,

and for the BatchNorm ResNet the top eigenvalue, trace and density along training with ``hessop.Tracker``.
Prints the numbers, writes ``results.json`` and the figures (``density.png``, ``stages.png``, ``landscape.png``,
``tracking.png``) to ``--out``.

    python examples/batchnorm_study.py --out study            # full size: a few minutes on 2 CPU cores
    python examples/batchnorm_study.py --small --out /tmp/s   # the reduced size the test suite runs
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

import hessop
from hessop.models.digits import SmallResNet, digits, end_training, minibatch_step

VARIANTS = {"BN + residual": {}, "no BN": {"batchnorm": False}, "no residual": {"residual": False}}
STAGES = {"stem": ["conv1", "bn1"], "residual block": ["conv2"], "head": ["fc1", "fc2"]}
FULL = {"steps": 200, "hessian_samples": 128, "grid": 9, "radius": 0.5, "slq_steps": 30, "slq_vectors": 2,
        "trace_hvp": 30, "checkpoints": 3, "tol": 1e-6}
SMALL = {"steps": 12, "hessian_samples": 32, "grid": 3, "radius": 0.5, "slq_steps": 8, "slq_vectors": 2,
         "trace_hvp": 9, "checkpoints": 2, "tol": 1e-4}


def train_tracked(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, tracker: hessop.Tracker | None,
                  every: int, seed: int) -> float:
    """Adam on mini-batches of 64 in train mode; the tracker records in eval mode every ``every`` steps."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(1, steps + 1):
        minibatch_step(model, opt, x, y, gen)
        end_training(model)
        if tracker is not None and step % every == 0:
            tracker.update(step)
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


def study(variant: str, options: dict, cfg: dict, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    torch.manual_seed(seed)
    model = SmallResNet(**options).double().eval()
    xh, yh = x[: cfg["hessian_samples"]], y[: cfg["hessian_samples"]]
    batches = [(xh[i: i + 256], yh[i: i + 256]) for i in range(0, len(xh), 256)]
    H = hessop.HessianOperator.from_torch(model, nn.CrossEntropyLoss(), batches)
    tracker = None
    if variant == "BN + residual":
        tracker = hessop.Tracker(H, top_k=1, trace=True, density=True, tol=cfg["tol"],
                                 trace_options={"max_hvp": cfg["trace_hvp"]},
                                 density_options={"n_iter": cfg["slq_steps"],
                                                  "max_hvp": cfg["slq_steps"] * cfg["slq_vectors"]})
    every = max(1, cfg["steps"] // cfg["checkpoints"])
    t0 = time.perf_counter()
    train_loss = train_tracked(model, x, y, cfg["steps"], tracker, every, seed)
    top = hessop.lanczos(H, k=2, tol=cfg["tol"])
    trace = hessop.trace(H, max_hvp=cfg["trace_hvp"], seed=seed)
    density = hessop.slq(H, n_iter=cfg["slq_steps"], max_hvp=cfg["slq_steps"] * cfg["slq_vectors"], seed=seed)
    stages = hessop.by_block(H, STAGES, tol=cfg["tol"], trace_options={"max_hvp": cfg["trace_hvp"]})
    land = hessop.landscape(H, top, radius=cfg["radius"], n_points=cfg["grid"])
    return {"variant": variant, "n": H.n, "train_loss": train_loss, "top": top, "trace": trace,
            "density": density, "stages": stages, "landscape": land, "tracker": tracker,
            "seconds": time.perf_counter() - t0}


def figures(results: list[dict], out: pathlib.Path) -> None:
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for i, r in enumerate(results):
        grid, phi = r["density"].density()
        ax.semilogy(grid, np.maximum(phi, 1e-300), lw=1, color=f"C{i}", label=r["variant"])
    ax.set_ylim(1e-10, 1e3)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (Gaussian-smoothed)")
    ax.set_title("Hessian spectral density (SLQ)")
    ax.legend(fontsize=8)
    fig.savefig(out / "density.png", dpi=80, bbox_inches="tight")

    fig = Figure(figsize=(9, 3.4))
    names = list(STAGES)
    width = 0.8 / len(results)
    for j, (label, get) in enumerate([("top eigenvalue", lambda row: row.eigenvalues[0]),
                                      ("trace", lambda row: row.trace.estimate)]):
        ax = fig.add_subplot(1, 2, j + 1)
        for i, r in enumerate(results):
            ax.bar(np.arange(len(names)) + i * width, [get(r["stages"][s]) for s in names], width,
                   color=f"C{i}", label=r["variant"])
        ax.set_xticks(np.arange(len(names)) + width * (len(results) - 1) / 2, names)
        ax.set_yscale("log")
        ax.set_title(f"per stage: {label}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "stages.png", dpi=80, bbox_inches="tight")

    fig = Figure(figsize=(4 * len(results), 3.6))
    for i, r in enumerate(results):
        land = r["landscape"]
        ax = fig.add_subplot(1, len(results), i + 1)
        A, B = np.meshgrid(land.alphas, land.betas, indexing="ij")
        cs = ax.contourf(A, B, land.losses, levels=20, cmap="viridis")
        fig.colorbar(cs, ax=ax)
        ax.plot([0], [0], "r+")
        ax.set_title(f"{r['variant']}\nlambda = {land.eigenvalues[0]:.3g}, {land.eigenvalues[1]:.3g}", fontsize=9)
        ax.set_xlabel("a (top eigenvector)")
        ax.set_ylabel("b (second eigenvector)")
    fig.tight_layout()
    fig.savefig(out / "landscape.png", dpi=80, bbox_inches="tight")

    tracked = [r for r in results if r["tracker"] is not None][0]["tracker"]
    tracked.plot(out / "tracking.png")


def setup(argv: list[str] | None, description: str, out: str, full: dict,
          small: dict) -> tuple[argparse.Namespace, dict, pathlib.Path, torch.Tensor, torch.Tensor]:
    """The study scripts' command line (``--out``, ``--small``, ``--seed``): the parsed flags, the configuration
    (``small`` or ``full``), the output folder (created) and the digits in float64."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=out, help="folder for results.json and the figures")
    parser.add_argument("--small", action="store_true", help="reduced size (seconds; used by the test suite)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = pathlib.Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    return args, small if args.small else full, folder, *digits(dtype=torch.float64)


def main(argv: list[str] | None = None) -> list[dict]:
    args, cfg, out, x, y = setup(argv, __doc__.splitlines()[0], "batchnorm_study", FULL, SMALL)
    results = [study(v, opts, cfg, x, y, args.seed) for v, opts in VARIANTS.items()]

    print(f"SmallResNet variants, float64, {cfg['steps']} Adam steps on {len(x)} digits; Hessian of the mean "
          f"cross-entropy over {cfg['hessian_samples']} digits (eval mode)\n")
    print(f"{'variant':<15}{'n':>6}{'loss':>9}{'lambda_1':>11}{'residual':>10}{'lambda_2':>11}{'trace':>10}"
          f"{'+- s.e.':>9}{'seconds':>9}")
    for r in results:
        t, tr = r["top"], r["trace"]
        print(f"{r['variant']:<15}{r['n']:>6}{r['train_loss']:>9.4f}{t.eigenvalues[0]:>11.5g}{t.residuals[0]:>10.1e}"
              f"{t.eigenvalues[1]:>11.5g}{tr.estimate:>10.5g}{tr.std_error:>9.2g}{r['seconds']:>9.1f}")
    for r in results:
        print(f"\nper stage, {r['variant']}:\n{r['stages']}")
    tracked = [r for r in results if r["tracker"] is not None][0]["tracker"]
    print("\nalong training (BN + residual):  step  lambda_1   trace   HVPs (warm start)")
    for rec in tracked.records:
        print(f"{'':33}{rec.step:>5}{rec.top[0]:>10.4g}{rec.trace:>8.4g}{rec.n_hvp:>7}  ({rec.warm})")

    summary = [{"variant": r["variant"], "n": r["n"], "train_loss": r["train_loss"],
                "top": r["top"].eigenvalues.tolist(), "top_residuals": r["top"].residuals.tolist(),
                "trace": r["trace"].estimate, "trace_std_error": r["trace"].std_error,
                "stages": [row.as_dict() for row in r["stages"]], "landscape_losses": r["landscape"].losses.tolist(),
                "seconds": r["seconds"]} for r in results]
    (out / "results.json").write_text(json.dumps({"config": cfg, "results": summary}, indent=1))
    figures(results, out)
    print(f"\nfigures and results.json written to {out}/")
    return results


if __name__ == "__main__":
    main()
