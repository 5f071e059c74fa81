"""Generation attribution for causal language models: K generated tokens as K targets.

The prompt and the generated tokens form one sequence; target ``k`` is the explained output
(logit, probability or log-probability) of generated token ``k`` at the position before it.
Every element of the prompt and of the generated text is scored for every generated token
after it, all on one path: with Integrated Gradients every earlier token, generated or not,
moves from its baseline embedding to its own (captum's ``LLMGradientAttribution`` holds the
earlier generated tokens at their real embeddings and so never scores them). For gradient
methods the whole ``[n_generated, n_elements]`` matrix costs the forward passes of one
attribution over the full sequence and K backward passes per chunk (the multi-target engine),
not one attribution run per generated token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..core.errors import InputError
from .attribution import TextAttribution
from .granularity import Encoded, assign, decoded_spans
from .model import read_logits

if TYPE_CHECKING:
    from .explainers import TextExplainer


@torch.no_grad()
def greedy_continuation(
    model: torch.nn.Module, ids: list[int], n: int, eos: int | None
) -> list[int]:
    """Up to ``n`` greedily generated token ids (stopping after an end-of-sequence token)."""
    device = next(model.parameters()).device
    sequence, new = list(ids), []
    for _ in range(n):
        logits = read_logits(model(input_ids=torch.tensor([sequence], device=device)))
        token = int(logits[0, -1].argmax())
        sequence.append(token)
        new.append(token)
        if eos is not None and token == eos:
            break
    return new


def sequence_elements(explainer: TextExplainer, ids: list[int]) -> tuple[str, Tensor, list[str]]:
    """The decoded text, the element of each position (``-1``: not scored) and the elements
    of a token sequence (spans found by decoding, since generated tokens have no source)."""
    tokenizer = explainer.tokenizer
    text, spans = decoded_spans(tokenizer, ids)
    special_ids = set(tokenizer.all_special_ids)
    special = [i in special_ids for i in ids]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    owner, names = assign(text, spans, tokens, special, [True] * len(ids), explainer.granularity)
    return text, torch.tensor(owner, dtype=torch.long), names


def explain_generation(
    explainer: TextExplainer, prompt: str, forced: str | None
) -> TextAttribution:
    """The attribution of each generated (or forced) token of ``prompt``'s continuation."""
    tokenizer, model = explainer.tokenizer, explainer.model
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    if forced is None:
        generated = greedy_continuation(
            model, prompt_ids, explainer.max_new_tokens, tokenizer.eos_token_id
        )
    else:
        generated = list(tokenizer(forced, add_special_tokens=False)["input_ids"])
        if not generated:
            raise InputError(f"the target text {forced!r} has no tokens")
    ids = prompt_ids + generated
    p, g = len(prompt_ids), len(generated)
    _, owner, names = sequence_elements(explainer, ids)
    if not names:
        raise InputError(f"the prompt {prompt!r} has no {explainer.granularity.value} to score")
    device = explainer.device
    enc = Encoded(
        texts=[prompt],
        inputs={
            "input_ids": torch.tensor([ids], device=device),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device),
        },
        special=torch.zeros(1, len(ids), dtype=torch.bool, device=device),
        element_of=owner.unsqueeze(0).to(device),
        elements=[names],
    )
    # target k: token ids[p + k] read at the position before it
    targets = [(p + k - 1, generated[k]) for k in range(g)]
    scores = explainer.element_scores(enc, targets)[0].detach()  # [G, M]
    first = torch.full((len(names),), len(ids), dtype=torch.long)
    for position, element in enumerate(owner.tolist()):
        if element >= 0:
            first[element] = min(int(first[element]), position)
    # element m is an input of token k only if it starts before the token's position p + k
    future = first.unsqueeze(0) >= (p + torch.arange(g)).unsqueeze(1)
    scores = scores.masked_fill(future.to(scores.device), float("nan"))
    n_prompt = int((first < p).sum())
    return TextAttribution(
        text=prompt,
        elements=names,
        scores=scores,
        targets=generated,
        target_names=[tokenizer.decode([t]) for t in generated],
        granularity=explainer.granularity.value,
        method=type(explainer).__name__,
        n_prompt_elements=n_prompt,
        generated_text=tokenizer.decode(generated),
    )
