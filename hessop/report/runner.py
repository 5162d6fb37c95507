"""The resumable runner of a report: every section run on the operator (finished sections reused, interrupted
estimators resumed from ``OUT/checkpoints``), then ``report.json``, the PNGs and ``report.html`` written."""

from __future__ import annotations

import html
import json
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from hessop._checkpoint import CheckpointMismatch, atomic_write, parameter_digest
from hessop.operator import HessianOperator
from hessop.report._render import page, png, section_html
from hessop.report.sections import Section, SectionOutput

__all__ = ["run_analysis"]


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
    pngs = {stem: png(fig) for stem, fig in result.figures.items()}
    for stem, data in pngs.items():
        (out / f"{stem}.png").write_bytes(data)
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
    again.

    Parameters
    ----------
    H : HessianOperator
        The operator analysed.
    sections : list of Section
        The configured sections, in page order (``hessop analyze`` builds them with ``Section.from_args``).
    out : pathlib.Path
        The output folder (created if missing).
    seed : int
        Seed of every random draw.
    tol : float or None
        Lanczos relative residual tolerance (None: :func:`hessop.lanczos`'s default).
    description, command, spec : str, list of str, str
        Shown in the page and stored in the JSON document.
    resume : bool
        Continue from ``out/checkpoints`` instead of starting over; default False.

    Returns
    -------
    dict
        The document written to ``out/report.json``: ``sections`` (each section's data), ``n_hvp``, ``converged``,
        ``seconds``, ``figures``, ``reused_sections``, the versions and the run's settings.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> from hessop.report import EigenvaluesSection, run_analysis
    >>> H = HessianOperator.from_matrix(np.diag([4.0, 3.0, 2.0, 1.0]))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     report = run_analysis(H, [EigenvaluesSection(top=1, bottom=1)], Path(folder), seed=0, tol=1e-10,
    ...                           description="diag(4, 3, 2, 1)", command=["example"], spec="example")
    ...     files = sorted(p.name for p in Path(folder).iterdir())
    >>> [round(x, 6) for x in report["sections"]["eigenvalues"]["top"]["eigenvalues"]]
    [4.0]
    >>> [round(x, 6) for x in report["sections"]["eigenvalues"]["bottom"]["eigenvalues"]]
    [1.0]
    >>> report["converged"], files
    (True, ['checkpoints', 'convergence.png', 'report.html', 'report.json'])
    """
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
        blocks.append(section_html(section.key, section.title, result.html, pngs))
    report["n_hvp"] = H.n_hvp - hvp0
    report["reused_sections"] = resumed
    report["seconds"] = time.perf_counter() - t_start
    report["figures"] = sorted(p.name for p in out.glob("*.png"))
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=True))
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    info = [
        ["parameters (n)", f"{H.n:,}"], ["dtype", html.escape(str(H.dtype))],
        *_cite_trace(report["sections"]),
        ["backend", html.escape(H.backend.describe())], ["seed", str(seed)],
        ["Lanczos tol", "default" if tol is None else f"{tol:g}"],
        ["HVPs in all", f"{report['n_hvp']:,}"], ["seconds", f"{report['seconds']:.1f}"],
    ]
    (out / "report.html").write_text(page(description, info, command, versions, blocks))
    return report


def _cite_trace(sections: dict[str, Any]) -> list[list[str]]:
    """The page's summary line for the trace: the Trace section's estimate and 95% interval (the valid one, to
    cite), or nothing when that section did not run."""
    tr = sections.get("trace")
    if not tr or "interval_95" not in tr:
        return []
    lo, hi = tr["interval_95"]
    state = "" if tr.get("converged", True) else " (target not met)"
    return [["trace to cite", f"{tr['estimate']:.6g}, 95% interval [{lo:.6g}, {hi:.6g}]{state} (Trace section)"]]
