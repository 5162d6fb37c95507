"""GGN, Fisher and empirical Fisher operators of the PyTorch backend against dense float64 references.

References are built independently of hessop's products: the GGN from the explicit output Jacobian
(``torch.func.jacrev``) and the closed-form softmax Hessian ``diag(p) - p p^T``; the empirical Fisher and the Fisher
from per-sample gradients (``vmap(grad)``) at the data's labels and at the Fisher's drawn labels; the residual
``R v`` as the Hessian-vector product (``jvp(grad)``) of ``sum_i r_i . f_i(theta)`` with ``r_i = grad_f l_i`` held
fixed.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.func import functional_call, grad, jacrev, jvp, vmap  # noqa: E402

import hessop  # noqa: E402
from hessop.backends.torch import TorchCurvatureBackend  # noqa: E402
from hessop.backends.torch._curvature import TANGENT_MEMORY  # noqa: E402

F = torch.nn.functional
RTOL = 1e-12
JV = [("forward", None, "batched"), ("forward", None, "columns"), ("reverse", None, "auto"), ("reverse", 0, "auto")]
# (jv_method, cache_memory, block_method): forward mode with a block in one batched pass, forward mode column by
# column, the double vjp through a kept graph, the double vjp rebuilt at every product


def _op(model, loss_fn, data, jv=("forward", None, "auto"), **kw):
    """The curvature operator with ``A v`` computed by ``jv = (jv_method, cache_memory, block_method)``."""
    return hessop.HessianOperator(TorchCurvatureBackend(model, loss_fn, data, jv_method=jv[0], cache_memory=jv[1],
                                                        block_method=jv[2], **kw))


def _flat_model(model):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def out(flat, x):
        ps = {n: t.reshape(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
        return functional_call(model, ps, (x,))

    return theta, out


def _per_sample_grads(out, theta, x, targets, loss):
    """``grad_theta loss(f(x_i), t_i)`` for every sample (rows), by ``vmap(grad)`` of one-sample batches."""
    one = grad(lambda t, xi, ti: loss(out(t, xi[None]), ti[None]))
    return vmap(one, in_dims=(None, 0, 0))(theta, x, targets)


def _dense_references(model, x, y, kind="cross_entropy", fisher_targets=None):
    """Dense GGN, empirical Fisher and (given the drawn targets, shape (N, M, ...)) Fisher of the mean loss."""
    theta, out = _flat_model(model)
    n_samples = x.shape[0]
    with torch.no_grad():
        J = jacrev(out)(theta, x).reshape(n_samples, -1, theta.numel())  # (N, C, n)
        f = out(theta, x)
    if kind == "cross_entropy":
        p = torch.softmax(f, 1)
        Hl = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        loss = F.cross_entropy
    else:
        d = f[0].numel()
        Hl = (2.0 / d) * torch.eye(d, dtype=f.dtype).expand(n_samples, d, d)
        loss = F.mse_loss
    refs = {"ggn": torch.einsum("nci,ncd,ndj->ij", J, Hl, J) / n_samples}
    g = _per_sample_grads(out, theta, x, y, loss)
    refs["empirical_fisher"] = g.T @ g / n_samples
    if fisher_targets is not None:
        m = fisher_targets.shape[1]
        gs = vmap(lambda t: _per_sample_grads(out, theta, x, t, loss), in_dims=1)(fisher_targets)  # (M, N, n)
        refs["fisher"] = torch.einsum("mni,mnj->ij", gs, gs) / (n_samples * m)
    return {k: v.numpy() for k, v in refs.items()}


def _rel_err(A, B):
    return float(np.max(np.abs(A - B)) / np.max(np.abs(B)))


# ------------------------------------------------------------------ the test CNN (digits, float64, eval mode)
@pytest.fixture(scope="module")
def cnn(torch_problem):
    p = torch_problem
    ops = {c: hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]), curvature=c,
                                                **({"mc_samples": 2, "fisher_seed": 7} if c == "fisher" else {}))
           for c in ("ggn", "fisher", "empirical_fisher")}
    with torch.no_grad():
        f = p["model"](p["x"])
    drawn = ops["fisher"].backend.sample_targets(0, f)
    refs = _dense_references(p["model"], p["x"], p["y"], fisher_targets=drawn)
    return ops, refs


@pytest.mark.parametrize("curvature", ["ggn", "fisher", "empirical_fisher"])
def test_cnn_products_match_dense(cnn, curvature):
    ops, refs = cnn
    V = np.random.default_rng(1).standard_normal((ops[curvature].n, 3))
    assert _rel_err(ops[curvature] @ V, refs[curvature] @ V) < RTOL
    assert _rel_err(ops[curvature] @ V[:, 0], refs[curvature] @ V[:, 0]) < RTOL


@pytest.mark.parametrize("jv", JV[1:])
@pytest.mark.parametrize("curvature", ["ggn", "fisher", "empirical_fisher"])
def test_cnn_reverse_products_match_dense(cnn, torch_problem, curvature, jv):
    """Forward mode column by column and the reverse form of ``A v`` (the operators above take a block in one
    batched pass), the latter with and without the kept graph: the first product (which builds and keeps the
    graph), a later one (through it) and a single vector."""
    ops, refs = cnn
    p = torch_problem
    kw = {"mc_samples": 2, "fisher_seed": 7} if curvature == "fisher" else {}
    op = _op(p["model"], p["loss_fn"], (p["x"], p["y"]), jv, curvature=curvature, check_deterministic=False, **kw)
    V = np.random.default_rng(1).standard_normal((op.n, 3))
    for _ in range(2):
        assert _rel_err(op @ V, refs[curvature] @ V) < RTOL
    assert _rel_err(op @ V[:, 0], refs[curvature] @ V[:, 0]) < RTOL
    assert (op.backend.cache_bytes > 0) == (jv[0] == "reverse" and jv[1] is None)


def test_cnn_hessian_is_ggn_plus_residual(cnn, torch_problem):
    """H = G + R: the residual operator against R v computed from its own definition, and H v (dense, from the
    fixture) against G v + R v."""
    ops, refs = cnn
    p = torch_problem
    theta, out = _flat_model(p["model"])
    with torch.no_grad():
        f = out(theta, p["x"])
        r = (torch.softmax(f, 1) - F.one_hot(p["y"], f.shape[1]).to(f.dtype)) / f.shape[0]  # grad_f of the mean CE
    g = grad(lambda t: (out(t, p["x"]) * r).sum())
    V = np.random.default_rng(2).standard_normal((ops["ggn"].n, 2))
    with torch.no_grad():
        RV = np.stack([jvp(g, (theta,), (torch.as_tensor(v),))[1].numpy() for v in V.T], axis=1)
    H = hessop.HessianOperator.from_torch(p["model"], p["loss_fn"], (p["x"], p["y"]))
    R = hessop.residual_operator(H, ops["ggn"])
    assert _rel_err(R @ V, RV) < RTOL
    HV = p["hessian"] @ V
    assert float(np.max(np.abs(refs["ggn"] @ V + RV - HV))) < RTOL * float(np.max(np.abs(HV)))


@pytest.mark.parametrize("curvature", ["ggn", "fisher", "empirical_fisher"])
def test_cnn_eigenvalues_within_residuals(cnn, curvature):
    ops, refs = cnn
    exact = np.linalg.eigvalsh(refs[curvature])[::-1]
    assert exact[-1] >= -1e-13 * exact[0]  # the references are PSD up to rounding
    res = hessop.lanczos(ops[curvature], 3)
    assert res.all_converged
    assert np.all(np.abs(res.eigenvalues - exact[:3]) <= res.residuals)


def test_cnn_ggn_top_outliers_as_measured(cnn):
    """The GGN's top eigenvalues on the test CNN (256 digits, 10 classes, 150 Adam steps), as measured: one
    dominant outlier (about 4x the next) over a spread of a dozen decreasing values, no gap after the 10th."""
    ops, refs = cnn
    lam = np.linalg.eigvalsh(refs["ggn"])[::-1][:14]
    ratios = lam[:-1] / lam[1:]
    assert int(np.argmax(ratios)) == 0 and 3.5 < ratios[0] < 5
    assert np.all(ratios[8:] < 1.5)


# ------------------------------------------------------------------ a tiny MLP: reductions, batches, blocks, MSE
@pytest.fixture
def mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x = torch.randn(13, 4, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (13,)), torch.randn(13, 3, dtype=torch.float64)


def _dense(op):
    return op @ np.eye(op.n)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("curvature", ["ggn", "fisher", "empirical_fisher"])
def test_operator_is_psd_within_rounding(mlp, curvature, loss):
    """Every eigenvalue of the operator's explicit matrix (its products with the identity) is >= -1e-13 of the
    largest: PSD within rounding."""
    model, x, y, t = mlp
    loss_fn, targets = (torch.nn.CrossEntropyLoss(), y) if loss == "cross_entropy" else (torch.nn.MSELoss(), t)
    A = _dense(hessop.HessianOperator.from_torch(model, loss_fn, (x, targets), curvature=curvature))
    lam = np.linalg.eigvalsh((A + A.T) / 2)
    assert lam[0] >= -1e-13 * lam[-1] and np.max(np.abs(A - A.T)) < 1e-15 * lam[-1] * A.shape[0]


@pytest.mark.parametrize("jv", JV)
@pytest.mark.parametrize("curvature", ["ggn", "empirical_fisher"])
def test_unequal_batches_and_reductions(mlp, curvature, jv):
    model, x, y, _ = mlp
    refs = _dense_references(model, x, y)
    batches = [(x[:4], y[:4]), (x[4:11], y[4:11]), (x[11:], y[11:])]
    mean = _op(model, torch.nn.CrossEntropyLoss(), batches, jv, curvature=curvature)
    assert _rel_err(_dense(mean), refs[curvature]) < RTOL
    total = _op(model, torch.nn.CrossEntropyLoss(reduction="sum"), batches, jv, reduction="sum",
                curvature=curvature)
    for _ in range(2):  # the second through the kept graphs, where they are kept
        assert _rel_err(_dense(total), 13 * refs[curvature]) < RTOL


@pytest.mark.parametrize("jv", JV)
def test_fisher_sum_reduction_and_fixed_draws(mlp, jv):
    model, x, y, _ = mlp
    kw = {"curvature": "fisher", "mc_samples": 3, "fisher_seed": 5}
    mean = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y), **kw)
    total = _op(model, torch.nn.CrossEntropyLoss(reduction="sum"), (x, y), jv, reduction="sum", **kw)
    v = np.random.default_rng(0).standard_normal(mean.n)
    assert np.array_equal(mean @ v, mean @ v)  # the same draws at every product: one fixed matrix
    assert _rel_err(total @ v, 13 * (mean @ v)) < RTOL
    other = hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y), curvature="fisher",
                                              mc_samples=3, fisher_seed=6)
    assert not np.allclose(other @ v, mean @ v)


@pytest.mark.parametrize("jv", JV)
@pytest.mark.parametrize("curvature", ["ggn", "fisher", "empirical_fisher"])
def test_parameter_block(mlp, curvature, jv):
    """Blocks by params= (the last layer, the first layer's weight) and by restrict, each against the diagonal
    block of the dense full matrix."""
    model, x, y, _ = mlp
    kw = {"curvature": curvature, "fisher_seed": 3}
    full = _dense(hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y), **kw))
    block = _op(model, torch.nn.CrossEntropyLoss(), (x, y), jv, params=["2"], **kw)
    assert block.backend.jv_method == jv[0]
    assert _rel_err(_dense(block), full[-block.n:, -block.n:]) < RTOL
    assert _rel_err(_dense(hessop.HessianOperator(block.backend.restrict(["2.bias"]))), full[-3:, -3:]) < RTOL
    first = _op(model, torch.nn.CrossEntropyLoss(), (x, y), jv, params=["0.weight"], **kw)
    assert _rel_err(_dense(first), full[:24, :24]) < RTOL


def test_kept_graph_follows_the_parameters(mlp):
    """The reverse form's kept graph is dropped when a parameter changes in place: the next product is that of a
    fresh operator at the new parameters."""
    model, x, y, _ = mlp
    op = _op(model, torch.nn.CrossEntropyLoss(), (x, y), ("reverse", None, "auto"), curvature="ggn")
    v = np.random.default_rng(5).standard_normal(op.n)
    before = op @ v
    assert op.backend.cache_bytes > 0
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    fresh = _op(model, torch.nn.CrossEntropyLoss(), (x, y), ("reverse", 0, "auto"), curvature="ggn") @ v
    assert not np.allclose(before, fresh)
    assert _rel_err(op @ v, fresh) < RTOL


class _NoForwardAD(torch.autograd.Function):
    """tanh with a backward (differentiable: double backward works) and no forward-mode derivative."""

    @staticmethod
    def forward(ctx, t):
        out = torch.tanh(t)
        ctx.save_for_backward(t)
        return out

    @staticmethod
    def backward(ctx, g):
        t, = ctx.saved_tensors
        return g * (1 - torch.tanh(t) ** 2)


def test_forward_mode_falls_back_to_reverse(mlp):
    """A model with an operation that has no forward derivative: ``"auto"`` warns once, then computes the products
    in the reverse form (equal to those of the same model with torch.tanh); ``"forward"`` raises."""
    model, x, y, _ = mlp

    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = model[0], model[2]

        def forward(self, t):
            return self.b(_NoForwardAD.apply(self.a(t)))

    ref = _dense(hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y), curvature="ggn"))
    with pytest.warns(UserWarning, match="forward-mode Jacobian-vector products failed"):
        op = hessop.HessianOperator.from_torch(Custom(), torch.nn.CrossEntropyLoss(), (x, y), curvature="ggn")
    assert op.backend.jv_method == "reverse"
    assert _rel_err(_dense(op), ref) < RTOL
    with pytest.raises(RuntimeError):
        _op(Custom(), torch.nn.CrossEntropyLoss(), (x, y), ("forward", None, "columns"), curvature="ggn")


class _Counting(torch.nn.Module):
    """A model whose forward pass counts its calls in a buffer, in place: ``torch.func`` refuses to transform it."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, t):
        self.calls.add_(1)
        return self.inner(t)


def test_batched_block_falls_back_to_columns(mlp):
    """A model the batched pass cannot transform: ``block_method="auto"`` warns once and goes column by column
    (the same matrix as the plain model's); ``"batched"`` raises."""
    model, x, y, _ = mlp
    ref = _dense(hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y), curvature="ggn"))
    op = _op(_Counting(model), torch.nn.CrossEntropyLoss(), (x, y), curvature="ggn")
    with pytest.warns(UserWarning, match="batched block product"):
        assert _rel_err(_dense(op), ref) < RTOL
    assert op.backend.block_method == "columns"
    with pytest.raises(RuntimeError):  # at the determinism check's first product
        _op(_Counting(model), torch.nn.CrossEntropyLoss(), (x, y), ("forward", None, "batched"), curvature="ggn")


