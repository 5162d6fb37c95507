"""Products spent by lanczos on the issue-26 goals (test CNN) and the classes 3 and 8 cases (docs/benchmarks.md,
"Lanczos products"; docs/reliability.md).  Counts only, no timings.

    python3 benchmarks/lanczos_products.py [cnn] [matrices]
    HESSOP_CNN_HESSIAN=/tmp/cnn.npy python3 benchmarks/lanczos_products.py   # keep the dense Hessian

Test CNN: the test suite's SmallResNet (float64, 1,706 parameters, trained 150 steps on 256 digits).  Each row: the
products, the pairs converged, the largest error against the dense float64 eigenvalues, and the largest ratio
true / reported residual (<= 1: the reported residual is a bound).
"""

import os
import sys
import warnings

import numpy as np
import scipy.sparse.linalg as sla

import hessop
from hessop.testing import matrix_with_spectrum


def cnn():
    import torch

    from hessop.models.digits import trained_cnn

    model, x, y = trained_cnn(256)
    H = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y))
    cache = os.environ.get("HESSOP_CNN_HESSIAN")  # a .npy file keeping the dense Hessian between runs
    if cache and os.path.exists(cache):
        dense = np.load(cache)
    else:
        eye = np.eye(H.n)
        dense = np.concatenate([H.matmat(eye[:, i: i + 64]) for i in range(0, H.n, 64)], axis=1)
        dense = (dense + dense.T) / 2
        if cache:
            np.save(cache, dense)
    return H, dense


def row(name, A, r, ref):
    V = np.asarray(r.eigenvectors, dtype=np.float64)
    true = np.linalg.norm(A @ V - V * r.eigenvalues, axis=0)
    err = np.max(np.abs(r.eigenvalues - ref)) if ref is not None else float("nan")
    print(f"| {name} | {r.n_hvp} | {int(r.converged.sum())}/{r.converged.size} | {err:.1e} | "
          f"{np.max(true / r.residuals):.3f} | {int(r.precision_limited.sum())} | {r.multiplicity_checked} |",
          flush=True)


def main():
    warnings.simplefilter("ignore")
    parts = sys.argv[1:] or ["cnn", "matrices"]
    print("| case | products | converged | max error | max true/reported | precision-limited | checked |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    if "cnn" in parts:
        cnn_rows()
    if "matrices" in parts:
        matrix_rows()


def cnn_rows():
    H, A = cnn()
    lam = np.linalg.eigvalsh(A)[::-1]
    for k, which, tol, ref in [(5, "LA", 1e-6, lam[:5]), (20, "LA", 1e-8, lam[:20]), (3, "SA", None, lam[::-1][:3])]:
        for verify, check in [("auto", True), ("auto", False), (True, True)]:
            r = hessop.lanczos(H, k, which=which, tol=tol, verify=verify, check_multiplicity=check)
            row(f"CNN {which} k={k} tol={tol} verify={verify} check={check}", A, r, ref)
        n0 = H.n_hvp
        sla.eigsh(H, k=k, which=which, tol=tol or 1e-8, v0=np.random.default_rng(0).standard_normal(H.n))
        print(f"| CNN {which} k={k} eigsh | {H.n_hvp - n0} | | | | | |")


def matrix_rows():
    spec = np.r_[1.0, 1.0, 1.0, np.linspace(0.95, 0.0, 297)]
    for seed in range(10):
        A = matrix_with_spectrum(spec, seed=seed)
        for check in (True, False):
            row(f"class 3, triple 1, seed {seed}, check={check}", A,
                hessop.lanczos(A, 3, seed=seed, check_multiplicity=check), spec[:3])
    A = matrix_with_spectrum(spec, seed=0)
    U = np.linalg.eigh(A)[1][:, -3:]
    v0 = np.random.default_rng(0).standard_normal(300)
    v0 -= U @ (U.T @ v0)
    row("class 3, v0 orthogonal to the top eigenspace", A, hessop.lanczos(A, 3, v0=v0), spec[:3])
    A = np.full((50, 50), 1 / 50)
    row("class 8, rank 1, k = 1", A, hessop.lanczos(A, 1), [1.0])
    spec = np.r_[np.linspace(1, 2, 99), -1e6]
    A = matrix_with_spectrum(spec, seed=0, dtype=np.float32)
    row("class 8, float32, -1e6 under LA", A.astype(np.float64), hessop.lanczos(A, 1), [2.0])
    spec = np.r_[2e4, np.geomspace(50, 1, 499)]
    A = matrix_with_spectrum(spec, seed=0, dtype=np.float32)
    row("class 8, float32, 2e4 over 1..50, k = 20, tol 1e-3", A.astype(np.float64), hessop.lanczos(A, 20, tol=1e-3),
        spec[:20])


if __name__ == "__main__":
    main()
