"""``hessop analyze``: analyse a problem given as ``SPEC`` and write ``report.json``, PNG figures and one
self-contained ``report.html``.

The problem
-----------
``SPEC`` is ``path/to/file.py:function`` or ``package.module:function``.  The function takes no required
arguments (it is called with ``device=...`` when ``--device`` is given) and returns one of

* a PyTorch problem: ``{"model": nn.Module, "loss_fn": ..., "data": batches}`` with the optional keys
  ``"params"``, ``"reduction"`` (default ``"mean"``) and ``"loss_form"`` of
  :meth:`hessop.HessianOperator.from_torch`;
* a JAX problem: ``{"loss_fn": loss_fn(params, batch), "params": pytree, "data": batches}`` with the optional key
  ``"reduction"`` of :meth:`hessop.HessianOperator.from_jax`;
* a ready :class:`hessop.HessianOperator` (any backend).

Either dictionary may carry a ``"description"`` string, shown at the top of the report.  Without a SPEC the
built-in digits CNN is analysed (:func:`hessop.models.digits.analyze_problem`; offline, about a minute).

Sections
--------
A report is a list of sections, each a :class:`Section`: it adds its command-line flags, decides from the parsed
flags whether it runs, and returns a :class:`SectionOutput` (JSON data, an HTML fragment, figures).  A new kind of
analysis is one more subclass appended to :data:`SECTIONS`.  The sections: extreme eigenvalues, trace and density
(on by default), per-layer table (``--layers``) and loss landscape (``--landscape line|grid``), the last two for
operators built from a model (``from_torch``, ``from_jax``).
"""

from __future__ import annotations

import argparse
import base64
import html
import importlib
import importlib.util
import inspect
import io
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from hessop._checkpoint import CheckpointMismatch, atomic_write, parameter_digest
from hessop.blocks import by_block
from hessop.density import slq
from hessop.lanczos import lanczos
from hessop.landscape import landscape
from hessop.operator import HessianOperator
from hessop.trace import trace

__all__ = ["DEFAULT_SPEC", "SECTIONS", "Section", "SectionOutput", "SpecError", "build_operator", "load_problem",
           "run_analysis"]

DEFAULT_SPEC = "hessop.models.digits:analyze_problem"
TORCH_KEYS = {"model", "loss_fn", "data", "params", "reduction", "loss_form", "description"}
JAX_KEYS = {"loss_fn", "params", "data", "reduction", "description"}


class SpecError(ValueError):
    """A SPEC that cannot be turned into a Hessian operator; the message is one line for the user."""


