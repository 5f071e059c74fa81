"""LRP beyond single layers: input structures and the engine's options, functional calls
equal to modules, products and normalisation, calls without a rule, the docs' worked rule,
and the untouched model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tdlens
from tdlens import lrp
from tests.conftest import CNN, MLP, DictInput, TwoInput, assert_untouched, model_state, randn
from tests.conftest import seeded as _seeded


def seeded(model, seed=0):
    return _seeded(model, seed)


# -- the engine's features -------------------------------------------------------------------
def test_layer_relevance_and_chunking():
    model = seeded(CNN())
    x = randn(5, 1, 8, 8)
    method = tdlens.LRP(model)
    at_layer = method.attribute(x, target=2, layer="relu2")
    assert at_layer.shape == (5, 4, 4, 4)
    chunked = method.attribute(x, targets=[2, 4], internal_batch_size=2)
    torch.testing.assert_close(chunked[:, 0], method.attribute(x, target=2))
    # epsilon 1e-9 and no bias below relu2's output: its relevance is what reaches the input
    # through conv1 plus conv1's and conv2's biases; both sums are finite and nonzero
    assert at_layer.sum() != 0


def test_tuple_and_dict_inputs():
    two = seeded(TwoInput())
    x, y = randn(3, 4), randn(3, 3, seed=2)
    ax, ay = tdlens.LRP(two).attribute((x, y), target=1)
    assert ax.shape == x.shape and ay.shape == y.shape
    model = seeded(DictInput())
    inputs = {
        "image": randn(3, 5),
        "table": randn(3, 2),
        "mask": torch.ones(3, dtype=torch.float64),
    }
    out = tdlens.LRP(model).attribute(inputs, targets=[0, 1], keys=["image", "table"])
    assert set(out) == {"image", "table"} and out["image"].shape == (3, 2, 5)


def test_initial_relevance_scales():
    model = seeded(MLP())
    x = randn(3, 6)
    attr, _delta = tdlens.LRP(model).attribute(x, target=0, return_convergence_delta=True)
    one = tdlens.LRP(model).attribute(x, target=0, initial_relevance=1.0)
    value = model(x)[:, 0].detach()
    torch.testing.assert_close(one * value[:, None], attr)


# -- functional calls ------------------------------------------------------------------------
class ModuleBlock(nn.Module):
    """A tiny transformer block out of modules."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.proj = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.softmax = nn.Softmax(-1)
        self.gelu, self.tanh, self.relu = nn.GELU(), nn.Tanh(), nn.ReLU()
        self.gate = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def attention(self, q, k, v):
        return self.softmax(q @ k.transpose(-2, -1) / 8**0.5) @ v

    def forward(self, x):
        h = self.relu(self.conv(x)).flatten(2).transpose(1, 2)  # [B, 16, 4]
        h = self.norm(self.proj(h))
        h = h + self.attention(self.q(h), self.k(h), self.v(h))
        h = h + self.gelu(self.gate(h)) * self.tanh(h)
        return self.head(h.mean(1))


class FunctionalBlock(ModuleBlock):
    """The same network with functional calls (and F.scaled_dot_product_attention)."""

    def __init__(self, sdpa):
        super().__init__()
        self.sdpa = sdpa

    def attention(self, q, k, v):
        if self.sdpa:
            return F.scaled_dot_product_attention(q, k, v)
        return torch.matmul(F.softmax(torch.matmul(q, k.transpose(-2, -1)) / 8**0.5, dim=-1), v)

    def forward(self, x):
        lin = lambda m, t: F.linear(t, m.weight, m.bias)  # noqa: E731
        h = F.relu(F.conv2d(x, self.conv.weight, self.conv.bias, padding=1)).flatten(2)
        h = h.transpose(1, 2)
        h = F.layer_norm(lin(self.proj, h), (8,), self.norm.weight, self.norm.bias)
        h = torch.add(h, self.attention(lin(self.q, h), lin(self.k, h), lin(self.v, h)))
        h = h + torch.mul(F.gelu(lin(self.gate, h)), torch.tanh(h))
        return lin(self.head, h.mean(1))


@pytest.mark.parametrize("sdpa", [False, True])
def test_functional_and_module_versions_agree(sdpa):
    modules = seeded(ModuleBlock())
    functional = FunctionalBlock(sdpa).double().eval()
    functional.load_state_dict(modules.state_dict())
    x = randn(2, 1, 4, 4)
    ours = tdlens.LRP(modules, composite="transformer").attribute(x, targets=[0, 2])
    theirs = tdlens.LRP(functional, composite="transformer").attribute(x, targets=[0, 2])
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-8)
    # the rules change the result: it is not gradient x input
    gxi = tdlens.InputXGradient(modules).attribute(x, targets=[0, 2])
    assert not torch.allclose(ours, gxi, atol=1e-6)


