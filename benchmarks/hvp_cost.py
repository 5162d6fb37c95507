"""Cost of a PyTorch Hessian-vector product, hessop against PyHessian, hessian-eigenthings and curvlinops.

Side by side in one run, per model (one batch holding all samples, eval mode, mean cross-entropy):

* ``gradient``                : loss + ``torch.autograd.grad`` over all samples (the unit of every ratio);
* ``hessop auto``             : ``H.hvp`` with the defaults (``hvp_method="auto"``: double backward through the
  gradient graph kept under the default ``cache_memory``; its one-off build and size are printed below the table);
* ``hessop double backward``  : ``hvp_method="double_backward", cache_memory=0`` (nothing kept);
* ``hessop fwd-over-rev``     : ``hvp_method="forward_over_reverse"`` (``torch.func.jvp`` of ``grad``);
* ``... block/8``             : ``H.hvp_block`` of 8 vectors, time per vector (``vmap`` for forward-over-reverse);
* ``pyhessian``               : ``pyhessian.utils.hessian_vector_product`` on the graph PyHessian keeps;
* ``eigenthings``             : ``hessian_eigenthings.HessianOperator.matvec``;
* ``curvlinops``              : ``curvlinops.HessianLinearOperator @ v``.

Median wall time over ``--repeats`` interleaved repeats (after one warm-up) and ratio to the gradient.  At the end,
after every timing, the peak resident memory of one call of each case above the memory before it: glibc is told to
return every freed block of 64 KiB or more to the OS, and the kernel's high-water mark is reset before the call, so
the figure is exact for CPU tensors (memory a kept graph holds between calls is printed separately).

Then top-5 eigenvalues to relative residual 1e-6 by ``hessop.lanczos`` and by PyHessian's
``eigenvalues(top_n=5, tol=1e-6)`` on the test CNN and the ResNet-20-sized model, and SLQ with 90 steps x 1 draw by
``hessop.slq`` and by PyHessian's ``density(iter=90, n_v=1)`` on the test CNN (on torch >= 2.0, where ``torch.eig``
is gone, PyHessian is given an equivalent built on ``torch.linalg.eigh`` for its symmetric tridiagonal matrix); every
hessop time includes building the operator with its defaults (the determinism check: two loss passes and two
products).  The FLOPs column counts the arithmetic of each case (matrix products, convolutions, attention) in units
of the gradient's.  ``--compiled`` adds what ``torch.compile`` of a forward-over-reverse product would buy.  The last
lines check the targets of issue 9.  A peer that cannot be imported, or fails on a model, is reported as such.

Usage::

    python benchmarks/hvp_cost.py [--repeats 7] [--threads 2] [--models cnn,cnn64,mlp,resnet20,transformer]
                                  [--resnet-samples 32] [--quick] [--compiled cnn,resnet20]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

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


def measure(fn) -> float:
    """Seconds of one call."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def return_freed_memory_to_the_os() -> bool:
    """Make glibc unmap every freed block of 64 KiB or more at once (``mallopt``; tensors are plain ``malloc``s on
    CPU), so that the resident size follows the live tensors.  Called once, after every timing: it slows
    allocation.  False where this is not glibc on Linux."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 64 * 1024) == 1 and libc.mallopt(m_trim_threshold, 0) == 1
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return ok
    except (OSError, AttributeError):
        return False


def peak_mb(fn) -> float:
    """Peak resident memory of one call above the resident memory before it, in MB: the kernel's high-water mark
    ``VmHWM``, reset just before the call (``/proc/self/clear_refs``: exact, no sampling).  ``malloc_trim(0)``
    first gives the free pages inside glibc's arenas back to the OS, so that memory the call reuses there counts."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    base = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return max(0, _status_bytes("VmHWM") - base) / 2**20


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


