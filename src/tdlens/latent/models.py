"""Small models with known circuits, for tests, examples and benchmarks of latent methods.

:class:`AttnOnlyTransformer` is a plain-torch attention-only transformer whose every step is a
named module, so each hook point a mechanistic-interpretability user expects has a path:

    embed, pos_embed                       token and position embeddings
    blocks.{l}.attn.q / .k / .v            queries, keys, values [B, T, H*Dh]
    blocks.{l}.attn.pattern                attention probabilities [B, H, T, T]
    blocks.{l}.attn.o:input                per-head outputs z [B, T, H*Dh] (split with heads=H)
    blocks.{l}.attn                        the attention block's output [B, T, D]
    blocks.{l}                             the residual stream after block l
    unembed                                logits [B, T, V]

:func:`induction_model` loads a 2-layer, 4-head model trained by ``scripts/train_induction.py``
on repeated random tokens: it predicts the second copy of a sequence from the first (an
induction head in layer 1 reading a previous-token head in layer 0).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

INDUCTION_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "induction_2l.pt"


class Attention(nn.Module):
    """Causal multi-head self-attention with a hook point per step."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.pattern = nn.Identity()  # the attention probabilities pass through it
        self.o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        h, dh = self.n_heads, self.d_head
        q = self.q(x).view(b, t, h, dh).transpose(1, 2)
        k = self.k(x).view(b, t, h, dh).transpose(1, 2)
        v = self.v(x).view(b, t, h, dh).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / dh**0.5
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        pattern = self.pattern(scores.softmax(-1))
        z = (pattern @ v).transpose(1, 2).reshape(b, t, h * dh)
        return self.o(z)


class Block(nn.Module):
    """One residual attention block (no MLP): ``x + attn(x)``."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.attn = Attention(d_model, n_heads)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attn(x)


class AttnOnlyTransformer(nn.Module):
    """Token ids ``[B, T]`` -> logits ``[B, T, V]``, attention-only, no layer norm.

    Example:
        >>> model = AttnOnlyTransformer(vocab=32, d_model=16, n_heads=2, n_layers=2, n_ctx=8)
        >>> model(torch.zeros(1, 8, dtype=torch.long)).shape
        torch.Size([1, 8, 32])
    """

    def __init__(
        self,
        vocab: int = 64,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        n_ctx: int = 32,
    ) -> None:
        super().__init__()
        self.config = {
            "vocab": vocab,
            "d_model": d_model,
            "n_heads": n_heads,
            "n_layers": n_layers,
            "n_ctx": n_ctx,
        }
        self.n_heads = n_heads
        self.embed = nn.Embedding(vocab, d_model)
        self.pos_embed = nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.unembed = nn.Linear(d_model, vocab, bias=False)

    def forward(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.pos_embed(positions)
        for block in self.blocks:
            x = block(x)
        return self.unembed(x)


def induction_model(dtype: torch.dtype = torch.float32) -> AttnOnlyTransformer:
    """The trained 2-layer induction model, in eval mode (weights loaded with
    ``weights_only=True``)."""
    saved = torch.load(INDUCTION_WEIGHTS, weights_only=True)
    model = AttnOnlyTransformer(**saved["config"])
    model.load_state_dict(saved["state_dict"])
    return model.to(dtype).eval()


def induction_batch(
    n: int, half: int, vocab: int, length: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` sequences ``[noise, x, x]`` of ``length`` tokens: random noise, then ``half``
    random tokens ``x`` twice, ``[n, length]``."""
    tokens = torch.randint(0, vocab, (n, length), generator=generator)
    first = tokens[:, length - 2 * half : length - half]
    tokens[:, length - half :] = first
    return tokens
