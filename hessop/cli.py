"""Command line: ``hessop demo`` and ``hessop analyze``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hessop`` console script: ``hessop demo`` and ``hessop analyze`` (see
    :mod:`hessop.report`).

    Parameters
    ----------
    argv : list of str, optional
        The arguments after ``hessop`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code: 0 when every estimate converged, 1 when one did not, 2 for a bad SPEC (bad options exit
        through argparse with code 2 as well).

    Examples
    --------
    >>> from hessop.cli import main
    >>> main(["analyze", "no_such_module:problem"])  # a bad SPEC: one line on stderr, nothing written
    2
    >>> main(["analyze", "--out", "hessop-report"])  # the built-in CNN, about a minute: # doctest: +SKIP
    0
    """
    parser = argparse.ArgumentParser(prog="hessop", description="Hessian spectra of neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small CNN on the digits and compare Lanczos with power iteration")
    demo.add_argument("--seconds", type=float, default=2.0, help="training time (default 2)")
    demo.add_argument("--seed", type=int, default=0, help="seed for training and solvers (default 0)")
    demo.add_argument("--tol", type=float, default=1e-6, help="relative residual tolerance (default 1e-6)")
    demo.add_argument("--max-power-iter", type=int, default=150, help="power-iteration HVPs per pair (default 150)")
    demo.add_argument("--samples", type=int, default=None, help="train on the first N digits (default all 1,797)")
    demo.add_argument("--hessian-samples", type=int, default=512, help="Hessian over the first N (default 512)")
    analyze = sub.add_parser(
        "analyze", help="analyse a model and write report.json, PNG figures and a self-contained report.html",
        description="Analyse the Hessian of the problem returned by SPEC (path/to/file.py:function or "
                    "package.module:function; see hessop.report) and write DIR/report.json, DIR/*.png and "
                    "DIR/report.html. Without SPEC: the built-in digits CNN. Exit code 0 when every estimate "
                    "converged, 1 when one did not, 2 for a bad SPEC or option.")
    analyze.add_argument("spec", nargs="?", default=None, metavar="SPEC",
                         help="file.py:function or module:function returning the problem (default: built-in CNN)")
    analyze.add_argument("--out", default="hessop-report", metavar="DIR", help="output folder (default hessop-report)")
    analyze.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    analyze.add_argument("--tol", type=float, default=None,
                         help="Lanczos relative residual tolerance (default: lanczos's own, 1e-8 in float64 and the "
                              "reachable value in float32)")
    analyze.add_argument("--device", default=None, help="passed as device= to the SPEC function (e.g. cuda)")
    analyze.add_argument("--resume", action="store_true",
                         help="continue a killed run from DIR/checkpoints (finished sections are reused); without "
                              "it an earlier run's checkpoints are deleted and everything is computed again")
    from hessop.report import SECTIONS

    for section in SECTIONS:
        section.add_arguments(analyze)
    args = parser.parse_args(argv)
    if args.command == "analyze":
        return _analyze(analyze, args, argv)
    if args.command == "demo":
        bad = (args.seconds < 0, args.tol <= 0, args.max_power_iter < 1, (args.samples or 2) < 2,
               args.hessian_samples < 1)
        if any(bad):
            parser.error("--seconds must be >= 0, --tol > 0, --max-power-iter >= 1, --samples >= 2 and "
                         "--hessian-samples >= 1")
        try:
            from hessop.demo import run_demo

            return run_demo(args.seconds, args.seed, args.tol, args.max_power_iter, args.samples,
                            args.hessian_samples)
        except ImportError as e:
            print(f"hessop demo needs PyTorch and scikit-learn: pip install 'hessop[demo]' ({e})", file=sys.stderr)
            return 2
    return 2  # pragma: no cover


def _analyze(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None) -> int:
    from pathlib import Path

    from hessop._validate import check_real
    from hessop.report import DEFAULT_SPEC, SECTIONS, SpecError, build_operator, load_problem, run_analysis

    try:
        if args.tol is not None:
            check_real(args.tol, "--tol", 0)
        sections = [s for s in (cls.from_args(args) for cls in SECTIONS) if s is not None]
    except ValueError as e:
        parser.error(str(e))
    spec = args.spec or DEFAULT_SPEC
    try:
        H, description = build_operator(load_problem(spec, args.device))
    except SpecError as e:
        print(f"hessop analyze: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    command = ["hessop", *(sys.argv[1:] if argv is None else argv)]
    print(f"hessop analyze: {description}\n{H!r}", flush=True)
    report = run_analysis(H, sections, out, seed=args.seed, tol=args.tol, description=description,
                          command=command, spec=spec, resume=args.resume)
    print(f"{report['n_hvp']} HVPs in {report['seconds']:.1f} s; wrote {out / 'report.html'}, report.json and "
          f"{', '.join(report['figures'])}")
    return 0 if report.get("converged", True) else 1


if __name__ == "__main__":
    sys.exit(main())