@pytest.mark.parametrize("curvature", ["ggn", "fisher", "empirical_fisher"])
def test_batched_block_in_chunks(mlp, curvature):
    """A block split into chunks by ``block_memory`` (3 columns per pass, then 1) gives the unsplit block's
    product."""
    model, x, y, _ = mlp
    kw = {"curvature": curvature, "fisher_seed": 2, "block_method": "batched"}
    whole = hessop.HessianOperator(TorchCurvatureBackend(model, torch.nn.CrossEntropyLoss(), (x, y), **kw))
    V = np.random.default_rng(3).standard_normal((whole.n, 7))
    ref = whole @ V
    saved = whole.backend.saved_bytes(x)
    assert saved > 0
    for columns, budget in ((3, 3 * TANGENT_MEMORY * saved), (1, 1)):
        op = hessop.HessianOperator(TorchCurvatureBackend(model, torch.nn.CrossEntropyLoss(), (x, y),
                                                          block_memory=budget, **kw))
        assert op.backend.chunk_columns(x) == columns
        assert _rel_err(op @ V, ref) < RTOL


@pytest.fixture
def bn_model():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Tanh(),
                                torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3)).double().train()
    x = torch.randn(11, 1, 6, 6, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (11,))


@pytest.mark.parametrize("params", [None, ["1", "4"]])
@pytest.mark.parametrize("curvature", ["ggn", "fisher", "empirical_fisher"])
def test_train_mode_batch_norm_blocks(bn_model, curvature, params):
    """Train-mode batch norm, unequal batches: the batched pass, column by column and the reverse form agree to
    1e-12 (the GGN also against the dense GGN from the explicit Jacobian of each batch), and the running
    statistics are left as they were."""
    model, x, y = bn_model
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    before = [b.clone() for b in model.buffers()]
    kw = {"curvature": curvature, "params": params, "mc_samples": 2} if curvature == "fisher" else {
        "curvature": curvature, "params": params}
    with pytest.warns(UserWarning, match="train mode"):
        ops = [_op(model, torch.nn.CrossEntropyLoss(), batches, jv, **kw) for jv in JV]
    V = np.random.default_rng(6).standard_normal((ops[0].n, 5))
    products = [op @ V for op in ops]
    for other in products[1:]:
        assert _rel_err(products[0], other) < RTOL
    if curvature == "ggn" and params is None:
        plain = copy.deepcopy(model)
        for m in plain.modules():  # the same train-mode outputs, no running statistics to update
            if isinstance(m, torch.nn.BatchNorm2d):
                m.track_running_stats, m.running_mean, m.running_var = False, None, None
        dense = sum(len(xb) / len(x) * _dense_references(plain, xb, yb)["ggn"] for xb, yb in batches)
        assert _rel_err(products[0], dense @ V) < RTOL
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))


