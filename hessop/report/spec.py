"""The problem of a report: the SPEC function imported and called, its answer turned into a Hessian operator.

Every failure is a :class:`SpecError` with a one-line message for the user (``hessop analyze`` prints it and exits
with code 2).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import Any

from hessop.operator import HessianOperator

__all__ = ["DEFAULT_SPEC", "JAX_KEYS", "TORCH_KEYS", "SpecError", "build_operator", "load_problem"]

DEFAULT_SPEC = "hessop.models.digits:analyze_problem"
TORCH_KEYS = {"model", "loss_fn", "data", "params", "reduction", "loss_form", "description"}
JAX_KEYS = {"loss_fn", "params", "data", "reduction", "description"}


class SpecError(ValueError):
    """A SPEC that cannot be turned into a Hessian operator; the message is one line for the user.

    Examples
    --------
    >>> from hessop.report.spec import SpecError, load_problem
    >>> try:
    ...     load_problem("nonsense")
    ... except SpecError as e:
    ...     print(isinstance(e, ValueError), e)
    True SPEC must be path/to/file.py:function or package.module:function, got 'nonsense'
    """


def _where(e: BaseException) -> str:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})" if tb is not None else ""


def _one_line(e: BaseException) -> str:
    """``Type: message`` on one line, with the exception's notes (hessop's note on how ``data`` was read)."""
    notes = " ".join(getattr(e, "__notes__", ()))
    return " ".join(f"{type(e).__name__}: {e} {notes}".split())


def load_problem(spec: str, device: str | None = None) -> Any:
    """Import the function named by ``spec`` and return what it returns.

    Parameters
    ----------
    spec : str
        ``path/to/file.py:function`` or ``package.module:function``.
    device : str, optional
        Passed to the function as ``device=`` when given (``hessop analyze --device``).

    Returns
    -------
    object
        The function's answer (for :func:`build_operator`).

    Raises
    ------
    SpecError
        With a one-line message for a missing file or module, a missing or non-callable function, or an error
        raised while importing or calling it.

    Examples
    --------
    >>> from hessop.report import load_problem
    >>> load_problem("hessop.testing:flat_spectrum").shape
    (2000,)
    >>> load_problem("hessop.testing:nothing")
    Traceback (most recent call last):
    ...
    hessop.report.spec.SpecError: hessop.testing has no function 'nothing'
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise SpecError(f"SPEC must be path/to/file.py:function or package.module:function, got {spec!r}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise SpecError(f"no such file: {target}")
        loader = importlib.util.spec_from_file_location(f"_hessop_spec_{path.stem}", path)
        if loader is None or loader.loader is None:
            raise SpecError(f"cannot load {target} as a Python file")
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except Exception as e:
            raise SpecError(f"importing {target} failed: {_one_line(e)}{_where(e)}") from e
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise SpecError(f"no module named {target!r} ({_one_line(e)}); for a file give path/to/file.py") from e
        except Exception as e:
            raise SpecError(f"importing {target} failed: {_one_line(e)}{_where(e)}") from e
    fn = getattr(module, name, None)
    if fn is None:
        raise SpecError(f"{target} has no function {name!r}")
    if not callable(fn):
        raise SpecError(f"{target}:{name} is a {type(fn).__name__}, not a function")
    kwargs = {} if device is None else {"device": device}
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError:
        need = "a device= argument (given --device)" if device is not None else "no arguments"
        raise SpecError(f"{target}:{name} must be callable with {need}") from None
    except ValueError:  # no signature (some builtins): just call it
        pass
    try:
        return fn(**kwargs)
    except Exception as e:
        raise SpecError(f"{target}:{name}() failed: {_one_line(e)}{_where(e)}") from e


def build_operator(problem: Any) -> tuple[HessianOperator, str]:
    """The Hessian operator of a problem returned by a SPEC function (see :mod:`hessop.report`) and its description.

    Parameters
    ----------
    problem : dict or HessianOperator
        A PyTorch problem (keys ``model``, ``loss_fn``, ``data``, optionally ``params``, ``reduction``,
        ``loss_form``, ``description``; ``"loss_fn": None`` for a model that computes its own loss, and ``data``
        read by :data:`hessop.backends.torch._batches.READING_RULE`, as in ``from_torch``), a JAX problem (keys
        ``loss_fn``, ``params``, ``data``, optionally ``reduction``, ``description``) or a ready operator.

    Returns
    -------
    (HessianOperator, str)
        The operator and the description shown at the top of the report.

    Raises
    ------
    SpecError
        For a wrong return shape or a problem the backend rejects (e.g. a non-scalar loss).

    Examples
    --------
    >>> import numpy as np
    >>> from hessop import HessianOperator
    >>> from hessop.report import build_operator
    >>> H, description = build_operator(HessianOperator.from_matrix(np.diag([3.0, 2.0, 1.0])))
    >>> H.n, description
    (3, 'a HessianOperator given by the SPEC')
    >>> build_operator([1, 2])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hessop.report.spec.SpecError: the SPEC function returned a list; expected a dict with keys model, loss_fn, ...
    """
    if isinstance(problem, HessianOperator):
        return problem, "a HessianOperator given by the SPEC"
    if not isinstance(problem, dict):
        raise SpecError(f"the SPEC function returned a {type(problem).__name__}; expected a dict with keys model, "
                        "loss_fn, data (PyTorch) or loss_fn, params, data (JAX), or a HessianOperator")
    keys = set(problem)
    torch_like = "model" in keys
    need, allowed = ({"model", "loss_fn", "data"}, TORCH_KEYS) if torch_like else \
        ({"loss_fn", "params", "data"}, JAX_KEYS)
    kind = "PyTorch" if torch_like else "JAX"
    if need - keys or keys - allowed:
        parts = [f"missing {sorted(need - keys)}" if need - keys else "",
                 f"unknown {sorted(keys - allowed)}" if keys - allowed else ""]
        raise SpecError(f"the SPEC function returned a dict with keys {sorted(keys)}: "
                        f"{', '.join(p for p in parts if p)}; a {kind} problem has keys {sorted(need)} and "
                        f"optionally {sorted(allowed - need)}")
    description = str(problem.get("description", f"{kind} problem"))
    opts = {k: problem[k] for k in ("params", "reduction", "loss_form") if k in problem}
    try:
        if torch_like:
            H = HessianOperator.from_torch(problem["model"], problem["loss_fn"], problem["data"], **opts)
        else:
            H = HessianOperator.from_jax(problem["loss_fn"], problem["params"], problem["data"],
                                         **{k: v for k, v in opts.items() if k != "params"})
    except (ValueError, TypeError, ImportError, AttributeError, IndexError, KeyError, RuntimeError) as e:
        raise SpecError(f"the {kind} problem is invalid: {_one_line(e)}") from e
    return H, description

