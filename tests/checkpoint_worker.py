"""Runs one estimator call with a checkpoint and SIGKILLs its own process inside a block product: the interrupted
run of tests/test_checkpoint.py.  ``python checkpoint_worker.py NAME PATH KILL_AT`` kills at the KILL_AT-th call
of the operator's block product (1-based), before computing it; the test then resumes the same call in-process.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

import hessop
from hessop.testing import matrix_with_spectrum, outlier_spectrum

N = 120

CALLS = {
    "hutchinson": lambda H, ck: hessop.hutchinson(H, max_hvp=48, block_size=8, seed=3, checkpoint=ck),
    "hutchinson_rtol": lambda H, ck: hessop.hutchinson(H, rtol=0.2, block_size=8, seed=3, checkpoint=ck),
    "hutchpp": lambda H, ck: hessop.hutchpp(H, 30, seed=3, checkpoint=ck),
    "xtrace": lambda H, ck: hessop.xtrace(H, 30, seed=3, checkpoint=ck),
    "diagonal": lambda H, ck: hessop.diagonal(H, 40, block_size=8, seed=3, checkpoint=ck),
    "diagonal_rtol": lambda H, ck: hessop.diagonal(H, rtol=0.02, block_size=8, seed=3, checkpoint=ck),  # rank 8, 40
    "diagonal_exact": lambda H, ck: hessop.diagonal(H, rtol=0.003, block_size=8, seed=3, checkpoint=ck),
    "trace": lambda H, ck: hessop.trace(H, rtol=0.005, block_size=8, seed=3, checkpoint=ck),  # rank 8, then 40
    "trace_exact": lambda H, ck: hessop.trace(H, rtol=0.002, block_size=8, seed=3, checkpoint=ck),  # ends exact
    "slq": lambda H, ck: hessop.slq(H, n_iter=12, max_hvp=72, block_size=2, seed=3, checkpoint=ck),
    "tracker": lambda H, ck: track(H, ck),
}


def track(H: hessop.HessianOperator, ck: object) -> list[hessop.TrackRecord]:
    """Six steps of a "training" whose Hessian changes with the step (``(1 + step / 10) H``), tracked with every
    statistic."""
    step = [0]

    def at_step() -> hessop.HessianOperator:
        c = 1 + step[0] / 10
        return hessop.HessianOperator.from_function(lambda v: c * H.matvec(v), H.n, H.dtype,
                                                    hvp_block=lambda V: c * H.matmat(V), check_symmetric=False)

    tracker = hessop.Tracker(at_step, top_k=2, bottom_k=1, trace=True, density=True, seed=3, checkpoint=ck,
                             trace_options={"max_hvp": 24}, density_options={"n_iter": 8, "max_hvp": 16})
    for step[0] in range(6):
        tracker.update(step[0])
    return tracker.records


def operator(kill_at: int = 0, n: int = N, dtype: type = np.float64) -> hessop.HessianOperator:
    """An outlier-spectrum matrix (exact answers known) whose block product kills the process at call ``kill_at``
    (0: never)."""
    A = matrix_with_spectrum(outlier_spectrum(n, n_outliers=6, n_negative=2, seed=5), seed=6, dtype=dtype)
    calls = [0]

    def block(V: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return A @ V

    return hessop.HessianOperator.from_function(lambda v: A @ v, n, dtype, hvp_block=block, check_symmetric=False)


if __name__ == "__main__":
    name, path, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    CALLS[name](operator(kill_at), path)
    sys.exit(3)  # not killed: the test asked for a kill point past the end of the run
