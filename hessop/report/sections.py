"""The sections of a report: each a :class:`Section` that adds its command-line flags, decides from the parsed flags
whether it runs and returns a :class:`SectionOutput`; :data:`SECTIONS` lists them in page order.

Examples
--------
The six sections, each configured by its flags (:meth:`Section.from_args`; None: switched off):

>>> import argparse
>>> from hessop.report.sections import SECTIONS
>>> parser = argparse.ArgumentParser()
>>> for section_class in SECTIONS:
...     section_class.add_arguments(parser)
>>> args = parser.parse_args(["--layers", "--landscape", "line", "--no-density"])
>>> for section_class in SECTIONS:
...     section = section_class.from_args(args)
...     print(section_class.__name__, section and (section.key, section.title, section.settings()))
EigenvaluesSection ('eigenvalues', 'Extreme eigenvalues', {'top': 5, 'bottom': 3})
TraceSection ('trace', 'Trace', {'method': 'auto', 'rtol': 0.01, 'max_hvp': 2000})
DensitySection None
LayersSection ('layers', 'Per-layer curvature', {'k': 1})
LandscapeSection ('landscape', 'Loss landscape', {'shape': 'line', 'radius': 1.0, 'points': 21})
CurvatureSection None
"""

from __future__ import annotations

import argparse
import html
import time
from typing import Any

import numpy as np

from hessop.blocks import by_block
from hessop.decompose import curvature_of, decompose
from hessop.estimators import slq, trace
from hessop.estimators._stats import MIN_RTOL_SAMPLES
from hessop.lanczos import lanczos
from hessop.landscape import landscape
from hessop.operator import HessianOperator
from hessop.report._render import figure, kv_table, num, table, yes_no
from hessop.report.base import Flag, Section, SectionOutput

__all__ = ["SECTIONS", "CurvatureSection", "DensitySection", "EigenvaluesSection", "Flag", "LandscapeSection",
           "LayersSection", "Section", "SectionOutput", "TraceSection"]


