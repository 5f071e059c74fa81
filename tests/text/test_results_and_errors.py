"""TextAttribution renderings and JSON, custom perturbators, metrics at word level, errors
raised before any forward pass, and the untouched model and tokenizer."""

from __future__ import annotations

import html.parser
import math

import pytest
import torch

import tdlens
from tdlens.core.errors import TdlensError
from tdlens.text import (
    Aggregator,
    AttributionExplainer,
    Granularity,
    IntegratedGradients,
    KernelShap,
    MeanAggregator,
    Occlusion,
    Perturbator,
    Saliency,
    TextAttribution,
)
from tests.conftest import assert_untouched, model_state
from tests.text.conftest import bert_classifier, bert_tokenizer, gpt2_lm, gpt2_tokenizer

TEXTS = ["The movies were wonderful!", "dull and long", "i loved the acting. the plot was bad."]


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text, self.titles = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.titles += [v for k, v in attrs if k == "title"]

    def handle_data(self, data):
        self.text.append(data)


def test_html_escapes_the_text():
    evil = "<script>alert(1)</script>"
    e = TextAttribution(
        text=evil + " & more",
        elements=[evil, "&", '"q"', "ok"],
        scores=torch.tensor([[1.0, -0.5, float("nan"), 0.0]]),
        targets=[1],
        target_names=["<b>pos</b>"],
    )
    for page in (e.to_html(), e._repr_html_()):
        parser = _Collect()
        parser.feed(page)
        assert "script" not in parser.tags and "b" not in parser.tags
        text = "".join(parser.text)
        assert evil in text and "<b>pos</b>" in text and '"q"' in text
        assert "1" in parser.titles and "-0.5" in parser.titles
    assert evil in str(e)  # the terminal shows the raw text, coloured


def test_json_round_trip(bert):
    model, tokenizer = bert
    e = IntegratedGradients(model, tokenizer, n_steps=4, granularity="word")(TEXTS[0])[0]
    back = TextAttribution.from_json(e.to_json())
    assert back.elements == e.elements and back.targets == e.targets
    assert back.granularity == "word" and back.method == "IntegratedGradients"
    torch.testing.assert_close(back.scores, e.scores.double())
    nan = TextAttribution("x y", ["x", "y"], torch.tensor([[1.0, math.nan]]), [3], ["z"])
    again = TextAttribution.from_json(nan.to_json())
    assert math.isnan(float(again.scores[0, 1])) and again.scores[0, 0] == 1
    with pytest.raises(TdlensError, match="lacks"):
        TextAttribution.from_json('{"text": "x"}')


class OneAtATime(Perturbator):
    def get_masks(self, n_elements, generator):
        return 1 - torch.eye(n_elements)


class FirstDrop(Aggregator):
    def aggregate(self, original, scores, masks):
        return (original.unsqueeze(1) - scores).transpose(1, 2)


@pytest.mark.parametrize("granularity", ["token", "word"])
def test_custom_perturbator_and_aggregator_equal_occlusion(bert, granularity):
    model, tokenizer = bert
    custom = AttributionExplainer(
        model,
        tokenizer,
        8,
        perturbator=OneAtATime(),
        aggregator=MeanAggregator(),
        granularity=granularity,
    )
    builtin = Occlusion(model, tokenizer, 8, granularity=granularity)
    for mine, theirs in zip(custom(TEXTS, targets=[0, 2]), builtin(TEXTS, targets=[0, 2])):
        assert mine.elements == theirs.elements
        torch.testing.assert_close(mine.scores, theirs.scores, rtol=0, atol=1e-12)
    other = AttributionExplainer(
        model, tokenizer, perturbator=OneAtATime(), aggregator=FirstDrop(), granularity=granularity
    )
    torch.testing.assert_close(other(TEXTS[0])[0].scores, builtin(TEXTS[0])[0].scores)


class EmbeddingOcclusion(Perturbator):
    """One element at a time, its embeddings replaced by the mask token's: an embedding-space
    perturbator that must equal Occlusion with the mask token."""

    def __init__(self, embedder, mask_id):
        super().__init__(inputs_embedder=embedder)
        self.mask_id = mask_id

    def perturb_embeddings(self, embeddings, element_of, generator):
        b, m = embeddings.shape[0], int(element_of.max()) + 1
        mask = self.inputs_embedder(torch.tensor([self.mask_id]))[0]
        hit = element_of.unsqueeze(1) == torch.arange(m).reshape(1, m, 1)  # [B, M, L]
        perturbed = torch.where(hit.unsqueeze(-1), mask, embeddings.unsqueeze(1))
        return perturbed, (1 - torch.eye(m)).expand(b, m, m)


def test_embedding_perturbator_equals_occlusion(bert):
    model, tokenizer = bert
    perturbator = EmbeddingOcclusion(model.get_input_embeddings(), tokenizer.mask_token_id)
    custom = AttributionExplainer(
        model,
        tokenizer,
        8,
        perturbator=perturbator,
        aggregator=MeanAggregator(),
        granularity="word",
    )
    builtin = Occlusion(model, tokenizer, 8, granularity="word")
    for mine, theirs in zip(custom(TEXTS, targets=[0, 2]), builtin(TEXTS, targets=[0, 2])):
        torch.testing.assert_close(mine.scores, theirs.scores, rtol=1e-9, atol=1e-12)

    class Wrong(EmbeddingOcclusion):
        def perturb_embeddings(self, embeddings, element_of, generator):
            return embeddings, embeddings

    wrong = AttributionExplainer(
        model,
        tokenizer,
        perturbator=Wrong(model.get_input_embeddings(), 4),
        aggregator=MeanAggregator(),
    )
    with pytest.raises(TdlensError, match="expected"):
        wrong(TEXTS[0])


