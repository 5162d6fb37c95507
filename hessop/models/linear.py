"""A linear least-squares problem whose Hessian is known exactly: the smallest PyTorch operator, for the docstrings'
examples and the tests."""

from __future__ import annotations

import torch

from hessop.operator import HessianOperator

__all__ = ["linear_least_squares"]


def linear_least_squares(bias: bool = True) -> HessianOperator:
    """The Hessian operator of the mean squared error of a float64 ``torch.nn.Linear(3, 1)`` with zero parameters
    on the two samples ``x = (2, 0, 0)`` and ``(0, 1, 0)`` with targets 0: ``L(w, b) = ((2 w_1 + b)^2 + (w_2 + b)^2)
    / 2``.  Its weight block is exactly ``diag(4, 1, 0)`` and its bias block ``[2]`` (the full Hessian, in the order
    ``w_1, w_2, w_3, b``, has the off-diagonal entries ``H[0, 3] = 2`` and ``H[1, 3] = 1``).

    Parameters
    ----------
    bias : bool
        Whether the model has its bias; without it the Hessian is ``diag(4, 1, 0)``.

    Returns
    -------
    HessianOperator
        From :meth:`hessop.HessianOperator.from_torch` (needs PyTorch).

    Examples
    --------
    >>> import numpy as np
    >>> from hessop.models.linear import linear_least_squares
    >>> H = linear_least_squares()
    >>> H.backend.names, (H @ np.eye(4)).round(6).tolist()
    (['weight', 'bias'], [[4.0, 0.0, 0.0, 2.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, 2.0]])
    >>> (linear_least_squares(bias=False) @ np.ones(3)).round(6).tolist()
    [4.0, 1.0, 0.0]
    """
    model = torch.nn.Linear(3, 1, bias=bias).double()
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    x = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    return HessianOperator.from_torch(model, torch.nn.MSELoss(), (x, torch.zeros(2, 1, dtype=torch.float64)))
