"""How ``from_torch`` reads ``data`` (``hessop.backends.torch._batches.READING_RULE``): one batch or a collection of
batches for every container, the model's own loss (``loss_fn=None``, a Hugging Face style causal LM without a
wrapper), and the messages for what cannot be read."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

from hessop import HessianOperator  # noqa: E402
from hessop.backends.torch._batches import describe_reading, is_single_batch  # noqa: E402

VOCAB, WIDTH, SEQ = 7, 4, 5


class CausalLMOutputWithCrossAttentions(dict):
    """Like Hugging Face's ``ModelOutput``: a dict whose entries are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class TinyCausalLM(nn.Module):
    """A GPT-2-shaped causal LM with Hugging Face's interface: ``forward(input_ids, attention_mask=None,
    labels=None)`` returning an output with ``.loss`` (mean next-token cross-entropy, labels shifted inside, as HF
    does; None without labels) and ``.logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.attn = nn.Linear(WIDTH, 3 * WIDTH)
        self.ln = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.wte(input_ids)
        q, k, v = self.attn(h).split(WIDTH, dim=-1)
        scores = q @ k.transpose(-1, -2) / WIDTH ** 0.5
        t = input_ids.shape[-1]
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        if attention_mask is not None:
            causal = causal & attention_mask[:, None, :].bool()
        h = self.ln(h + torch.softmax(scores.masked_fill(~causal, -1e9), dim=-1) @ v)
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
        return CausalLMOutputWithCrossAttentions(loss=loss, logits=logits)


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1).double()

    def forward(self, x):
        return (self.lin(x),)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    model = TinyCausalLM().double()
    ids = [torch.randint(0, VOCAB, (3, SEQ)) for _ in range(3)]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def mean_loss(flat):  # every batch has 3 sequences: the mean over batches
        ps = {n: t.reshape(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
        return sum(functional_call(model, ps, (b,), {"labels": b}).loss for b in ids) / len(ids)

    dense = torch.autograd.functional.hessian(mean_loss, theta).numpy()
    return model, ids, dense


def test_hugging_face_style_lm_in_one_call(lm):
    """``loss_fn=None``: the model's own ``model(**batch).loss`` over dict batches, no wrapper."""
    model, ids, dense = lm
    batches = [{"input_ids": b, "attention_mask": torch.ones_like(b), "labels": b} for b in ids]
    v = np.random.default_rng(0).standard_normal(dense.shape[0])
    for method in ("double_backward", "forward_over_reverse"):
        H = HessianOperator.from_torch(model, None, batches, hvp_method=method)
        assert H.backend.n_samples == 9
        np.testing.assert_allclose(H @ v, dense @ v, rtol=1e-10, atol=1e-12)
    one = HessianOperator.from_torch(model, None, batches[0])  # a dict is one batch
    assert one.backend.n_samples == 3 and len(one.backend.data) == 1


def test_list_of_token_tensors_is_a_list_of_batches(lm):
    """The issue's case: LM token batches in a list with ``loss_form="model"`` (before: read as one batch and
    'list' object has no attribute 'size' inside the model)."""
    model, ids, dense = lm
    v = np.random.default_rng(1).standard_normal(dense.shape[0])
    H = HessianOperator.from_torch(model, lambda m, b: m(b, labels=b).loss, ids, loss_form="model")
    assert H.backend.n_samples == 9 and len(H.backend.data) == 3
    np.testing.assert_allclose(H @ v, dense @ v, rtol=1e-10, atol=1e-12)
    # loss_fn=None and a tuple batch: model(*batch), here model(input_ids, attention_mask, labels)
    tuples = [(b, torch.ones_like(b), b) for b in ids]
    np.testing.assert_allclose(HessianOperator.from_torch(model, None, tuples) @ v, dense @ v, rtol=1e-10,
                               atol=1e-12)