def test_mse_against_dense(mlp):
    model, x, _, t = mlp
    fisher = hessop.HessianOperator.from_torch(model, torch.nn.MSELoss(), (x, t), curvature="fisher",
                                               mc_samples=4)
    with torch.no_grad():
        drawn = fisher.backend.sample_targets(0, model(x))
    refs = _dense_references(model, x, t, kind="mse", fisher_targets=drawn)
    for curvature in ("ggn", "empirical_fisher"):
        op = hessop.HessianOperator.from_torch(model, torch.nn.MSELoss(), (x, t), curvature=curvature)
        assert _rel_err(_dense(op), refs[curvature]) < RTOL
    assert _rel_err(_dense(fisher), refs["fisher"]) < RTOL


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_fisher_is_unbiased_for_ggn(mlp, loss):
    """E[F] = G: the quadratic form of one vector over 60 seeds (one draw each) is within 4 standard errors of
    G's (a false alarm about once in 16,000 runs for a Gaussian mean; the draws here are deterministic)."""
    model, x, y, t = mlp
    loss_fn, targets = (torch.nn.CrossEntropyLoss(), y) if loss == "cross_entropy" else (torch.nn.MSELoss(), t)
    v = np.random.default_rng(4).standard_normal(sum(p.numel() for p in model.parameters()))
    ggn = hessop.HessianOperator.from_torch(model, loss_fn, (x, targets), curvature="ggn")
    forms = [v @ (hessop.HessianOperator.from_torch(model, loss_fn, (x, targets), curvature="fisher", fisher_seed=s,
                                                    check_deterministic=False) @ v) for s in range(60)]
    assert abs(np.mean(forms) - v @ (ggn @ v)) < 4 * np.std(forms, ddof=1) / np.sqrt(len(forms))


