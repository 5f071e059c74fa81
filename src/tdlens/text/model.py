"""The model side of text explanations: what kind of model it is, what is explained
(:class:`InferenceModes`), and the two views the attribution methods run on.

* :class:`EmbeddingsView` takes ``inputs_embeds`` (the output of the model's input embedding
  module) with the other model inputs: gradient methods attribute the embeddings, so
  Integrated Gradients interpolates embeddings, never token ids.
* :class:`PresenceView` takes ``presence [N, M]``, one number per element (1: kept, 0: replaced
  by the mask token), and the row's ``example``: perturbation methods and metrics perturb
  elements, so a word is masked as a whole and feature ids are element ids.

Both are thin ``nn.Module`` wrappers that hold the user's model as a child and change nothing
on it; the core's adapter checks hooks and buffers as for any model.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import InputTypeError, KeyNotFoundError
from .granularity import as_enum


class InferenceModes(str, Enum):
    """What the scores explain: the logits, the probabilities or the log-probabilities."""

    LOGITS = "logits"
    SOFTMAX = "softmax"
    LOG_SOFTMAX = "log_softmax"


def as_mode(value: Any) -> InferenceModes:
    return as_enum(InferenceModes, value, "inference_mode")


def transform(logits: Tensor, mode: InferenceModes) -> Tensor:
    if mode is InferenceModes.SOFTMAX:
        return logits.softmax(-1)
    if mode is InferenceModes.LOG_SOFTMAX:
        return logits.log_softmax(-1)
    return logits


def model_kind(model: Any) -> str:
    """``"classifier"`` or ``"causal_lm"``, from the model's class, before any forward pass."""
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    name = type(model).__name__
    config = getattr(model, "config", None)
    if "ForSequenceClassification" in name:
        return "classifier"
    if config is not None and getattr(config, "is_encoder_decoder", False):
        raise InputTypeError(
            f"{name} is an encoder-decoder model: tdlens.text explains encoder classifiers "
            "(AutoModelForSequenceClassification) and causal language models "
            "(AutoModelForCausalLM); encoder-decoder models are not supported yet"
        )
    if "CausalLM" in name or "LMHead" in name:
        return "causal_lm"
    if config is not None:
        raise InputTypeError(
            f"{name}'s output has no logits (a model without a task head returns hidden "
            "states): load the model with its head, e.g. "
            "AutoModelForSequenceClassification.from_pretrained(...) or "
            "AutoModelForCausalLM.from_pretrained(...)"
        )
    return "classifier"  # a plain module taking input_ids: checked on its first output


def embedding_module(model: nn.Module) -> nn.Embedding:
    getter = getattr(model, "get_input_embeddings", None)
    module = getter() if callable(getter) else None
    if not isinstance(module, nn.Embedding):
        raise InputTypeError(
            f"{type(model).__name__} has no input embedding module (get_input_embeddings()); "
            "gradient methods attribute the token embeddings, use a perturbation method instead"
        )
    return module


def read_logits(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if not isinstance(logits, Tensor):
        raise KeyNotFoundError(
            f"the model returned {type(output).__name__} without logits; tdlens.text explains "
            "models whose output has a 'logits' entry (a model with a task head)"
        )
    return logits


class EmbeddingsView(nn.Module):
    """``model(inputs_embeds=..., **other inputs)`` transformed by the inference mode."""

    def __init__(self, model: nn.Module, mode: InferenceModes) -> None:
        super().__init__()
        self.model = model
        self.mode = mode

    def forward(self, inputs_embeds: Tensor, **inputs: Tensor) -> Tensor:
        return transform(read_logits(self.model(inputs_embeds=inputs_embeds, **inputs)), self.mode)


class PresenceView(nn.Module):
    """The model on texts whose elements are kept (``presence >= 1/2``) or masked.

    Args:
        model: the user's model. mode: the inference mode.
        inputs: ``[B, L]`` model inputs of the texts (``input_ids`` and the others).
        element_of: ``[B, L]`` element of each position (``-1``: never masked).
        replace_id: the token id a masked element's tokens take.
    """

    def __init__(
        self,
        model: nn.Module,
        mode: InferenceModes,
        inputs: dict[str, Tensor],
        element_of: Tensor,
        replace_id: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.mode = mode
        self.inputs = inputs
        self.element_of = element_of
        self.replace_id = replace_id

    def token_ids(self, presence: Tensor, example: Tensor) -> Tensor:
        """``[N, L]`` token ids of rows with the given element presence."""
        ids = self.inputs["input_ids"].index_select(0, example)
        owner = self.element_of.index_select(0, example)
        if presence.shape[1] == 0:
            return ids
        kept = presence.gather(1, owner.clamp(min=0)) >= 0.5
        kept |= owner < 0
        return torch.where(kept, ids, torch.full_like(ids, self.replace_id))

    def forward(self, presence: Tensor, example: Tensor) -> Tensor:
        example = example.to(self.element_of.device)
        others = {k: v.index_select(0, example) for k, v in self.inputs.items() if k != "input_ids"}
        ids = self.token_ids(presence.to(self.element_of.device), example)
        return transform(read_logits(self.model(input_ids=ids, **others)), self.mode)