def test_occlusion_windows_of_words(bert):
    """Windows of two words: each word's score is the mean drop over the windows covering it."""
    model, tokenizer = bert

    class Pairs(Perturbator):
        def get_masks(self, n, generator):
            masks = torch.ones(n - 1, n)
            for s in range(n - 1):
                masks[s, s : s + 2] = 0
            return masks

    pairs = AttributionExplainer(
        model, tokenizer, perturbator=Pairs(), aggregator=MeanAggregator(), granularity="word"
    )
    occ = Occlusion(model, tokenizer, granularity="word", sliding_window_shapes=(2,))
    torch.testing.assert_close(pairs(TEXTS[2])[0].scores, occ(TEXTS[2])[0].scores)


def test_metrics_at_word_granularity(bert):
    """Deletion of words through the explainer equals masking the words by hand."""
    model, tokenizer = bert
    explainer = Occlusion(model, tokenizer, granularity=Granularity.WORD)
    explanations = explainer(TEXTS[:2], targets=2)
    results = explainer.evaluate(tdlens.metrics.deletion, explanations, n_steps=2)
    e, result = explanations[1], results[1]  # "dull and long": 3 words
    assert result.curve.shape == (1, 1, 3)
    order = e.scores[0].argsort(descending=True).tolist()
    ids = tokenizer([e.text], return_tensors="pt")["input_ids"]
    owner = {1: 0, 2: 1, 3: 2}  # positions of the three words ([CLS] at 0)
    expected = []
    with torch.no_grad():
        for removed in (0, 2, 3):  # ceil(0 * 3), ceil(3 / 2), 3 words removed
            gone = set(order[:removed])
            x = ids.clone()
            for pos, word in owner.items():
                if word in gone:
                    x[0, pos] = tokenizer.mask_token_id
            expected.append(float(model(input_ids=x).logits[0, 2]))
    torch.testing.assert_close(result.curve[0, 0], torch.tensor(expected, dtype=torch.float64))
    comp = explainer.evaluate(tdlens.metrics.comprehensiveness, explanations)
    assert comp[0].score.shape == (1, 1)


def test_errors_before_any_forward_pass(bert):
    model, tokenizer = bert
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        no_mask = bert_tokenizer(mask=False, pad=False)
        with pytest.raises(TdlensError, match="replace_token_id"):
            KernelShap(model, no_mask)
        KernelShap(model, no_mask, replace_token_id=5)  # the fix works
        with pytest.raises(TdlensError, match="baseline_token_id"):
            IntegratedGradients(model, no_mask)
        ig = IntegratedGradients(model, tokenizer)
        with pytest.raises(TdlensError, match="'negative', 'neutral', 'positive'"):
            ig(TEXTS, targets="joyful")
        with pytest.raises(TdlensError, match="causal language models"):
            ig(TEXTS, targets=["a wonderful movie"])
        with pytest.raises(TdlensError, match="empty text"):
            ig(["fine", "  "])
        with pytest.raises(TdlensError, match="out of range"):
            ig(TEXTS, targets=7)
        with pytest.raises(TdlensError, match=r"set by tdlens\.text"):
            IntegratedGradients(model, tokenizer, baselines=0)
        with pytest.raises(TdlensError, match=r"Granularity\.WORD"):
            IntegratedGradients(model, tokenizer, granularity="words")
        with pytest.raises(TdlensError, match="does not move the model"):
            IntegratedGradients(model, tokenizer, device="meta")
        with pytest.raises(TdlensError, match="unknown option"):
            IntegratedGradients(model, tokenizer, n_stepz=3)
        transformers = pytest.importorskip("transformers")
        bare = transformers.BertModel(model.config)
        with pytest.raises(TdlensError, match="no logits"):
            Saliency(bare, tokenizer)
        assert calls == []
    finally:
        handle.remove()


def test_model_embeddings_and_vocabulary_unchanged():
    tokenizer = bert_tokenizer()
    model = bert_classifier(len(tokenizer), seed=1)
    before, vocab = model_state(model), dict(tokenizer.get_vocab())
    emb = model.get_input_embeddings().weight.clone()
    for cls in (IntegratedGradients, KernelShap, Occlusion, Saliency):
        options = {"n_samples": 16} if cls is KernelShap else {}
        cls(model, tokenizer, granularity="word", **options)(TEXTS)
    with pytest.raises(TdlensError):
        IntegratedGradients(model, tokenizer)(TEXTS, targets=["nope"])

    class Broken(Perturbator):
        def get_masks(self, n, generator):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        AttributionExplainer(model, tokenizer, perturbator=Broken(), aggregator=MeanAggregator())(
            TEXTS
        )
    assert_untouched(model, before)
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert dict(tokenizer.get_vocab()) == vocab and len(tokenizer) == len(vocab)
    lm_tokenizer = gpt2_tokenizer()
    lm = gpt2_lm(len(lm_tokenizer))
    before = model_state(lm)
    IntegratedGradients(lm, lm_tokenizer, n_steps=4, max_new_tokens=3)("the movie")
    KernelShap(lm, lm_tokenizer, n_samples=40, max_new_tokens=2)("the movie")
    assert_untouched(lm, before)
