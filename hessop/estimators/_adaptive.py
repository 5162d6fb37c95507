"""The adaptive engine of :func:`hessop.trace` and :func:`hessop.diagonal`: plain Hutchinson or deflated Hutchinson
(Hutch++ for the trace, Diag++ for the diagonal), chosen from the first products, grown and stopped to a target.

The engine is written once for both: a *kind* (:class:`TraceKind`, :class:`DiagonalKind`) supplies the samples
(scalars on the host, or n-vectors as running moments on the backend), the products of a block and the result; the
engine makes the choice (:meth:`_Engine.choose`, :meth:`_Engine.judge_trial`), doubles the rank, runs the two-stage
stop and falls back to the exact trace or diagonal.  The docstring of :func:`hessop.trace` gives the maths.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessop._probes import probe_block
from hessop.estimators._deflation import Deflation
from hessop.estimators._estimates import DiagonalEstimate, TraceEstimate
from hessop.estimators._exact import exact_diagonal_estimate, exact_trace
from hessop.estimators._run import Run
from hessop.estimators._stats import (
    MIN_RTOL_SAMPLES,
    Moments,
    Samples,
    batch_size,
    mean_se,
    out_of_reach,
    quadratic_forms,
    samples_needed,
    target_rule,
    warn_not_converged,
)

TRY_DEFLATION_BLOCKS = 8
"""``method="auto"`` tries deflation only when plain Hutchinson is predicted to need at least this many blocks (so
that the one block of products the try costs is at most 1/8 of Hutchinson's)."""

BUDGET_TRY_BLOCKS = 4
"""With a fixed budget and no target, ``trace(method="auto")`` tries deflation when the budget holds at least this
many blocks: on a flat spectrum the try then costs at most a quarter of the samples (standard error up to about
1.15x Hutchinson's at the same budget); on an outlier spectrum it gains orders of magnitude."""

VARIANCE_GAIN = 2.0
"""Deflation (and each doubling of its rank) is kept only if it cuts the per-sample variance at least this much: a
doubling of the rank pays for itself exactly when it halves the variance (see :func:`hessop.trace`)."""

DEFAULT_MAX_RANK = 512
"""Most directions the engine deflates (memory: two n x rank blocks)."""


class TraceKind:
    """``tr(H)``: scalar samples ``v^T H v`` on the host; deflated, Hutch++."""

    name, deflated, variance = "trace", "hutch++", "per-sample variance"
    sketch_share = 3
    half_width = "95% half-width"
    """With ``method`` the deflated one, the first sketch takes at most this share of the budget."""
    result_type, native = TraceEstimate, ()

    def __init__(self, op: Any) -> None:
        self.op = op

    def store(self) -> Samples:
        return Samples()

    def hutchinson_block(self, rng: np.random.Generator, k: int, plain: Samples, *more: Samples) -> Any:
        """``k`` Rademacher probes: their samples (with rounding bounds) added to ``plain`` and ``more``; returns
        their products ``H V``."""
        op = self.op
        V = probe_block(op, rng, k)
        Y = op.hvp_block(V)
        x, bound = quadratic_forms(op, V, Y)
        for i, store in enumerate((plain, *more)):
            store.add(x, None if i else "the quadratic form v^T H v", bound)
        return Y

    def deflated_block(self, defl: Deflation, G: Any, plain: bool) -> tuple[Any, Any]:
        return defl.probe(G, plain)

    def offset(self, defl: Deflation) -> float:
        return defl.exact

    def bar_fields(self, half: float, estimate: float) -> dict[str, float]:
        """The progress bar's view of the interval now."""
        return {"estimate": estimate, "half95": half}

    def exact(self, block_size: int) -> TraceEstimate:
        return exact_trace(self.op, block_size)

    def result(self, samples: Samples, offset: float, **fields: Any) -> TraceEstimate:
        x = samples.values
        mean, se = mean_se(x) if x.size else (float("nan"), float("nan"))
        return TraceEstimate(estimate=offset + mean, std_error=se, samples=x, skewness=samples.skewness(),
                             rounding=samples.rounding(), **fields)


class DiagonalKind(TraceKind):
    """``diag(H)``: n-vector samples ``v * (H v)`` as running moments on the backend; deflated, Diag++."""

    name, deflated, variance = "diagonal", "diag++", "entries' mean variance"
    sketch_share = 1
    half_width = "root-mean-square 95% half-width"
    result_type, native = DiagonalEstimate, ("diagonal", "std_error")

    def store(self) -> Moments:
        return Moments(self.op)

    def hutchinson_block(self, rng: np.random.Generator, k: int, plain: Moments, *more: Moments) -> Any:
        V = probe_block(self.op, rng, k)
        Y = self.op.hvp_block(V)
        for i, store in enumerate((plain, *more)):
            store.add(V * Y, None if i else "the sum of v * (H v)")
        return Y

    def deflated_block(self, defl: Deflation, G: Any, plain: bool) -> tuple[Any, Any]:
        return defl.probe_diagonal(G, plain)

    def offset(self, defl: Deflation) -> Any:
        return defl.exact_diagonal()

    def bar_fields(self, half: float, rms: float) -> dict[str, float]:
        return {"half95 (rms)": half}

    def exact(self, block_size: int) -> DiagonalEstimate:
        return exact_diagonal_estimate(self.op, block_size)

    def result(self, samples: Moments, offset: Any, **fields: Any) -> DiagonalEstimate:
        return DiagonalEstimate(diagonal=offset + samples.mean, std_error=samples.std_error(), per_parameter=None,
                                n_samples=samples.count, **fields)


@dataclass
class _Loop:
    """The engine's decisions so far (saved with every block)."""

    mode: str
    """"hutchinson", the kind's deflated method, or "test" (deflation on trial)."""
    choice: str
    """Why that mode (shown on the result)."""
    last_var: float = math.inf
    """Per-sample variance before the last deflation or doubling (a doubling must cut it ``VARIANCE_GAIN`` times)."""
    plan: int = MIN_RTOL_SAMPLES
    """Size of the current batch of deflated samples: the pilot's, then the planned batch's."""
    planned: bool = False
    """Whether the current batch is the planned one (whose interval may stop the run)."""

    def state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def restore(self, state: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, state[f.name])


class _Engine:
    """One adaptive run: ``kind`` over ``run`` with the probes of ``rng``; see the module docstring."""

    def __init__(self, kind: TraceKind, run: Run, rng: np.random.Generator, method: str, target: Any,
                 budget: int, block_size: int, max_rank: int) -> None:
        self.kind, self.run, self.rng, self.method, self.target = kind, run, rng, method, target
        self.budget, self.b, self.max_rank = budget, block_size, max_rank
        self.defl = Deflation(run.op)
        self.plain, self.since, self.batch = kind.store(), kind.store(), kind.store()  # plain; residual since Q; batch
        self.loop = _Loop(method, f"method={method!r} asked for")
        self.offset: Any = 0.0
        self.reach = ""

    # ------------------------------------------------------------------------------------------------ the choice
    def choose(self) -> None:
        """The first block of Rademacher probes: plain samples and a sketch; with ``method="auto"``, whether to try
        deflation on them."""
        kind, b, budget, loop = self.kind, self.b, self.budget, self.loop
        k = min(b, budget if self.method != kind.deflated else max(budget // kind.sketch_share, 1))
        Y = kind.hutchinson_block(self.rng, k, self.plain)
        if self.method == "auto":
            room = 2 * k <= self.max_rank and self.run.spent + 2 * k < budget
            if self.target is not None:
                _, scale, half_one = self.plain.interval()
                need = k + samples_needed(half_one, self.target(scale), k)
                worth, why = need >= TRY_DEFLATION_BLOCKS * b, (
                    f"the first {k} products predict ~{need:.0f} for plain Hutchinson (< {TRY_DEFLATION_BLOCKS} "
                    "blocks): deflation not tried")
            else:
                worth, why = budget >= BUDGET_TRY_BLOCKS * b, (
                    f"a budget of {budget} products (< {BUDGET_TRY_BLOCKS} blocks): deflation not tried")
            if not room:
                loop.mode, loop.choice = "hutchinson", "no room for a sketch in the budget or size"
            elif not worth:
                loop.mode, loop.choice = "hutchinson", why
            else:
                loop.mode = "test"
        if loop.mode != "hutchinson":
            loop.last_var = self.plain.variance()
            self.deflate(Y)

    def judge_trial(self) -> None:
        """After one block on trial: keep deflation if it cut the per-sample variance ``VARIANCE_GAIN`` times."""
        kind, loop = self.kind, self.loop
        var_r, var_x = self.since.variance(), self.plain.variance()
        gain = var_x / var_r if var_r > 0 else math.inf
        if gain >= VARIANCE_GAIN:
            loop.mode, loop.last_var, self.batch = kind.deflated, var_x, self.since.copy()
            loop.choice = f"deflating {self.defl.rank} directions cut the {kind.variance} {gain:.3g}x"
        else:
            loop.mode = "hutchinson"
            loop.choice = (f"deflating {self.defl.rank} directions cut the {kind.variance} only {gain:.3g}x "
                           f"(< {VARIANCE_GAIN:g}x): plain Hutchinson")
            self.since, self.batch, self.offset = self.kind.store(), self.kind.store(), 0.0
            self.defl.pending = []

    # --------------------------------------------------------------------------------------------------- the run
    def deflate(self, Y: Any = None) -> None:
        """Grow the deflation by the sketch ``Y`` (default the pending products); a fresh pilot batch follows."""
        self.defl.grow(Y)
        self.offset = self.kind.offset(self.defl)
        self.since, self.batch = self.kind.store(), self.kind.store()
        self.loop.plan, self.loop.planned = max(MIN_RTOL_SAMPLES, self.defl.rank), False

    def try_doubling(self, more: float) -> bool:
        """Double the rank if the last growth paid (variance cut ``VARIANCE_GAIN`` times) and the products still
        needed (or left) exceed ``3 * rank``, within ``max_rank`` and the budget."""
        cols, rank = self.since.count, self.defl.rank
        if cols < rank or rank + cols > self.max_rank or self.run.spent + cols + self.b > self.budget:
            return False
        var_r = self.since.variance()
        if var_r * VARIANCE_GAIN > self.loop.last_var or more <= 3 * rank:
            return False
        self.loop.last_var = var_r
        self.deflate()
        self.loop.choice += f"; rank doubled to {self.defl.rank}"
        return True

    def current(self) -> tuple[Any, bool]:
        """The samples an interval is taken on now, and whether there are enough of them."""
        two_stage = self.target is not None and self.loop.mode in (self.kind.deflated, "hutchinson")
        if two_stage and self.loop.mode == "hutchinson" and not self.loop.planned:  # the pilot: every plain sample
            return self.plain, self.plain.count >= MIN_RTOL_SAMPLES
        if two_stage:
            return self.batch, self.batch.count >= self.loop.plan
        samples = self.plain if self.loop.mode == "hutchinson" else self.since
        return samples, samples.count >= MIN_RTOL_SAMPLES and self.loop.mode != "test"

    def step(self) -> str | Any:
        """One decision between blocks: a stop reason, a finished (exact) result, "" to draw a block, or
        "again" to decide anew."""
        loop, run, target = self.loop, self.run, self.target
        if loop.mode == "test" and self.since.count >= min(self.b, self.budget - run.spent + self.since.count):
            self.judge_trial()
            return "again"
        samples, enough = self.current()
        two_stage = target is not None and loop.mode in (self.kind.deflated, "hutchinson")
        half, scale, half_one = samples.interval(self.offset) if enough else (math.nan, math.nan, math.nan)
        run.bar.to(run.spent, {"method": loop.mode, "rank": self.defl.rank,
                               **(self.kind.bar_fields(half, scale) if enough else {})})
        if enough and target is not None and (loop.planned or not two_stage) and half <= target(scale):
            return f"target met: {self.kind.half_width} {half:.3g}"
        left = self.budget - run.spent
        if left <= 0:
            return f"budget of {self.budget} products spent"
        if target is not None and loop.mode == "hutchinson" and not enough:  # a stop that reports no interval as
            self.reach = out_of_reach(self.plain, target, run.spent, self.budget,  # met may look at every sample
                                      have=self.batch.count if loop.planned else 0)
            if self.reach:
                return "target out of reach"
        if not enough or (target is None and loop.mode == "hutchinson"):
            return ""
        more = samples_needed(half_one, target(scale), samples.count) if target is not None else left
        if target is not None and more >= run.op.n and left >= run.op.n:
            return dataclasses.replace(self.kind.exact(self.b), n_hvp=run.spent, choice=(
                f"{loop.mode}: ~{more:.0f} more products predicted, exact costs n = {run.op.n}"))
        if loop.mode == self.kind.deflated and self.try_doubling(more):
            return "again"
        if target is not None and isinstance(samples, Samples):
            self.reach = out_of_reach(samples, target, run.spent, self.budget, self.offset)
            if self.reach:
                return "target out of reach"
        if two_stage:  # a fresh batch, its size fixed now, gives the interval
            loop.plan = batch_size(half_one, target(scale), samples.count, self.budget)
            loop.planned = True
            self.batch = self.kind.store()
        return ""

    def draw(self) -> None:
        """One block of probes: plain samples, or residual (and on trial also plain) samples of the deflation."""
        k = min(self.b, self.budget - self.run.spent)
        if self.loop.mode == "hutchinson":
            planned = self.target is not None and self.loop.planned
            self.kind.hutchinson_block(self.rng, k, self.plain, *((self.batch,) if planned else ()))
            return
        trial = self.loop.mode == "test"
        x, plain = self.kind.deflated_block(self.defl, probe_block(self.run.op, self.rng, k), trial)
        self.since.add(x, "the residual samples")
        if trial:
            self.plain.add(plain)
        else:
            self.batch.add(x)

    def save(self) -> None:
        self.run.save(rng=self.rng, loop=self.loop, plain=self.plain, since=self.since, batch=self.batch,
                      defl=self.defl)

    def resume(self) -> None:
        self.rng = self.run.rng(self.rng)
        self.run.restore(loop=self.loop, plain=self.plain, since=self.since, batch=self.batch, defl=self.defl)
        if self.defl.Q is not None and self.loop.mode != "hutchinson":
            self.offset = self.kind.offset(self.defl)

    def result(self, stop: str, rtol: float | None, atol: float | None) -> Any:
        """The estimate on the samples behind the last interval; a ``RuntimeWarning`` if a target was missed."""
        loop = self.loop
        mode = self.kind.deflated if loop.mode == "test" else loop.mode
        samples = self.plain if mode == "hutchinson" else self.since
        converged = stop.startswith("target met")
        if self.target is not None and loop.planned and self.batch.count >= 2 and converged:
            samples = self.batch
        if self.target is not None and not converged:
            half, scale, _ = samples.interval(self.offset) if samples.count > 1 else (math.inf, math.nan, 0)
            warn_not_converged(self.kind.name, rtol, atol, f"max_hvp={self.budget}", scale, half, stacklevel=5,
                               reach=self.reach)
        return self.kind.result(samples, self.offset, n_hvp=self.run.spent, converged=converged or self.target is None,
                                method=mode, stop_reason=stop, choice=loop.choice,
                                rank=self.defl.rank if mode == self.kind.deflated else 0)


def adaptive(kind: TraceKind, run: Run, rng: np.random.Generator, method: str, rtol: float | None,
             atol: float | None, budget: int, block_size: int, max_rank: int) -> Any:
    """Run the engine (see the module docstring) to the target ``max(rtol * |estimate|, atol)`` (none when both are
    None: the budget is then spent) within ``budget`` products; checkpointed and shown through ``run``."""
    target = target_rule(rtol, atol) if rtol is not None or atol is not None else None
    engine = _Engine(kind, run, rng, method, target, budget, block_size, max_rank)
    done = run.finished(kind.result_type, kind.native)
    if done is not None:  # finished with the exact trace or diagonal
        return done
    if run.saved:
        engine.resume()
    else:
        engine.choose()
        engine.save()
    while True:
        decision = engine.step()
        if decision == "again":
            continue
        if not isinstance(decision, str):
            run.finish(decision)
            return decision
        if decision:
            return engine.result(decision, rtol, atol)
        engine.draw()
        engine.save()