def _peer_product(name: str, model, batch, loss_fn, params, v):
    """A zero-argument callable computing one product with peer ``name``, after computing one."""
    mod = PEERS[name]
    if name == "pyhessian":
        from pyhessian.utils import hessian_vector_product

        ph = mod.hessian(copy.deepcopy(model), loss_fn, data=batch, cuda=False)
        fn = partial(hessian_vector_product, ph.gradsH, ph.params, [torch.randn_like(p) for p in ph.params])
    elif name == "eigenthings":
        fn = partial(mod.HessianOperator(model, [batch], mod.supervised_loss(loss_fn)).matvec, v)
    else:
        fn = partial(mod.HessianLinearOperator(model, loss_fn, params, [batch], check_deterministic=False).__matmul__,
                     v)
    fn()
    return fn


def _peer_cases(model, batch, loss_fn, params, v) -> tuple[dict, dict]:
    out, notes = {}, {}
    for name, mod in PEERS.items():
        if isinstance(mod, str):
            notes[name] = mod
            continue
        try:
            out[name] = _peer_product(name, model, batch, loss_fn, params, v)
        except Exception as e:  # noqa: BLE001 - a peer's failure is reported, not hidden
            notes[name] = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:150]}"
            try:  # fused attention kernels have no second derivatives: retry with the math kernel, as a user could
                with sdpa_kernel(SDPBackend.MATH):
                    fn = _peer_product(name, model, batch, loss_fn, params, v)
                out[f"{name} (math attention)"] = partial(_math_attention, fn)
                notes[name] += "; built and run under sdpa_kernel(SDPBackend.MATH) in its own row"
            except Exception:  # noqa: BLE001, S110 - the first failure is the one reported
                pass
    return out, notes


def _math_attention(fn):
    with sdpa_kernel(SDPBackend.MATH):
        return fn()


def cases(model: nn.Module, batch: tuple, loss_fn: nn.Module) -> tuple[dict, dict]:
    """{name: zero-argument callable} for every product, and notes (graph build, peer failures)."""
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    dtype = params[0].dtype
    v = torch.randn(n, dtype=dtype)
    V = torch.randn(n, 8, dtype=dtype)
    notes = {}
    out = {"gradient": lambda: torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), params)}
    for label, kw in [("auto", {}), ("double backward", {"hvp_method": "double_backward", "cache_memory": 0}),
                      ("fwd-over-rev", {"hvp_method": "forward_over_reverse"})]:
        H = HessianOperator.from_torch(model, loss_fn, [batch], check_deterministic=False, **kw)
        if label == "auto":
            dt = measure(lambda H=H: H.hvp(v))
            notes["kept graph"] = (f"built by the first product in {dt * 1e3:.1f} ms, holds "
                                   f"{H.backend.cache_bytes / 2**20:.1f} MB (budget "
                                   f"{H.backend.cache_memory / 2**30:.2f} GiB)")
        try:
            H.hvp_block(V)
        except Exception as e:  # noqa: BLE001
            notes[f"hessop {label}"] = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:150]}"
            continue
        out[f"hessop {label}"] = lambda H=H: H.hvp(v)
        out[f"hessop {label} block/8"] = lambda H=H: H.hvp_block(V)
    peers, peer_notes = _peer_cases(model, batch, loss_fn, params, v)
    out.update(peers)
    notes.update(peer_notes)
    return out, notes


def _vectors(case: str) -> int:
    """How many vectors one call of ``case`` multiplies (its figures are given per vector)."""
    return 8 if case.endswith("block/8") else 1


def _row(case: str) -> str:
    return case + (" (per vector)" if _vectors(case) > 1 else "")


def time_products(name: str, model, batch, repeats: int) -> tuple[dict, dict, dict]:
    """Print the table of one model; return the medians and the FLOPs relative to the gradient's, and the cases
    (for the memory pass)."""
    loss_fn = nn.CrossEntropyLoss()
    fns, notes = cases(model, batch, loss_fn)
    times = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(measure(f))
    med = {k: statistics.median(t) / _vectors(k) for k, t in times.items()}
    work = {k: flops(f) / _vectors(k) for k, f in fns.items()}
    g, gf = med["gradient"], work["gradient"]
    print("| case | median ms | / gradient | FLOPs / gradient's |\n|---|---:|---:|---:|")
    for k in fns:
        print(f"| {_row(k)} | {1e3 * med[k]:.2f} | {med[k] / g:.2f} | {work[k] / gf:.2f} |")
    print(f"- the gradient: {gf / 1e9:.3f} GFLOP in {1e3 * g:.2f} ms ({gf / g / 1e9:.1f} GFLOP/s)")
    for k, val in notes.items():
        print(f"- {k}: {val}")
    return {k: t / g for k, t in med.items()}, {k: w / gf for k, w in work.items()}, fns