# ---------------------------------------------------------------------------------------------------- the problem
def _where(e: BaseException) -> str:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})" if tb is not None else ""


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def load_problem(spec: str, device: str | None = None) -> Any:
    """Import the function named by ``spec`` (``file.py:function`` or ``module:function``) and return what it
    returns.  Raises :class:`SpecError` with a one-line message for a missing file or module, a missing or
    non-callable function, or an error raised while importing or calling it."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise SpecError(f"SPEC must be path/to/file.py:function or package.module:function, got {spec!r}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise SpecError(f"no such file: {target}")
        loader = importlib.util.spec_from_file_location(f"_hessop_spec_{path.stem}", path)
        if loader is None or loader.loader is None:
            raise SpecError(f"cannot load {target} as a Python file")
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except Exception as e:
            raise SpecError(f"importing {target} failed: {_one_line(e)}{_where(e)}") from e
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise SpecError(f"no module named {target!r} ({_one_line(e)}); for a file give path/to/file.py") from e
        except Exception as e:
            raise SpecError(f"importing {target} failed: {_one_line(e)}{_where(e)}") from e
    fn = getattr(module, name, None)
    if fn is None:
        raise SpecError(f"{target} has no function {name!r}")
    if not callable(fn):
        raise SpecError(f"{target}:{name} is a {type(fn).__name__}, not a function")
    kwargs = {} if device is None else {"device": device}
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError:
        need = "a device= argument (given --device)" if device is not None else "no arguments"
        raise SpecError(f"{target}:{name} must be callable with {need}") from None
    except ValueError:  # no signature (some builtins): just call it
        pass
    try:
        return fn(**kwargs)
    except Exception as e:
        raise SpecError(f"{target}:{name}() failed: {_one_line(e)}{_where(e)}") from e


def build_operator(problem: Any) -> tuple[HessianOperator, str]:
    """The Hessian operator of a problem returned by a SPEC function (see the module's docstring) and its
    description.  Raises :class:`SpecError` for a wrong return shape or a problem the backend rejects (e.g. a
    non-scalar loss)."""
    if isinstance(problem, HessianOperator):
        return problem, "a HessianOperator given by the SPEC"
    if not isinstance(problem, dict):
        raise SpecError(f"the SPEC function returned a {type(problem).__name__}; expected a dict with keys model, "
                        "loss_fn, data (PyTorch) or loss_fn, params, data (JAX), or a HessianOperator")
    keys = set(problem)
    torch_like = "model" in keys
    need, allowed = ({"model", "loss_fn", "data"}, TORCH_KEYS) if torch_like else \
        ({"loss_fn", "params", "data"}, JAX_KEYS)
    kind = "PyTorch" if torch_like else "JAX"
    if need - keys or keys - allowed:
        parts = [f"missing {sorted(need - keys)}" if need - keys else "",
                 f"unknown {sorted(keys - allowed)}" if keys - allowed else ""]
        raise SpecError(f"the SPEC function returned a dict with keys {sorted(keys)}: "
                        f"{', '.join(p for p in parts if p)}; a {kind} problem has keys {sorted(need)} and "
                        f"optionally {sorted(allowed - need)}")
    description = str(problem.get("description", f"{kind} problem"))
    opts = {k: problem[k] for k in ("params", "reduction", "loss_form") if k in problem}
    try:
        if torch_like:
            H = HessianOperator.from_torch(problem["model"], problem["loss_fn"], problem["data"], **opts)
        else:
            H = HessianOperator.from_jax(problem["loss_fn"], problem["params"], problem["data"],
                                         **{k: v for k, v in opts.items() if k != "params"})
    except (ValueError, TypeError, ImportError) as e:
        raise SpecError(f"the {kind} problem is invalid: {_one_line(e)}") from e
    return H, description


# ------------------------------------------------------------------------------------------------------ sections
@dataclass
class SectionOutput:
    """What a section adds to the report: JSON-ready ``data``, an HTML fragment and matplotlib figures
    (``{file stem: Figure}``, saved as ``DIR/<stem>.png`` and embedded in the page), and whether every estimate
    in it met its stopping rule."""

    data: dict[str, Any]
    html: str
    figures: dict[str, Any] = field(default_factory=dict)
    converged: bool = True


class Section:
    """One part of the report.  Subclasses set ``key`` and ``title`` and implement the three methods.

    Resuming: :func:`run_analysis` sets ``checkpoint_dir`` (``OUT/checkpoints``) before :meth:`run`; a section
    passes ``checkpoint=self.checkpoint()`` to its long estimator (one file per call: give each further call a
    ``name``), so that a killed analysis continues it with ``--resume``.  A finished section's output is kept
    beside and reused as it is.
    """

    key = ""
    title = ""
    checkpoint_dir: Path | None = None

    def checkpoint(self, name: str = "") -> Path | None:
        """The checkpoint file of this section's estimator call ``name`` (None outside :func:`run_analysis`)."""
        if self.checkpoint_dir is None:
            return None
        return self.checkpoint_dir / f"{self.key}{'-' + name if name else ''}.npz"

    def settings(self) -> dict[str, Any]:
        """The section's settings (its public attributes): a finished section is reused only if they match."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "checkpoint_dir"}

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add this section's flags to the ``analyze`` parser."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Section | None:
        """The section configured by the parsed flags, or None when it is switched off; ``ValueError`` for bad
        flags."""
        raise NotImplementedError

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        """Compute the section on ``H``."""
        raise NotImplementedError


def _f(x: float, digits: int = 6) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.{digits}g}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _pairs(rows: list[tuple[str, str]]) -> str:
    return "<table class='kv'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _ok(flag: bool) -> str:
    return '<span class="ok">yes</span>' if flag else '<span class="bad">NO</span>'


def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


class EigenvaluesSection(Section):
    """Top-k and bottom-k eigenpairs by :func:`hessop.lanczos` (``which="LA"`` and ``"SA"``), with residuals and
    the per-step Ritz values and residuals drawn as a convergence figure."""

    key, title = "eigenvalues", "Extreme eigenvalues"

    def __init__(self, top: int, bottom: int) -> None:
        self.top, self.bottom = top, bottom

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--top", type=int, default=5, metavar="K", help="largest eigenvalues (default 5; 0: none)")
        parser.add_argument("--bottom", type=int, default=3, metavar="K",
                            help="smallest (most negative) eigenvalues (default 3; 0: none)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Section | None:
        if args.top < 0 or args.bottom < 0:
            raise ValueError("--top and --bottom must be >= 0")
        return cls(args.top, args.bottom) if args.top or args.bottom else None

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        data: dict[str, Any] = {}
        parts, solves = [], [(name, k, which) for name, k, which in
                             (("top", self.top, "LA"), ("bottom", self.bottom, "SA")) if k]
        fig, axes = _figure(2, len(solves), 5.2 * len(solves), 6.4)
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
            rows = [[str(i + 1), _f(lam, 10), _f(res, 3), _ok(ok)]
                    for i, (lam, res, ok) in enumerate(zip(r.eigenvalues, r.residuals, r.converged, strict=True))]
            label = "largest" if which == "LA" else "smallest"
            parts.append(f"<div><h3>{k} {label} (Lanczos, which={which})</h3>"
                         + _table(["#", "eigenvalue", "residual", "converged"], rows)
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
    least cost, Hutchinson or adaptive Hutch++ chosen from the first products, within a product budget."""

    key, title = "trace", "Trace"

    def __init__(self, method: str, rtol: float, n_hvp: int) -> None:
        self.method, self.rtol, self.n_hvp = method, rtol, n_hvp

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--trace", choices=("auto", "hutchinson", "hutch++", "none"), default="auto",
                            help="trace method of hessop.trace (default auto: Hutchinson or adaptive Hutch++, "
                                 "chosen from the first products)")
        parser.add_argument("--trace-rtol", type=float, default=0.01, metavar="R",
                            help="stop when the 95%% interval half-width is <= R x |estimate| (default 0.01)")
        parser.add_argument("--trace-hvp", type=int, default=2000, metavar="N",
                            help="most products to spend on the trace (default 2000)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Section | None:
        if args.trace == "none":
            return None
        if args.trace_hvp < 32 or not 0 < args.trace_rtol < 1:
            raise ValueError("--trace-hvp must be >= 32 and --trace-rtol in (0, 1)")
        return cls(args.trace, args.trace_rtol, args.trace_hvp)

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        import warnings

        t0 = time.perf_counter()
        with warnings.catch_warnings():  # not converging is reported in the page and the JSON instead
            warnings.simplefilter("ignore", RuntimeWarning)
            est = trace(H, rtol=self.rtol, n_hvp=self.n_hvp, method=self.method, seed=seed,
                        checkpoint=self.checkpoint())
        seconds = time.perf_counter() - t0
        lo, hi = est.interval(0.95)
        data = {"requested_method": self.method, "method": est.method, "choice": est.choice, "rank": est.rank,
                "estimate": est.estimate, "std_error": est.std_error, "interval_95": [lo, hi],
                "rtol": self.rtol, "max_hvp": self.n_hvp, "n_samples": est.n_samples, "n_hvp": est.n_hvp,
                "converged": est.converged, "stop_reason": est.stop_reason, "seconds": seconds}
        rows = [[html.escape(est.method), _f(est.estimate, 8), _f(est.std_error, 3), f"[{_f(lo)}, {_f(hi)}]",
                 str(est.n_hvp), _ok(est.converged)]]
        body = (f"<p>hessop.trace to a 95% interval half-width of at most {self.rtol:g} &times; |estimate| (at most "
                f"{self.n_hvp} products). The interval is estimate &plusmn; t<sub>0.975</sub>&middot;standard error "
                "(Student t over the samples).</p>"
                + _table(["method", "estimate", "std. error", "95% interval", "HVPs", "converged"], rows)
                + _pairs([("method chosen", html.escape(est.choice or self.method)),
                          ("stopped", html.escape(est.stop_reason))])
                + f"<p class='meta'>{seconds:.2f} s</p>")
        return SectionOutput(data, body, converged=est.converged)


class DensitySection(Section):
    """Eigenvalue spectral density by :func:`hessop.slq` (Ghorbani et al.'s recipe), on a log axis, with the
    quadrature's trace estimate for free."""

    key, title = "density", "Spectral density"

    def __init__(self, steps: int, draws: int) -> None:
        self.steps, self.draws = steps, draws

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--density", action=argparse.BooleanOptionalAction, default=True,
                            help="spectral density by SLQ (default on)")
        parser.add_argument("--density-steps", type=int, default=80, metavar="M",
                            help="Lanczos steps per SLQ draw (default 80)")
        parser.add_argument("--density-draws", type=int, default=5, metavar="D", help="SLQ draws (default 5)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Section | None:
        if not args.density:
            return None
        if args.density_steps < 1 or args.density_draws < 2:
            raise ValueError("--density-steps must be >= 1 and --density-draws >= 2")
        return cls(args.density_steps, args.density_draws)

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        t0 = time.perf_counter()
        d = slq(H, n_iter=min(self.steps, H.n), n_vectors=self.draws, seed=seed, checkpoint=self.checkpoint())
        seconds = time.perf_counter() - t0
        tr = d.trace()
        lo, hi = d.support()
        fig, axes = _figure(1, 1, 7.5, 4.0)
        d.plot(ax=axes[0, 0])
        data = {"n_iter": d.n_iter, "n_vectors": d.n_vectors, "n_hvp": d.n_hvp, "seconds": seconds,
                "support": [lo, hi], "variance": d.default_variance(),
                "nodes": [x.tolist() for x in d.nodes], "weights": [w.tolist() for w in d.weights],
                "trace": {"estimate": tr.estimate, "std_error": tr.std_error, "interval_95": list(tr.interval())}}
        body = (f"<p>Stochastic Lanczos quadrature: {d.n_vectors} random start vectors &times; {d.n_iter} Lanczos "
                "steps, Gaussian-smoothed (variance "
                f"{_f(d.default_variance(), 3)}), on a log axis. Support [{_f(lo)}, {_f(hi)}]. The same quadrature "
                f"gives tr(H) &asymp; {_f(tr.estimate)} &plusmn; {_f(tr.std_error, 3)} (standard error, no "
                f"further products).</p><p class='meta'>{d.n_hvp} HVPs, {seconds:.2f} s</p>")
        return SectionOutput(data, body, {"density": fig})


def _unavailable(H: HessianOperator, need: str, what: str) -> SectionOutput | None:
    """A section output saying that ``what`` needs the backend method ``need`` (a model's parameters and loss),
    or None when the operator has it."""
    from hessop.mpi import MPIBackend

    if isinstance(H.backend, MPIBackend):
        why = "the operator is MPI-reduced (the section would see this rank's shard only)"
    elif not hasattr(H.backend, need):
        why = f"the {H.backend.name!r} backend has no model parameters and loss (from_torch or from_jax has)"
    else:
        return None
    return SectionOutput({"available": False, "reason": why}, f"<p>Not available: {html.escape(why)}.</p>")


class LayersSection(Section):
    """Per-layer spectra by :func:`hessop.by_block`: the top eigenvalues (Lanczos, with residuals) and the trace
    (:func:`hessop.trace`, or exact for small blocks) of each module's diagonal block of H."""

    key, title = "layers", "Per-layer curvature"

    def __init__(self, k: int) -> None:
        self.k = k

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--layers", action=argparse.BooleanOptionalAction, default=False,
                            help="per-module table of top eigenvalues and traces (default off)")
        parser.add_argument("--layers-k", type=int, default=1, metavar="K",
                            help="top eigenvalues per module (default 1)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Section | None:
        if not args.layers:
            return None
        if args.layers_k < 1:
            raise ValueError("--layers-k must be >= 1")
        return cls(args.layers_k)

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        missing = _unavailable(H, "restrict", "a per-layer table")
        if missing is not None:
            return missing
        t0 = time.perf_counter()
        table = by_block(H, k=self.k, tol=1e-6 if tol is None else tol, seed=seed)
        seconds = time.perf_counter() - t0
        rows = []
        for r in table:
            lo, hi = r.trace.interval()
            rows.append([html.escape(r.name), f"{r.n:,}",
                         ", ".join(_f(x) for x in r.eigenvalues), ", ".join(_f(x, 2) for x in r.residuals),
                         _ok(bool(np.all(r.converged))), _f(r.trace.estimate),
                         "exact" if r.trace.exact else f"[{_f(lo)}, {_f(hi)}]", str(r.n_hvp)])
        converged = all(bool(np.all(r.converged)) and r.trace.converged for r in table)
        data = {"k": self.k, "rows": [r.as_dict() for r in table], "block_n_hvp": sum(r.n_hvp for r in table),
                "seconds": seconds}
        body = ("<p>Each module's diagonal block H<sub>GG</sub> of the Hessian (the other parameters held fixed): "
                "top eigenvalues by Lanczos with their residuals, and the trace with its 95% interval.</p>"
                + _table(["module", "parameters", "top eigenvalues", "residuals", "converged", "trace",
                          "95% interval", "HVPs"], rows)
                + f"<p class='meta'>{sum(r.n_hvp for r in table)} block products, {seconds:.2f} s</p>")
        return SectionOutput(data, body, {"layers": table.plot()}, converged)


class LandscapeSection(Section):
    """The loss along the top eigenvector (a line) or the top two (a grid) by :func:`hessop.landscape`."""

    key, title = "landscape", "Loss landscape"

    def __init__(self, shape: str, radius: float, points: int) -> None:
        self.shape, self.radius, self.points = shape, radius, points

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--landscape", choices=("line", "grid", "none"), default="none",
                            help="loss along the top eigenvector (line) or the top two (grid); default none")
        parser.add_argument("--landscape-radius", type=float, default=1.0, metavar="R",
                            help="steps in [-R, R] along each unit eigenvector (default 1)")
        parser.add_argument("--landscape-points", type=int, default=21, metavar="P",
                            help="odd number of steps per axis (default 21; a grid costs P x P loss passes)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Section | None:
        if args.landscape == "none":
            return None
        if not args.landscape_radius > 0 or args.landscape_points < 3 or args.landscape_points % 2 == 0:
            raise ValueError("--landscape-radius must be > 0 and --landscape-points odd and >= 3")
        return cls(args.landscape, args.landscape_radius, args.landscape_points)

    def run(self, H: HessianOperator, seed: int, tol: float | None) -> SectionOutput:
        missing = _unavailable(H, "loss_at", "a loss landscape")
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
                f"(eigenvalues {', '.join(_f(x) for x in eig.eigenvalues)}), steps in [&minus;{self.radius:g}, "
                f"{self.radius:g}], {self.points} per axis. The curvature at 0 of a quartic fitted to the curve is "
                f"{', '.join(_f(x, 4) for x in np.atleast_1d(curv))}; {fit}."
                f"</p><p class='meta'>{eig.n_hvp} HVPs and {land.losses.size} loss passes, {seconds:.2f} s</p>")
        return SectionOutput(data, body, {"landscape": land.plot()}, bool(np.all(eig.converged)))


