"""Products (HVPs) each trace estimator needs to reach a target accuracy, and whether its interval is true.

For targets 10%, 1%, 0.1% (95% half-width relative to the estimate) on a flat spectrum, a spectrum with outliers
(``hessop.testing``, dense, n = 1000) and the README's network (SmallResNet trained on all 1,797 digits, float64,
PyTorch), over seeds:

* ``trace`` -- ``hessop.trace(H, rtol=target)`` (method "auto");
* ``hutchinson`` -- ``hessop.hutchinson(H, rtol=target)`` (cap 10,000 products: ">" marks runs that hit it);
* ``hutch++`` -- ``hessop.trace(H, rtol=target, method="hutch++")`` (adaptive rank, always deflated);
* ``xtrace`` -- ``hessop.xtrace(H, b)`` with b = 16, 32, 64, ... until its own error estimate 1.96 se meets the
  target; the products of that last run are counted (an oracle told the budget; the smaller runs are not counted);
* ``pyhessian`` -- PyHessian's ``hessian.trace()`` with its defaults (Rademacher probes, stops when the running mean
  changes by less than 1e-3 relative, at most 100 products); on the matrices its rule is applied to hessop's
  Rademacher samples (the rule is a function of the sample sequence only), on the network PyHessian itself runs.

Reported per cell: median products, median relative error |estimate - tr| / |tr|, and the fraction of seeds whose
95% interval covered the exact trace (PyHessian reports no interval: "-").  The network's statistics use its dense
Hessian (computed once from n identity-column products through the PyTorch operator; ``--cache`` keeps it), which
gives the same samples as the operator for the same seed (tests/estimators/test_trace.py); seconds per product are
measured on the operator and multiply the median products.

    python benchmarks/trace_to_target.py [--seeds 20] [--n 1000] [--cache /tmp/readme_net_hessian.npy]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

import hessop
from hessop.testing import flat_spectrum, matrix_with_spectrum, outlier_spectrum

TARGETS = (0.1, 0.01, 0.001)


def readme_network():
    import torch

    from hessop.models.digits import SmallResNet, digits, train

    torch.manual_seed(0)
    x, y = digits()
    model = SmallResNet().double()
    train(model, x, y, steps=100)
    model.eval()
    batches = [(x[i: i + 600], y[i: i + 600]) for i in range(0, len(x), 600)]
    return model, x, y, hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), batches)


def dense(H, cache: Path | None) -> np.ndarray:
    if cache is not None and cache.exists():
        return np.load(cache)
    cols = [H.to_numpy(H.hvp_block(H.asarray(np.eye(H.n, min(64, H.n - s), -s)))) for s in range(0, H.n, 64)]
    A = np.concatenate(cols, axis=1)
    A = (A + A.T) / 2
    if cache is not None:
        np.save(cache, A)
    return A


def pyhessian_rule(samples: np.ndarray, tol: float = 1e-3) -> tuple[float, int]:
    """PyHessian's trace(): stop at the first i with |mean_i - mean_{i-1}| / (mean_{i-1} + 1e-6) < tol."""
    prev = 0.0
    for i in range(1, samples.size + 1):
        mean = float(np.mean(samples[:i]))
        if abs(mean - prev) / (prev + 1e-6) < tol:
            return mean, i
        prev = mean
    return prev, samples.size


def xtrace_to_target(A, rtol: float, seed: int):
    b = 16
    while True:
        r = hessop.xtrace(A, b, seed=seed)
        if 1.96 * r.std_error <= rtol * abs(r.estimate) or 2 * b > min(10_000, A.shape[0]):
            return r.estimate, r.n_hvp, r.interval()
        b *= 2


