"""Attention rollout and flow against hand computations on a 2-layer toy with fixed attention
patterns (flow against networkx's max-flow), AttentionXGradient against its formula written
with autograd, and the three ways to find the patterns (path, output_attentions, capture)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdlens
from tdlens.core.errors import InputError
from tests.conftest import MLP, assert_untouched, model_state, randn, seeded

L, H, T, D = 2, 2, 4, 6


class Layer(nn.Module):
    """Fixed attention logits per head; returns (hidden, pattern)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.value = nn.Linear(D, D)
        self.keep = None

    def forward(self, x):
        b = x.shape[0]
        pattern = torch.softmax(self.logits.expand(b, H, T, T), dim=-1)
        if self.keep is not None:
            self.keep.append(pattern)
        v = self.value(x).view(b, T, H, D // H).transpose(1, 2)
        mixed = (pattern @ v).transpose(1, 2).reshape(b, T, D)
        return torch.tanh(x + mixed), pattern


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.layers = nn.ModuleList(
            Layer(torch.randn(H, T, T, generator=g, dtype=torch.float64) * 2) for _ in range(L)
        )
        self.head = nn.Linear(D, 3)

    def forward(self, x):
        for layer in self.layers:
            x, _ = layer(x)
        return self.head(x.mean(1))


@pytest.fixture
def toy():
    model = Toy().double().eval()
    torch.manual_seed(1)
    for layer in model.layers:
        nn.init.normal_(layer.value.weight, std=0.5)
    return model


def hand_matrices(model, fusion="mean", discard=0.0):
    out = []
    for layer in model.layers:
        p = torch.softmax(layer.logits.detach(), dim=-1)  # [H, T, T]
        a = {"mean": p.mean(0), "max": p.amax(0), "min": p.amin(0)}[fusion]
        if discard:
            flat = a.flatten().clone()
            n = int(flat.numel() * discard)
            flat[flat.argsort()[:n]] = 0
            a = flat.view(T, T)
        a = a + torch.eye(T, dtype=a.dtype)
        out.append(a / a.sum(-1, keepdim=True))
    return out


@pytest.mark.parametrize(("fusion", "discard"), [("mean", 0.0), ("max", 0.0), ("min", 0.25)])
def test_rollout_equals_hand_computation(toy, fusion, discard):
    x = randn(2, T, D)
    before = model_state(toy)
    rollout = tdlens.AttentionRollout(toy, head_fusion=fusion, discard_ratio=discard).attribute(x)
    a1, a2 = hand_matrices(toy, fusion, discard)
    torch.testing.assert_close(rollout, (a2 @ a1).expand(2, T, T))
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, T, dtype=torch.float64))
    assert_untouched(toy, before)


def test_patterns_by_path_equal_captured_ones(toy):
    x = randn(2, T, D)
    by_path = tdlens.AttentionRollout(toy, attentions="layers.*:output[1]").attribute(x)
    torch.testing.assert_close(by_path, tdlens.AttentionRollout(toy).attribute(x))
    no_residual = tdlens.AttentionRollout(toy, residual=False).attribute(x)
    p = [torch.softmax(layer.logits.detach(), -1).mean(0) for layer in toy.layers]
    torch.testing.assert_close(no_residual[0], p[1] @ p[0])


def test_flow_equals_networkx_max_flow(toy):
    nx = pytest.importorskip("networkx")
    x = randn(1, T, D)
    flow = tdlens.AttentionFlow(toy).attribute(x)
    a1, a2 = hand_matrices(toy)
    graph = nx.DiGraph()
    for level, a in ((1, a1), (2, a2)):
        for i in range(T):
            for j in range(T):
                graph.add_edge((level, i), (level - 1, j), capacity=float(a[i, j]))
    for i in range(T):
        for j in range(T):
            expected = nx.maximum_flow_value(graph, (2, i), (0, j))
            assert flow[0, i, j].item() == pytest.approx(expected, abs=1e-9)


def test_attention_x_gradient_equals_its_autograd_formula(toy):
    x = randn(3, T, D)
    ours = tdlens.AttentionXGradient(toy).attribute(x, targets=[0, 2])
    for k, t in enumerate((0, 2)):
        kept = []
        for layer in toy.layers:
            layer.keep = kept
        try:
            y = toy(x)[:, t].sum()
            grads = torch.autograd.grad(y, kept)
        finally:
            for layer in toy.layers:
                layer.keep = None
        r = torch.eye(T, dtype=torch.float64).expand(3, T, T)
        for a, g in zip(kept, grads):
            r = r + (g * a).clamp(min=0).mean(1) @ r
        torch.testing.assert_close(ours[:, k], r.detach())
    single = tdlens.AttentionXGradient(toy).attribute(x, target=2)
    torch.testing.assert_close(single, ours[:, 1])
    by_path = tdlens.AttentionXGradient(toy, attentions="layers.*:output[1]")
    torch.testing.assert_close(by_path.attribute(x, targets=[0, 2]), ours)


def test_no_attention_found_says_how_to_name_it():
    with pytest.raises(InputError, match=r"attentions='blocks\.\*\.attn:output\[1\]'"):
        tdlens.AttentionRollout(seeded(MLP())).attribute(randn(2, 6))
    with pytest.raises(InputError, match="head_fusion"):
        tdlens.AttentionRollout(seeded(MLP()), head_fusion="median")


# -- Hugging Face models ---------------------------------------------------------------------
transformers = pytest.importorskip("transformers")


def bert(impl):
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
        initializer_range=0.3, attn_implementation=impl,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config).double().eval()


def test_hugging_face_output_attentions_and_captured_sdpa_agree():
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    eager, sdpa = bert("eager"), bert("sdpa")
    before = model_state(sdpa)
    r_eager = tdlens.AttentionRollout(eager).attribute(ids, attention_mask=mask)
    r_sdpa = tdlens.AttentionRollout(sdpa).attribute(ids, attention_mask=mask)
    assert r_eager.shape == (2, 6, 6)
    torch.testing.assert_close(r_eager, r_sdpa)
    # what output_attentions returns (which leaves transformers' hooks on the model)
    patterns = bert("eager")(ids, attention_mask=mask, output_attentions=True).attentions
    by_hand = None
    for p in patterns:
        a = p.detach().mean(1) + torch.eye(6, dtype=torch.float64)
        a = a / a.sum(-1, keepdim=True)
        by_hand = a if by_hand is None else a @ by_hand
    torch.testing.assert_close(r_sdpa, by_hand)
    g_eager = tdlens.AttentionXGradient(eager).attribute(ids, targets=[0, 1], attention_mask=mask)
    g_sdpa = tdlens.AttentionXGradient(sdpa).attribute(ids, targets=[0, 1], attention_mask=mask)
    assert g_eager.shape == (2, 2, 6, 6)
    torch.testing.assert_close(g_eager, g_sdpa)
    flow = tdlens.AttentionFlow(sdpa).attribute(ids[:1])
    assert flow.shape == (1, 6, 6) and (flow >= 0).all()
    assert_untouched(sdpa, before)