def test_product_rule_shares():
    class Times(nn.Module):
        def forward(self, x, y):
            return x * y

    x, y = randn(2, 3), randn(2, 3, seed=2)
    for share in (0.5, 0.25):
        comp = lrp.Composite(defaults={"product": lrp.Product(share)})
        rx, ry = tdlens.LRP(Times(), composite=comp).attribute((x, y), target=1)
        value = x[:, 1] * y[:, 1]
        torch.testing.assert_close(rx[:, 1], share * value)
        torch.testing.assert_close(ry[:, 1], (1 - share) * value)
        assert rx[:, [0, 2]].abs().max() == 0


def test_product_rule_halves_and_layer_norm_holds_scale():
    """y = (a x) * (b x): each factor half; layer norm: relevance x * (g w - mean(g w)) / std."""

    class Gated(nn.Module):
        def forward(self, x):
            return (x * 2.0) * (x * 3.0)

    x = randn(2, 5)
    r = tdlens.LRP(Gated()).attribute(x, target=1)
    expected = torch.zeros_like(x)
    expected[:, 1] = 6 * x[:, 1] ** 2  # all of y[1] comes back to x[1], half by each factor
    torch.testing.assert_close(r, expected)

    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(5)

        def forward(self, x):
            return self.norm(x)

    model = seeded(Norm())
    r = tdlens.LRP(model).attribute(x, target=2)
    w, std = model.norm.weight, (x.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    g = torch.zeros_like(x)
    g[:, 2] = w[2]
    torch.testing.assert_close(r, x * (g - g.mean(1, keepdim=True)) / std)


# -- the model is never changed --------------------------------------------------------------
class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.act = nn.GELU()

    def forward(self, x):
        self.act(self.lin(x))
        raise RuntimeError("boom")


def test_model_untouched_also_after_an_exception():
    model = seeded(CNN())
    before = model_state(model)
    comp = lrp.Composite({nn.Conv2d: lrp.Gamma(), nn.ReLU: lrp.Pass(), "head": lrp.Epsilon(0.1)})
    tdlens.LRP(model, composite=comp).attribute(randn(2, 1, 8, 8), targets=[0, 1])
    lrp.conservation(model, randn(2, 1, 8, 8), target=0, composite=comp)
    assert_untouched(model, before)
    boom = seeded(Exploding())
    before = model_state(boom)
    with pytest.raises(RuntimeError, match="boom"):
        tdlens.LRP(boom, composite=lrp.Composite({nn.GELU: lrp.Pass()})).attribute(
            randn(2, 4), target=0
        )
    assert_untouched(boom, before)


def test_docs_rule_example():
    """docs/lrp.md's worked rule: the epsilon rule without the bias conserves relevance."""

    class NoBiasEpsilon(lrp.Rule):
        handles = frozenset({"linear"})

        def __init__(self, epsilon: float = 1e-9):
            self.epsilon = epsilon

        def relevance(self, op, z, relevance):
            s = relevance / lrp.stabilise(op.forward(op.x, op.weight), self.epsilon)
            return op.x * op.vjp(s, op.weight)

    model = seeded(MLP())
    x = randn(3, 6)
    comp = lrp.Composite({nn.Linear: NoBiasEpsilon()})
    _attr, gap = tdlens.LRP(model, composite=comp).attribute(
        x, target=0, return_convergence_delta=True
    )
    assert gap.abs().max() < 1e-6
    biased = tdlens.LRP(model).attribute(x, target=0, return_convergence_delta=True)[1]
    assert biased.abs().max() > 1e-3


def test_calls_without_a_rule_are_named_in_a_warning():
    class WithMHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))

    model = seeded(WithMHA())
    with pytest.warns(UserWarning, match="'multi_head_attention_forward' has no LRP rule"):
        tdlens.LRP(model).attribute(randn(2, 3, 4), target=0)


def test_tensordict_pipeline():
    """A tensordict.nn pipeline of two networks: relevance per input key, as a TensorDict."""
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModule, TensorDictSequential

    body = seeded(MLP((6, 8, 4)))
    head = seeded(nn.Linear(4, 3), 1)
    pipeline = TensorDictSequential(
        TensorDictModule(body, in_keys=["obs"], out_keys=["hidden"]),
        TensorDictModule(head, in_keys=["hidden"], out_keys=["logits"]),
    )
    td = TensorDict(obs=randn(4, 6), batch_size=[4])
    out = tdlens.LRP(pipeline).attribute(td, targets=[0, 2], output="logits")
    plain = tdlens.LRP(nn.Sequential(body, head)).attribute(td["obs"], targets=[0, 2])
    torch.testing.assert_close(out["obs"], plain)