class EigenvaluesSection(Section):
    """Top-k and bottom-k eigenpairs by :func:`hessop.lanczos` (``which="LA"`` and ``"SA"``), with residuals and
    the per-step Ritz values and residuals drawn as a convergence figure.

    Examples
    --------
    >>> from hessop import HessianOperator
    >>> out = EigenvaluesSection(top=2, bottom=1).run(HessianOperator.from_matrix(np.diag(np.arange(1.0, 41.0))),
    ...                                               seed=0, tol=None)
    >>> [round(x, 6) for x in out.data["top"]["eigenvalues"]], out.data["bottom"]["which"], list(out.figures)
    ([40.0, 39.0], 'SA', ['convergence'])
    """

    key, title = "eigenvalues", "Extreme eigenvalues"

    def __init__(self, top: int, bottom: int) -> None:
        self.top, self.bottom = top, bottom

    flags = (Flag("--top", 5, "largest eigenvalues (default 5; 0: none)", metavar="K", low=0),
             Flag("--bottom", 3, "smallest (most negative) eigenvalues (default 3; 0: none)", metavar="K", low=0))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Section | None:
        """Off when both ``--top`` and ``--bottom`` are 0."""
        top, bottom = (flag.read(args) for flag in cls.flags)
        return cls(top, bottom) if top or bottom else None

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        data: dict[str, Any] = {}
        parts, solves = [], [(name, k, which) for name, k, which in
                             (("top", self.top, "LA"), ("bottom", self.bottom, "SA")) if k]
        fig, axes = figure(2, len(solves), 5.2 * len(solves), 6.4)
        for c, (name, k, which) in enumerate(solves):
            history: list[tuple[int, np.ndarray, np.ndarray]] = []
            t0 = time.perf_counter()
            r = lanczos(H, k, which=which, tol=tol, seed=seed, callback=lambda j, th, res, h=history: h.append(
                (j, th, res)))
            seconds = time.perf_counter() - t0
            if history:  # the last point shows the reported (verified) residuals, not the Ritz estimates
                history[-1] = (history[-1][0], r.eigenvalues, r.residuals)
            data[name] = {
                "k": k, "which": which, "eigenvalues": r.eigenvalues.tolist(), "residuals": r.residuals.tolist(),
                "converged": r.converged.tolist(), "n_hvp": r.n_hvp, "n_iter": r.n_iter,
                "n_restarts": r.n_restarts, "seconds": seconds, "tol": tol,
            }
            rows = [[str(i + 1), num(lam, 10), num(res, 3), yes_no(ok)]
                    for i, (lam, res, ok) in enumerate(zip(r.eigenvalues, r.residuals, r.converged, strict=True))]
            label = "largest" if which == "LA" else "smallest"
            parts.append(f"<div><h3>{k} {label} (Lanczos, which={which})</h3>"
                         + table(["#", "eigenvalue", "residual", "converged"], rows)
                         + f"<p class='meta'>{r.n_hvp} HVPs, {r.n_iter} steps, {r.n_restarts} restarts, "
                           f"{seconds:.2f} s</p></div>")
            steps = np.array([h[0] for h in history])
            for i in range(k):
                have = [len(h[1]) > i for h in history]
                x = steps[have]
                axes[0, c].plot(x, [h[1][i] for h in history if len(h[1]) > i], lw=1.2, label=f"#{i + 1}")
                axes[1, c].semilogy(x, [max(h[2][i], 1e-300) for h in history if len(h[2]) > i], lw=1.2)
            lo, hi = float(np.min(r.eigenvalues)), float(np.max(r.eigenvalues))
            pad = 0.5 * max(hi - lo, 0.05 * max(abs(lo), abs(hi)), 1e-12)
            axes[0, c].set_ylim(lo - pad, hi + pad)  # early Ritz values far from the answer leave the frame
            axes[0, c].set_title(f"{label} {k}: Ritz values")
            if tol is not None:
                axes[1, c].axhline(tol * max(float(np.min(np.abs(r.eigenvalues))), 1e-300), color="grey", ls=":",
                                   lw=1, label="tol x smallest |eigenvalue|")
            axes[1, c].set_title(f"{label} {k}: residuals")
            axes[1, c].set_xlabel("Lanczos step (= HVPs)")
            axes[0, c].legend(fontsize=8, ncol=2)
            if tol is not None:
                axes[1, c].legend(fontsize=8)
        axes[0, 0].set_ylabel("Ritz value")
        axes[1, 0].set_ylabel("||H v - lambda v||")
        intro = ("<p>Lanczos with full reorthogonalisation. Each pair stops when its residual "
                 "||Hv &minus; &lambda;v|| &le; tol&middot;|&lambda;|; for a symmetric H the eigenvalue error is at "
                 "most the residual (and usually about residual&sup2;/gap).</p>")
        converged = all(all(data[name]["converged"]) for name, _, _ in solves)
        body = intro + f"<div class='cols'>{''.join(parts)}</div>"
        return SectionOutput(data, body, {"convergence": fig}, converged)


