"""Cost of a PyTorch Hessian-vector product, hessop against PyHessian, hessian-eigenthings and curvlinops.

Side by side in one run, per model (one batch holding all samples, eval mode):

* ``gradient``       : loss + ``torch.autograd.grad`` over all samples (the unit of every ratio);
* ``hessop fwd/rev`` : ``H.hvp`` with ``hvp_method="forward_over_reverse"`` (the default, through "auto");
* ``hessop cached``  : the same with ``cache_memory=1 GiB`` (``torch.func.linearize`` kept; its one-off build
  time is printed separately);
* ``hessop dbl-bwd`` : ``H.hvp`` with ``hvp_method="double_backward"``;
* ``... block/8``    : ``H.hvp_block`` of 8 vectors, time per vector;
* ``pyhessian``      : ``pyhessian.utils.hessian_vector_product`` on the graph PyHessian keeps for one batch;
* ``eigenthings``    : ``hessian_eigenthings.HessianOperator.matvec``;
* ``curvlinops``     : ``curvlinops.HessianLinearOperator @ v``.

Median wall time over ``--repeats`` interleaved repeats (after one warm-up), ratio to the gradient, and the peak
resident-memory increase during the call (sampled every millisecond from /proc; CPU only, coarse).  Then top-5
eigenvalues to relative residual 1e-6 by ``hessop.lanczos`` and by PyHessian's ``eigenvalues(top_n=5, tol=1e-6)``,
and SLQ with 90 steps x 1 draw by ``hessop.slq`` and by PyHessian's ``density(iter=90, n_v=1)`` on the test CNN
(``--resnet-eigs`` adds the ResNet-20-sized model to the eigenvalue comparison; slow on a CPU).  A peer that cannot
be imported is reported as such.

Usage::

    python benchmarks/hvp_cost.py [--repeats 3] [--threads 2] [--models cnn,cnn64,mlp,resnet20,transformer]
                                  [--resnet-samples 32] [--resnet-eigs]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import threading
import time

import numpy as np
import torch
from torch import nn

import hessop
from hessop import HessianOperator
from hessop.models.digits import SmallResNet, digits

PEERS = {}
for _name, _module in [("pyhessian", "pyhessian"), ("eigenthings", "hessian_eigenthings"),
                       ("curvlinops", "curvlinops")]:
    try:
        PEERS[_name] = __import__(_module)
    except Exception as _e:  # noqa: BLE001 - any import failure is reported, not hidden
        PEERS[_name] = f"import failed: {type(_e).__name__}: {_e}"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn) -> tuple[float, float]:
    """(seconds, peak RSS increase in MB) of one call."""
    base, peak, stop = _rss(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    stop.set()
    th.join()
    return dt, max(0, peak[0] - base) / 2**20


def resnet20(width: int = 16) -> nn.Module:
    """A ResNet-20-shaped CIFAR CNN (3 stages x 3 basic blocks, widths 16-32-64; about 270k parameters)."""

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                          if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.short(x))

    layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for stage, cout in enumerate([width, 2 * width, 4 * width]):
        for i in range(3):
            layers.append(Block(cin, cout, 2 if stage and i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """A small transformer encoder classifier (attention + LayerNorm; about 100k parameters)."""

    def __init__(self, d: int = 64, layers: int = 3) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        return self.head(self.enc(x).mean(1))


def problems(names: list[str], resnet_samples: int) -> dict:
    torch.manual_seed(0)
    out = {}
    if "cnn" in names or "cnn64" in names:
        x, y = digits(512)
        base = SmallResNet().double()
        hessop.models.digits.train(base, x, y, steps=150)
        if "cnn" in names:
            out["cnn"] = (copy.deepcopy(base).float().eval(), (x.float(), y))
        if "cnn64" in names:
            out["cnn64"] = (base.eval(), (x, y))
    if "mlp" in names:
        x, y = digits(512, torch.float32)
        out["mlp"] = (nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(),
                                    nn.Linear(256, 10)).eval(), (x, y))
    if "resnet20" in names:
        out["resnet20"] = (resnet20().eval(), (torch.randn(resnet_samples, 3, 32, 32),
                                               torch.randint(0, 10, (resnet_samples,))))
    if "transformer" in names:
        out["transformer"] = (Encoder().eval(), (torch.randn(128, 16, 64), torch.randint(0, 10, (128,))))
    return out


def cases(model: nn.Module, batch: tuple, loss_fn: nn.Module) -> tuple[dict, dict]:
    """{name: zero-argument callable} for every product, and notes (build times, peer failures)."""
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    dtype = params[0].dtype
    v = torch.randn(n, dtype=dtype)
    V = torch.randn(n, 8, dtype=dtype)
    notes = {}
    out = {"gradient": lambda: torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), params)}
    for label, kw in [("fwd/rev", {"hvp_method": "forward_over_reverse"}),
                      ("dbl-bwd", {"hvp_method": "double_backward"}),
                      ("cached", {"hvp_method": "forward_over_reverse", "cache_memory": 2**30})]:
        H = HessianOperator.from_torch(model, loss_fn, [batch], check_deterministic=False, **kw)
        if label == "cached":
            t = time.perf_counter()
            H.hvp(v)
            notes["cache build s"] = time.perf_counter() - t
            notes["cache MB"] = H.backend.cache_bytes / 2**20
        out[f"hessop {label}"] = lambda H=H: H.hvp(v)
        out[f"hessop {label} block/8"] = lambda H=H: H.hvp_block(V)
    if isinstance(PEERS["pyhessian"], str):
        notes["pyhessian"] = PEERS["pyhessian"]
    else:
        from pyhessian.utils import hessian_vector_product

        ph = PEERS["pyhessian"].hessian(copy.deepcopy(model), loss_fn, data=batch, cuda=False)
        vs = [torch.randn_like(p) for p in ph.params]
        out["pyhessian"] = lambda: hessian_vector_product(ph.gradsH, ph.params, vs)
    if isinstance(PEERS["eigenthings"], str):
        notes["eigenthings"] = PEERS["eigenthings"]
    else:
        he = PEERS["eigenthings"]
        op = he.HessianOperator(model, [batch], he.supervised_loss(loss_fn))
        out["eigenthings"] = lambda: op.matvec(v)
    if isinstance(PEERS["curvlinops"], str):
        notes["curvlinops"] = PEERS["curvlinops"]
    else:
        cl = PEERS["curvlinops"].HessianLinearOperator(model, loss_fn, params, [batch], check_deterministic=False)
        out["curvlinops"] = lambda: cl @ v
    return out, notes


def time_products(model, batch, repeats: int) -> None:
    loss_fn = nn.CrossEntropyLoss()
    fns, notes = cases(model, batch, loss_fn)
    times = {k: [] for k in fns}
    mems = {k: 0.0 for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            dt, mb = measure(f)
            times[k].append(dt)
            mems[k] = max(mems[k], mb)
    med = {k: statistics.median(t) for k, t in times.items()}
    g = med["gradient"]
    print(f"{'case':<28}{'median ms':>11}{'/ grad':>9}{'peak MB':>9}")
    for k in fns:
        per = 8 if k.endswith("block/8") else 1
        print(f"{k + (' (per vector)' if per > 1 else ''):<28}{1e3 * med[k] / per:>11.2f}{med[k] / per / g:>9.2f}"
              f"{mems[k]:>9.1f}")
    peers = [med[k] for k in ("pyhessian", "eigenthings", "curvlinops") if k in med]
    if peers:
        print(f"hessop fwd/rev / fastest peer: {med['hessop fwd/rev'] / min(peers):.2f}; "
              f"hessop cached / fastest peer: {med['hessop cached'] / min(peers):.2f}")
    for k, val in notes.items():
        print(f"  {k}: {val:.3f}" if isinstance(val, float) else f"  {k}: {val}")


def eigen_and_density(name: str, model, batch, slq_too: bool) -> None:
    loss_fn = nn.CrossEntropyLoss()
    if isinstance(PEERS["pyhessian"], str):
        print(f"  pyhessian: {PEERS['pyhessian']}")
        return
    rows = []
    for label, kw in [("fwd/rev", {}), ("dbl-bwd", {"hvp_method": "double_backward"})]:
        t = time.perf_counter()
        H = HessianOperator.from_torch(model, loss_fn, [batch], check_deterministic=False, **kw)
        r = hessop.lanczos(H, 5, tol=1e-6)
        rows.append((f"hessop lanczos ({label})", time.perf_counter() - t, r.n_hvp, r.eigenvalues,
                     f"memory {min(H.n, 40) + 4} n-vectors"))
    torch.manual_seed(0)
    t = time.perf_counter()
    ph = PEERS["pyhessian"].hessian(copy.deepcopy(model), loss_fn, data=batch, cuda=False)
    vals, _ = ph.eigenvalues(top_n=5, tol=1e-6, maxIter=1000)
    rows.append(("pyhessian eigenvalues", time.perf_counter() - t, None, np.sort(vals)[::-1], ""))
    ref = rows[-1][1]
    print(f"top-5 to 1e-6 on {name}:")
    for label, s, nh, ev, extra in rows:
        print(f"  {label:<26} {s:8.2f} s  x{s / ref:5.2f} of pyhessian  HVPs {nh if nh else '-':>4}  "
              f"{np.array2string(np.asarray(ev), precision=5)} {extra}")
    if not slq_too:
        return
    t = time.perf_counter()
    H = HessianOperator.from_torch(model, loss_fn, [batch], check_deterministic=False)
    sd = hessop.slq(H, n_iter=90, n_vectors=1)
    th = time.perf_counter() - t
    t = time.perf_counter()
    ph = PEERS["pyhessian"].hessian(copy.deepcopy(model), loss_fn, data=batch, cuda=False)
    ph.density(iter=90, n_v=1)
    tp = time.perf_counter() - t
    print(f"SLQ 90 steps x 1 draw on {name}: hessop {th:.2f} s ({sd.n_hvp} HVPs, blocks {sd.blocks}, memory "
          f"{sd.memory} n-vectors), pyhessian {tp:.2f} s; ratio {th / tp:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="cnn,cnn64,mlp,resnet20,transformer")
    ap.add_argument("--resnet-samples", type=int, default=32)
    ap.add_argument("--resnet-eigs", action="store_true", help="also top-5 on the ResNet-20-sized model (slow)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    for peer, mod in PEERS.items():
        print(f"  peer {peer}: {mod if isinstance(mod, str) else getattr(mod, '__version__', 'imported')}")
    names = args.models.split(",")
    probs = problems(names, args.resnet_samples)
    for name in names:
        model, batch = probs[name]
        n = sum(p.numel() for p in model.parameters())
        print(f"\n== {name}: {n:,} parameters, {len(batch[1])} samples, "
              f"{next(model.parameters()).dtype}")
        time_products(model, batch, args.repeats)
    print()
    if "cnn" in probs:
        eigen_and_density("cnn (float32)", *probs["cnn"], slq_too=True)
    if args.resnet_eigs and "resnet20" in probs:
        eigen_and_density("resnet20", *probs["resnet20"], slq_too=False)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
