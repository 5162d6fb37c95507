"""Where does the curvature of a small ResNet's loss come from?  H = G + R on the batch-norm study's models.

The three ``SmallResNet`` variants of ``examples/batchnorm_study.py`` (with BatchNorm and the residual connection,
without BatchNorm, without the residual connection; float64, the same seed and Adam schedule) are trained on the
digits; then, in eval mode over the first ``hessian_samples`` digits, :func:`hessop.decompose` puts the Hessian H,
its generalised Gauss-Newton part G (``curvature="ggn"``) and the residual R = H - G side by side (Sagun et al.
2017; Papyan 2019, 2020): their top-k eigenvalues with residuals, R's most negative eigenvalues, the overlaps of
the top eigenspaces and the three SLQ densities (same start vectors).  Prints the numbers, writes ``results.json``
and ``hgr.png`` (one panel per variant) to ``--out``.

    python examples/curvature_decomposition.py --out docs/curvature   # full size (long: see docs/analyses.md)
    python examples/curvature_decomposition.py --small --out /tmp/hgr    # the reduced size the test suite runs
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

import hessop
from hessop.models.digits import SmallResNet

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from batchnorm_study import VARIANTS, setup, train_tracked  # noqa: E402  (the study's models and training)

FULL = {"steps": 200, "hessian_samples": 128, "k": 10, "slq_steps": 30, "slq_vectors": 1, "tol": 1e-5,
        "max_iter": 100}
SMALL = {"steps": 12, "hessian_samples": 32, "k": 2, "slq_steps": 8, "slq_vectors": 1, "tol": 1e-4, "max_iter": 40}


def decomposition(options: dict, cfg: dict, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[dict, object]:
    torch.manual_seed(seed)
    model = SmallResNet(**options).double().eval()
    loss = train_tracked(model, x, y, cfg["steps"], None, cfg["steps"], seed)
    data = [(x[: cfg["hessian_samples"]], y[: cfg["hessian_samples"]])]
    H = hessop.HessianOperator.from_torch(model, nn.CrossEntropyLoss(), data)
    d = hessop.decompose(H, hessop.curvature_of(H, "ggn"), k=cfg["k"], tol=cfg["tol"], max_iter=cfg["max_iter"],
                         n_iter=cfg["slq_steps"], max_hvp=cfg["slq_vectors"] * cfg["slq_steps"], seed=seed)
    summary = {"n": H.n, "train_loss": loss, "n_hvp": d.n_hvp, "overlaps": d.overlaps,
               **{name: {"eigenvalues": r.eigenvalues.tolist(), "residuals": r.residuals.tolist(),
                         "converged": bool(r.all_converged)} for name, r in d.eigen.items()}}
    return summary, d


def main(argv: list[str] | None = None) -> dict:
    args, cfg, out, x, y = setup(argv, __doc__.splitlines()[0], "curvature_decomposition", FULL, SMALL)
    fig = Figure(figsize=(6.5 * len(VARIANTS), 4.2), layout="constrained")
    axes = fig.subplots(1, len(VARIANTS), squeeze=False)[0]
    results = {}
    for ax, (variant, options) in zip(axes, VARIANTS.items(), strict=True):
        summary, d = decomposition(options, cfg, x, y, args.seed)
        results[variant] = summary
        print(f"\n{variant}: n = {summary['n']}, training loss {summary['train_loss']:.4f}\n{d.summary()}")
        lam = np.asarray(summary["G"]["eigenvalues"])
        print(f"G's top-{len(lam)} ratios of consecutive eigenvalues: {np.round(lam[:-1] / lam[1:], 2).tolist()}")
        lo = min(s.support()[0] for s in d.densities.values())
        hi = max(s.support()[1] for s in d.densities.values())
        for name, s in d.densities.items():
            ax.semilogy(*s.density(np.linspace(lo, hi, 4000)), lw=1, label=name)
        ax.set_ylim(1e-8, 1e2)
        ax.set_title(f"{variant}: top {cfg['k']} of H / G / R")
        ax.set_xlabel("eigenvalue")
        ax.legend()
    axes[0].set_ylabel("density (SLQ, Gaussian-smoothed)")
    fig.savefig(out / "hgr.png", dpi=110)
    (out / "results.json").write_text(json.dumps({"config": cfg, "results": results}, indent=1))
    print(f"\nhgr.png and results.json written to {out}/")
    return results


if __name__ == "__main__":
    main()
