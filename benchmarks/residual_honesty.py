"""Reported vs true residuals of lanczos on the property-test families (docs/reliability.md, "Reported accuracy").

For k = 3 pairs on each family of hessop.testing.FAMILIES x which (LA / SA / LM) x with / without thick restart
(max_basis = 6), n = 60 / 150 / 300, float32 and float64, verify=True and verify=False: the ratio of the true
residual ||A v - theta v|| (dense float64 arithmetic on the stored matrix) to the reported one (<= 1 is a bound).

    python3 benchmarks/residual_honesty.py
"""

import time

import numpy as np

import hessop
from hessop.testing import FAMILIES, family_spectrum, matrix_with_spectrum

t0 = time.time()
for dt in ("float32", "float64"):
    for verify in (True, False):
        ratios, conv, tot = [], 0, 0
        for fi, fam in enumerate(FAMILIES):
            for which in ("LA", "SA", "LM"):
                for restart in (False, True):
                    n = [60, 150, 300][(fi + len(which)) % 3]
                    A = matrix_with_spectrum(family_spectrum(fam, n, fi), seed=fi + 1, dtype=np.dtype(dt))
                    r = hessop.lanczos(A, 3, which=which, max_basis=6 if restart else None, max_iter=600,
                                       verify=verify)
                    V = np.asarray(r.eigenvectors, dtype=np.float64)
                    true = np.linalg.norm(A.astype(np.float64) @ V - V * r.eigenvalues, axis=0)
                    ratios += list(true / r.residuals)
                    conv += int(r.converged.sum())
                    tot += 3
        ratios = np.array(ratios)
        print(f"{dt} verify={verify}: {ratios.size} pairs, true/reported max {ratios.max():.3f} "
              f"median {np.median(ratios):.3g} min {ratios.min():.2g}; converged {conv}/{tot}")
print(f"seconds {time.time() - t0:.0f}")
