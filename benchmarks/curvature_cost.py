"""Cost of GGN, Fisher and empirical-Fisher products, hessop against curvlinops and hessian-eigenthings.

Per model (one batch holding all samples, float32, eval mode, mean cross-entropy), side by side in one run:

* ``gradient``: loss + ``torch.autograd.grad`` (the unit of every ratio);
* ``hessop H``: the Hessian product with the defaults (for scale);
* ``hessop G`` / ``hessop Fisher (MC, 1 draw)`` / ``hessop EF``: ``from_torch(..., curvature=...)`` products
  (``A v`` in forward mode, the default);
* ``hessop G (reverse A v, kept graph)``: the reverse fallback (``jv_method="reverse"``), through its kept graph;
* ``curvlinops G`` / ``curvlinops EF``: ``GGNLinearOperator @ v`` / ``EFLinearOperator @ v`` (curvlinops 3);
* ``eigenthings G`` / ``eigenthings EF``: ``GGNOperator.matvec`` / ``EmpiricalFisherOperator.matvec``.

Columns: FLOPs of one product in gradients (``torch.utils.flop_counter.FlopCounterMode``: matrix products and
convolutions, forward and backward; elementwise work is not counted; measured after a warm-up call, so a kept graph
is already built), the median wall time of ``--repeats`` interleaved calls after that warm-up and its ratio to the
gradient's, and the largest relative difference of each peer's product from hessop's (they compute the same
matrices).  Then the top-5 eigenvalues of G and of the empirical Fisher, every solver at the same relative tolerance
``--tol``: ``hessop.lanczos`` (including the operator's construction and its determinism check),
``scipy.sparse.linalg.eigsh`` on curvlinops' SciPy face and ``hessian_eigenthings.lanczos`` on its operator, each
``--top5-repeats`` times: median seconds, its ratio to hessop's, products (counted), and the largest relative
difference of the eigenvalues from hessop's.  The first line prints the load average: timings are meaningful only
on a quiet machine (load below 1); the FLOP ratios and product counts do not depend on it.

Blocks (``--blocks 1,5,20``): the FLOPs per column of one product with a block of k vectors, in gradients, for G,
the Fisher and the empirical Fisher, batched in one pass (``block_method="batched"``: one primal forward pass, the k
tangents by ``jvp`` under ``vmap``, one batched backward pass) and column by column (``block_method="columns"``),
and the peak resident memory of one block product at the largest k above the memory before it (VmHWM reset before
the call, freed blocks returned to the OS: :func:`hvp_cost.peak_mb`), each against the bytes the primal forward
pass saves (``TorchCurvatureBackend.saved_bytes``), per column, with no ``block_memory`` limit (one chunk): the
figure behind ``TANGENT_MEMORY``.
``--block-seconds`` adds the wall time of one G block product at the largest k, batched over per-column (one run:
rough, load printed at the top).

Usage::

    python benchmarks/curvature_cost.py [--repeats 5] [--top5-repeats 3] [--threads 2] [--models cnn,resnet20]
                                        [--resnet-samples 32] [--cnn-samples 512] [--tol 1e-6] [--quick]
                                        [--sections products,blocks,top5] [--blocks 1,5,20] [--block-seconds]
                                        [--block-curvatures ggn,fisher,empirical_fisher]

``--quick`` is a smoke run (128 digits; the ResNet at a quarter of its width, about 17k parameters, on 8 samples;
1 repeat; tolerance 1e-3): it checks that every case runs, not what it costs.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from functools import partial

import numpy as np
import torch
from hvp_cost import flops, peak_mb, resnet20, return_freed_memory_to_the_os
from torch import nn

import hessop
from hessop import HessianOperator
from hessop.backends.torch import TorchCurvatureBackend
from hessop.models.digits import SmallResNet, digits, train


def problems(names: list[str], resnet_samples: int, cnn_samples: int = 512, steps: int = 150,
             resnet_width: int = 16) -> dict:
    torch.manual_seed(0)
    out = {}
    if "cnn" in names:
        x, y = digits(cnn_samples)
        model = SmallResNet().double()
        train(model, x, y, steps=steps)
        out["cnn"] = (model.float().eval(), (x.float(), y))
    if "resnet20" in names:
        out["resnet20"] = (resnet20(resnet_width).eval(), (torch.randn(resnet_samples, 3, 32, 32),
                                               torch.randint(0, 10, (resnet_samples,))))
    return out


def peers(model, batch, loss_fn, params) -> dict:
    """Zero-argument constructors of the peers' operators, by name; a peer that cannot be imported is skipped."""
    out = {}
    try:
        import curvlinops as cl

        out["curvlinops G"] = lambda: cl.GGNLinearOperator(model, loss_fn, params, [batch], check_deterministic=False)
        out["curvlinops EF"] = lambda: cl.EFLinearOperator(model, loss_fn, params, [batch], check_deterministic=False)
    except ImportError as e:
        print(f"- curvlinops not available ({e})")
    try:
        import hessian_eigenthings as he

        out["eigenthings G"] = lambda: he.GGNOperator(model, [batch], he.supervised_forward,
                                                      he.supervised_loss_of_output(loss_fn))
        out["eigenthings EF"] = lambda: he.EmpiricalFisherOperator(
            model, [batch], he.supervised_per_sample_loss(nn.CrossEntropyLoss(reduction="none")))
    except ImportError as e:
        print(f"- hessian-eigenthings not available ({e})")
    return out


