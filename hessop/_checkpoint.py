"""Resumable runs: the state of an estimator saved after each block, so that a killed run continues where it
stopped and returns the result an uninterrupted run returns, bit for bit.

A checkpoint is one ``.npz`` file (NumPy's zip of arrays, read with ``allow_pickle=False``: nothing in it is
executed) holding

* ``meta``: a JSON text with the format version, the *fingerprint* of the call (function, ``n``, dtype, seed and
  every setting that changes the result) and the state's scalars (counters, flags, the probe generator's
  ``bit_generator.state``);
* the state's arrays (samples, running means, sketches), copied to the host;
* ``sha256``: a digest of everything above, checked on load.

It is written atomically: a temporary file in the same folder, flushed and fsynced, then ``os.replace``; a run
killed while writing leaves the previous checkpoint intact.  On load a fingerprint that differs raises
:class:`CheckpointMismatch` naming the field and both values; a truncated or corrupted file raises ``ValueError``
saying it is damaged.  Under MPI only rank 0 reads and writes the file; it broadcasts the state it read to the
other ranks (no shared file system needed, and every rank resumes from the same state).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from hessop._progress import communicator

__all__ = ["Checkpoint", "CheckpointMismatch", "FORMAT_VERSION", "atomic_write"]

FORMAT_VERSION = 2
"""Version of the state layout; 2: the estimators' states saved by their run context (issue 20).  A file of another
version is refused, saying so."""


class CheckpointMismatch(ValueError):
    """The checkpoint file was written by a different call (another operator, seed or setting)."""


def _digest(meta: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(meta.encode())
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Checkpoint:
    """The checkpoint file of one call.

    Parameters
    ----------
    path : str or Path or None
        The file (None: no checkpoint; every method then does nothing).
    function : str
        The estimator's name.
    op : HessianOperator
        The operator (its ``n`` and ``dtype`` are part of the fingerprint).
    seed : int
        The call's seed: a checkpoint needs an integer seed (a ``Generator`` or ``None`` cannot be told apart from
        another one).
    settings : dict
        Every other argument that changes the result (JSON-ready values).
    parameters : bool
        Also fingerprint the model's parameters (a SHA-256 over them, one host pass) where the backend exposes them
        (PyTorch); default True.  The tracker passes False (its parameters change at every step by design).
    """

    def __init__(self, path: Any, function: str, op: Any, seed: Any, settings: dict[str, Any],
                 parameters: bool = True) -> None:
        self.path = None if path is None else Path(path)
        if self.path is None:
            return
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"checkpoint= needs an integer seed (the seed is part of the checkpoint's fingerprint, "
                             f"so that a rerun draws the same probes); got seed={seed!r}")
        self.fingerprint = {"format": FORMAT_VERSION, "function": function, "n": int(op.n),
                            "dtype": np.dtype(op.dtype).name, "seed": int(seed),
                            **{k: _plain(v) for k, v in settings.items()}}
        digest = parameter_digest(op) if parameters else None
        if digest is not None:
            self.fingerprint["parameters (SHA-256)"] = digest
        self.op, self.comm = op, communicator(op)
        self.writer = self.comm is None or self.comm.Get_rank() == 0

    def __bool__(self) -> bool:
        return self.path is not None

    def load(self) -> dict[str, Any] | None:
        """The saved state (scalars and host arrays by name), or None when there is no file yet.  Under MPI (a
        collective call) rank 0 reads the file and broadcasts the state, or the error, to every rank."""
        if self.path is None:
            return None
        if self.comm is None or self.comm.Get_size() == 1:
            return self._read()
        message = None
        if self.comm.Get_rank() == 0:
            try:
                message = ("state", self._read())
            except ValueError as e:
                message = ("error", e)
        kind, value = self.comm.bcast(message, root=0)
        if kind == "error":
            raise value
        return value

    def _read(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        damaged = (f"the checkpoint file {self.path} is damaged (truncated or corrupted); delete it to start over, "
                   "or pass another checkpoint path")
        try:
            with np.load(self.path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            meta_text, digest = str(data.pop("meta")), str(data.pop("sha256"))
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise ValueError(f"{damaged} ({type(e).__name__}: {e})") from None
        if _digest(meta_text, data) != digest:
            raise ValueError(f"{damaged} (its checksum does not match its contents)")
        meta = json.loads(meta_text)
        saved = meta["fingerprint"]
        if saved.get("format") != FORMAT_VERSION:
            raise CheckpointMismatch(
                f"the checkpoint file {self.path} has format {saved.get('format')!r}, written by another version of "
                f"hessop; this version reads format {FORMAT_VERSION}. Delete the file to start over, or pass another "
                "checkpoint path.")
        for key in dict.fromkeys([*self.fingerprint, *saved]):
            if saved.get(key) != self.fingerprint.get(key):
                raise CheckpointMismatch(
                    f"the checkpoint file {self.path} was written by another call: {key} is {saved.get(key)!r} "
                    f"there and {self.fingerprint.get(key)!r} here. Delete the file to start over, or pass another "
                    "checkpoint path.")
        return {**meta["state"], **data}

    def save(self, **state: Any) -> None:
        """Write ``state`` (NumPy or the operator's native arrays, and JSON-ready scalars, strings, lists, dicts)
        atomically.  Native arrays are copied to the host here, so nothing is copied without a checkpoint."""
        if self.path is None or not self.writer:
            return
        arrays = {k: v if isinstance(v, np.ndarray) else np.asarray(self.op.to_numpy(v)) for k, v in state.items()
                  if isinstance(v, np.ndarray) or (hasattr(v, "shape") and not isinstance(v, np.generic))}
        scalars = {k: _plain(v) for k, v in state.items() if k not in arrays}
        meta = json.dumps({"fingerprint": self.fingerprint, "state": scalars})
        atomic_write(self.path, lambda f: np.savez(f, meta=np.array(meta), sha256=np.array(_digest(meta, arrays)),
                                                   **arrays))


def atomic_write(path: Path, write: Any) -> None:
    """Replace ``path`` atomically by what ``write(f)`` writes to a binary file ``f``: a temporary file in the same
    folder, flushed and fsynced, then ``os.replace`` (and an fsync of the folder, so the rename itself is durable
    on POSIX); a process killed meanwhile leaves the old file intact and no temporary file behind it to reuse."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError, AttributeError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def parameter_digest(op: Any) -> str | None:
    """SHA-256 of the model parameters behind ``op`` (None when its backend exposes none)."""
    layout = op.backend.layout
    return None if layout is None else layout.parameter_digest()


def _plain(value: Any) -> Any:
    """JSON-ready copy of a setting or state scalar (NumPy scalars to Python, tuples to lists)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's state, JSON-ready."""
    return rng.bit_generator.state


def restore_rng(state: dict[str, Any]) -> np.random.Generator:
    """A generator continuing exactly from a saved state."""
    bit = getattr(np.random, state["bit_generator"])()
    bit.state = state
    return np.random.Generator(bit)
