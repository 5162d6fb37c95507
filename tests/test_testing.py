"""hessop.testing: the test problems have exactly the spectra they claim."""

from __future__ import annotations

import numpy as np
import pytest

from hessop.testing import FAMILIES, family_spectrum, flat_spectrum, matrix_with_spectrum, outlier_spectrum


def test_matrix_has_the_given_spectrum_and_is_symmetric():
    lam = np.array([3.0, -1.0, 0.5, 0.0, 2.0])
    A = matrix_with_spectrum(lam, seed=4)
    np.testing.assert_allclose(np.linalg.eigvalsh(A), np.sort(lam), atol=1e-13)
    assert np.array_equal(A, A.T) and not np.allclose(A, np.diag(np.diag(A)))
    assert matrix_with_spectrum(lam, seed=4, dtype=np.float32).dtype == np.float32
    assert np.array_equal(A, matrix_with_spectrum(lam, seed=4))


def test_outlier_and_flat_spectra():
    lam = outlier_spectrum(200, n_outliers=5, n_negative=2, seed=1)
    assert lam.shape == (200,) and np.all(np.diff(lam) <= 0)
    assert np.sum(lam > 4) == 5 and np.sum(lam < -0.5) == 2
    flat = flat_spectrum(50, seed=2)
    assert np.all((flat >= 0.5) & (flat <= 1.5)) and np.all(np.diff(flat) <= 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_families_are_sorted_scaled_and_of_their_kind(family):
    lam = family_spectrum(family, 40, seed=3, scale=2.0)
    assert lam.shape == (40,) and np.all(np.diff(lam) <= 0)
    np.testing.assert_array_equal(lam, 2.0 * family_spectrum(family, 40, seed=3))
    if family == "multiplicity":
        assert np.unique(lam).size <= 4
    if family == "low_rank":
        assert 1 <= np.count_nonzero(lam) <= 10


def test_unknown_family():
    with pytest.raises(ValueError, match="family must be one of uniform"):
        family_spectrum("gaussian", 10)
