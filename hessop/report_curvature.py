"""The ``--curvature`` section of ``hessop analyze``: the spectra of H, its Gauss-Newton part G and the residual
R = H - G side by side (:func:`hessop.decompose`)."""

from __future__ import annotations

import argparse
import html
import time

import numpy as np

from hessop.decompose import curvature_of, decompose
from hessop.operator import HessianOperator
from hessop.report import Section, SectionOutput, _f, _ok, _table

__all__ = ["CurvatureSection"]


class CurvatureSection(Section):
    """Top-k eigenpairs and SLQ densities of H, G and R = H - G with the overlaps of their top eigenspaces (Sagun
    et al. 2017; Papyan 2019, 2020), for a PyTorch problem with a cross-entropy or MSE loss."""

    key, title = "curvature", "Hessian = Gauss-Newton + residual"

    def __init__(self, k: int, steps: int, draws: int) -> None:
        self.k, self.steps, self.draws = k, steps, draws

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--curvature", action=argparse.BooleanOptionalAction, default=False,
                            help="spectra of H, the GGN G and R = H - G side by side (PyTorch, cross-entropy or "
                                 "MSE loss; default off)")
        parser.add_argument("--curvature-k", type=int, default=10, metavar="K",
                            help="top eigenpairs of each of H, G, R (default 10)")
        parser.add_argument("--curvature-steps", type=int, default=40, metavar="M",
                            help="Lanczos steps per SLQ draw for each density (default 40)")
        parser.add_argument("--curvature-draws", type=int, default=3, metavar="D",
                            help="SLQ draws per density (default 3)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Section | None:
        if not args.curvature:
            return None
        if args.curvature_k < 1 or args.curvature_steps < 1 or args.curvature_draws < 1:
            raise ValueError("--curvature-k, --curvature-steps and --curvature-draws must be >= 1")
        return cls(args.curvature_k, args.curvature_steps, args.curvature_draws)

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        try:
            G = curvature_of(H, "ggn")
        except (ValueError, TypeError) as e:
            return SectionOutput({"available": False, "reason": str(e)}, f"<p>Not available: {html.escape(str(e))}</p>")
        t0 = time.perf_counter()
        d = decompose(H, G, k=min(self.k, H.n - 1), tol=tol, n_iter=self.steps, n_vectors=self.draws, seed=seed)
        seconds = time.perf_counter() - t0
        rows = [[name, ", ".join(_f(v, 5) for v in res.eigenvalues), _f(float(np.max(res.residuals)), 2),
                 _ok(res.all_converged), f"{d.n_hvp[name.rstrip('-')]:,}"] for name, res in d.eigen.items()]
        data = {"k": self.k, "seconds": seconds, "n_hvp": d.n_hvp, "overlaps": d.overlaps,
                "eigen": {name: {"eigenvalues": res.eigenvalues.tolist(), "residuals": res.residuals.tolist(),
                                 "converged": res.converged.tolist()} for name, res in d.eigen.items()},
                "densities": {name: {"nodes": [x.tolist() for x in s.nodes],
                                     "weights": [w.tolist() for w in s.weights]} for name, s in d.densities.items()}}
        overlaps = ", ".join(f"{html.escape(p)}: {v:.3f}" for p, v in d.overlaps.items())
        body = ("<p>H = G + R with G the generalised Gauss-Newton matrix (J<sup>T</sup> H<sub>l</sub> J: positive "
                "semi-definite) and R the residual (the loss's output gradient times the outputs' Hessians). R- "
                "lists R's most negative eigenvalues. Densities: SLQ, the same start vectors for the three.</p>"
                + _table(["part", f"top {self.k} eigenvalues", "max residual", "converged", "products"], rows)
                + f"<p>Overlap of the top-{self.k} eigenspaces (1 = the same space): {overlaps}.</p>"
                f"<p class='meta'>{seconds:.2f} s; a product of R is one of H and one of G</p>")
        return SectionOutput(data, body, {"curvature": d.plot()},
                             converged=all(res.all_converged for res in d.eigen.values()))
