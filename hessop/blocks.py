"""Per-layer and per-stage Hessian spectra: the diagonal blocks of H, one row per parameter group.

Maths
-----
For a partition (or any selection) of the parameters into groups ``G_1 .. G_m`` the diagonal block
``H_{G G} = d^2 L / d theta_G^2`` is the Hessian of the loss with respect to the group's parameters with all others
held fixed.  Its top eigenvalues (Lanczos, with residuals), its trace (with a standard error) and optionally its
spectral density (SLQ) describe how curved the loss is in that layer or stage: the per-layer analysis of PyHessian
(Yao et al. 2020, sec. 4: the trace and top eigenvalue of each stage of a ResNet with and without BatchNorm).
``tr(H) = sum_G tr(H_{G G})`` for a partition; the top eigenvalues of the blocks bound nothing of the full H in
general (they are interlaced only from below: ``lambda_max(H) >= lambda_max(H_{G G})``).

The blocks are built by the operator's backend (``H.backend.restrict(names)``: same model or loss, data and
reduction, only the group's parameters free), so this module never imports a framework.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hessop._default_trace import DEFAULT_TRACE_HVP, default_trace
from hessop._progress import Progress
from hessop.backends.widened import half_precision_face
from hessop.estimators import SpectralDensity, TraceEstimate, slq
from hessop.lanczos import lanczos
from hessop.operator import HessianOperator
from hessop.results import resolve_tol

__all__ = ["BlockRow", "BlockTable", "by_block", "planned_products"]

DEFAULT_TOL = 1e-6
""":func:`by_block`'s default Lanczos tolerance where the block's products resolve it (float64); elsewhere
:func:`hessop.lanczos`'s dtype-aware default (see :func:`_default_tol`)."""

LANCZOS_GUESS = 12
"""Lanczos steps per block (k = 1) the planned cost of :func:`by_block` counts before a block has run: measured 7-17
(median 12) on the modules of the test CNN in float32 and float64 at the default tolerance; ``+ 2 (k - 1)`` for
more pairs.  The progress bar corrects its total as each block finishes."""