def run_cell(A, tr: float, rtol: float, seeds: int, hutch_seeds: int) -> dict[str, tuple]:
    """{method: (median products, median relative error, coverage or None, capped)}"""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, f, k in [
            ("trace", lambda s: hessop.trace(A, rtol=rtol, seed=s), seeds),
            ("hutchinson", lambda s: hessop.hutchinson(A, rtol=rtol, seed=s), hutch_seeds),
            ("hutch++", lambda s: hessop.trace(A, rtol=rtol, method="hutch++", seed=s), seeds),
        ]:
            rs = [f(s) for s in range(k)]
            out[name] = (np.median([r.n_hvp for r in rs]), np.median([abs(r.estimate - tr) / abs(tr) for r in rs]),
                         np.mean([r.interval()[0] <= tr <= r.interval()[1] for r in rs]),
                         any(not r.converged for r in rs))
        xs = [xtrace_to_target(A, rtol, s) for s in range(seeds)]
        out["xtrace"] = (np.median([x[1] for x in xs]), np.median([abs(x[0] - tr) / abs(tr) for x in xs]),
                         np.mean([x[2][0] <= tr <= x[2][1] for x in xs]), False)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20, help="seeds per cell (default 20)")
    ap.add_argument("--hutch-seeds", type=int, default=5, help="seeds for hutchinson (up to 10,000 products each)")
    ap.add_argument("--n", type=int, default=1000, help="size of the prescribed-spectrum matrices")
    ap.add_argument("--cache", type=Path, default=None, help="where to keep the network's dense Hessian (.npy)")
    ap.add_argument("--no-network", action="store_true")
    args = ap.parse_args(argv)

    problems = {}
    for name, lam in [("flat", flat_spectrum(args.n, seed=0)), ("outliers", outlier_spectrum(args.n, seed=0))]:
        problems[name] = (matrix_with_spectrum(lam, seed=1), float(lam.sum()), None)
    if not args.no_network:
        model, x, y, H = readme_network()
        A = dense(H, args.cache)
        t0 = time.perf_counter()
        hessop.trace(H, max_hvp=64, method="hutchinson")
        per_hvp = (time.perf_counter() - t0) / 64
        problems["network"] = (A, float(np.trace(A)), (model, x, y, per_hvp))

    for name, (A, tr, net) in problems.items():
        if net is not None:
            ph_net, ph_secs = pyhessian_network(*net[:3])
        print(f"\n**{name}** (n = {A.shape[0]}, tr H = {tr:.6g})"
              + (f", {1e3 * net[3]:.0f} ms per product on the operator" if net else "") + "\n")
        print("| target | method | HVPs (median) | rel. error (median) | 95% coverage | seconds |")
        print("|---:|---|---:|---:|---:|---:|")
        for rtol in TARGETS:
            cells = run_cell(A, tr, rtol, args.seeds, args.hutch_seeds)
            if net is None:
                samples = [hessop.hutchinson(A, max_hvp=100, seed=s).samples for s in range(args.seeds)]
                ph, ph_secs = [pyhessian_rule(x) for x in samples], None
            else:
                ph = ph_net
            cells["pyhessian"] = (np.median([p[1] for p in ph]),
                                  np.median([abs(p[0] - tr) / abs(tr) for p in ph]), None, False)
            for method, (hvp, err, cov, capped) in cells.items():
                secs = ph_secs if method == "pyhessian" and ph_secs is not None else (
                    hvp * net[3] if net else None)
                print(f"| {rtol:g} | {method} | {'>' if capped else ''}{hvp:.0f} | {err:.2e} | "
                      f"{'-' if cov is None else f'{cov:.2f}'} | {'-' if secs is None else f'{secs:.1f}'} |",
                      flush=True)


def pyhessian_network(model, x, y, repeats: int = 3):
    """PyHessian's own trace() on the network (one batch of all samples, CPU), ``repeats`` seeds."""
    import torch
    from pyhessian import hessian

    out, t0 = [], time.perf_counter()
    for s in range(repeats):
        torch.manual_seed(s)
        vhv = hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False).trace()
        out.append((float(np.mean(vhv)), len(vhv)))
    model.zero_grad(set_to_none=True)
    return out, (time.perf_counter() - t0) / repeats


if __name__ == "__main__":
    main()
