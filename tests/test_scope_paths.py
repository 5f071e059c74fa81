"""Scope as a new user tries it: tensor indexes in paths, generate(), paths that never run,
start()/close() outside a ``with`` block, cache keys as written."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

import tdlens
from tests.conftest import assert_untouched, model_state, randn, seeded


class Seq(nn.Module):
    """[B, T, D] -> [B, T, D] through two blocks, and a dropout that never runs."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.unused = nn.Dropout(0.1)

    def forward(self, x):
        for block in self.blocks:
            x = x + torch.tanh(block(x))
        return x


@pytest.fixture
def seq():
    return seeded(Seq())


def test_position_selector_reads_and_writes_one_position(seq):
    """'blocks.0[:, 2]' reads position 2, and a set there replaces that position only."""
    x = randn(3, 5, 4)
    with tdlens.Scope(seq) as scope:
        scope.get("blocks.0[:, 2]")
        scope.get("blocks.0", name="full")
        scope.run(x)
    torch.testing.assert_close(scope.cache["blocks.0[:, 2]"], scope.cache["full"][:, 2])
    with tdlens.Scope(seq) as scope:
        scope.set("blocks.0[:, 2]", torch.zeros(4))
        scope.get("blocks.0", name="after")
        scope.run(x)
    expected = seq.blocks[0](x)
    expected[:, 2] = 0
    torch.testing.assert_close(scope.cache["after"], expected)


def test_slice_selector_and_ellipsis(seq):
    x = randn(2, 5, 4)
    with tdlens.Scope(seq) as scope:
        scope.get("blocks.1[..., 0:2]")
        scope.get("blocks.1[:, 1:4:2]")
        scope.get("blocks.1", name="full")
        scope.run(x)
    full = scope.cache["full"]
    torch.testing.assert_close(scope.cache["blocks.1[..., 0:2]"], full[..., 0:2])
    torch.testing.assert_close(scope.cache["blocks.1[:, 1:4:2]"], full[:, 1:4:2])


def test_selector_errors_show_the_shape(seq):
    with tdlens.Scope(seq) as scope:
        scope.get("blocks.0[:, 9]")
        with pytest.raises(LookupError, match=r"no entry \[:, 9\].*shape \[2, 5, 4\]"):
            scope.run(randn(2, 5, 4))
    with pytest.raises(ValueError, match="tensor index"):
        tdlens.core.paths.parse_path("blocks.0[:, a:b]")


def test_cache_key_is_the_path_as_written():
    class Named(nn.Module):
        def forward(self, x):
            return {"hidden": x * 2, "other": x}

    model = nn.Sequential()
    model.add_module("inner", Named())
    model.add_module("tail", nn.Identity())
    with tdlens.Scope(model, strict=False) as scope:
        scope.get("inner[hidden]")
        scope.get("inner:output[other]")
        model.inner(torch.ones(2, 3))
    assert set(scope.cache.keys()) == {"inner[hidden]", "inner:output[other]"}
    torch.testing.assert_close(scope.cache["inner[hidden]"], torch.full((2, 3), 2.0))


def test_glob_keys_follow_the_written_form(seq):
    with tdlens.Scope(seq) as scope:
        scope.get("blocks.*[:, 0]")
        scope.run(randn(2, 3, 4))
    assert set(scope.cache.keys()) == {"blocks.0[:, 0]", "blocks.1[:, 0]"}


def test_a_path_that_never_runs_raises_naming_it(seq):
    before = model_state(seq)
    with tdlens.Scope(seq) as scope:
        scope.get("unused")
        with pytest.raises(ValueError, match=r"'unused' did not run"):
            scope.run(randn(2, 3, 4))
    assert_untouched(seq, before)
    with tdlens.Scope(seq) as scope:
        scope.set("unused", lambda v: v * 0)
        with pytest.raises(ValueError, match=r"'unused' did not run"):
            scope.run(randn(2, 3, 4))
    with tdlens.Scope(seq, strict=False) as scope:  # allowed when asked
        scope.get("unused")
        scope.run(randn(2, 3, 4))
    assert "unused" not in scope.cache.keys()


def test_start_and_close_outside_a_with_block(seq):
    before = model_state(seq)
    scope = tdlens.Scope(seq).start()
    scope.get("blocks.0")
    seq(randn(2, 3, 4))
    scope.close()
    assert_untouched(seq, before)
    assert scope.cache["blocks.0"].shape == (2, 3, 4)
    with pytest.raises(ValueError, match=r"scope\.start\(\)"):
        scope.get("blocks.1")


def test_a_dropped_scope_removes_its_hooks_at_garbage_collection(seq):
    before = model_state(seq)
    scope = tdlens.Scope(seq).start()
    scope.get("blocks.*", grad=True)
    scope.set("blocks.1", lambda v: v + 1)
    del scope
    gc.collect()
    assert_untouched(seq, before)


def test_accumulate_over_steps_of_different_length_concatenates_along_the_sequence(seq):
    """A KV-cache generation feeds the prompt, then one position per step."""
    prompt, step1, step2 = randn(2, 4, 4), randn(2, 1, 4, seed=1), randn(2, 1, 4, seed=2)
    with tdlens.Scope(seq) as scope:
        scope.get("blocks.0", accumulate=True)
        for x in (prompt, step1, step2):
            scope.run(x)
    assert scope.cache["blocks.0"].shape == (2, 6, 4)
    torch.testing.assert_close(scope.cache["blocks.0"][:, 4:5], seq.blocks[0](step1))
    assert [v.shape[1] for v in scope.values("blocks.0")] == [4, 1, 1]
    with tdlens.Scope(seq) as scope:
        scope.get("blocks.0", accumulate=True)
        scope.run(randn(2, 4, 4))
        scope.run(randn(3, 1, 4))
        with pytest.raises(ValueError, match=r"scope\.values\('blocks\.0'\)"):
            _ = scope.cache


def test_accumulate_during_hf_generate():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2, pad_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(1, 50, (2, 5), generator=torch.Generator().manual_seed(0))
    with tdlens.Scope(model) as scope:
        scope.get("transformer.h.0", accumulate=True)
        scope.get("transformer.h.0[:, -1]", accumulate=True)  # each step's last position
        out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert scope.runs == 3
    hidden = scope.cache["transformer.h.0"]
    assert hidden.shape == (2, 5 + 2, 16)  # the prompt, then one position per new step
    with torch.no_grad():
        full = model(out[:, :-1], output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(hidden, full, atol=1e-5, rtol=1e-4)
    last = scope.cache["transformer.h.0[:, -1]"]  # one [2, 16] per step: stacked
    assert last.shape == (3, 2, 16)
    torch.testing.assert_close(last[1], full[:, 5], atol=1e-5, rtol=1e-4)