SECTIONS: list[type[Section]] = [EigenvaluesSection, TraceSection, DensitySection, LayersSection, LandscapeSection]
"""The report's sections, in page order.  Append a :class:`Section` subclass to add one."""


# -------------------------------------------------------------------------------------------------------- report
def _versions() -> dict[str, str]:
    out = {"hessop": _version("hessop"), "python": platform.python_version(), "numpy": np.__version__}
    for name in ("scipy", "torch", "jax", "matplotlib"):
        if name in sys.modules or name == "scipy":
            out[name] = _version(name)
    return out


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        module = sys.modules.get(name)
        return str(getattr(module, "__version__", "unknown"))


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1.5em;
color:#1d2329;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #dde3ea;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.4em 0;font-size:.93em}
th,td{border:1px solid #d5dbe1;padding:.28em .7em;text-align:right}th{background:#f1f4f7}
td:first-child,th:first-child{text-align:left}table.kv td{text-align:left}
.ok{color:#18794e;font-weight:600}.bad{color:#c62828;font-weight:700}
.meta{color:#5b6670;font-size:.9em;margin:.2em 0}.lead{color:#3b4650}
img{max-width:100%;border:1px solid #e3e7eb;margin:.6em 0}
code{background:#f1f4f7;padding:.05em .3em;border-radius:3px;font-size:.92em}
.cols{display:flex;gap:2.5em;flex-wrap:wrap;align-items:flex-start}
"""


def _run_section(section: Section, H: HessianOperator, seed: int, tol: float | None, out: Path,
                 fingerprint: dict[str, Any]) -> tuple[SectionOutput, dict[str, bytes], bool]:
    """Run a section (its estimators resuming from their checkpoints), save its PNGs and, once it has finished,
    its output as ``checkpoints/<key>.json``; a finished section's saved output is returned instead of running it
    again (then the flag returned is True)."""
    ckdir = section.checkpoint_dir
    done = ckdir / f"{section.key}.json"
    if done.exists():
        saved = json.loads(done.read_text())
        if saved["fingerprint"] == fingerprint:
            pngs = {stem: (out / f"{stem}.png").read_bytes() for stem in saved["figures"]}
            return SectionOutput(saved["data"], saved["html"], converged=saved["converged"]), pngs, True
    hvp_before = H.n_hvp
    try:
        result = section.run(H, seed, tol)
    except CheckpointMismatch as e:  # flags changed since the interrupted run: this section starts over
        print(f"hessop analyze: {section.key}: {str(e).split('. Delete')[0]}; starting this section over",
              flush=True)
        for path in ckdir.glob(f"{section.key}*.npz"):
            path.unlink()
        hvp_before = H.n_hvp
        result = section.run(H, seed, tol)
    result.data["section_n_hvp"] = H.n_hvp - hvp_before  # this run's products (fewer in a resumed section)
    pngs = {stem: _png(fig) for stem, fig in result.figures.items()}
    for stem, png in pngs.items():
        (out / f"{stem}.png").write_bytes(png)
    text = json.dumps({"fingerprint": fingerprint, "data": result.data, "html": result.html,
                       "converged": result.converged, "figures": list(pngs)}, allow_nan=True)
    atomic_write(done, lambda f: f.write(text.encode()))
    return result, pngs, False


def run_analysis(H: HessianOperator, sections: list[Section], out: Path, *, seed: int, tol: float | None,
                 description: str, command: list[str], spec: str, resume: bool = False) -> dict[str, Any]:
    """Run ``sections`` on ``H``; write ``out/report.json``, ``out/<figure>.png`` and ``out/report.html``; return
    the JSON document.

    The state of the run is kept in ``out/checkpoints``: each section's long estimator writes its checkpoint
    there after every block, and each finished section its output.  With ``resume=True`` (``--resume``) a run
    killed midway continues from them: finished sections are reused (when their settings, seed, tol and operator
    are the same), the interrupted one resumes its estimator, and the numbers equal an uninterrupted run's.
    Without it an existing ``out/checkpoints`` is deleted first (one line says so) and everything is computed
    again."""
    out.mkdir(parents=True, exist_ok=True)
    ckdir = out / "checkpoints"
    if ckdir.exists() and not resume:
        print(f"hessop analyze: {ckdir} holds an earlier run's checkpoints; starting over (pass --resume to "
              "continue that run)", flush=True)
        shutil.rmtree(ckdir)
    ckdir.mkdir(exist_ok=True)
    resumed, parameters = [], parameter_digest(H)
    t_start = time.perf_counter()
    hvp0 = H.n_hvp
    report: dict[str, Any] = {
        "command": command, "spec": spec, "description": description, "seed": seed, "tol": tol,
        "versions": _versions(),
        "operator": {"n": H.n, "dtype": str(H.dtype), "backend": H.backend.describe()},
        "sections": {},
    }
    blocks = []
    for section in sections:
        section.checkpoint_dir = ckdir
        fingerprint = json.loads(json.dumps({
            "key": section.key, "settings": section.settings(), "seed": seed, "tol": tol, "spec": spec,
            "n": H.n, "dtype": str(H.dtype), "parameters": parameters}, default=repr))
        result, pngs, reused = _run_section(section, H, seed, tol, out, fingerprint)
        if reused:
            resumed.append(section.key)
        report["sections"][section.key] = result.data
        report["converged"] = report.get("converged", True) and result.converged
        images = []
        for stem, png in pngs.items():
            images.append(f'<img alt="{html.escape(stem)}" src="data:image/png;base64,'
                          f'{base64.b64encode(png).decode("ascii")}">')
        blocks.append(f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>{result.html}'
                      f'{"".join(images)}</section>')
    report["n_hvp"] = H.n_hvp - hvp0
    report["reused_sections"] = resumed
    report["seconds"] = time.perf_counter() - t_start
    report["figures"] = sorted(p.name for p in out.glob("*.png"))
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=True))
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    info = _pairs([
        ["parameters (n)", f"{H.n:,}"], ["dtype", html.escape(str(H.dtype))],
        ["backend", html.escape(H.backend.describe())], ["seed", str(seed)],
        ["Lanczos tol", "default" if tol is None else f"{tol:g}"],
        ["HVPs in all", f"{report['n_hvp']:,}"], ["seconds", f"{report['seconds']:.1f}"],
    ])
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>hessop report</title>"
            f"<style>{CSS}</style></head><body><h1>hessop report</h1>"
            f"<p class='lead'>{html.escape(description)}</p>{info}"
            f"<p class='meta'>Command: <code>{html.escape(' '.join(command))}</code><br>{html.escape(versions)}</p>"
            f"{''.join(blocks)}</body></html>")
    (out / "report.html").write_text(page)
    return report


from hessop.report_curvature import CurvatureSection  # noqa: E402  (it subclasses Section)

SECTIONS.append(CurvatureSection)
