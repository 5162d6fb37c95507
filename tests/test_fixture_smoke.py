import numpy as np


def test_reference_hessian_is_symmetric_and_sized(torch_problem):
    H = torch_problem["hessian"]
    assert H.shape == (1706, 1706)
    assert np.abs(H - H.T).max() <= 1e-12 * np.abs(H).max()
