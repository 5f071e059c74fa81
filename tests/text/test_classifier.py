"""Text explainers on a tiny BERT classifier: granularity, padding, batching, completeness,
perturbation references, targets and the untouched model."""

from __future__ import annotations

import pytest
import torch

from tdlens.text import (
    FeatureAblation,
    Granularity,
    InferenceModes,
    IntegratedGradients,
    KernelShap,
    Occlusion,
)
from tdlens.text import methods as text_methods
from tdlens.text.granularity import encode

TEXTS = ["The movies were wonderful!", "dull and long", "i loved the acting. the plot was bad."]


def _token_to_word(tokenizer, text):
    """Per position: (token element, word element) of one text."""
    tok = encode(tokenizer, [text], Granularity.TOKEN, torch.device("cpu")).element_of[0]
    word = encode(tokenizer, [text], Granularity.WORD, torch.device("cpu")).element_of[0]
    return list(zip(tok.tolist(), word.tolist()))


def test_elements_at_each_granularity(bert):
    """Words group their pieces; sentences split at the full stop; special tokens only in
    ALL_TOKENS; padding never."""
    _, tokenizer = bert
    device = torch.device("cpu")
    enc = encode(tokenizer, TEXTS, Granularity.WORD, device)
    assert enc.elements[0] == ["The", "movies", "were", "wonderful", "!"]
    assert enc.elements[1] == ["dull", "and", "long"]
    tokens = encode(tokenizer, TEXTS, Granularity.TOKEN, device).elements[0]
    assert tokens == ["The", "movie", "s", "were", "wonder", "ful", "!"]
    all_tokens = encode(tokenizer, TEXTS, Granularity.ALL_TOKENS, device).elements[1]
    assert all_tokens == ["[CLS]", "dull", "and", "long", "[SEP]"]
    sentences = encode(tokenizer, TEXTS, Granularity.SENTENCE, device).elements[2]
    assert sentences == ["i loved the acting.", "the plot was bad."]


def test_word_scores_are_the_sum_of_their_token_scores(bert):
    model, tokenizer = bert
    text = TEXTS[0]
    tok = IntegratedGradients(model, tokenizer, granularity="token", n_steps=16)([text])[0]
    word = IntegratedGradients(model, tokenizer, granularity="word", n_steps=16)([text])[0]
    expected = torch.zeros_like(word.scores)
    for t, w in _token_to_word(tokenizer, text):
        if t >= 0:
            expected[:, w] += tok.scores[:, t]
    torch.testing.assert_close(word.scores, expected, rtol=0, atol=1e-12)
    mean = IntegratedGradients(
        model, tokenizer, granularity="word", n_steps=16, aggregation="mean"
    )([text])[0]
    assert torch.allclose(mean.scores[0, 1], word.scores[0, 1] / 2)  # "movies": 2 pieces


def test_padding_gets_zero_and_batch_equals_one_by_one(bert):
    model, tokenizer = bert
    ig = IntegratedGradients(model, tokenizer, batch_size=8, n_steps=8, granularity="word")
    enc = encode(tokenizer, TEXTS, Granularity.WORD, torch.device("cpu"))
    targets = [torch.tensor([0, 0, 0])]
    token = ig.token_scores(enc, targets)
    padding = enc.inputs["attention_mask"] == 0
    assert padding.any()
    assert (token[:, 0][padding] == 0).all()
    together = ig(TEXTS)
    for text, e in zip(TEXTS, together):
        alone = ig([text])[0]
        assert "[PAD]" not in e.elements
        assert e.elements == alone.elements and e.targets == alone.targets
        torch.testing.assert_close(e.scores, alone.scores, rtol=1e-9, atol=1e-12)
    occ = Occlusion(model, tokenizer, batch_size=8, granularity="word")
    for text, e in zip(TEXTS, occ(TEXTS)):
        torch.testing.assert_close(e.scores, occ([text])[0].scores, rtol=1e-9, atol=1e-12)


def test_ig_completeness_in_embedding_space(bert):
    """Scores add up to f(text) - f(pad embeddings at the scored positions)."""
    model, tokenizer = bert
    for granularity in ("token", "all_tokens"):
        ig = IntegratedGradients(model, tokenizer, granularity=granularity, n_steps=64)
        e = ig([TEXTS[0]], targets=[0, 2])[0]
        enc = encode(tokenizer, [TEXTS[0]], Granularity(granularity), torch.device("cpu"))
        ids = enc.input_ids
        base = torch.where(enc.element_of >= 0, torch.full_like(ids, tokenizer.pad_token_id), ids)
        if granularity == "token":  # special tokens kept at their own embeddings
            assert (base[0, 0] == tokenizer.cls_token_id) and (
                base[0, -1] == tokenizer.sep_token_id
            )
        with torch.no_grad():
            f = model(input_ids=ids).logits[0, [0, 2]]
            f0 = model(input_ids=base).logits[0, [0, 2]]
        torch.testing.assert_close(e.scores.sum(1), f - f0, rtol=1e-4, atol=1e-6)