def flops(fn) -> float:
    """Floating-point operations of one call: ``torch.utils.flop_counter.FlopCounterMode`` counts every matrix
    product, convolution and attention of the forward and backward passes (2 per multiply-add) and nothing
    elementwise.  The same count for every case, so the ratios say how much arithmetic each product needs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def memory_pass(all_cases: dict) -> None:
    """Peak memory of one call of every case, after all timing (see :func:`return_freed_memory_to_the_os`).  A
    block of 8 is the whole block, not per vector; memory a kept graph holds between calls is not in it (it is
    printed with the timings)."""
    if not return_freed_memory_to_the_os():
        print("\n- peak memory: not measured (needs glibc's mallopt and /proc/self/clear_refs)")
        return
    print("\nPeak resident memory of one call above the memory before it (MB; VmHWM reset before the call, freed "
          "blocks returned to the OS):\n")
    names = list(all_cases)
    rows = dict.fromkeys(k for fns in all_cases.values() for k in fns)
    print("| case | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    peaks = {m: {k: peak_mb(f) for k, f in fns.items()} for m, fns in all_cases.items()}
    for k in rows:
        print(f"| {k} | " + " | ".join(f"{peaks[m][k]:.1f}" if k in peaks[m] else "-" for m in names) + " |")


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def top5(name: str, model, batch) -> dict:
    loss_fn = nn.CrossEntropyLoss()
    rows = []
    for label, kw in [("hessop lanczos, defaults", {}),
                      ("hessop lanczos, double backward, nothing kept", {"hvp_method": "double_backward",
                                                                         "cache_memory": 0})]:
        s, r = _timed(lambda kw=kw: hessop.lanczos(HessianOperator.from_torch(model, loss_fn, [batch], **kw), 5,
                                                   tol=1e-6))
        rows.append((label, s, r.n_hvp, r.eigenvalues))
    if isinstance(PEERS["pyhessian"], str):
        print(f"- top-5 on {name}: pyhessian {PEERS['pyhessian']}")
        return {}
    torch.manual_seed(0)
    s, (vals, _) = _timed(lambda: PEERS["pyhessian"].hessian(copy.deepcopy(model), loss_fn, data=batch, cuda=False)
                          .eigenvalues(top_n=5, tol=1e-6))
    rows.append(("pyhessian eigenvalues(top_n=5, tol=1e-6)", s, None, np.sort(vals)[::-1]))
    ref = rows[-1][1]
    print(f"\nTop-5 eigenvalues to relative residual 1e-6, {name}:\n\n| solver | seconds | / PyHessian | HVPs | "
          "eigenvalues |\n|---|---:|---:|---:|---|")
    for label, s, nh, ev in rows:
        print(f"| {label} | {s:.2f} | {s / ref:.2f} | {nh if nh else '(not counted)'} | "
              f"{' '.join(f'{x:.5g}' for x in np.asarray(ev))} |")
    return {"ratio": rows[0][1] / ref}


def slq90(name: str, model, batch) -> dict:
    loss_fn = nn.CrossEntropyLoss()
    if isinstance(PEERS["pyhessian"], str):
        print(f"- SLQ on {name}: pyhessian {PEERS['pyhessian']}")
        return {}
    th, sd = _timed(lambda: hessop.slq(HessianOperator.from_torch(model, loss_fn, [batch]), n_iter=90,
                                       max_hvp=90))
    print(f"\nSLQ, 90 steps x 1 draw, {name}: hessop.slq (defaults) {th:.2f} s ({sd.n_hvp} HVPs, blocks {sd.blocks}, "
          f"memory {sd.memory} n-vectors)")
    def density():
        torch.manual_seed(0)
        return PEERS["pyhessian"].hessian(copy.deepcopy(model), loss_fn, data=batch, cuda=False).density(iter=90,
                                                                                                         n_v=1)

    try:
        tp, _ = _timed(density)
        how = ""
    except Exception as e:  # noqa: BLE001 - reported
        print(f"- PyHessian density(iter=90, n_v=1) failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}")
        if "torch.eig" not in str(e) and "torch.linalg.eig" not in str(e):
            return {}
        # PyHessian diagonalises its symmetric tridiagonal matrix with torch.eig (removed in torch 2.0, where the
        # name remains and raises); eigh gives the same eigenpairs in torch.eig's format, as a user would patch it
        original, torch.eig = torch.eig, _eig_by_eigh
        try:
            tp, _ = _timed(density)
        finally:
            torch.eig = original
        how = " (torch.eig supplied by torch.linalg.eigh)"
    print(f"- PyHessian density(iter=90, n_v=1){how} {tp:.2f} s; ratio {th / tp:.2f}")
    return {"ratio": th / tp}


def _eig_by_eigh(T: torch.Tensor, eigenvectors: bool = False) -> tuple:
    """The removed ``torch.eig`` for a symmetric matrix: eigenvalues as an (n, 2) [real, imaginary] tensor and the
    eigenvectors as columns."""
    w, Q = torch.linalg.eigh(T)
    return torch.stack([w, torch.zeros_like(w)], dim=1), (Q if eigenvectors else T.new_empty(0))


def compiled_products(name: str, model, batch, repeats: int) -> None:
    """What compiling would buy: ``torch.compile`` (inductor) of the forward-over-reverse product ``jvp(grad(loss))``
    and of its ``vmap`` over 8 vectors, written here with ``torch.func`` on the parameter dict (not a hessop
    method), timed against the eager gradient (the unit of every ratio above) and against the compiled gradient.
    The compile time is the first call's, from an empty inductor cache (a fresh ``TORCHINDUCTOR_CACHE_DIR``)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="hessop-bench-inductor-")
    torch._dynamo.reset()  # the same code objects as for the previous model: compile afresh, static shapes
    loss_fn = nn.CrossEntropyLoss()
    ps = {k: p.detach() for k, p in model.named_parameters()}

    def loss(q):
        return loss_fn(functional_call(model, q, (batch[0],)), batch[1])

    def hvp(q, v):
        return jvp(grad(loss), (q,), (v,))[1]

    v = {k: torch.randn_like(p) for k, p in ps.items()}
    V = {k: torch.randn(8, *p.shape, dtype=p.dtype) for k, p in ps.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    fns = {"eager gradient": lambda: torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), params),
           **{k: torch.no_grad()(torch.compile(f, dynamic=False)) for k, f in [  # torch.func needs no autograd graph
               ("compiled gradient", grad(loss)), ("compiled product", hvp),
               ("compiled block/8", vmap(hvp, in_dims=(None, 0)))]}}
    args = {"eager gradient": (), "compiled gradient": (ps,), "compiled product": (ps, v), "compiled block/8": (ps, V)}
    build = {k: measure(lambda k=k: fns[k](*args[k])) for k in fns}
    H = HessianOperator.from_torch(model, loss_fn, [batch], check_deterministic=False)
    flat = torch.cat([v[k].reshape(-1) for k in ps])
    ref = H.hvp(flat)
    err = float(torch.linalg.vector_norm(torch.cat([h.reshape(-1) for h in fns["compiled product"](ps, v).values()])
                                         - ref) / torch.linalg.vector_norm(ref))
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(measure(lambda f=f, k=k: f(*args[k])))
    med = {k: statistics.median(t) / _vectors(k) for k, t in times.items()}
    print(f"\ntorch.compile (inductor) of forward-over-reverse, {name} (not a hessop method; relative difference from "
          f"H.hvp {err:.1e}):\n\n| case | first call s | median ms | / eager gradient | / compiled gradient |\n"
          "|---|---:|---:|---:|---:|")
    for k in fns:
        print(f"| {_row(k)} | {build[k]:.1f} | {1e3 * med[k]:.2f} | "
              f"{med[k] / med['eager gradient']:.2f} | {med[k] / med['compiled gradient']:.2f} |")


