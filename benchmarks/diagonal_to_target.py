"""Products (HVPs) ``hessop.diagonal`` needs to reach a target accuracy, and whether its intervals are true.

For targets 10% and 3% (root mean square of the entries' 95% half-widths, relative to the root mean square of the
diagonal) on a flat spectrum, a spectrum with outliers (``hessop.testing``, dense, n = 1000) and the README's
network (SmallResNet on all 1,797 digits, float64; its dense Hessian, as in ``trace_to_target.py``), over seeds:

* ``auto`` -- ``hessop.diagonal(H, rtol=target)`` (Hutchinson or Diag++, chosen from the first products);
* ``hutchinson`` -- the median products of ``diagonal(H, rtol=target, method="hutchinson")`` where that is under
  n / 2; otherwise (no run: ``diagonal`` would take the n identity columns instead) the products plain Hutchinson
  needs from its exact per-sample variance, ``N = (1.96 / target)^2 mean_i(sum_{j != i} H_ij^2) / mean_i(H_ii^2)``;
* ``xdiag`` -- ``diagonal(H, b, method="xdiag")`` at the median budget of ``auto``: its root-mean-square error and the
  coverage of its jackknife intervals.

Reported: the method chosen, median products, the ratio to Hutchinson's, the fraction of (seed, entry) pairs whose
95% interval covered the exact entry, and the root mean square of the reported standard errors over the
root-mean-square error.

    python benchmarks/diagonal_to_target.py [--seeds 50] [--n 1000] [--cache /tmp/readme_net_hessian.npy]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import numpy as np
import scipy.stats

import hessop
from hessop.testing import flat_spectrum, matrix_with_spectrum, outlier_spectrum

_spec = importlib.util.spec_from_file_location("trace_to_target", Path(__file__).with_name("trace_to_target.py"))
_ttt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ttt)


def statistics(A: np.ndarray, runs: list[hessop.DiagonalEstimate]) -> tuple[float, float, float]:
    """Coverage of the 95% Student-t intervals over (seed, entry) pairs, RMS standard error / RMS error, RMS error
    relative to the diagonal's root mean square."""
    exact = np.diag(A)
    err = np.array([r.diagonal - exact for r in runs])
    se = np.array([r.std_error for r in runs])
    q = np.array([scipy.stats.t.ppf(0.975, max(r.n_samples - 1, 1)) for r in runs])[:, None]
    rms_err = math.sqrt(np.mean(err**2))
    return float(np.mean(np.abs(err) <= q * se)), math.sqrt(np.mean(se**2)) / rms_err, rms_err / math.sqrt(
        np.mean(exact**2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--cache", type=Path, default=None, help="where to keep the network's dense Hessian")
    args = ap.parse_args()
    problems = {"flat": matrix_with_spectrum(flat_spectrum(args.n, seed=3), seed=4),
                "outliers": matrix_with_spectrum(outlier_spectrum(args.n, seed=3), seed=4),
                "network": _ttt.dense(_ttt.readme_network()[3], args.cache)}
    print("| operator | target | method | HVPs (median) | Hutchinson's HVPs | ratio | coverage | SE / error | "
          "XDiag at the same HVPs: rel. RMS error (auto's) | XDiag coverage | XDiag SE / error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, A in problems.items():
        d = np.diag(A)
        off = (np.sum(A**2, axis=1) - d**2).mean()
        for rtol in (0.1, 0.03):
            runs = [hessop.diagonal(A, rtol=rtol, seed=s) for s in range(args.seeds)]
            hvp = float(np.median([r.n_hvp for r in runs]))
            hutch = max(32.0, (1.96 / rtol) ** 2 * off / np.mean(d**2))
            if hutch < A.shape[0] / 2:  # cheap enough to run: the median of real runs
                hutch = float(np.median([hessop.diagonal(A, rtol=rtol, seed=s, method="hutchinson").n_hvp
                                         for s in range(args.seeds)]))
            cov, ratio, rel = statistics(A, runs)
            methods = "/".join(sorted({r.method for r in runs}))
            xruns = [hessop.diagonal(A, max(int(hvp), 4), seed=s, method="xdiag") for s in range(args.seeds)]
            xcov, xratio, xrel = statistics(A, xruns)
            print(f"| {name} | {rtol:g} | {methods} | {hvp:.0f} | {hutch:,.0f} | {hutch / hvp:.1f}x | {cov:.3f} | "
                  f"{ratio:.2f} | {xrel:.2e} ({rel:.2e}) | {xcov:.3f} | {xratio:.2f} |")


if __name__ == "__main__":
    main()
