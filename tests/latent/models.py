"""The latent tests' models: the trained induction model, a random tiny GPT-2, and the
clean/corrupted induction prompts."""

from __future__ import annotations

import torch

from tdlens.latent.models import AttnOnlyTransformer, induction_batch, induction_model

VOCAB, LENGTH, HALF = 64, 24, 8


def induction(dtype: torch.dtype = torch.float64) -> AttnOnlyTransformer:
    return induction_model(dtype)


def induction_prompts(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Clean ``[noise, x, x[:-1]]`` and corrupted prompts (the first copy of x replaced by
    other random tokens), the correct next token x[-1] and the corrupted first copy's last
    token as the wrong one. Both prompts end at the same token."""
    generator = torch.Generator().manual_seed(seed)
    full = induction_batch(n, HALF, VOCAB, LENGTH + 1, generator=generator)
    clean = full[:, :-1]
    corrupted = clean.clone()
    first = LENGTH + 1 - 2 * HALF
    other = torch.randint(0, VOCAB, (n, HALF), generator=generator)
    corrupted[:, first : first + HALF] = other
    correct, wrong = full[:, -1], other[:, -1]
    return clean, corrupted, correct, wrong


def tiny_gpt2(seed: int = 0, **overrides):
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=97,
        n_positions=32,
        n_embd=32,
        n_layer=3,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **overrides,
    )
    config._attn_implementation = "eager"
    return transformers.GPT2LMHeadModel(config).double().eval()