def test_occlusion_and_kernelshap_against_direct_masking(bert):
    """Occlusion at word level: the drop when a word's pieces are all masked; KernelShap's
    scores add up to f(text) - f(every word masked)."""
    model, tokenizer = bert
    text = TEXTS[0]
    e = Occlusion(model, tokenizer, granularity=Granularity.WORD)([text], targets=2)[0]
    enc = encode(tokenizer, [text], Granularity.WORD, torch.device("cpu"))
    ids = enc.input_ids
    with torch.no_grad():
        full = model(input_ids=ids).logits[0, 2]
        for m in range(len(e.elements)):
            masked = torch.where(enc.element_of == m, tokenizer.mask_token_id, ids)
            drop = full - model(input_ids=masked).logits[0, 2]
            assert torch.allclose(e.scores[0, m], drop, atol=1e-12)
        all_masked = torch.where(enc.element_of >= 0, tokenizer.mask_token_id, ids)
        gap = full - model(input_ids=all_masked).logits[0, 2]
    ks = KernelShap(model, tokenizer, granularity="word", n_samples=60, seed=0)([text], 2)[0]
    torch.testing.assert_close(ks.scores.sum(), gap, rtol=1e-8, atol=1e-10)
    ablation = FeatureAblation(model, tokenizer, granularity="word")([text], targets=2)[0]
    torch.testing.assert_close(ablation.scores, e.scores, rtol=0, atol=1e-12)


def test_several_targets_and_class_names(bert):
    model, tokenizer = bert
    ig = IntegratedGradients(model, tokenizer, n_steps=8, inference_mode=InferenceModes.SOFTMAX)
    both = ig(TEXTS[:2], targets=["negative", 2])
    for text, e in zip(TEXTS[:2], both):
        assert e.targets == [0, 2] and e.target_names == ["negative", "positive"]
        assert e.scores.shape == (2, len(e.elements))
        for k, cls in enumerate([0, 2]):
            torch.testing.assert_close(e.scores[k], ig([text], targets=cls)[0].scores[0])
    with torch.no_grad():
        predicted = model(**tokenizer(TEXTS[:2], return_tensors="pt", padding=True)).logits
    per_text = ig(TEXTS[:2], targets=[[1], [0]])
    assert [e.targets for e in per_text] == [[1], [0]]
    assert [e.targets[0] for e in ig(TEXTS[:2])] == predicted.argmax(-1).tolist()


GRADIENT = [
    "Saliency",
    "InputXGradient",
    "IntegratedGradients",
    "SmoothGrad",
    "GradientShap",
    "GuidedBackprop",
    "Deconvolution",
    "LRP",
]
PERTURBATION = [
    "Occlusion",
    "FeatureAblation",
    "KernelShap",
    "Lime",
    "Sobol",
    "ShapleyValueSampling",
    "ShapleyValues",
]
OPTIONS = {
    "IntegratedGradients": {"n_steps": 4},
    "SmoothGrad": {"nt_samples": 3, "seed": 0},
    "GradientShap": {"n_samples": 3, "seed": 0},
    "KernelShap": {"n_samples": 16, "seed": 0},
    "Lime": {"n_samples": 16, "seed": 0},
    "Sobol": {"n_samples": 4, "seed": 0},
    "ShapleyValueSampling": {"n_samples": 2, "seed": 0},
}


@pytest.mark.parametrize("name", GRADIENT + PERTURBATION + ["DeepLift", "DeepLiftShap"])
@pytest.mark.parametrize("granularity", list(Granularity))
def test_every_method_at_every_granularity(bert, name, granularity):
    model, tokenizer = bert
    explainer = getattr(text_methods, name)(
        model, tokenizer, granularity=granularity, **OPTIONS.get(name, {})
    )
    if name.startswith("DeepLift"):  # layer norms and attention fall back to gradients
        with pytest.warns(UserWarning):
            explanations = explainer(TEXTS[:2])
    else:
        explanations = explainer(TEXTS[:2])
    for text, e in zip(TEXTS[:2], explanations):
        assert e.text == text and e.scores.shape == (1, len(e.elements))
        assert torch.isfinite(e.scores).all()
        assert "[PAD]" not in e.elements
        assert ("[CLS]" in e.elements) == (granularity is Granularity.ALL_TOKENS)


def test_decoder_classifier_batches_equal_one_by_one():
    """GPT-2-like classifiers read the last non-pad token, found from input_ids: gradient
    methods batch texts of one length only, perturbation methods pass ids with padding."""
    transformers = pytest.importorskip("transformers")
    from tests.text.conftest import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=64,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = transformers.GPT2ForSequenceClassification(config).eval().double()
    texts = ["a dull and long film", "the plot is fun", "the movie was great and the actors"]
    for explainer in (
        IntegratedGradients(model, tokenizer, batch_size=4, n_steps=4, granularity="word"),
        Occlusion(model, tokenizer, batch_size=4, granularity="word"),
    ):
        for text, e in zip(texts, explainer(texts, targets=1)):
            torch.testing.assert_close(e.scores, explainer([text], targets=1)[0].scores)