def _flops(fn) -> float:
    """:func:`hvp_cost.flops`, or NaN where FlopCounterMode cannot follow the product (curvlinops' ``jvp`` of a
    ``vmap``-ed ``jacrev`` fails under it in torch 2.13: "A leaf node was passed to _will_engine_execute_node")."""
    try:
        return flops(fn)
    except RuntimeError:
        return float("nan")


def _peer_product(op):
    return op.matvec if hasattr(op, "matvec") else op.__matmul__


def products(name: str, model, batch, repeats: int) -> None:
    loss_fn = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    ops = {"hessop H": HessianOperator.from_torch(model, loss_fn, [batch]),
           **{f"hessop {label}": HessianOperator.from_torch(model, loss_fn, [batch], curvature=c)
              for label, c in (("G", "ggn"), ("Fisher (MC, 1 draw)", "fisher"), ("EF", "empirical_fisher"))},
           "hessop G (reverse A v, kept graph)": HessianOperator(TorchCurvatureBackend(
               model, loss_fn, [batch], curvature="ggn", jv_method="reverse"))}
    n = ops["hessop H"].n
    v = torch.as_tensor(np.random.default_rng(0).standard_normal(n), dtype=torch.float32)

    def gradient():
        return torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), params)

    cases = {"gradient": gradient, **{k: partial(op.hvp, v) for k, op in ops.items()}}
    ours = {"G": cases["hessop G"](), "EF": cases["hessop EF"]()}
    diffs = {}
    for label, make in peers(model, batch, loss_fn, params).items():
        cases[label] = partial(_peer_product(make()), v)
        ref = ours[label.split()[-1]]
        diff = torch.linalg.vector_norm(cases[label]().detach().reshape(-1) - ref) / torch.linalg.vector_norm(ref)
        diffs[label] = float(diff)
    for fn in cases.values():
        fn()  # warm-up (builds the kept graphs)
    work = {k: _flops(fn) for k, fn in cases.items()}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for k, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(t) for k, t in times.items()}
    print(f"\n{name}: n = {n:,} parameters, {len(batch[1])} samples, float32\n")
    print("| product | FLOPs / gradient | seconds | time / gradient | rel. difference from hessop |\n"
          "|---|---:|---:|---:|---:|")
    for k in cases:
        diff = f"{diffs[k]:.1e}" if k in diffs else ""
        print(f"| {k} | {work[k] / work['gradient']:.2f} | {med[k]:.4f} | {med[k] / med['gradient']:.2f} | {diff} |")