@dataclass(frozen=True)
class BlockRow:
    """One parameter group's diagonal block of the Hessian.

    Attributes
    ----------
    name : str
        The group's name.
    params : tuple of str
        The parameter names in the group (in the operator's order).
    n : int
        Number of parameters (the block is n x n).
    eigenvalues, residuals : numpy.ndarray, shape (k,)
        Top eigenvalues of the block (descending) and their Ritz residuals ``||H_GG v - lambda v||``.
    converged : numpy.ndarray of bool, shape (k,)
    trace : TraceEstimate
        ``tr(H_GG)`` with its standard error.
    density : SpectralDensity or None
        The block's spectral density when asked for.
    n_hvp : int
        Products of the block used for this row.

    Examples
    --------
    The rows of :func:`by_block` on a linear model with the mean squared error (weight block ``diag(4, 1, 0)``,
    bias block ``[2]``):

    >>> import hessop
    >>> from hessop.models.linear import linear_least_squares
    >>> H = linear_least_squares()
    >>> row = hessop.by_block(H, ["weight", "bias"])["weight"]
    >>> row.name, row.params, row.n
    ('weight', ('weight',), 3)
    >>> row.eigenvalues.round(6).tolist(), row.converged.tolist()
    ([4.0], [True])
    >>> round(row.trace.estimate, 6), row.trace.method
    (5.0, 'exact')
    >>> sorted(row.as_dict())  # doctest: +NORMALIZE_WHITESPACE
    ['converged', 'eigenvalues', 'n', 'n_hvp', 'name', 'params', 'residuals', 'trace', 'trace_method',
     'trace_std_error']
    """

    name: str
    params: tuple[str, ...]
    n: int
    eigenvalues: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    trace: TraceEstimate
    density: SpectralDensity | None = field(default=None, repr=False)
    n_hvp: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (no density nodes).

        Examples
        --------
        >>> from hessop.models.linear import linear_least_squares
        >>> row = by_block(linear_least_squares(), ["bias"])["bias"]
        >>> json.loads(json.dumps(row.as_dict())) == row.as_dict(), row.as_dict()["trace_method"]
        (True, 'exact')
        """
        return {"name": self.name, "params": list(self.params), "n": self.n,
                "eigenvalues": self.eigenvalues.tolist(), "residuals": self.residuals.tolist(),
                "converged": [bool(c) for c in self.converged], "trace": self.trace.estimate,
                "trace_std_error": self.trace.std_error, "trace_method": self.trace.method, "n_hvp": self.n_hvp}


@dataclass(frozen=True)
class BlockTable:
    """The rows of :func:`by_block`, one per group; prints as a table, saves as CSV or JSON, plots as bars.

    Examples
    --------
    A table indexes by position or by group name and iterates over its rows (a linear model with the mean squared
    error: weight block ``diag(4, 1, 0)``, bias block ``[2]``):

    >>> import hessop
    >>> from hessop.models.linear import linear_least_squares
    >>> H = linear_least_squares()
    >>> table = hessop.by_block(H, ["weight", "bias"])
    >>> len(table), [row.name for row in table]
    (2, ['weight', 'bias'])
    >>> table[1] is table["bias"]
    True
    >>> print(table)  # doctest: +ELLIPSIS
    group   n  lambda_max  residual  trace  +- s.e.  HVPs
    -----------------------------------------------------
    weight  3           4   ...      5  ...     6
    bias    1           2   ...      2  ...     2

    ``table.to_csv(path)`` and ``table.to_json(path)`` save it, ``table.plot(path)`` draws bars (matplotlib).
    """

    rows: list[BlockRow]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Any:
        return iter(self.rows)

    def __getitem__(self, key: int | str) -> BlockRow:
        if isinstance(key, str):
            for row in self.rows:
                if row.name == key:
                    return row
            raise KeyError(f"no group named {key!r}; groups: {[r.name for r in self.rows]}")
        return self.rows[key]

    def __str__(self) -> str:
        head = ["group", "n", "lambda_max", "residual", "trace", "+- s.e.", "HVPs"]
        body = [[r.name, str(r.n), f"{r.eigenvalues[0]:.6g}", f"{r.residuals[0]:.1e}", f"{r.trace.estimate:.6g}",
                 f"{r.trace.std_error:.2g}", str(r.n_hvp)] for r in self.rows]
        widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
        lines = ["  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths,
                                                                                               strict=True)))
                 for line in [head, *body]]
        return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])

    def to_csv(self, path: Any) -> None:
        """One line per group: name, n, eigenvalue_i / residual_i for each i, trace, trace_std_error, n_hvp.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> from hessop.models.linear import linear_least_squares
        >>> table = by_block(linear_least_squares(), ["weight", "bias"])  # blocks diag(4, 1, 0) and [2]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     table.to_csv(pathlib.Path(tmp) / "blocks.csv")
        ...     lines = list(csv.DictReader(open(pathlib.Path(tmp) / "blocks.csv")))
        >>> [(line["name"], line["n"], round(float(line["trace"]), 6)) for line in lines]
        [('weight', '3', 5.0), ('bias', '1', 2.0)]
        """
        k = max(len(r.eigenvalues) for r in self.rows)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "n", *[f"eigenvalue_{i}" for i in range(k)], *[f"residual_{i}" for i in range(k)],
                        "trace", "trace_std_error", "n_hvp", "params"])
            for r in self.rows:
                pad = [""] * (k - len(r.eigenvalues))
                w.writerow([r.name, r.n, *map(repr, r.eigenvalues.tolist()), *pad,
                            *map(repr, r.residuals.tolist()), *pad, repr(r.trace.estimate),
                            repr(r.trace.std_error), r.n_hvp, " ".join(r.params)])

    def to_json(self, path: Any) -> None:
        """A JSON list of :meth:`BlockRow.as_dict`.

        Examples
        --------
        >>> from hessop.models.linear import linear_least_squares
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     table = by_block(linear_least_squares(), ["weight"])
        ...     table.to_json(f"{tmp}/blocks.json")
        ...     with open(f"{tmp}/blocks.json") as f:
        ...         saved = json.load(f)
        >>> saved == [table["weight"].as_dict()], saved[0]["n"]
        (True, 3)
        """
        with open(path, "w") as f:
            json.dump([r.as_dict() for r in self.rows], f, indent=1)

    def plot(self, path: Any = None, *, title: str | None = None) -> Any:
        """Bar charts across groups: top eigenvalue and trace (with a 95% interval), log scale when all are
        positive.  Returns the matplotlib Figure; saved to ``path`` if given.

        Examples
        --------
        >>> import pathlib, pytest, tempfile
        >>> _ = pytest.importorskip("matplotlib")
        >>> from hessop.models.linear import linear_least_squares
        >>> table = by_block(linear_least_squares(), ["weight", "bias"])  # blocks diag(4, 1, 0) and [2]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     fig = table.plot(pathlib.Path(tmp) / "blocks.png")
        ...     saved = (pathlib.Path(tmp) / "blocks.png").exists()
        >>> saved, [ax.get_title() for ax in fig.axes]
        (True, ['top eigenvalue', 'trace (95% interval)'])
        """
        from matplotlib.figure import Figure

        names = [r.name for r in self.rows]
        lam = np.array([r.eigenvalues[0] for r in self.rows])
        tr = np.array([r.trace.estimate for r in self.rows])
        half = np.array([(lambda lo, hi: (hi - lo) / 2)(*r.trace.interval()) if r.trace.std_error > 0 else 0.0
                         for r in self.rows])
        fig = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 3.4))
        for i, (vals, err, label) in enumerate([(lam, None, "top eigenvalue"), (tr, half, "trace (95% interval)")]):
            ax = fig.add_subplot(1, 2, i + 1)
            ax.bar(np.arange(len(names)), vals, yerr=err, color=f"C{i}", capsize=3)
            ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
            if np.all(vals > 0):
                ax.set_yscale("log")
            ax.set_title(label, fontsize=10)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=90, bbox_inches="tight")
        return fig


def _matches(name: str, spec: str | re.Pattern) -> bool:
    """A string selects a parameter by its full name or a prefix ending at a component boundary (``"layer1"``
    selects ``"layer1.0.conv.weight"`` but not ``"layer10.weight"``; JAX key paths ``"['conv']"`` likewise);
    a compiled regular expression selects the names it matches anywhere (``re.search``)."""
    if isinstance(spec, re.Pattern):
        return spec.search(name) is not None
    return name == spec or (name.startswith(spec) and (spec[-1:] in ".]" or name[len(spec)] in ".["))


def _resolve_groups(groups: Any, names: list[str], modules: list[str]) -> list[tuple[str, list[str]]]:
    """``[(group name, parameter names in operator order)]`` from the ``groups`` argument of :func:`by_block`."""
    if groups is None:
        order: dict[str, list[str]] = {}
        for name, mod in zip(names, modules, strict=True):
            order.setdefault(mod or "<root>", []).append(name)
        return list(order.items())
    if isinstance(groups, (str, re.Pattern)):
        groups = [groups]
    if isinstance(groups, dict):
        items = list(groups.items())
    elif isinstance(groups, (list, tuple)):
        items = [(g if isinstance(g, str) else g.pattern, g) for g in groups]
    else:
        raise TypeError("groups must be None (one group per module), a list of name prefixes / compiled regular "
                        f"expressions, or a dict of group name -> names, prefixes or patterns; got "
                        f"{type(groups).__name__}")
    out = []
    for label, spec in items:
        specs = [spec] if isinstance(spec, (str, re.Pattern)) else list(spec)
        bad = [s for s in specs if not isinstance(s, (str, re.Pattern)) or s == ""]
        if bad or not specs:
            raise TypeError(f"group {label!r}: give parameter names, prefixes or compiled regular expressions, "
                            f"got {spec!r}")
        chosen = [n for n in names if any(_matches(n, s) for s in specs)]
        if not chosen:
            some = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"group {label!r} ({spec!r}) matches no parameter of the operator; its parameters are: "
                             f"{some}")
        out.append((str(label), chosen))
    return out


def _trace_cost(n: int, trace_options: dict[str, Any] | None) -> int:
    """Products the block's trace is planned to take: ``min(n, max_hvp)`` (the exact trace from ``n`` unit vectors
    once the budget reaches ``n``), with ``max_hvp`` the default 64 unless ``trace_options`` give one."""
    opts = trace_options or {}
    budget = opts.get("max_hvp")
    if budget is None:
        budget = DEFAULT_TRACE_HVP if opts.get("rtol") is None and opts.get("atol") is None else 10_000
    return min(n, int(budget))


def _density_cost(n: int, density_options: dict[str, Any] | None) -> int:
    """Products the block's SLQ density is planned to take (its ``max_hvp``, or 10 draws of ``n_iter`` steps)."""
    opts = density_options or {}
    steps = min(int(opts.get("n_iter", 90)), n)
    budget = opts.get("max_hvp")
    draws = 10 if budget is None else max(1, int(budget) // steps)
    if budget is None and (opts.get("rtol") is not None or opts.get("atol") is not None):
        draws = 100  # slq's cap on the draws of a target
    return draws * steps


def _block_cost(n: int, k: int, trace_options: dict[str, Any] | None, density: bool,
                density_options: dict[str, Any] | None) -> int:
    kk = min(k, n - 1)
    lanczos_steps = 1 if kk < 1 else min(n, LANCZOS_GUESS + 2 * (kk - 1))
    return lanczos_steps + _trace_cost(n, trace_options) + (_density_cost(n, density_options) if density else 0)


def planned_products(H: HessianOperator, groups: Any = None, *, k: int = 1,
                     trace_options: dict[str, Any] | None = None, density: bool = False,
                     density_options: dict[str, Any] | None = None) -> dict[str, int]:
    """The products :func:`by_block` plans to spend on each group, before it runs (no product is taken).

    Per group of ``n`` parameters: the trace's ``min(n, 64)`` (the default budget of :func:`hessop.trace`, exact
    from ``n`` unit vectors for ``n <= 64``; ``trace_options["max_hvp"]`` instead when given), about
    ``12 + 2 (k - 1)`` Lanczos steps (a measured typical count, not a bound: the run stops when the pairs converge)
    and, with ``density=True``, the SLQ budget (10 draws of ``min(n_iter, n)`` steps by default).  The progress bar
    of :func:`by_block` starts from their sum.

    Examples
    --------
    >>> import hessop
    >>> from hessop.blocks import planned_products
    >>> from hessop.models.linear import linear_least_squares
    >>> planned_products(linear_least_squares(), ["weight", "bias"])  # exact traces of 3 and 1 columns
    {'weight': 6, 'bias': 2}
    """
    if not isinstance(H, HessianOperator):
        raise TypeError(f"planned_products needs a HessianOperator from from_torch or from_jax, got "
                        f"{type(H).__name__}")
    backend = H.model_backend("by_block")
    names = list(backend.names)
    sizes = dict(zip(names, np.diff(np.asarray(backend.offsets)).tolist(), strict=True))
    return {name: _block_cost(sum(sizes[p] for p in params), k, trace_options, density, density_options)
            for name, params in _resolve_groups(groups, names, backend.modules())}


def _default_tol(block: HessianOperator) -> float | None:
    """By default a block's Lanczos runs at ``tol = 1e-6`` where its products resolve it (float64), and at
    :func:`hessop.lanczos`'s own dtype-aware default (None: ``10 sqrt(n) eps``, with the precision allowance of
    :func:`hessop.results.residual_threshold`) where they do not (float32 and narrower)."""
    return None if resolve_tol(None, 1e-8, block) >= DEFAULT_TOL else DEFAULT_TOL


def _is_pair_warning(w: warnings.WarningMessage) -> bool:
    """A warning of a block's Lanczos run about its pairs (unconverged, limited by precision, a tol below the
    floor): summarised once by :func:`by_block` instead of once per block."""
    text = str(w.message)
    return issubclass(w.category, UserWarning) and (text.startswith("lanczos") or text.startswith("tol="))


def _summarise(flagged: list[tuple[str, str]], total: int, tol: float | None) -> None:
    """One warning for the blocks whose Lanczos runs warned (``(group, first message)``), naming them."""
    if not flagged:
        return
    names = ", ".join(name for name, _ in flagged[:6]) + (", ..." if len(flagged) > 6 else "")
    told = "the default tolerance" if tol is None else f"tol={tol:g}"
    warnings.warn(
        f"by_block: the Lanczos runs of {len(flagged)} of {total} groups ({names}) returned pairs that are "
        f"unconverged or limited by the precision of the products at {told} (see each row's residuals and "
        f"converged; the first group's message: {flagged[0][1]})", UserWarning, stacklevel=3)


def by_block(
    H: HessianOperator,
    groups: Any = None,
    *,
    k: int = 1,
    tol: float | None = None,
    trace_options: dict[str, Any] | None = None,
    density: bool = False,
    density_options: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> BlockTable:
    """Top eigenvalues (with residuals), trace (with standard error) and optionally the spectral density of each
    parameter group's diagonal block of the Hessian.

    Parameters
    ----------
    H : HessianOperator
        Built with :meth:`HessianOperator.from_torch` or :meth:`~HessianOperator.from_jax` (the block operators
        come from its backend: same model / loss, data and reduction).
    groups :
        ``None`` (default): one group per module holding parameters (torch: ``"conv1"`` for ``"conv1.weight"``;
        JAX: the pytree node above each leaf).  A list of name prefixes (``"layer1"``) or compiled regular
        expressions (``re.compile(r"bn")``), each a group.  A dict ``{group name: names / prefixes / patterns}``
        (e.g. the stages of a ResNet).  Names are the backend's (``H.backend.names``).
    k : int
        Top eigenvalues per block (Lanczos, ``which="LA"``); default 1.  Blocks with ``n <= k`` give all ``n - 1``.
    tol : float, optional
        Lanczos tolerance on the residuals (relative to each eigenvalue).  Default (None): dtype-aware, per block
        ``max(1e-6, 10 sqrt(n_G) eps)`` with ``eps`` the products' unit roundoff: 1e-6 for float64 models; for
        float32 (and narrower) ones, whose products cannot resolve 1e-6, :func:`hessop.lanczos`'s own default
        (``10 sqrt(n_G) eps``, about 1e-5 .. 1e-3, with its allowance for pairs within ten times the precision
        floor; :func:`hessop.results.resolve_tol`).  Pairs a block returns unconverged or limited by
        the precision of its products draw one summary ``UserWarning`` for the whole table, naming the groups.
    trace_options : dict, optional
        Passed to :func:`hessop.trace` (default ``max_hvp=64``: Hutchinson or adaptive Hutch++ with 64 products, or
        the exact trace from ``n`` unit vectors for blocks of at most 64 parameters).
    density : bool
        Also run SLQ on every block (``density_options`` go to :func:`hessop.slq`; ``n_iter`` is capped at the
        block's size); default False.
    seed : int
        Seed of every random draw; default 0.
    progress : bool, optional
        Show a tqdm bar in products: its total is the planned cost (:func:`planned_products`), shown before the
        first product and corrected as each group finishes; the group, its top eigenvalue and trace beside it.
        Default None: only when stderr is a terminal.

    Notes
    -----
    Cost: per group of ``n_G`` parameters, ``min(n_G, 64)`` products for the trace (the default budget) and the
    Lanczos steps of its top-k pairs (7-17 for k = 1 on the test CNN's modules), so about 75 products per module
    of more than 64 parameters; ``planned_products(H, groups)`` gives the plan before any product is spent.

    Returns
    -------
    BlockTable
        Rows of :class:`BlockRow` (``name``, ``params``, ``eigenvalues``, ``residuals``, ``trace`` ...); ``print`` it,
        ``.to_csv(path)``, ``.to_json(path)``, ``.plot(path)``.

    Examples
    --------
    The mean squared error of a linear model ``w . x + b`` on two samples: the weight block of the Hessian is
    ``diag(4, 1, 0)`` and the bias block is ``[2]``.

    >>> import hessop
    >>> from hessop.models.linear import linear_least_squares
    >>> H = linear_least_squares()
    >>> list(H.backend.names)
    ['weight', 'bias']

    By default there is one group per module (here one: the model itself); name the groups to split it:

    >>> [row.name for row in hessop.by_block(H)]
    ['<root>']
    >>> table = hessop.by_block(H, ["weight", "bias"])
    >>> [(row.name, row.n, round(float(row.eigenvalues[0]), 6), round(row.trace.estimate, 6)) for row in table]
    [('weight', 3, 4.0, 5.0), ('bias', 1, 2.0, 2.0)]

    Blocks of at most 64 parameters get their exact trace (``trace.method == "exact"``); a dict names groups of
    several prefixes, e.g. ``{"stage 1": ["layer1", "bn1"], "head": ["fc"]}``.
    """
    if not isinstance(H, HessianOperator):
        raise TypeError(f"by_block needs a HessianOperator from from_torch or from_jax, got {type(H).__name__}")
    backend = H.model_backend("by_block")
    rows = []
    resolved = _resolve_groups(groups, list(backend.names), backend.modules())
    sizes = dict(zip(backend.names, np.diff(np.asarray(backend.offsets)).tolist(), strict=True))
    plan = [_block_cost(sum(sizes[p] for p in params), k, trace_options, density, density_options)
            for _, params in resolved]
    bar = Progress(progress, H, "by_block", sum(plan), "HVP")
    spent, flagged = 0, []
    for i, (name, params) in enumerate(resolved):
        block = HessianOperator(half_precision_face(backend.restrict(params), warn=False))
        kk = min(k, block.n - 1)
        if kk >= 1:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                block_tol = _default_tol(block) if tol is None else tol
                eig = lanczos(block, k=kk, tol=block_tol, seed=seed)
            mine = [w for w in caught if _is_pair_warning(w)]
            for w in caught:
                if not _is_pair_warning(w):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if mine:
                flagged.append((name, str(mine[0].message)))
            values, res, conv = eig.eigenvalues, eig.residuals, eig.converged
        else:  # a single parameter: the block is its 1 x 1 second derivative
            h = float(block.to_numpy(block.hvp(block.cast(np.ones(1))))[0])
            values, res, conv = np.array([h]), np.zeros(1), np.ones(1, dtype=bool)
        tr = default_trace(block, **{"seed": seed, **(trace_options or {})})
        dens = None
        if density:
            opts = {"seed": seed, **(density_options or {})}
            opts["n_iter"] = min(opts.get("n_iter", 90), block.n)
            dens = slq(block, **opts)
        rows.append(BlockRow(name=name, params=tuple(params), n=block.n, eigenvalues=values, residuals=res,
                             converged=conv, trace=tr, density=dens, n_hvp=block.n_hvp))
        spent += block.n_hvp
        bar.grow(spent + sum(plan[i + 1:]))
        bar.to(spent, {"group": name, "lambda_max": float(values[0]), "trace": tr.estimate})
    bar.close()
    _summarise(flagged, len(resolved), tol)
    return BlockTable(rows)
