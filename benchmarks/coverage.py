"""Coverage of the 95% intervals of the trace estimators on decaying spectra (issue 26, class 5).

For each spectrum ``1/i^p`` (p = 1, 2, 3; a random rotation, n = 300 by default) and each estimator, the fraction
of seeds whose reported 95% interval holds the exact trace, with its binomial standard error; beside it the plain
Student-t interval on the same samples (what was reported before the skewness correction), and the products spent.

    PYTHONPATH=. python benchmarks/coverage.py --seeds 1000          # the record in docs/reliability.md
    PYTHONPATH=. python benchmarks/coverage.py --seeds 100 --n 200   # a quick look

The estimators: ``hutchinson(max_hvp=30)``, ``trace(rtol=0.25)`` (its Hutchinson branch on these spectra: the
first block predicts fewer than 8 blocks), ``slq(n_iter=20).trace()`` (10 draws), ``xtrace(max_hvp=40)``, and
the two-stage stop of ``slq(n_iter=1, rtol=R)`` at R = 0.1 and 0.25 (a pilot of 10 draws sizes a fresh batch whose
interval is reported; a missed batch plans a second that ends the run; one Lanczos step per draw gives the same
samples ``n q^T H q`` as any number of steps, the quadrature of the identity being exact, at a fraction of the cost;
the budget of 3000 draws lets the rule, not the cap, end the runs: the column "converged" gives the share that met
the target; coverage counts every run, as reported).  Recorded (1000 seeds, R = 0.25): 0.934, 0.941, 0.951 on 1/i,
1/i^2, 1/i^3, with 44, 167, 279 draws on average.

    PYTHONPATH=. python benchmarks/coverage.py --seeds 1000 --only "slq(n_iter=1, rtol=0.25"   # the SLQ two-stage rows

``--xdiag N`` instead measures XDiag's per-entry coverage (t intervals from its jackknife standard errors) on the
outlier over a flat bulk, ``u u^T + 5e-6 (I - u u^T)`` with n = N (float64, 100 products, a matrix-free operator;
issue 26 class 5, docs/reliability.md):

    PYTHONPATH=. python benchmarks/coverage.py --xdiag 200000 --seeds 2
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np
import scipy.stats

import hessop
from hessop.testing import matrix_with_spectrum


def plain_t(r: hessop.TraceEstimate) -> tuple[float, float]:
    """The Student-t interval on the samples behind ``r`` (no skewness correction, no rounding term)."""
    if r.n_samples < 2:
        return (-math.inf, math.inf)
    half = float(scipy.stats.t.ppf(0.975, r.n_samples - 1)) * r.std_error
    return (r.estimate - half, r.estimate + half)


ESTIMATORS = {
    "hutchinson(max_hvp=30)": lambda A, s: hessop.hutchinson(A, max_hvp=30, seed=s),
    "trace(rtol=0.25)": lambda A, s: hessop.trace(A, rtol=0.25, seed=s),
    "slq(n_iter=20).trace()": lambda A, s: hessop.slq(A, n_iter=20, seed=s).trace(),
    "xtrace(max_hvp=40)": lambda A, s: hessop.xtrace(A, 40, seed=s),
    "slq(n_iter=1, rtol=0.1).trace()": lambda A, s: hessop.slq(A, n_iter=1, rtol=0.1, max_hvp=3000,
                                                                seed=s).trace(),
    "slq(n_iter=1, rtol=0.25).trace()": lambda A, s: hessop.slq(A, n_iter=1, rtol=0.25, max_hvp=3000,
                                                                 seed=s).trace(),
}


def xdiag_coverage(n: int, seeds: int, bulk: float = 5e-6, n_hvp: int = 100) -> None:
    """Per-entry coverage of XDiag's t intervals on ``u u^T + bulk (I - u u^T)`` (one table row per seed)."""
    print("| n | seed | entries covered | rms s.e. / rms error | median abs(error) / s.e. |")
    print("|---|---|---|---|---|")
    for seed in range(seeds):
        rng = np.random.default_rng(100 + seed)
        u = rng.standard_normal(n)
        u /= np.linalg.norm(u)

        def block(V: np.ndarray, u: np.ndarray = u) -> np.ndarray:
            c = u[:, None] * (u @ V)[None, :]
            return c + bulk * (V - c)

        op = hessop.HessianOperator.from_function(lambda v, block=block: block(v[:, None])[:, 0], n, dtype=np.float64,
                                                  hvp_block=block, check_symmetric=False)
        true = u**2 + bulk * (1 - u**2)
        r = hessop.diagonal(op, n_hvp, method="xdiag", seed=seed)
        d, se = np.asarray(r.diagonal), np.asarray(r.std_error)
        z = np.abs(d - true) / se
        t = float(scipy.stats.t.ppf(0.975, r.n_samples - 1))
        ratio = math.sqrt(float(np.mean(se**2)) / float(np.mean((d - true) ** 2)))
        print(f"| {n} | {seed} | {np.mean(z <= t):.3f} | {ratio:.2f} | {np.median(z):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--only", default="", help="run only the estimators whose name contains this")
    parser.add_argument("--xdiag", type=int, default=0, help="XDiag's per-entry coverage at this n instead")
    args = parser.parse_args()
    if args.xdiag:
        xdiag_coverage(args.xdiag, args.seeds)
        return
    print("| spectrum | estimator | seeds | coverage (reported) | coverage (plain t) | mean products | converged |")
    print("|---|---|---|---|---|---|---|")
    for p in (1, 2, 3):
        lam = 1.0 / np.arange(1, args.n + 1) ** p
        A = matrix_with_spectrum(lam, seed=100 + p)
        tr = float(np.sum(lam))
        for name, run in ESTIMATORS.items():
            if args.only not in name:
                continue
            hits = plain = hvp = met = 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                for s in range(args.seeds):
                    r = run(A, s)
                    lo, hi = r.interval()
                    hits += lo <= tr <= hi
                    lo, hi = plain_t(r)
                    plain += lo <= tr <= hi
                    hvp += r.n_hvp
                    met += bool(r.converged)
            c, k = hits / args.seeds, plain / args.seeds
            se = math.sqrt(c * (1 - c) / args.seeds)
            print(f"| 1/i^{p} | `{name}` | {args.seeds} | {c:.3f} +- {se:.3f} | {k:.3f} | {hvp / args.seeds:.0f} | "
                  f"{met / args.seeds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