def test_label_smoothing_ggn_and_empirical_fisher(mlp):
    model, x, y, _ = mlp
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    theta, out = _flat_model(model)
    g = _per_sample_grads(out, theta, x, y, lambda f, t: F.cross_entropy(f, t, label_smoothing=0.1))
    ef = hessop.HessianOperator.from_torch(model, loss_fn, (x, y), curvature="empirical_fisher")
    assert _rel_err(_dense(ef), (g.T @ g / 13).numpy()) < RTOL
    ggn = hessop.HessianOperator.from_torch(model, loss_fn, (x, y), curvature="ggn")
    assert _rel_err(_dense(ggn), _dense_references(model, x, y)["ggn"]) < RTOL  # the smoothing moves no Hessian


def test_declared_output_loss(mlp):
    model, x, y, _ = mlp
    ref = _dense(hessop.HessianOperator.from_torch(model, torch.nn.CrossEntropyLoss(), (x, y), curvature="ggn"))
    op = hessop.HessianOperator.from_torch(model, lambda f, t: F.cross_entropy(f, t), (x, y), curvature="ggn",
                                           output_loss="cross_entropy")
    assert _rel_err(_dense(op), ref) < RTOL


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("kwargs, loss, match", [
    ({"curvature": "gauss_newton"}, None, "curvature must be one of"),
    ({"curvature": "fisher", "mc_samples": 0}, None, "mc_samples must be >= 1"),
    ({"curvature": "ggn", "output_loss": "hinge"}, None, "output_loss must be one of"),
    ({"mc_samples": 4}, None, "apply to curvature="),
    ({"curvature": "ggn"}, torch.nn.NLLLoss(), "recognised loss in the model's outputs"),
    ({"curvature": "ggn"}, torch.nn.CrossEntropyLoss(reduction="sum"), "pass reduction='sum'"),
    ({"curvature": "fisher"}, torch.nn.CrossEntropyLoss(weight=torch.ones(3, dtype=torch.float64)),
     "class weights"),
    ({"curvature": "ggn", "output_loss": "mse"}, None, "targets have shape"),
    ({"curvature": "ggn", "loss_form": "model"}, None, "loss_form='model'"),
    ({"curvature": "ggn", "jv_method": "double_backward"}, None, "jv_method must be one of"),
    ({"curvature": "ggn", "block_method": "vmap"}, None, "block_method must be one of"),
    ({"curvature": "ggn", "block_memory": 0}, None, "block_memory must be a number of bytes"),
])
def test_refusals(mlp, kwargs, loss, match):
    model, x, y, _ = mlp
    loss = torch.nn.CrossEntropyLoss() if loss is None else loss
    if kwargs.get("loss_form") == "model":
        loss = lambda m, b: F.cross_entropy(m(b[0]), b[1])  # noqa: E731
    with pytest.raises((ValueError, TypeError), match=match):
        if {"jv_method", "block_method", "block_memory"} & set(kwargs):
            TorchCurvatureBackend(model, loss, (x, y), **kwargs)
        else:
            hessop.HessianOperator.from_torch(model, loss, (x, y), **kwargs)