def blocks(name: str, model, batch, ks: list[int], seconds: bool,
           curvatures: tuple[str, ...] = ("ggn", "fisher", "empirical_fisher")) -> None:
    """FLOPs per column of a block product, batched against per column, and the batched pass's peak memory."""
    loss_fn = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient():
        return torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), params)

    unit = flops(gradient)
    backends = {(c, m): TorchCurvatureBackend(model, loss_fn, [batch], curvature=c, block_method=m,
                                              block_memory=2**62, check_deterministic=False)
                for c in curvatures for m in ("batched", "columns")}
    n = backends["ggn", "batched"].n
    rng = np.random.default_rng(0)
    blocks_ = {k: torch.as_tensor(rng.standard_normal((n, k)), dtype=torch.float32) for k in ks}
    for backend in backends.values():
        backend.hvp_block(blocks_[min(ks)])  # warm-up (the batched form measures its primal pass's memory once)
    print(f"\nBlocks, {name}: FLOPs per column in gradients (batched in one pass / column by column)\n\n"
          "| curvature | " + " | ".join(f"k = {k}" for k in ks) + " |\n|---|" + "---:|" * len(ks))
    for c in curvatures:
        row = []
        for k, V in blocks_.items():
            b, col = (flops(partial(backends[c, m].hvp_block, V)) / (k * unit) for m in ("batched", "columns"))
            row.append(f"{b:.2f} / {col:.2f}")
        print(f"| {c} | " + " | ".join(row) + " |")
    k = max(ks)
    V = blocks_[k]
    saved = backends["ggn", "batched"].saved_bytes(batch[0]) / 2**20
    if return_freed_memory_to_the_os():
        print(f"\nPeak memory of one block product, k = {k} (MB above the memory before the call; the primal forward "
              f"pass saves {saved:.1f} MB):\n\n| curvature | batched | column by column | batched / (k x saved) |\n"
              "|---|---:|---:|---:|")
        for c in curvatures:
            b, col = (peak_mb(partial(backends[c, m].hvp_block, V)) for m in ("batched", "columns"))
            print(f"| {c} | {b:.1f} | {col:.1f} | {b / (k * saved):.2f} |")
    else:
        print("\n- peak memory: not measured (needs glibc's mallopt and /proc/self/clear_refs)")
    if seconds:
        t = {}
        for m in ("batched", "columns"):
            backends["ggn", m].hvp_block(V)  # warm-up
            start = time.perf_counter()
            backends["ggn", m].hvp_block(V)
            t[m] = time.perf_counter() - start
        print(f"\nG block of {k}, one run (load {os.getloadavg()[0]:.2f}): batched {t['batched']:.3f} s, column by "
              f"column {t['columns']:.3f} s, ratio {t['batched'] / t['columns']:.2f}")


class _Counted:
    """A SciPy LinearOperator's products, counted."""

    def __init__(self, op) -> None:
        self.op, self.count = op, 0

    def matvec(self, x):
        self.count += 1
        return self.op.matvec(x)


def _counted(op):
    """``op`` with its ``matvec`` counting its calls in ``op.products`` (hessian-eigenthings' operators)."""
    inner, op.products = op.matvec, 0

    def matvec(v):
        op.products += 1
        return inner(v)

    op.matvec = matvec
    return op


