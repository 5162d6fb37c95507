"""Hessian statistics along training: ``Tracker`` records top / bottom eigenvalues, the trace and the density every
few steps of the user's own training loop, warm-starting each Lanczos run from the previous one.

Maths
-----
Between two checkpoints the parameters move a little, so the Hessian does too and its top eigenvectors stay close
to the previous ones.  Lanczos's error after ``j`` steps falls like ``tan(angle(v0, u)) * (Chebyshev factor)^j``
(Kaniel-Paige-Saad bound; Saad, *Numerical Methods for Large Eigenvalue Problems*, 2011, sec. 6.6), so a start
vector close to the wanted eigenvectors saves the steps a random start spends on finding them.  The tracker starts
each run from ``v0 = sum_i y_i + r / ||r||``: the previous run's Ritz vectors ``y_i`` (all of them, so every wanted
direction has a large component) plus one random unit vector ``r`` (so that a direction that rises into the wanted
set from the bulk, absent from the ``y_i``, is still found; it has the component of a random start).  The answers
carry the same residual guarantee as an independent run; only the number of products changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hessop._array import make_rng
from hessop._checkpoint import Checkpoint
from hessop._default_trace import default_trace
from hessop._progress import Progress
from hessop._validate import check_int, check_tol
from hessop.estimators import SpectralDensity, slq
from hessop.lanczos import lanczos
from hessop.operator import HessianOperator

__all__ = ["TrackRecord", "Tracker"]

MULTIPLICITY_GAP = 1e-3
"""Relative gap below which two wanted eigenvalues of a record count as copies: the next warm run then keeps
Lanczos' multiplicity check."""


