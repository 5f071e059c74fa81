"""The get/set API: cache, patch and steer activations by module path inside a scope."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn

import tdlens
from tests.conftest import randn, seeded


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"mlp": nn.Linear(4, 4), "act": nn.Tanh()}) for _ in range(3)
        )
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        for block in self.blocks:
            x = x + block["act"](block["mlp"](x))
        return self.head(x)


@pytest.fixture
def blocks():
    return seeded(Blocks())


def test_get_caches_outputs_and_inputs_as_a_tensordict(blocks):
    x = randn(5, 4)
    with tdlens.Scope(blocks) as scope:
        scope.get("blocks.*.mlp")
        scope.get("head:input")
        out = scope.run(x)
    cache = scope.cache
    assert isinstance(cache, TensorDict)
    assert set(cache.keys()) == {"blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp", "head:input"}
    torch.testing.assert_close(cache["blocks.0.mlp"], blocks.blocks[0]["mlp"](x))
    torch.testing.assert_close(blocks.head(cache["head:input"]), out)


def test_get_gradient(blocks):
    x = randn(5, 4)
    with tdlens.Scope(blocks) as scope:
        scope.get("head:input", grad=True)
        blocks(x)[:, 1].sum().backward()
    for p in blocks.parameters():
        p.grad = None
    expected = blocks.head.weight[1].detach().expand(5, 4)
    torch.testing.assert_close(scope.cache["head:input:grad"], expected)


def test_set_tensor_and_function(blocks):
    x = randn(5, 4)
    with tdlens.Scope(blocks) as scope:
        scope.set("blocks.*.act", lambda out: out * 0)  # ablate every block
        ablated = scope.run(x)
    torch.testing.assert_close(ablated, blocks.head(x))
    with tdlens.Scope(blocks) as scope:
        scope.set("head:input", torch.zeros(4))  # broadcast to the batch
        zeroed = scope.run(x)
    torch.testing.assert_close(zeroed, blocks.head.bias.expand(5, 2))
    torch.testing.assert_close(blocks(x), blocks(x))  # hooks gone: normal output again
    assert not blocks.head._forward_pre_hooks


def test_activation_patching_between_two_runs(blocks):
    """Cache a clean run, patch one block's output into a corrupted run."""
    clean, corrupt = randn(3, 4), randn(3, 4, seed=7)
    with tdlens.Scope(blocks) as scope:
        scope.get("blocks.1.mlp")
        scope.run(clean)
    patch = scope.cache["blocks.1.mlp"]
    with tdlens.Scope(blocks) as scope:
        scope.set("blocks.1.mlp", patch)
        patched = scope.run(corrupt)
    expected = corrupt + torch.tanh(blocks.blocks[0]["mlp"](corrupt))
    expected = expected + torch.tanh(patch)
    expected = expected + torch.tanh(blocks.blocks[2]["mlp"](expected))
    torch.testing.assert_close(patched, blocks.head(expected))


def test_accumulate_over_runs_and_get_after_set(blocks):
    with tdlens.Scope(blocks) as scope:
        scope.set("blocks.0.mlp", lambda out: out + 1)
        scope.get("blocks.0.mlp", accumulate=True)
        for seed in range(4):
            scope.run(randn(2, 4, seed=seed))
    assert scope.runs == 4
    assert scope.cache["blocks.0.mlp"].shape == (4, 2, 4)
    x = randn(2, 4, seed=3)
    torch.testing.assert_close(scope.cache["blocks.0.mlp"][3], blocks.blocks[0]["mlp"](x) + 1)


def test_tuple_output_selector_and_shape_error():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    model = nn.Sequential()
    model.add_module("pair", Pair())
    with tdlens.Scope(model) as scope:
        scope.get("pair:output[1]")
        scope.set("pair[0]", lambda out: out + 1)
        a, b = model(torch.ones(2, 3))
        assert torch.equal(a, torch.full((2, 3), 3.0)) and torch.equal(b, torch.full((2, 3), 3.0))
        scope.set("pair[1]", torch.zeros(5))
        with pytest.raises(ValueError, match=r"shape \[5\] but the module produces \[2, 3\]"):
            model(torch.ones(2, 3))
    assert torch.equal(scope.cache["pair:output[1]"], torch.full((2, 3), 3.0))


def test_attribution_inside_a_scope_sees_the_intervention(blocks):
    """An attribution method run inside a scope explains the intervened model."""
    x = randn(4, 4)
    with tdlens.Scope(blocks) as scope:
        scope.set("blocks.*.act", lambda out: out * 0)
        attr = tdlens.Saliency(blocks, abs=False).attribute(x, target=1)
    torch.testing.assert_close(attr, blocks.head.weight[1].detach().expand(4, 4))


def test_scope_methods_need_the_with_block(blocks):
    scope = tdlens.Scope(blocks)
    with pytest.raises(ValueError, match=r"inside `with tdlens\.Scope"):
        scope.get("head")