def top5(name: str, model, batch, tol: float, repeats: int) -> None:
    from scipy.sparse.linalg import LinearOperator, eigsh

    loss_fn = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    made = peers(model, batch, loss_fn, params)
    print(f"\nTop-5 eigenvalues to relative tolerance {tol:g}, {name}, median of {repeats} run(s):\n\n"
          "| matrix | solver | seconds | time / hessop's | products | max rel. difference from hessop's | "
          "eigenvalues |\n|---|---|---:|---:|---:|---:|---|")
    for short, curvature in (("G", "ggn"), ("EF", "empirical_fisher")):
        def ours(curvature=curvature):
            r = hessop.lanczos(HessianOperator.from_torch(model, loss_fn, [batch], curvature=curvature), 5,
                               tol=tol)
            return r.eigenvalues, f"{r.n_hvp} (+2 check)"

        solvers = {"hessop lanczos": ours}
        if f"curvlinops {short}" in made:
            def scipy_eigsh(make=made[f"curvlinops {short}"]):
                counted = _Counted(make().to_scipy())
                vals = eigsh(LinearOperator(counted.op.shape, counted.matvec, dtype=counted.op.dtype), k=5,
                             which="LA", tol=tol, return_eigenvectors=False)
                return np.sort(vals)[::-1], counted.count

            solvers["curvlinops + scipy eigsh"] = scipy_eigsh
        if f"eigenthings {short}" in made:
            import hessian_eigenthings as he

            def eigenthings(make=made[f"eigenthings {short}"]):
                op = _counted(make())
                res = he.lanczos(op, k=5, which="LA", tol=tol, seed=0)
                vals = res.eigenvalues.detach().cpu() if torch.is_tensor(res.eigenvalues) else res.eigenvalues
                return np.sort(np.asarray(vals))[::-1], op.products

            solvers["eigenthings lanczos"] = eigenthings
        rows = {}
        for _ in range(repeats):
            for label, solve in solvers.items():  # interleaved, as the products above
                t = time.perf_counter()
                values, count = solve()
                rows.setdefault(label, [[], None, None])[0].append(time.perf_counter() - t)
                rows[label][1:] = [np.asarray(values, dtype=np.float64), count]
        base = statistics.median(rows["hessop lanczos"][0])
        ref = rows["hessop lanczos"][1]
        for label, (secs, ev, count) in rows.items():
            med = statistics.median(secs)
            diff = float(np.max(np.abs(ev - ref)) / np.max(np.abs(ref)))
            print(f"| {short} | {label} | {med:.2f} | {med / base:.2f} | {count} | {diff:.1e} | "
                  f"{' '.join(f'{x:.5g}' for x in ev)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top5-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="cnn,resnet20")
    parser.add_argument("--resnet-samples", type=int, default=32)
    parser.add_argument("--cnn-samples", type=int, default=512)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--quick", action="store_true", help="smoke run: small batches, 1 repeat, tolerance 1e-3")
    parser.add_argument("--sections", default="products,blocks,top5")
    parser.add_argument("--blocks", default="1,5,20", help="block sizes k of the blocks section")
    parser.add_argument("--block-seconds", action="store_true", help="time one G block product, batched and not")
    parser.add_argument("--block-curvatures", default="ggn,fisher,empirical_fisher")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.top5_repeats, args.resnet_samples, args.cnn_samples, args.tol = 1, 1, 8, 128, 1e-3
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"load average {load:.2f} on {os.cpu_count()} cores, {args.threads} torch threads, torch "
          f"{torch.__version__}{' (timings unreliable: rerun on a quiet machine)' if load >= 1 else ''}"
          f"{' [--quick: a smoke run, not a measurement]' if args.quick else ''}")
    for name, (model, batch) in problems(args.models.split(","), args.resnet_samples, args.cnn_samples,
                                         30 if args.quick else 150, 4 if args.quick else 16).items():
        sections = args.sections.split(",")
        if "products" in sections:
            products(name, copy.deepcopy(model), batch, args.repeats)
        if "blocks" in sections:
            blocks(name, copy.deepcopy(model), batch, [int(k) for k in args.blocks.split(",")], args.block_seconds,
                   tuple(args.block_curvatures.split(",")))
        if "top5" in sections:
            top5(name, model, batch, args.tol, args.top5_repeats)


if __name__ == "__main__":
    main()