class TraceSection(Section):
    """``tr(H)`` by :func:`hessop.trace`: to a target 95% interval half-width (``--trace-rtol``, default 1%) at the
    least cost, Hutchinson or adaptive Hutch++ chosen from the first products, within a product budget.

    Examples
    --------
    >>> import hessop
    >>> H = hessop.HessianOperator.from_matrix(np.diag([4.0, 3.0, 2.0, 1.0]))
    >>> out = TraceSection(method="auto", rtol=0.01, max_hvp=100).run(H, seed=0, tol=None)
    >>> round(out.data["estimate"], 6), out.data["method"], out.converged  # Rademacher v^T D v = tr D
    (10.0, 'hutchinson', True)
    """

    key, title = "trace", "Trace"

    def __init__(self, method: str, rtol: float, max_hvp: int) -> None:
        self.method, self.rtol, self.max_hvp = method, rtol, max_hvp

    flags = (Flag("--trace", "auto", "trace method of hessop.trace (default auto: Hutchinson or adaptive Hutch++, "
                                     "chosen from the first products)",
                  choices=("auto", "hutchinson", "hutch++", "none")),
             Flag("--trace-rtol", 0.01, "stop when the 95%% interval half-width is <= R x |estimate| (default 0.01)",
                  metavar="R", low=0, high=1),
             Flag("--trace-hvp", 2000, "most products to spend on the trace (default 2000; at least 64: the "
                  "two-stage rule reports an interval as met only on a fresh batch of 32 samples after a pilot of 32)",
                  metavar="N", low=2 * MIN_RTOL_SAMPLES))

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        import warnings

        t0 = time.perf_counter()
        with warnings.catch_warnings():  # not converging is reported in the page and the JSON instead
            warnings.simplefilter("ignore", RuntimeWarning)
            est = trace(H, rtol=self.rtol, max_hvp=self.max_hvp, method=self.method, seed=seed,
                        checkpoint=self.checkpoint())
        seconds = time.perf_counter() - t0
        lo, hi = est.interval(0.95)
        data = {"requested_method": self.method, "method": est.method, "choice": est.choice, "rank": est.rank,
                "estimate": est.estimate, "std_error": est.std_error, "interval_95": [lo, hi],
                "rtol": self.rtol, "max_hvp": self.max_hvp, "n_samples": est.n_samples, "n_hvp": est.n_hvp,
                "converged": est.converged, "stop_reason": est.stop_reason, "seconds": seconds}
        rows = [[html.escape(est.method), num(est.estimate, 8), num(est.std_error, 3), f"[{num(lo)}, {num(hi)}]",
                 str(est.n_hvp), yes_no(est.converged)]]
        body = (f"<p>hessop.trace to a 95% interval half-width of at most {self.rtol:g} &times; |estimate| (at most "
                f"{self.max_hvp} products). The interval is the skewness-corrected Student-t interval of a fresh batch "
                "of samples whose size a pilot fixed (the two-stage rule: valid together with the stop), widened by "
                "the bound on the samples' rounding. <b>This is the trace to cite</b> (the spectral density's "
                "draws, if shown, estimate the same trace less accurately).</p>"
                + table(["method", "estimate", "std. error", "95% interval", "HVPs", "converged"], rows)
                + kv_table([("method chosen", html.escape(est.choice or self.method)),
                          ("stopped", html.escape(est.stop_reason))])
                + f"<p class='meta'>{seconds:.2f} s</p>")
        return SectionOutput(data, body, converged=est.converged)


