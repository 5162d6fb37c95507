"""Small PyTorch models and the bundled digits data, used by ``hessop demo``, the tests and the benchmarks.

Needs scikit-learn for the data (its bundled copy of the UCI handwritten digits: 1,797 8x8 images, no download).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["SmallResNet", "analyze_problem", "demo_operator", "digits", "train"]


def digits(n: int | None = None, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (default all 1,797) digits as ``(images (n, 1, 8, 8) scaled to [0, 1], labels (n,))``.

    Examples
    --------
    >>> from hessop.models.digits import digits
    >>> x, y = digits(64)
    >>> x.shape, x.dtype, y.shape
    (torch.Size([64, 1, 8, 8]), torch.float64, torch.Size([64]))
    >>> float(x.min()), float(x.max()), y[:10].tolist()
    (0.0, 1.0, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data come from scikit-learn: pip install scikit-learn") from e
    ds = load_digits()
    x = np.asarray(ds.images, dtype=np.float64)[:n] / 16.0
    y = np.asarray(ds.target)[:n]
    return torch.as_tensor(x, dtype=dtype).unsqueeze(1), torch.as_tensor(y, dtype=torch.long)


class SmallResNet(nn.Module):
    """conv(1->c) -> BatchNorm -> ReLU -> residual block [conv(c->c) -> tanh] -> 2x2 average pool -> MLP.

    With the default ``channels=4, hidden=20``: 1,706 parameters (conv 40, BatchNorm 8, conv 148, 1,300, 210).
    Small enough that its dense Hessian is a reference in tests, with every layer type the tests need
    (convolution, BatchNorm, a residual connection, fully connected layers).  ``batchnorm=False`` replaces the
    BatchNorm layer by the identity and ``residual=False`` drops the skip connection (``h = tanh(conv2(h))``), for
    the BatchNorm / residual study of ``examples/batchnorm_study.py``.

    Examples
    --------
    >>> import torch
    >>> from hessop.models.digits import SmallResNet
    >>> model = SmallResNet()
    >>> sum(p.numel() for p in model.parameters())
    1706
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> sum(p.numel() for p in SmallResNet(batchnorm=False).parameters())  # no BatchNorm scale and shift
    1698
    """

    def __init__(self, channels: int = 4, hidden: int = 20, classes: int = 10, *, batchnorm: bool = True,
                 residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(channels * 16, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = h + torch.tanh(self.conv2(h)) if self.residual else torch.tanh(self.conv2(h))
        h = self.pool(h).flatten(1)
        return self.fc2(torch.tanh(self.fc1(h)))


def minibatch_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   gen: torch.Generator, batch: int = 64) -> float:
    """One optimizer step on the cross-entropy of ``batch`` samples drawn from ``(x, y)`` with ``gen``, in train
    mode; returns the mini-batch loss.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> gen = torch.Generator().manual_seed(0)
    >>> losses = [minibatch_step(model, opt, x, y, gen, batch=8) for _ in range(2)]
    >>> model.training, len(losses), all(loss > 0 for loss in losses)
    (True, 2, True)
    """
    model.train()
    idx = torch.randint(0, len(x), (batch,), generator=gen)
    loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def end_training(model: nn.Module) -> None:
    """Eval mode and no ``.grad`` left behind: the state in which the demo and the examples take Hessians.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> model(torch.ones(1, 2)).sum().backward()
    >>> end_training(model)
    >>> model.training, [p.grad for p in model.parameters()]
    (False, [None, None])
    """
    model.eval()
    for p in model.parameters():
        p.grad = None


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = 200, lr: float = 0.01,
          batch: int = 64, seed: int = 0) -> list[float]:
    """A few Adam steps on mini-batches (model left in eval mode afterwards); returns the loss history.

    Examples
    --------
    >>> from hessop.models.digits import SmallResNet, digits, train
    >>> x, y = digits(128)
    >>> model = SmallResNet().double()
    >>> losses = train(model, x, y, steps=5, batch=16, seed=0)
    >>> len(losses), model.training, all(p.grad is None for p in model.parameters())
    (5, False, True)
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = [minibatch_step(model, opt, x, y, gen, batch) for _ in range(steps)]
    end_training(model)
    return losses