def test_model_output_that_is_not_a_tensor_says_what_to_pass(lm):
    model, ids, _ = lm
    with pytest.raises(TypeError, match=r"returned a CausalLMOutputWithCrossAttentions, not a tensor.*"
                                        r"holds a \.loss.*loss_fn=None.*loss_form='model'"):
        HessianOperator.from_torch(model, nn.CrossEntropyLoss(), (ids[0], ids[0]))
    with pytest.raises(ValueError, match="loss=None.*labels"):
        HessianOperator.from_torch(model, None, [{"input_ids": b} for b in ids])
    with pytest.raises(TypeError, match="returned a tuple holding no loss"):
        HessianOperator.from_torch(TupleOut(), None, [(torch.ones(3, 2, dtype=torch.float64),)])
    with pytest.raises(ValueError, match="loss_fn=None.*Hessian only"):
        HessianOperator.from_torch(model, None, ids, curvature="ggn")
    with pytest.raises(ValueError, match="each batch must be \\(inputs, targets\\), got a dict.*loss_fn=None"):
        HessianOperator.from_torch(model, nn.CrossEntropyLoss(), [{"input_ids": b, "labels": b} for b in ids])


# ---------------------------------------------------------------------------------------------- the rule itself
X, Y = torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize(("data", "form", "single"), [
    (X, "model", True),
    ({"x": X, "y": Y}, "outputs", True),
    ({"x": X, "y": Y}, "model", True),
    ((X, Y), "outputs", True),
    ([X, Y], "outputs", True),  # what a DataLoader's default collate gives for (x, y) samples
    (({"input_ids": Y}, Y), "outputs", True),  # dict inputs, as curvlinops reads them
    ([(X, Y), (X, Y)], "outputs", False),
    (((X, Y), (X, Y)), "outputs", False),
    ((X, Y), "model", True),  # a tuple of tensors: one batch
    ([Y, Y, Y], "model", False),  # a list of tensors: a list of batches
    ([Y, Y], "model", False),
    ([Y[:, None].expand(4, 3), Y[:, None].expand(4, 5)], "model", False),  # token batches of different lengths
    ([X, X], "model", False),
    ([{"x": X}, {"x": X}], "model", False),
    ([(X, Y)], "model", False),
])
def test_reading_rule(data, form, single):
    assert is_single_batch(data, form) is single


@pytest.mark.parametrize(("data", "form", "words"), [
    ([X, Y], "model", r"list of 2 tensors of different dtypes .* pass it as a tuple, data=\(x, y\)"),
    ([X, X[:, :1]], "model", r"of different dtypes or shapes \(\(4, 2\) float64, \(4, 1\) float64\).*1-tuple"),
    ((X, Y, "meta"), "model", r"tuple mixing tensors with other values \(Tensor, str\).* data=\[batch\]"),
    ([X, (X, Y)], "outputs", "mixing tensors with other values"),
    ([Y, Y, Y], "outputs", r"list of 3 tensors .* a batch is a pair \(inputs, targets\).* loss_fn=None"),
    ((X,), "outputs", r"tuple of 1 tensors"),
])
def test_what_cannot_be_read_is_refused_with_the_fix(data, form, words):
    with pytest.raises(ValueError, match=words):
        is_single_batch(data, form)


def test_a_loader_yields_batches_whatever_their_type_and_errors_say_how_data_was_read():
    ds = torch.utils.data.TensorDataset(X, Y.double()[:, None])
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    assert not is_single_batch(loader, "model") and not is_single_batch(loader, "outputs")
    assert next(iter(loader)).__class__ is list  # each item, a list [x, y], is one batch
    H = HessianOperator.from_torch(nn.Linear(2, 1).double(), nn.MSELoss(), loader)
    assert H.backend.n_samples == 4
    assert describe_reading([Y, Y], False) == "a list of 2 batches, each a Tensor"
    with pytest.raises(AttributeError) as info:  # the user's loss fails: the note says how data was read
        HessianOperator.from_torch(nn.Linear(2, 1).double(), lambda m, b: m(b[0]).sum() + b.image, [X, X],
                                   loss_form="model")
    assert any("hessop read data as a list of 2 batches, each a Tensor" in n for n in info.value.__notes__)