class DensitySection(Section):
    """Eigenvalue spectral density by :func:`hessop.slq` (Ghorbani et al.'s recipe), on a log axis, with the
    quadrature's trace estimate for free.

    Examples
    --------
    Two draws resolve the density's shape; the page says that they are too few for the trace's interval:

    >>> from hessop.operator import HessianOperator as Op
    >>> section = DensitySection(steps=20, draws=2)
    >>> out = section.run(Op.from_matrix(np.diag(np.linspace(1.0, 2.0, 40))), 0, None)
    >>> out.data["n_vectors"], list(out.figures)
    (2, ['density'])
    >>> print(DensitySection.trace_text(out.data["trace"]))  # doctest: +ELLIPSIS
    These 2 draws resolve the density's shape, not the trace: ...
    """

    key, title = "density", "Spectral density"

    def __init__(self, steps: int, draws: int) -> None:
        self.steps, self.draws = steps, draws

    flags = (Flag("--density", True, "spectral density by SLQ (default on)"),
             Flag("--density-steps", 80, "Lanczos steps per SLQ draw (default 80)", metavar="M", low=1),
             Flag("--density-draws", 5, "SLQ draws (default 5)", metavar="D", low=2))

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        t0 = time.perf_counter()
        steps = min(self.steps, H.n)
        d = slq(H, n_iter=steps, max_hvp=self.draws * steps, seed=seed, checkpoint=self.checkpoint())
        seconds = time.perf_counter() - t0
        lo, hi = d.support()
        fig, axes = figure(1, 1, 7.5, 4.0)
        d.plot(ax=axes[0, 0])
        data = {"n_iter": d.n_iter, "n_vectors": d.n_vectors, "n_hvp": d.n_hvp, "seconds": seconds,
                "support": [lo, hi], "variance": d.default_variance(),
                "nodes": [x.tolist() for x in d.nodes], "weights": [w.tolist() for w in d.weights],
                "trace": self.trace_data(d)}
        body = (f"<p>Stochastic Lanczos quadrature: {d.n_vectors} random start vectors &times; {d.n_iter} Lanczos "
                "steps, Gaussian-smoothed (variance "
                f"{num(d.default_variance(), 3)}), on a log axis. Support [{num(lo)}, {num(hi)}]. "
                f"{self.trace_text(data['trace'])}</p><p class='meta'>{d.n_hvp} HVPs, {seconds:.2f} s</p>")
        return SectionOutput(data, body, {"density": fig})

    @staticmethod
    def trace_data(d: Any) -> dict[str, Any]:
        """The quadrature's ``tr(H)`` for the report, only with a valid 95% interval: from at least
        ``MIN_RTOL_SAMPLES`` (32) draws, where the skewness-corrected interval was measured to cover (fewer draws of
        a decaying spectrum's heavy-tailed samples cover 88-92%); otherwise no number, and ``cite`` names the Trace
        section, whose two-stage interval is valid at any size.

        Examples
        --------
        >>> import numpy as np, hessop
        >>> d = hessop.slq(np.diag(np.arange(1.0, 101.0)), n_iter=2, max_hvp=10, seed=0)  # 5 draws
        >>> DensitySection.trace_data(d)["valid"], DensitySection.trace_data(d)["cite"]
        (False, 'trace')
        """
        tr = d.trace()
        out: dict[str, Any] = {"n_draws": tr.n_samples, "valid": tr.n_samples >= MIN_RTOL_SAMPLES, "cite": "trace"}
        if out["valid"]:
            out.update({"estimate": tr.estimate, "std_error": tr.std_error, "interval_95": list(tr.interval())})
        else:
            out["reason"] = (f"{tr.n_samples} draws give no valid 95% interval for the trace (that needs at least "
                             f"{MIN_RTOL_SAMPLES}); cite the Trace section's")
        return out

    @staticmethod
    def trace_text(tr: dict[str, Any]) -> str:
        if not tr["valid"]:
            return (f"These {tr['n_draws']} draws resolve the density's shape, not the trace: so few give no valid 95% "
                    f"interval for tr(H) (that needs at least {MIN_RTOL_SAMPLES}); cite the Trace section's estimate "
                    "and interval.")
        lo, hi = tr["interval_95"]
        return (f"The same quadrature gives tr(H) &asymp; {num(tr['estimate'])}, 95% interval [{num(lo)}, {num(hi)}] "
                f"({tr['n_draws']} draws, no further products); the Trace section's interval is the one to cite.")


def _unavailable(H: HessianOperator, what: str) -> SectionOutput | None:
    """A section output saying why ``what`` (which needs a model's parameters, loss and data) is not available for
    ``H`` (the reason of :meth:`HessianOperator.model_backend`), or None when it is."""
    try:
        H.model_backend(what)
    except (TypeError, ValueError) as e:
        return _not_available(e)
    return None


def _not_available(why: Exception) -> SectionOutput:
    """A section output saying that the section cannot run, and ``why``."""
    return SectionOutput({"available": False, "reason": str(why)}, f"<p>Not available: {html.escape(str(why))}</p>")