def demo_operator(seconds: float = 2.0, seed: int = 0, samples: int | None = None,
                  hessian_samples: int = 512) -> tuple[object, str]:
    """For ``hessop demo``: train a float64 SmallResNet with Adam on mini-batches of the first ``samples`` digits
    for ``seconds``, and return the Hessian operator of the mean cross-entropy over the first ``hessian_samples``
    of them (in batches of 256) with a summary of the training.

    Examples
    --------
    The number of steps, and so the loss, depend on the machine's speed:

    >>> from hessop.models.digits import demo_operator
    >>> H, summary = demo_operator(seconds=0.1, hessian_samples=64)
    >>> H.n, H.dtype
    (1706, dtype('float64'))
    >>> print(summary)  # doctest: +ELLIPSIS
    hessop demo: SmallResNet (1706 parameters, float64) trained ... Adam steps in 0.1 s on 1797 digits; loss ...
    Hessian of the mean cross-entropy over 64 training digits, in 1 batches
    """
    import time

    from hessop.operator import HessianOperator

    torch.manual_seed(seed)
    x, y = digits(samples, dtype=torch.float64)
    model = SmallResNet().double()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(seed)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        minibatch_step(model, opt, x, y, gen)
        steps += 1
    end_training(model)
    with torch.no_grad():
        logits = model(x)
        full, acc = float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).double().mean())
    xh, yh = x[:hessian_samples], y[:hessian_samples]
    batches = [(xh[i: i + 256], yh[i: i + 256]) for i in range(0, len(xh), 256)]
    H = HessianOperator.from_torch(model, nn.CrossEntropyLoss(), batches)
    summary = (f"hessop demo: SmallResNet ({H.n} parameters, float64) trained {steps} Adam steps in {seconds:g} s "
               f"on {len(x)} digits; loss {full:.4f}, accuracy {acc:.3f}\n"
               f"Hessian of the mean cross-entropy over {len(xh)} training digits, in {len(batches)} batches")
    return H, summary


def trained_cnn(n_samples: int, *, seed: int = 0, steps: int = 150) -> tuple[SmallResNet, torch.Tensor, torch.Tensor]:
    """The benchmarks' test network: ``torch.manual_seed(seed)``, the first ``n_samples`` digits (float64) and a
    float64 :class:`SmallResNet` (1,706 parameters) trained on them with :func:`train` for ``steps`` Adam steps
    (default 150).  Returns ``(model, x, y)``.

    Examples
    --------
    >>> model, x, y = trained_cnn(64, steps=2)
    >>> sum(p.numel() for p in model.parameters()), tuple(x.shape), x.dtype
    (1706, (64, 1, 8, 8), torch.float64)
    """
    torch.manual_seed(seed)
    x, y = digits(n_samples)
    model = SmallResNet().double()
    train(model, x, y, steps=steps)
    return model, x, y


def analyze_problem(seed: int = 0, device: str | None = None, *, steps: int = 150,
                    hessian_samples: int = 256) -> dict:
    """The problem ``hessop analyze`` runs when given no SPEC (``hessop.models.digits:analyze_problem``).

    A float64 :class:`SmallResNet` (1,706 parameters) trained with :func:`train` for ``steps`` Adam steps (a fixed
    number, so one seed gives one model) on all 1,797 digits, and the mean cross-entropy over the first
    ``hessian_samples`` of them in batches of 128.  Returns the problem dictionary of :mod:`hessop.report`.

    Examples
    --------
    >>> from hessop.models.digits import analyze_problem
    >>> problem = analyze_problem(steps=5, hessian_samples=128)
    >>> sorted(problem)
    ['data', 'description', 'loss_fn', 'model', 'reduction']
    >>> len(problem["data"]), problem["reduction"], problem["model"].training
    (1, 'mean', False)
    """
    torch.manual_seed(seed)
    x, y = digits(dtype=torch.float64)
    model = SmallResNet().double()
    losses = train(model, x, y, steps=steps, seed=seed)
    if device is not None:
        model, x, y = model.to(device), x.to(device), y.to(device)
    xh, yh = x[:hessian_samples], y[:hessian_samples]
    batches = [(xh[i: i + 128], yh[i: i + 128]) for i in range(0, len(xh), 128)]
    return {
        "model": model, "loss_fn": nn.CrossEntropyLoss(), "data": batches, "reduction": "mean",
        "description": (f"built-in example: SmallResNet (float64) after {steps} Adam steps on the 1,797 scikit-learn "
                        f"digits (last mini-batch loss {losses[-1]:.3f}); Hessian of the mean cross-entropy over "
                        f"the first {len(xh)} digits in {len(batches)} batches"),
    }
