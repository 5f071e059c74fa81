"""logit_lens: the last layer read through the final norm and unembedding is the model's own
logits; the unembedding, norm and layers are found in Hugging Face causal LMs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tdlens import latent
from tests.conftest import assert_untouched, model_state

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=61,
                                     n_positions=16)  # fmt: skip
    return transformers.GPT2LMHeadModel(config).eval()


def ids(b=2, t=7, vocab=61):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(0))


def test_last_layer_equals_model_logits_gpt2(gpt2):
    tokens = ids()
    before = model_state(gpt2)
    lens = latent.logit_lens(gpt2, tokens)  # layers, norm and unembedding found
    assert lens.shape == (3, 2, 7, 61)
    with torch.no_grad():
        logits = gpt2(tokens).logits
    assert (lens[-1] - logits).abs().max() < 1e-6
    assert not torch.allclose(lens[0], logits, atol=1e-3)  # earlier layers differ
    assert_untouched(gpt2, before)


def test_named_paths_dict_inputs_and_top_k(gpt2):
    tokens = ids()
    inputs = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}
    lens = latent.logit_lens(gpt2, inputs, paths="transformer.h.*", unembed="lm_head",
                             norm="transformer.ln_f")  # fmt: skip
    top = latent.logit_lens(gpt2, inputs, top_k=5)
    assert top.indices.shape == (3, 2, 7, 5)
    assert torch.equal(top.indices, lens.topk(5, dim=-1).indices)


def test_last_layer_equals_model_logits_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2,
                                      vocab_size=53)  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    tokens = ids(vocab=53)
    lens = latent.logit_lens(model, tokens)
    with torch.no_grad():
        logits = model(tokens).logits
    assert lens.shape[0] == 2
    assert (lens[-1] - logits).abs().max() < 1e-6


def test_any_model_with_named_unembedding_and_norm():
    torch.manual_seed(0)
    blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks, self.norm, self.out = blocks, nn.LayerNorm(8), nn.Linear(8, 5)

        def forward(self, x):
            for block in self.blocks:
                x = torch.relu(block(x))
            return self.out(self.norm(x))

    model = Tiny().double()
    x = torch.randn(3, 8, dtype=torch.float64)
    lens = latent.logit_lens(model, x, paths=["blocks.0", "blocks.1"], unembed="out",
                             norm="norm")  # fmt: skip
    # blocks.1's output goes through the relu first, so read the model's path by hand
    expected = model.out(model.norm(model.blocks[0](x)))
    torch.testing.assert_close(lens[0], expected.detach())
    with pytest.raises(ValueError, match="name the layers"):
        latent.logit_lens(model, x, unembed="out")
    with pytest.raises(ValueError, match="unembed="):
        latent.logit_lens(model, x, paths="blocks.*")
