"""What a text explanation scores: tokens, words or sentences, and which token belongs to which.

Texts are tokenized once; every token gets the character span it covers in the text. An
*element* is a token (``TOKEN``: special tokens left out; ``ALL_TOKENS``: special tokens
included), a word or a sentence; ``element_of[b, i]`` is the element of token ``i`` of text
``b``, ``-1`` where the position is not scored (padding, and special tokens below
``ALL_TOKENS``). Words are runs of letters and digits (with inner apostrophes) or single
punctuation marks; sentences end at ``.``, ``!`` or ``?``. A token belongs to the word or
sentence holding its first non-space character, so a word is masked, and its gradient scores
summed, as a whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import torch
from torch import Tensor

from ..core.errors import InputError, InputTypeError

_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
_SENTENCE = re.compile(r"[^.!?\s][^.!?]*(?:[.!?]+|$)")


class Granularity(str, Enum):
    """The elements a text explanation scores."""

    ALL_TOKENS = "all_tokens"
    TOKEN = "token"
    WORD = "word"
    SENTENCE = "sentence"


@dataclass
class Encoded:
    """A batch of tokenized texts and their elements.

    Attributes:
        texts: the texts. inputs: model inputs (``input_ids``, ``attention_mask``, and
            ``token_type_ids`` where the tokenizer makes them), ``[B, L]`` each.
        special: ``[B, L]`` bool, special tokens (padding excluded).
        element_of: ``[B, L]`` long, the element of each position, ``-1`` if not scored.
        elements: per text, the element strings.
    """

    texts: list[str]
    inputs: dict[str, Tensor]
    special: Tensor
    element_of: Tensor
    elements: list[list[str]] = field(default_factory=list)

    @property
    def input_ids(self) -> Tensor:
        return self.inputs["input_ids"]

    def one_hot(self, dtype: torch.dtype) -> Tensor:
        """``[B, L, M]``: position ``i`` of text ``b`` belongs to element ``m`` (M: the most
        elements of a text in the batch; texts with fewer have empty columns)."""
        m = max(len(e) for e in self.elements)
        index = self.element_of.clamp(min=0)
        hot = torch.nn.functional.one_hot(index, max(m, 1)).to(dtype)
        return hot * (self.element_of >= 0).unsqueeze(-1).to(dtype)


E = TypeVar("E", bound=Enum)


def as_enum(cls: type[E], value: Any, option: str) -> E:
    """``value`` (a member or its name, any case) as a member of ``cls``."""
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).lower())
    except ValueError:
        names = ", ".join(f"{cls.__name__}.{member.name}" for member in cls)
        raise InputError(f"{option}={value!r} is not one of {names}") from None


def as_granularity(value: Any) -> Granularity:
    return as_enum(Granularity, value, "granularity")


def check_texts(texts: Any) -> list[str]:
    """``texts`` as a list of non-empty strings (one string is a list of one)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts:
        raise InputTypeError(
            f"inputs must be a string or a non-empty list of strings, got {type(texts).__name__}"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputTypeError(f"inputs[{i}] is a {type(text).__name__}, not a string")
        if not text.strip():
            raise InputError(
                f"inputs[{i}] is an empty text ({text!r}): there is nothing to attribute; "
                "remove it from the inputs"
            )
    return list(texts)


def check_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise InputTypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: tdlens.text needs the "
            "character offsets of tokens, which only fast tokenizers give; load it with "
            "AutoTokenizer.from_pretrained(..., use_fast=True)"
        )


def encode(
    tokenizer: Any, texts: list[str], granularity: Granularity, device: torch.device
) -> Encoded:
    """Tokenize ``texts`` (padded to the longest) and find the elements of each."""
    check_fast(tokenizer)
    batch = tokenizer(
        texts,
        padding=True,
        return_tensors="pt",
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    offsets = batch.pop("offset_mapping")
    special_mask = batch.pop("special_tokens_mask").bool()
    attention = batch.get("attention_mask")
    real = attention.bool() if attention is not None else torch.ones_like(special_mask)
    special = special_mask & real
    element_of = torch.full(special.shape, -1, dtype=torch.long)
    elements = []
    for b, text in enumerate(texts):
        ids = batch["input_ids"][b].tolist()
        spans = [(int(start), int(end)) for start, end in offsets[b].tolist()]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        owner, names = assign(
            text, spans, tokens, special[b].tolist(), real[b].tolist(), granularity
        )
        element_of[b] = torch.tensor(owner, dtype=torch.long)
        elements.append(names)
    inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, Tensor)}
    return Encoded(texts, inputs, special.to(device), element_of.to(device), elements)


def assign(
    text: str,
    spans: list[tuple[int, int]],
    tokens: list[str],
    special: list[bool],
    real: list[bool],
    granularity: Granularity,
) -> tuple[list[int], list[str]]:
    """The element of each position (``-1``: not scored) and the element strings."""
    owner = [-1] * len(spans)
    names: list[str] = []
    if granularity in (Granularity.TOKEN, Granularity.ALL_TOKENS):
        for i, (start, end) in enumerate(spans):
            if not real[i] or (special[i] and granularity is Granularity.TOKEN):
                continue
            owner[i] = len(names)
            names.append(tokens[i] if special[i] or start == end else text[start:end])
        return owner, names
    pattern = _WORD if granularity is Granularity.WORD else _SENTENCE
    units = [m.span() for m in pattern.finditer(text)]
    unit_to_element: dict[int, int] = {}
    extent: list[list[int]] = []
    for i, (start, end) in enumerate(spans):
        if not real[i] or special[i] or start == end:
            continue
        first = start + len(text[start:end]) - len(text[start:end].lstrip())
        unit = _containing(units, min(first, end - 1))
        if unit not in unit_to_element:
            unit_to_element[unit] = len(extent)
            extent.append([start, end])
        element = unit_to_element[unit]
        owner[i] = element
        extent[element] = [min(extent[element][0], start), max(extent[element][1], end)]
    names = [text[start:end].strip() or text[start:end] for start, end in extent]
    return owner, names


def _containing(units: list[tuple[int, int]], position: int) -> int:
    """The unit holding character ``position`` (the nearest one before it if none does)."""
    best = 0
    for u, (start, end) in enumerate(units):
        if start <= position < end:
            return u
        if start <= position:
            best = u
    return best


def decoded_spans(tokenizer: Any, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text of ``ids`` and each token's span in it, by decoding growing prefixes (for
    generated tokens, which have no source text)."""
    spans, previous = [], ""
    for i in range(len(ids)):
        current = tokenizer.decode(ids[: i + 1], clean_up_tokenization_spaces=False)
        start = len(previous) if current.startswith(previous) else len(current)
        spans.append((min(start, len(current)), len(current)))
        previous = current
    return previous, spans