@dataclass(frozen=True)
class TrackRecord:
    """The statistics recorded at one step.

    Attributes
    ----------
    step : int
    top, top_residuals : numpy.ndarray
        Top eigenvalues (descending) and Ritz residuals (empty when not tracked).
    bottom, bottom_residuals : numpy.ndarray
        Bottom eigenvalues (ascending) and residuals (empty when not tracked).
    converged : bool
        Whether every tracked eigenpair met the tolerance.
    trace, trace_std_error : float or None
    density : SpectralDensity or None
    n_hvp : int
        Products used at this step (all statistics).
    lanczos_hvp : int
        Of which Lanczos (top and bottom): the part warm starts save.
    seconds : float
        Wall time of this step's analysis.
    warm : bool
        Whether the Lanczos runs were warm-started.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator, Tracker, TrackRecord
    >>> record = Tracker(HessianOperator.from_matrix(np.diag([3.0, 2.0, 1.0])), bottom_k=1).record(step=7)
    >>> record.step, np.round(record.top, 6), np.round(record.bottom, 6), record.converged
    (7, array([3.]), array([1.]), True)
    >>> np.round(TrackRecord.from_dict(record.as_dict()).bottom, 6)  # the JSON line of a record, read back
    array([1.])
    """

    step: int
    top: np.ndarray
    top_residuals: np.ndarray
    bottom: np.ndarray
    bottom_residuals: np.ndarray
    converged: bool
    trace: float | None
    trace_std_error: float | None
    density: SpectralDensity | None = field(repr=False)
    n_hvp: int
    lanczos_hvp: int
    seconds: float
    warm: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values (the density as its nodes and weights per draw).

        Examples
        --------
        >>> d = Tracker(HessianOperator.from_matrix(np.diag([3.0, 2.0, 1.0]))).record(step=3).as_dict()
        >>> d["step"], d["top"], d["trace"], d["density"]
        (3, [3.0], None, None)
        >>> json.loads(json.dumps(d)) == d  # one line of the tracker's JSON-lines file
        True
        """
        d = {"step": self.step, "top": self.top.tolist(), "top_residuals": self.top_residuals.tolist(),
             "bottom": self.bottom.tolist(), "bottom_residuals": self.bottom_residuals.tolist(),
             "converged": self.converged, "trace": self.trace, "trace_std_error": self.trace_std_error,
             "n_hvp": self.n_hvp, "lanczos_hvp": self.lanczos_hvp, "seconds": self.seconds, "warm": self.warm,
             "density": None}
        if self.density is not None:
            s = self.density
            d["density"] = {"nodes": [x.tolist() for x in s.nodes], "weights": [w.tolist() for w in s.weights],
                            "n": s.n, "n_hvp": s.n_hvp, "n_iter": s.n_iter, "blocks": list(s.blocks),
                            "memory": s.memory}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrackRecord:
        """The inverse of :meth:`as_dict` (a line of the tracker's JSON-lines file).

        Examples
        --------
        >>> record = Tracker(HessianOperator.from_matrix(np.diag([3.0, 2.0, 1.0])), density=True,
        ...                  density_options={"n_iter": 3, "max_hvp": 6}).record(step=3)
        >>> back = TrackRecord.from_dict(record.as_dict())
        >>> back.step, back.top, bool(np.array_equal(back.density.weights[0], record.density.weights[0]))
        (3, array([3.]), True)
        """
        dens = d.get("density")
        if dens is not None:
            dens = SpectralDensity(nodes=[np.asarray(x) for x in dens["nodes"]],
                                   weights=[np.asarray(w) for w in dens["weights"]], n=dens["n"],
                                   n_hvp=dens["n_hvp"], n_iter=dens["n_iter"],
                                   blocks=tuple(dens.get("blocks", ())), memory=dens.get("memory", 0))
        arrays = {key: np.asarray(d[key], dtype=np.float64) for key in
                  ("top", "top_residuals", "bottom", "bottom_residuals")}
        return cls(step=d["step"], **arrays, converged=d["converged"], trace=d["trace"],
                   trace_std_error=d["trace_std_error"], density=dens, n_hvp=d["n_hvp"],
                   lanczos_hvp=d["lanczos_hvp"], seconds=d["seconds"], warm=d["warm"])


class Tracker:
    """Record Hessian statistics every ``every`` steps of a training loop.

    Parameters
    ----------
    operator : HessianOperator or callable
        A PyTorch operator (its products always use the model's current parameters, so one operator serves the
        whole training), or a callable ``operator() -> HessianOperator`` at the current parameters (required for
        JAX, whose operators hold a fixed ``theta``: ``lambda: HessianOperator.from_jax(loss, params, data)``).
    every : int
        :meth:`update` records when ``step % every == 0``; default 1.
    top_k, bottom_k : int
        Top (``which="LA"``) and bottom (``"SA"``) eigenvalues tracked by Lanczos; defaults 1 and 0.
    trace : bool
        Track the trace with its standard error by :func:`hessop.trace` with ``method="auto"`` (Hutchinson or
        adaptive Hutch++, chosen from the first products; the exact trace when the budget reaches n), within 64
        products unless ``trace_options`` sets ``max_hvp``, ``rtol`` or ``atol``; default False.
    density : bool
        Track the spectral density (:func:`hessop.slq` with ``density_options``); default False.
    tol : float
        Lanczos tolerance (relative residual); default 1e-6.
    warm_start : bool
        Start each Lanczos run from the previous run's Ritz vectors (see the module notes); default True.  A cold
        run (the first record, or ``warm_start=False``) runs :func:`hessop.lanczos`' multiplicity check (a fresh
        random start after convergence, to find copies of a wanted eigenvalue that one start vector cannot see).
        A warm run skips it when the previous record's wanted eigenvalues were distinct (no two within a relative
        gap of ``MULTIPLICITY_GAP = 1e-3``), and keeps it otherwise.  Why: the check costs about 20 products a run
        (on the 66-parameter test network, warm runs took 74-79 products with it, 55-57 without; cold runs 68-82),
        nearly all that the warm start saves.  What is given up: a copy of a wanted eigenvalue that appears
        between two records, after a record with distinct eigenvalues, is not found (the warm start is one
        vector, so its Krylov space holds one copy of each eigenvalue); such multiplicity usually comes from a
        symmetry of the model, which the first (checked) record already shows.  ``warm_start=False`` checks every run.
    path : str or Path, optional
        Append every record as one JSON line to this file.
    trace_options, density_options : dict, optional
        Keyword arguments of :func:`hessop.trace` (e.g. ``{"max_hvp": 200}``, ``{"rtol": 0.01}``) and
        :func:`hessop.slq` (e.g. ``{"n_iter": 80, "max_hvp": 400}``: 5 draws of 80 steps).
    seed : int
        Seed of every random draw (the same at every step: the statistics then change only with the Hessian).
    progress : bool, optional
        Show a tqdm bar counting the records (with the step, top eigenvalue and trace); default None: only when
        stderr is a terminal.
    checkpoint : str or Path, optional
        Resumable tracking: after every record the records so far and the warm-start vectors are saved to this
        file (atomically).  A tracker built again with the same settings, seed and path (after the process was
        killed) holds the saved records; :meth:`record` of a step already recorded returns the saved record
        without a product, and the next new step warm-starts exactly as the uninterrupted run did, so the records
        equal an uninterrupted run's (all but ``seconds``).  Another call's file raises ``ValueError`` naming the
        field that differs.  Default None.  Restart your training from its own checkpoint as usual.

    After training, ``tracker.records`` holds one :class:`TrackRecord` per recorded step, ``tracker.n_hvp`` the
    products in all, and ``tracker.plot(path)`` draws the time series.

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator, Tracker
    >>> H = HessianOperator.from_matrix(np.diag([5.0, 4.0, 3.0, 2.0, 1.0]))
    >>> tracker = Tracker(H, every=10, top_k=2, trace=True)
    >>> for step in range(25):  # the training loop: optimizer.step(), then
    ...     record = tracker.update(step)
    >>> [r.step for r in tracker.records]
    [0, 10, 20]
    >>> np.round(tracker.records[-1].top, 6), tracker.records[-1].trace  # exact trace: n = 5 <= 64 products
    (array([5., 4.]), 15.0)
    >>> [r.warm for r in tracker.records]
    [False, True, True]
    """

    def __init__(
        self,
        operator: HessianOperator | Callable[[], HessianOperator],
        *,
        every: int = 1,
        top_k: int = 1,
        bottom_k: int = 0,
        trace: bool = False,
        density: bool = False,
        tol: float = 1e-6,
        warm_start: bool = True,
        path: Any = None,
        trace_options: dict[str, Any] | None = None,
        density_options: dict[str, Any] | None = None,
        seed: int = 0,
        progress: bool | None = None,
        checkpoint: Any = None,
    ) -> None:
        if isinstance(operator, HessianOperator):
            if operator.backend.name == "jax":
                raise ValueError("a JAX operator holds a fixed theta and would not follow training: pass a callable "
                                 "that builds the operator at the current parameters, e.g. "
                                 "Tracker(lambda: HessianOperator.from_jax(loss_fn, params, data)).")
        elif not callable(operator):
            raise TypeError(f"operator must be a HessianOperator or a callable returning one, got "
                            f"{type(operator).__name__}")
        self.operator = operator
        self.every = check_int(every, "every", 1)
        self.top_k = check_int(top_k, "top_k", 0)
        self.bottom_k = check_int(bottom_k, "bottom_k", 0)
        if not (self.top_k or self.bottom_k or trace or density):
            raise ValueError("nothing to track: set top_k, bottom_k, trace=True or density=True.")
        self.trace, self.density = bool(trace), bool(density)
        self.tol = check_tol(tol)
        self.warm_start = bool(warm_start)
        self.path = path
        self.trace_options = dict(trace_options or {})
        self.density_options = dict(density_options or {})
        self.seed = seed
        self.records: list[TrackRecord] = []
        self._previous: dict[str, Any] = {}
        self._progress, self._bar = progress, None
        self.checkpoint, self._ck = checkpoint, None
        if checkpoint is not None and isinstance(operator, HessianOperator):
            self._resume(operator)

    def _resume(self, op: HessianOperator) -> None:
        """Open the checkpoint (once) and take over its records and warm-start vectors."""
        if self._ck is not None or self.checkpoint is None:
            return
        self._ck = Checkpoint(self.checkpoint, "Tracker", op, self.seed, {
            "every": self.every, "top_k": self.top_k, "bottom_k": self.bottom_k, "trace": self.trace,
            "density": self.density, "tol": self.tol, "warm_start": self.warm_start,
            "trace_options": self.trace_options, "density_options": self.density_options}, parameters=False)
        state = self._ck.load()
        if state is not None:
            self.records = [TrackRecord.from_dict(d) for d in state["records"]]
            self._previous = {key: op.cast(state[f"previous_{key}"]) for key in ("LA", "SA")
                              if f"previous_{key}" in state}

    @property
    def n_hvp(self) -> int:
        """Products used by every record so far.

        Examples
        --------
        >>> H = HessianOperator.from_matrix(np.diag([3.0, 2.0, 1.0]))
        >>> tracker = Tracker(H)
        >>> _ = tracker.record(step=0), tracker.record(step=1)
        >>> tracker.n_hvp == sum(r.n_hvp for r in tracker.records) == H.n_hvp
        True
        """
        return sum(r.n_hvp for r in self.records)

    def update(self, step: int) -> TrackRecord | None:
        """Record the statistics if ``step`` is a multiple of ``every``; returns the record or None.

        Examples
        --------
        >>> tracker = Tracker(HessianOperator.from_matrix(np.diag([3.0, 2.0, 1.0])), every=5)
        >>> [tracker.update(step) is not None for step in range(7)]
        [True, False, False, False, False, True, False]
        >>> [r.step for r in tracker.records]
        [0, 5]
        """
        if step % self.every:
            return None
        return self.record(step)

    def attach(self, optimizer: Any) -> Any:
        """Call :meth:`update` after every ``optimizer.step()`` of a plain PyTorch loop (steps count from 1).
        Returns the hook handle (``handle.remove()`` detaches).

        Examples
        --------
        >>> torch = __import__("pytest").importorskip("torch")  # a callable builds the operator at each step
        >>> model, loss = torch.nn.Linear(2, 1).double(), torch.nn.MSELoss()
        >>> x, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> tracker = Tracker(lambda: HessianOperator.from_torch(model, loss, (x, y)), every=2)
        >>> handle = tracker.attach(optimizer)
        >>> for _ in range(4):
        ...     optimizer.zero_grad()
        ...     loss(model(x), y).backward()
        ...     optimizer.step()
        >>> [r.step for r in tracker.records]
        [2, 4]
        >>> handle.remove()
        """
        from hessop.backends.torch import register_step_hook

        return register_step_hook(optimizer, self.update)

    def _start(self, key: str, op: HessianOperator) -> Any:
        prev = self._previous.get(key) if self.warm_start else None
        if prev is None or tuple(prev.shape)[0] != op.n:
            return None
        xp = op.xp
        r = op.cast(make_rng(self.seed).standard_normal(op.n))
        return xp.sum(prev, axis=1) + r / xp.linalg.vector_norm(r)

    def _check_copies(self, which: str) -> bool:
        """Whether this warm run needs Lanczos' multiplicity check: unless the previous record's wanted
        eigenvalues were all distinct (no two within ``MULTIPLICITY_GAP`` of the largest in modulus)."""
        if not self.records:
            return True
        prev = np.asarray(self.records[-1].top if which == "LA" else self.records[-1].bottom, dtype=float)
        if prev.size < 2:
            return False
        gaps = np.abs(np.diff(np.sort(prev)))
        return bool(np.any(gaps <= MULTIPLICITY_GAP * np.max(np.abs(prev))))

    def _eig(self, op: HessianOperator, k: int, which: str) -> tuple[Any, bool]:
        key = which
        v0 = self._start(key, op)
        check = v0 is None or self._check_copies(which)
        res = lanczos(op, k=k, which=which, tol=self.tol, seed=self.seed, v0=v0, check_multiplicity=check)
        self._previous[key] = res.eigenvectors
        return res, v0 is not None

    def record(self, step: int) -> TrackRecord:
        """Compute and store the statistics now (whatever the step).

        Examples
        --------
        >>> tracker = Tracker(HessianOperator.from_matrix(np.diag([3.0, 2.0, 1.0])), every=10, trace=True)
        >>> record = tracker.record(step=3)  # not a multiple of every: recorded all the same
        >>> record.step, np.round(record.top, 6), record.trace, tracker.records == [record]
        (3, array([3.]), 6.0, True)
        """
        t0 = time.perf_counter()
        op = self.operator if isinstance(self.operator, HessianOperator) else self.operator()
        if not isinstance(op, HessianOperator):
            raise TypeError(f"the operator callable returned {type(op).__name__}, not a HessianOperator")
        self._resume(op)
        for saved in self.records if self._ck is not None else ():
            if saved.step == int(step):  # recorded before the interruption
                return saved
        if self._bar is None:
            self._bar = Progress(self._progress, op, "Tracker", None, "record")
        hvp0 = op.n_hvp
        empty = np.zeros(0)
        top = bottom = None
        warm = False
        if self.top_k:
            top, warm = self._eig(op, self.top_k, "LA")
        if self.bottom_k:
            bottom, w = self._eig(op, self.bottom_k, "SA")
            warm = warm or w
        lanczos_hvp = op.n_hvp - hvp0
        tr = default_trace(op, **{"seed": self.seed, **self.trace_options}) if self.trace else None
        dens = slq(op, **{"seed": self.seed, **self.density_options}) if self.density else None
        rec = TrackRecord(
            step=int(step),
            top=top.eigenvalues if top is not None else empty,
            top_residuals=top.residuals if top is not None else empty,
            bottom=bottom.eigenvalues if bottom is not None else empty,
            bottom_residuals=bottom.residuals if bottom is not None else empty,
            converged=all(r.all_converged for r in (top, bottom) if r is not None),
            trace=None if tr is None else tr.estimate,
            trace_std_error=None if tr is None else tr.std_error,
            density=dens, n_hvp=op.n_hvp - hvp0, lanczos_hvp=lanczos_hvp,
            seconds=time.perf_counter() - t0, warm=warm,
        )
        self.records.append(rec)
        if self._ck is not None:
            self._ck.save(records=[r.as_dict() for r in self.records],
                          **{f"previous_{key}": op.to_numpy(v) for key, v in self._previous.items()})
        self._bar.update(1, {"step": rec.step, **({"lambda_max": float(rec.top[0])} if rec.top.size else {}),
                             **({"trace": rec.trace} if rec.trace is not None else {})})
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec.as_dict()) + "\n")
        return rec

    @staticmethod
    def load(path: Any) -> list[TrackRecord]:
        """The records of a JSON-lines file written by a tracker.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> H = HessianOperator.from_matrix(np.diag([3.0, 2.0, 1.0]))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "track.jsonl"
        ...     tracker = Tracker(H, path=path, trace=True)
        ...     _ = [tracker.update(step) for step in range(3)]
        ...     records = Tracker.load(path)
        >>> [(r.step, r.trace) for r in records]
        [(0, 6.0), (1, 6.0), (2, 6.0)]
        """
        with open(path) as f:
            return [TrackRecord.from_dict(json.loads(line)) for line in f if line.strip()]

    def plot(self, path: Any = None, records: list[TrackRecord] | None = None) -> Any:
        """Time series against step: top (and bottom) eigenvalues, the trace with a 2-standard-error band, and the
        densities as a heat map over steps (log10 of the smoothed density on one common grid).  Returns the
        matplotlib Figure; saved to ``path`` if given.

        Examples
        --------
        >>> import pathlib, pytest, tempfile
        >>> _ = pytest.importorskip("matplotlib")
        >>> tracker = Tracker(HessianOperator.from_matrix(np.diag([3.0, 2.0, 1.0])), top_k=2, trace=True)
        >>> _ = [tracker.update(step) for step in range(3)]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     fig = tracker.plot(pathlib.Path(tmp) / "track.png")
        ...     saved = (pathlib.Path(tmp) / "track.png").exists()
        >>> saved, [ax.get_title() for ax in fig.axes]
        (True, ['eigenvalues', 'trace (+-2 s.e.)'])
        """
        from matplotlib.figure import Figure

        recs = self.records if records is None else records
        if not recs:
            raise ValueError("no records to plot yet: call update(step) during training first.")
        steps = np.array([r.step for r in recs])
        panels = [p for p, on in (("eig", recs[0].top.size or recs[0].bottom.size),
                                  ("trace", recs[0].trace is not None),
                                  ("density", recs[0].density is not None)) if on]
        fig = Figure(figsize=(4.2 * len(panels), 3.4))
        for i, panel in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            if panel == "eig":
                for j in range(recs[0].top.size):
                    ax.plot(steps, [r.top[j] for r in recs], "o-", ms=3, label=f"top {j + 1}")
                for j in range(recs[0].bottom.size):
                    ax.plot(steps, [r.bottom[j] for r in recs], "s--", ms=3, label=f"bottom {j + 1}")
                ax.set_ylabel("eigenvalue")
                ax.legend(fontsize=7)
            elif panel == "trace":
                tr = np.array([r.trace for r in recs])
                se = np.array([r.trace_std_error for r in recs])
                ax.plot(steps, tr, "o-", ms=3)
                ax.fill_between(steps, tr - 2 * se, tr + 2 * se, alpha=0.3)
                ax.set_ylabel("trace")
            else:
                lo = min(float(np.min(x)) for r in recs for x in r.density.nodes)
                hi = max(float(np.max(x)) for r in recs for x in r.density.nodes)
                grid = np.linspace(lo - 0.01, hi + 0.01, 400)
                # kernel two grid spacings wide, so that no node falls between grid points
                dens = np.array([r.density.density(grid, variance=(2 * (grid[1] - grid[0])) ** 2)[1] for r in recs])
                im = ax.pcolormesh(grid, np.arange(len(recs)), np.log10(np.maximum(dens, 1e-10)), shading="nearest",
                                   cmap="magma")
                ax.set_yticks(np.arange(len(recs)), [str(s) for s in steps], fontsize=7)
                ax.set_xlabel("eigenvalue")
                fig.colorbar(im, ax=ax, label="log10 density")
            ax.set_title({"eig": "eigenvalues", "trace": "trace (+-2 s.e.)", "density": "density"}[panel],
                         fontsize=10)
            if panel != "density":
                ax.set_xlabel("step")
            else:
                ax.set_ylabel("step")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=90, bbox_inches="tight")
        return fig
