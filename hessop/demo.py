"""``hessop demo``: train a small CNN on the digits for a few seconds, then compare Lanczos and power iteration on
its Hessian (top-5 and bottom-3 eigenvalues, residuals, HVP counts, seconds)."""

from __future__ import annotations

import time

from hessop.lanczos import lanczos
from hessop.power import power_iteration
from hessop.results import EigenResult


def _rows(name: str, r: EigenResult, seconds: float) -> list[str]:
    lines = []
    for i, (lam, res, ok) in enumerate(zip(r.eigenvalues, r.residuals, r.converged, strict=True)):
        head = f"{name:<28}" if i == 0 else " " * 28
        tail = f"{r.n_hvp:>6d} {seconds:>8.2f}" if i == 0 else ""
        lines.append(f"{head} {lam:>+14.8f} {res:>10.2e} {'yes' if ok else 'NO':>5} {tail}")
    return lines


def run_demo(seconds: float = 2.0, seed: int = 0, tol: float = 1e-6, max_power_iter: int = 150,
             samples: int | None = None, hessian_samples: int = 512) -> int:
    """Train on ``samples`` digits (default all 1,797) for ``seconds``, build the Hessian of the mean loss over the
    first ``hessian_samples`` of them, run the four solves and print one table.  Returns a process exit code
    (0 when both Lanczos solves converged).

    Examples
    --------
    What ``hessop demo`` runs (tens of seconds on a laptop CPU, and the figures depend on how many steps the
    training made, so the example is not run by the test suite):

    >>> from hessop.demo import run_demo
    >>> run_demo(seconds=2.0)  # doctest: +SKIP
    hessop demo: SmallResNet (1706 parameters, float64) trained ... Adam steps in 2 s on 1797 digits; loss ...
    ...
    method                           eigenvalue   residual  conv   HVPs  seconds
    ----------------------------------------------------------------------------
    lanczos top-5 (LA)              ...
    ...
    0
    """
    from hessop.models.digits import demo_operator

    H, summary = demo_operator(seconds, seed, samples, hessian_samples)
    print(summary)
    print(f"operator: {H!r}")
    print(f"tolerance: residual <= {tol:g} * |lambda|; power iteration capped at {max_power_iter} HVPs per pair\n")

    t = time.perf_counter()
    top = lanczos(H, 5, tol=tol, seed=seed)
    t_top = time.perf_counter() - t
    t = time.perf_counter()
    bottom = lanczos(H, 3, which="SA", tol=tol, seed=seed)
    t_bottom = time.perf_counter() - t
    t = time.perf_counter()
    ptop = power_iteration(H, 5, tol=tol, seed=seed, max_iter=max_power_iter)
    t_ptop = time.perf_counter() - t
    t = time.perf_counter()
    pbottom = power_iteration(H, 3, tol=tol, seed=seed, max_iter=max_power_iter, shift=float(top.eigenvalues[0]))
    t_pbottom = time.perf_counter() - t

    print(f"{'method':<28} {'eigenvalue':>14} {'residual':>10} {'conv':>5} {'HVPs':>6} {'seconds':>8}")
    print("-" * 76)
    for name, r, s in [("lanczos top-5 (LA)", top, t_top), ("power iteration top-5", ptop, t_ptop),
                       ("lanczos bottom-3 (SA)", bottom, t_bottom),
                       ("power iteration bottom-3", pbottom, t_pbottom)]:
        print("\n".join(_rows(name, r, s)))
        print()
    print(f"top-5: power iteration used {ptop.n_hvp / top.n_hvp:.1f}x the HVPs of Lanczos; bottom-3 by power "
          f"iteration (shift = lambda_max) {'converged' if pbottom.all_converged else 'did NOT converge'} in "
          f"{pbottom.n_hvp} HVPs vs {bottom.n_hvp} for Lanczos.")
    return 0 if top.all_converged and bottom.all_converged else 1


__all__ = ["run_demo"]
