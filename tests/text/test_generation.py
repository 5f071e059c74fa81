"""Generation attribution on a tiny GPT-2: the K generated tokens as K targets of one
attribution equal per-token single attributions and captum's LayerIntegratedGradients."""

from __future__ import annotations

import math

import pytest
import torch

import tdlens
from tdlens.text import Granularity, InferenceModes, IntegratedGradients, KernelShap, Occlusion
from tdlens.text.model import EmbeddingsView

PROMPT = "the movie was great and"


def _prefix_ig(model, ids, pad_id, target_token, n_steps, mode):
    """tdlens IG of one next token on the prefix alone (every position from the pad
    embedding), summed over the embedding: ``[len(ids)]``."""
    wte = model.get_input_embeddings()
    x = torch.tensor([ids])
    with torch.no_grad():
        embeds, base = wte(x), wte(torch.full_like(x, pad_id))
    ig = tdlens.IntegratedGradients(EmbeddingsView(model, mode))
    attr = ig.attribute(
        {"inputs_embeds": embeds, "attention_mask": torch.ones_like(x)},
        baselines={"inputs_embeds": base},
        target=(len(ids) - 1, target_token),
        n_steps=n_steps,
    )
    return attr["inputs_embeds"][0].sum(-1)


def test_generation_equals_per_token_attributions_and_captum(gpt2):
    captum_attr = pytest.importorskip("captum.attr")
    model, tokenizer = gpt2
    n_steps = 12
    explainer = IntegratedGradients(
        model,
        tokenizer,
        granularity=Granularity.TOKEN,
        inference_mode=InferenceModes.LOG_SOFTMAX,
        max_new_tokens=5,
        n_steps=n_steps,
    )
    e = explainer(PROMPT)[0]
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    p, g = len(prompt_ids), len(e.targets)
    assert g == 5 and e.n_prompt_elements == p
    assert e.scores.shape == (g, p + g) and len(e.elements) == p + g
    ids = prompt_ids + e.targets
    wte = model.get_input_embeddings()

    def last_log_probs(input_ids):
        return model(input_ids=input_ids).logits[:, -1].log_softmax(-1)

    lig = captum_attr.LayerIntegratedGradients(last_log_probs, wte)
    for k in range(g):
        row = e.scores[k]
        assert torch.isnan(row[p + k :]).all() and not torch.isnan(row[: p + k]).any()
        prefix = ids[: p + k]
        mine = _prefix_ig(
            model, prefix, tokenizer.pad_token_id, ids[p + k], n_steps, InferenceModes.LOG_SOFTMAX
        )
        torch.testing.assert_close(row[: p + k], mine, rtol=1e-6, atol=1e-9)
        x = torch.tensor([prefix])
        theirs = lig.attribute(
            x,
            baselines=torch.full_like(x, tokenizer.pad_token_id),
            target=ids[p + k],
            n_steps=n_steps,
        )
        torch.testing.assert_close(row[: p + k], theirs[0].sum(-1), rtol=1e-6, atol=1e-9)


def test_greedy_continuation_and_forced_targets(gpt2):
    model, tokenizer = gpt2
    ig = IntegratedGradients(model, tokenizer, max_new_tokens=4, n_steps=4)
    e = ig(PROMPT)[0]
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for token in e.targets:
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            assert nxt == token
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    forced = ig([PROMPT, "a dull film"], targets=[" the plot", " was bad"])
    assert forced[0].targets == tokenizer(" the plot", add_special_tokens=False)["input_ids"]
    assert forced[1].generated_text == " was bad"


def test_generation_at_word_level_and_perturbation(gpt2):
    """Word rows: a word is NaN until one of its tokens precedes the generated token; KernelShap
    and Occlusion score the same elements."""
    model, tokenizer = gpt2
    token = IntegratedGradients(model, tokenizer, n_steps=6)(PROMPT, targets=" the plot was")[0]
    word = IntegratedGradients(model, tokenizer, n_steps=6, granularity="word")(
        PROMPT, targets=" the plot was"
    )[0]
    assert word.elements == ["the", "movie", "was", "great", "and", "the", "plot", "was"]
    assert word.n_prompt_elements == 5
    # the word scores are the sums of their tokens' scores, future ones NaN in both
    sums = torch.nan_to_num(token.scores).sum(1)
    torch.testing.assert_close(torch.nan_to_num(word.scores).sum(1), sums)
    for method in (
        KernelShap(model, tokenizer, n_samples=30, seed=0, granularity="word"),
        Occlusion(model, tokenizer, granularity="word"),
    ):
        e = method(PROMPT, targets=" the plot was")[0]
        assert e.elements == word.elements
        assert torch.equal(torch.isnan(e.scores), torch.isnan(word.scores))
    assert math.isnan(float(word.scores[0, 5]))
