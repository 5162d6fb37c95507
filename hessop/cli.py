"""Command line: ``hessop demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hessop`` console script."""
    parser = argparse.ArgumentParser(prog="hessop", description="Hessian spectra of neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small CNN on the digits and compare Lanczos with power iteration")
    demo.add_argument("--seconds", type=float, default=2.0, help="training time (default 2)")
    demo.add_argument("--seed", type=int, default=0, help="seed for training and solvers (default 0)")
    demo.add_argument("--tol", type=float, default=1e-6, help="relative residual tolerance (default 1e-6)")
    demo.add_argument("--max-power-iter", type=int, default=150, help="power-iteration HVPs per pair (default 150)")
    demo.add_argument("--samples", type=int, default=None, help="train on the first N digits (default all 1,797)")
    demo.add_argument("--hessian-samples", type=int, default=512, help="Hessian over the first N (default 512)")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
