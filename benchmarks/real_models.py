"""hessop's defaults on real-sized models (issue 21): products, seconds, peak memory and the share of time spent
outside the Hessian-vector products, for top-5 (``lanczos(k=5)``), ``trace(rtol=0.05)``, ``slq()`` and
``by_block()`` with their defaults.

    python3 benchmarks/real_models.py                              # every model, every run (slow on a CPU)
    python3 benchmarks/real_models.py --models resnet18 --runs top5
    python3 benchmarks/real_models.py --tiny                       # a quick check that everything runs
    python3 benchmarks/real_models.py --device cuda --threads 8

Models (random initialisation, float32, written here with ``torch.nn`` only: torchvision's wheel does not import
with the CPU torch used here):

* ``resnet18``: the ResNet-18 of He et al. 2016 (torchvision's layout: 7x7 stem, max-pool, four stages of two
  BasicBlocks, 10 classes: 11,181,642 parameters) on CIFAR-shaped inputs (``--batch`` images 3x32x32, default 32);
* ``gpt2``: a GPT-2-style decoder (pre-norm blocks, causal self-attention, GELU MLP, tied input/output embedding;
  4 layers, width 256, 4 heads, vocabulary 2,048, context 64: 3.7M parameters) on ``--batch`` random sequences;
* ``lstm``: a two-layer LSTM language model with the decoder tied to the embedding and the first LSTM layer frozen
  (``requires_grad=False``: not among the Hessian's parameters) on ``--batch`` random sequences of 35 tokens.

Time outside the products: every ``hvp`` / ``hvp_block`` of the torch backends (block backends of ``by_block``
included) is timed by a wrapper (outermost call only; on a GPU after a synchronisation), and the rest of the
call's wall time (and, less sensitive to a loaded machine, of its CPU time: ``time.process_time``) is the
solver's own work (Gram-Schmidt, restarts, host transfers, small eigenproblems).  The
operator's one-off measurement of its products' rounding error (:mod:`hessop._product_error`: float64 reference
products) is taken before the runs and printed apart.  Peak
memory: the call's high-water mark above the memory before it (``torch.cuda.max_memory_allocated`` on a GPU,
VmHWM of /proc/self/status after resetting it on a Linux CPU).

Timings are only meaningful on a quiet machine; the script prints the load average first.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import hessop

RUNS = ("top5", "trace", "slq", "by_block")
MODELS = ("resnet18", "gpt2", "lstm")


# ---------------------------------------------------------------------------------------------------- the models
class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's ``resnet18(num_classes=...)`` layout, without torchvision."""

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [w, 2 * w, 4 * w, 8 * w]
        cin = w
        for i, c in enumerate(chans):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, c, stride), BasicBlock(c, c, 1)))
            cin = c
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Block(nn.Module):
    """A GPT-2 block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A small GPT-2-style language model: token and position embeddings, pre-norm blocks, tied output layer."""

    def __init__(self, vocab: int = 2048, ctx: int = 64, d: int = 256, layers: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.ln(self.blocks(x)) @ self.tok.weight.T  # tied with the token embedding


class TiedLSTM(nn.Module):
    """Embedding, two LSTM layers (the first frozen), decoder tied to the embedding."""

    def __init__(self, vocab: int = 2000, d: int = 200) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.lstm1, self.lstm2 = nn.LSTM(d, d, batch_first=True), nn.LSTM(d, d, batch_first=True)
        self.dec = nn.Linear(d, vocab)
        self.dec.weight = self.emb.weight  # tied
        self.lstm1.requires_grad_(False)  # frozen

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x, _ = self.lstm1(self.emb(idx))
        x, _ = self.lstm2(x)
        return self.dec(x)


def token_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def build(name: str, batch: int, tiny: bool, device: str) -> tuple[nn.Module, object, tuple]:
    """(model, loss, one batch) of a model, seeded."""
    torch.manual_seed(0)
    if name == "resnet18":
        model = ResNet18(width=8 if tiny else 64)
        side = 16 if tiny else 32
        data = (torch.randn(batch, 3, side, side), torch.randint(0, 10, (batch,)))
        loss = nn.CrossEntropyLoss()
    elif name == "gpt2":
        model = GPT(vocab=64, ctx=16, d=32, layers=1, heads=2) if tiny else GPT()
        t, v = (16, 64) if tiny else (64, 2048)
        idx = torch.randint(0, v, (batch, t + 1))
        data, loss = (idx[:, :-1], idx[:, 1:]), token_loss
    elif name == "lstm":
        model = TiedLSTM(vocab=50, d=16) if tiny else TiedLSTM()
        v = 50 if tiny else 2000
        idx = torch.randint(0, v, (batch, 36))
        data, loss = (idx[:, :-1], idx[:, 1:]), token_loss
    else:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    model = model.to(device)
    data = tuple(x.to(device) for x in data)
    return model, loss, data


# ---------------------------------------------------------------------------------------------------- the clocks
class ProductClock:
    """Time spent in the torch backends' ``hvp`` / ``hvp_block`` (outermost calls), installed on the classes so that
    the block backends ``by_block`` makes are timed too."""

    def __init__(self, device: str) -> None:
        from hessop.backends.torch import TorchBackend

        self.cls, self.seconds, self.cpu, self.depth = TorchBackend, 0.0, 0.0, 0
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.saved = {name: getattr(TorchBackend, name) for name in ("hvp", "hvp_block")}

    def __enter__(self) -> ProductClock:
        for name, fn in self.saved.items():
            setattr(self.cls, name, self._timed(fn))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self.saved.items():
            setattr(self.cls, name, fn)

    def _timed(self, fn):  # noqa: ANN001, ANN202
        clock = self

        def timed(backend, v):  # noqa: ANN001, ANN202
            if clock.depth:
                return fn(backend, v)
            clock.sync()
            clock.depth += 1
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                out = fn(backend, v)
                clock.sync()
                return out
            finally:
                clock.seconds += time.perf_counter() - t0
                clock.cpu += time.process_time() - c0
                clock.depth -= 1

        return timed


def _vmhwm() -> int | None:
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    return None


def reset_peak(device: str) -> int | None:
    """Reset the high-water mark; returns the memory in use now (bytes), or None where it cannot be measured."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return None


def peak_since(device: str, base: int | None) -> float:
    """The peak above ``base`` in MiB (NaN where it cannot be measured)."""
    if base is None:
        return math.nan
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _vmhwm()
    return math.nan if peak is None else (peak - base) / 2**20


# ---------------------------------------------------------------------------------------------------- the runs
def run_one(H: hessop.HessianOperator, which: str, tiny: bool) -> tuple[int, str]:
    """Run ``which`` with its defaults; returns (products, a short summary)."""
    if which == "top5":
        r = hessop.lanczos(H, k=5)
        return r.n_hvp, (f"eigenvalues {np.array2string(r.eigenvalues, precision=4)}, converged "
                         f"{int(r.converged.sum())}/5, restarts {r.n_restarts}")
    if which == "trace":
        t = hessop.trace(H, rtol=0.05)
        return t.n_hvp, f"trace {t.estimate:.4g} +- {t.half_width():.2g}, converged {t.converged}"
    if which == "slq":
        d = hessop.slq(H, n_iter=min(90, H.n) if tiny else 90)
        return d.n_hvp, f"{d.n_vectors} draws x {d.n_iter} steps, blocks {d.blocks}, trace {d.trace().estimate:.4g}"
    if which == "by_block":
        table = hessop.by_block(H)
        return sum(row.n_hvp for row in table), f"{len(table)} blocks"
    raise ValueError(f"unknown run {which!r}; choose from {', '.join(RUNS)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {', '.join(RUNS)}")
    ap.add_argument("--skip", default="", help="comma-separated runs to leave out (e.g. slq,by_block: the slow ones)")
    ap.add_argument("--batch", type=int, default=32, help="samples in the (one) batch; default 32")
    ap.add_argument("--tiny", action="store_true", help="small models and batches: checks that everything runs")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    models = [m for m in args.models.split(",") if m]
    skip = {r for r in args.skip.split(",") if r}
    runs = [r for r in args.runs.split(",") if r and r not in skip]
    batch = min(args.batch, 4) if args.tiny else args.batch
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    print(f"hessop {hessop.__file__}; torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| model | parameters | run | products | seconds | in products (s) | outside products | outside (CPU time) "
          "| peak MiB | result |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for name in models:
        model, loss, data = build(name, batch, args.tiny, args.device)
        t0 = time.perf_counter()
        H = hessop.HessianOperator.from_torch(model, loss, data)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        _ = H.product_error  # measured once per operator (float64 reference products): not the solvers' work
        print(f"<!-- {name}: built in {built:.1f} s (determinism check: 2 loss passes, 2 products), product error "
              f"measured in {time.perf_counter() - t0:.1f} s (float64 reference products) before the runs -->",
              flush=True)
        for which in runs:
            base = reset_peak(args.device)
            with ProductClock(args.device) as clock:
                t0, c0 = time.perf_counter(), time.process_time()
                products, summary = run_one(H, which, args.tiny)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            peak = peak_since(args.device, base)
            share = 1 - clock.seconds / wall if wall > 0 else math.nan
            share_cpu = 1 - clock.cpu / cpu if cpu > 0 else math.nan
            print(f"| {name} | {H.n:,} | {which} | {products} | {wall:.2f} | {clock.seconds:.2f} | {share:.1%} | "
                  f"{share_cpu:.1%} | {peak:.0f} | {summary} |", flush=True)
        del H, model, data
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