class LayersSection(Section):
    """Per-layer spectra by :func:`hessop.by_block`: the top eigenvalues (Lanczos, with residuals) and the trace
    (:func:`hessop.trace`, or exact for small blocks) of each module's diagonal block of H."""

    key, title = "layers", "Per-layer curvature"

    def __init__(self, k: int) -> None:
        self.k = k

    flags = (Flag("--layers", False, "per-module table of top eigenvalues and traces (default off)"),
             Flag("--layers-k", 1, "top eigenvalues per module (default 1)", metavar="K", low=1))

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        missing = _unavailable(H, "a per-layer table")
        if missing is not None:
            return missing
        t0 = time.perf_counter()
        blocks = by_block(H, k=self.k, tol=tol, seed=seed)  # tol=None: by_block's dtype-aware default
        seconds = time.perf_counter() - t0
        rows = []
        for r in blocks:
            lo, hi = r.trace.interval()
            rows.append([html.escape(r.name), f"{r.n:,}",
                         ", ".join(num(x) for x in r.eigenvalues), ", ".join(num(x, 2) for x in r.residuals),
                         yes_no(bool(np.all(r.converged))), num(r.trace.estimate),
                         "exact" if r.trace.exact else f"[{num(lo)}, {num(hi)}]", str(r.n_hvp)])
        converged = all(bool(np.all(r.converged)) and r.trace.converged for r in blocks)
        data = {"k": self.k, "rows": [r.as_dict() for r in blocks], "block_n_hvp": sum(r.n_hvp for r in blocks),
                "seconds": seconds}
        body = ("<p>Each module's diagonal block H<sub>GG</sub> of the Hessian (the other parameters held fixed): "
                "top eigenvalues by Lanczos with their residuals, and the trace with its 95% interval.</p>"
                + table(["module", "parameters", "top eigenvalues", "residuals", "converged", "trace",
                          "95% interval", "HVPs"], rows)
                + f"<p class='meta'>{sum(r.n_hvp for r in blocks)} block products, {seconds:.2f} s</p>")
        return SectionOutput(data, body, {"layers": blocks.plot()}, converged)


class LandscapeSection(Section):
    """The loss along the top eigenvector (a line) or the top two (a grid) by :func:`hessop.landscape`."""

    key, title = "landscape", "Loss landscape"

    def __init__(self, shape: str, radius: float, points: int) -> None:
        self.shape, self.radius, self.points = shape, radius, points

    flags = (Flag("--landscape", "none", "loss along the top eigenvector (line) or the top two (grid); default none",
                  choices=("line", "grid", "none")),
             Flag("--landscape-radius", 1.0, "steps in [-R, R] along each unit eigenvector (default 1)", metavar="R",
                  low=0),
             Flag("--landscape-points", 21, "odd number of steps per axis (default 21; a grid costs P x P loss "
                                            "passes)", metavar="P", low=3))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Section | None:
        """As :meth:`Section.from_args`, and ``--landscape-points`` must be odd (checked first)."""
        if args.landscape == "none":
            return None
        switch, radius, points = cls.flags
        p = points.read(args)
        if p % 2 == 0:
            raise ValueError(f"--landscape-points must be odd, got {p}")
        return cls(args.landscape, radius.read(args), p)

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        missing = _unavailable(H, "a loss landscape")
        if missing is not None:
            return missing
        t0 = time.perf_counter()
        k = 1 if self.shape == "line" else 2
        eig = lanczos(H, k, which="LA", tol=tol, seed=seed)
        land = landscape(H, eig, radius=self.radius, n_points=self.points)
        seconds = time.perf_counter() - t0
        curv = land.curvature()
        gap = np.abs(np.atleast_1d(curv) - eig.eigenvalues) / np.maximum(np.abs(eig.eigenvalues), 1e-300)
        data = {"shape": self.shape, "radius": self.radius, "n_points": self.points,
                "eigenvalues": eig.eigenvalues.tolist(), "residuals": eig.residuals.tolist(),
                "converged": eig.converged.tolist(), "alphas": land.alphas.tolist(),
                "betas": None if land.betas is None else land.betas.tolist(), "losses": land.losses.tolist(),
                "loss0": land.loss0, "curvature_at_origin": np.asarray(curv).tolist(),
                "curvature_relative_gap": gap.tolist(), "n_hvp": eig.n_hvp,
                "seconds": seconds}
        what = "top eigenvector" if k == 1 else "top two eigenvectors"
        fit = ("it matches the eigenvalue to within 10%" if np.all(gap <= 0.1) else
               f"it differs from the eigenvalue by up to {100 * float(np.max(gap)):.0f}%: the loss is not quadratic "
               "over this radius (a smaller --landscape-radius shows the local curvature)")
        body = (f"<p>L(&theta; + a u<sub>1</sub>{'' if k == 1 else ' + b u<sub>2</sub>'}) along the {what} "
                f"(eigenvalues {', '.join(num(x) for x in eig.eigenvalues)}), steps in [&minus;{self.radius:g}, "
                f"{self.radius:g}], {self.points} per axis. The curvature at 0 of a quartic fitted to the curve is "
                f"{', '.join(num(x, 4) for x in np.atleast_1d(curv))}; {fit}."
                f"</p><p class='meta'>{eig.n_hvp} HVPs and {land.losses.size} loss passes, {seconds:.2f} s</p>")
        return SectionOutput(data, body, {"landscape": land.plot()}, bool(np.all(eig.converged)))