def targets(rel: dict, work: dict, eig: dict, slq: dict) -> None:
    """The targets of issue 9, from this run."""
    print("\nTargets of issue 9 in this run:")

    def line(text: str, value: float | None, ok: bool | None) -> None:
        state = "not measured" if value is None else ("met" if ok else "NOT met")
        print(f"- {text}: {'-' if value is None else f'{value:.2f}'} -> {state}")

    for m in ("cnn", "resnet20"):
        x = rel.get(m, {}).get("hessop auto")
        line(f"H.hvp <= 1.5 gradients, {m} float32", x, x is not None and x <= 1.5)
        least = min((v for k, v in work.get(m, {}).items() if k != "gradient"), default=None)
        if least is not None:
            print(f"  (the least arithmetic of any exact product in this run, hessop's or a peer's: {least:.2f} "
                  "gradients of FLOPs)")
    for m, r in rel.items():
        peers = [r[k] for k in r if k.split()[0] in PEERS]
        x = r.get("hessop auto")
        if x is not None and peers:
            line(f"H.hvp / fastest peer's product <= 1, {m}", x / min(peers), x <= min(peers))
    x = rel.get("cnn", {}).get("hessop auto block/8")
    line("hvp_block of 8 <= 1.0 gradient per vector, cnn", x, x is not None and x <= 1.0)
    if "hessop auto block/8" in work.get("cnn", {}):
        print(f"  (FLOPs per vector of a block of 8: {work['cnn']['hessop auto block/8']:.2f} gradients)")
    for m in ("cnn", "resnet20"):
        x = eig.get(m, {}).get("ratio")
        line(f"top-5 to 1e-6 <= 0.2x PyHessian's time, {m}", x, x is not None and x <= 0.2)
    x = slq.get("cnn", {}).get("ratio")
    line("SLQ 90 x 1 <= 0.5x PyHessian's density, cnn", x, x is not None and x <= 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="cnn,cnn64,mlp,resnet20,transformer")
    ap.add_argument("--resnet-samples", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="3 repeats, 16 ResNet samples, no float64 CNN")
    ap.add_argument("--compiled", default="cnn", help="models whose product is also torch.compile'd (comma-separated; "
                    "'' for none; about 50 s of compilation on the CNN, 3 min on the ResNet-20-sized model, 2 cores)")
    args = ap.parse_args()
    names = args.models.split(",")
    if args.quick:
        args.repeats, args.resnet_samples, args.compiled = 3, 16, ""
        names = [m for m in names if m != "cnn64"]
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}, repeats {args.repeats}")
    for peer, mod in PEERS.items():
        print(f"- peer {peer}: {mod if isinstance(mod, str) else getattr(mod, '__version__', 'imported')}")
    probs = problems(names, args.resnet_samples)
    rel, work, eig, slq, all_cases = {}, {}, {}, {}, {}
    for name in names:
        model, batch = probs[name]
        n = sum(p.numel() for p in model.parameters())
        print(f"\n{name}: {n:,} parameters, {len(batch[1])} samples, {next(model.parameters()).dtype}\n")
        rel[name], work[name], all_cases[name] = time_products(name, model, batch, args.repeats)
    for name in ("cnn", "resnet20"):
        if name in probs:
            eig[name] = top5(name, *probs[name])
    if "cnn" in probs:
        slq["cnn"] = slq90("cnn", *probs["cnn"])
    for name in args.compiled.split(",") if args.compiled else ():
        if name in probs:
            compiled_products(name, *probs[name], args.repeats)
    targets(rel, work, eig, slq)
    memory_pass(all_cases)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}; {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