class CurvatureSection(Section):
    """Top-k eigenpairs and SLQ densities of H, its Gauss-Newton part G and the residual R = H - G, with the
    overlaps of their top eigenspaces (:func:`hessop.decompose`; Sagun et al. 2017; Papyan 2019, 2020), for an
    operator built from a PyTorch model with a cross-entropy or MSE loss (:func:`hessop.curvature_of`).

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> CurvatureSection.add_arguments(parser)
    >>> CurvatureSection.from_args(parser.parse_args([])) is None  # off by default
    True
    >>> vars(CurvatureSection.from_args(parser.parse_args(["--curvature", "--curvature-k", "3"])))
    {'k': 3, 'steps': 40, 'draws': 3}
    """

    key, title = "curvature", "Hessian = Gauss-Newton + residual"

    def __init__(self, k: int, steps: int, draws: int) -> None:
        self.k, self.steps, self.draws = k, steps, draws

    flags = (Flag("--curvature", False, "spectra of H, the GGN G and R = H - G side by side (PyTorch, cross-entropy "
                                        "or MSE loss; default off)"),
             Flag("--curvature-k", 10, "top eigenpairs of each of H, G, R (default 10)", metavar="K", low=1),
             Flag("--curvature-steps", 40, "Lanczos steps per SLQ draw for each density (default 40)", metavar="M",
                  low=1),
             Flag("--curvature-draws", 3, "SLQ draws per density (default 3)", metavar="D", low=1))

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        try:
            G = curvature_of(H, "ggn")
        except (TypeError, ValueError) as e:
            return _not_available(e)
        t0 = time.perf_counter()
        k, steps = min(self.k, H.n - 1), min(self.steps, H.n)
        d = decompose(H, G, k=k, tol=tol, n_iter=steps, max_hvp=self.draws * steps, seed=seed)
        seconds = time.perf_counter() - t0
        rows = [[name, ", ".join(num(v, 5) for v in res.eigenvalues), num(float(np.max(res.residuals)), 2),
                 yes_no(res.all_converged), f"{d.n_hvp[name.rstrip('-')]:,}"] for name, res in d.eigen.items()]
        data = {"k": k, "seconds": seconds, "n_hvp": d.n_hvp, "overlaps": d.overlaps,
                "eigen": {name: {"eigenvalues": res.eigenvalues.tolist(), "residuals": res.residuals.tolist(),
                                 "converged": res.converged.tolist()} for name, res in d.eigen.items()},
                "densities": {name: {"nodes": [x.tolist() for x in s.nodes],
                                     "weights": [w.tolist() for w in s.weights]} for name, s in d.densities.items()}}
        overlaps = ", ".join(f"{html.escape(p)}: {v:.3f}" for p, v in d.overlaps.items())
        body = ("<p>H = G + R with G the generalised Gauss-Newton matrix (J<sup>T</sup> H<sub>l</sub> J: positive "
                "semi-definite) and R the residual (the loss's output gradient times the outputs' Hessians). R- "
                "lists R's most negative eigenvalues. Densities: SLQ, the same start vectors for the three.</p>"
                + table(["part", f"top {k} eigenvalues", "max residual", "converged", "products"], rows)
                + f"<p>Overlap of the top-{k} eigenspaces (1 = the same space): {overlaps}.</p>"
                f"<p class='meta'>{seconds:.2f} s; a product of R is one of H and one of G</p>")
        return SectionOutput(data, body, {"curvature": d.plot()},
                             converged=all(res.all_converged for res in d.eigen.values()))


SECTIONS: list[type[Section]] = [EigenvaluesSection, TraceSection, DensitySection, LayersSection, LandscapeSection,
                                 CurvatureSection]
"""The report's sections, in page order.  Append a :class:`Section` subclass to add one."""
