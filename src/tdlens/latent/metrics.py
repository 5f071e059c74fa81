"""Metrics of a model output for patching, attribution patching and cached gradients.

A metric is any callable ``(output) -> Tensor[B]``, one value per example, where ``output`` is
the tensor the model explains (``logits``; see ``output=``). The ones here read sequence
outputs ``[B, T, V]`` at the last position (or at ``position=``) and classifier outputs
``[B, V]`` as they are. Token or class indices are an int, or one per example (a list or a
1-D tensor of length B).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.errors import InputError, TargetError

Index = int | list[int] | Tensor


class Metric:
    """Base of the built-in metrics: reads the scores at one position, checks indices."""

    def __init__(self, position: int = -1) -> None:
        self.position = position
        self.repeats = 1  # the rows are this many copies of the batch (a patching sweep)

    def scores(self, output: Any) -> Tensor:
        """The ``[B, V]`` scores the metric reads."""
        if not isinstance(output, Tensor):
            raise InputError(
                f"{type(self).__name__} reads a tensor output (logits), got "
                f"{type(output).__name__}; choose the entry with output="
            )
        if output.dim() == 3:
            return output[:, self.position]
        if output.dim() == 2:
            return output
        raise InputError(
            f"{type(self).__name__} reads logits [B, V] or [B, T, V]; the output has shape "
            f"{list(output.shape)}"
        )

    def __call__(self, output: Any) -> Tensor:
        raise NotImplementedError

    def tiled(self, output: Any, repeats: int) -> Tensor:
        """The metric of ``repeats`` stacked copies of the batch (``row = copy * B +
        example``) in one call: per-example indices and references are tiled."""
        self.repeats = repeats
        try:
            return self(output)
        finally:
            self.repeats = 1

    def _tile(self, value: Tensor) -> Tensor:
        return value.repeat(self.repeats, *[1] * (value.dim() - 1)) if value.dim() else value


def _pick(scores: Tensor, index: Index, name: str, repeats: int = 1) -> Tensor:
    """``scores[b, index[b]]`` (or ``scores[:, index]``), with a range check; per-example
    indices are tiled over ``repeats`` copies of the batch."""
    v = scores.shape[1]
    if isinstance(index, int):
        if not -v <= index < v:
            raise TargetError(f"{name}: index {index} out of range for {v} classes")
        return scores[:, index]
    table = torch.as_tensor(index, device=scores.device).to(torch.long)
    if table.dim() == 0:
        table = table.expand(scores.shape[0])
    elif repeats > 1:
        table = table.repeat(repeats)
    if table.dim() != 1 or table.shape[0] != scores.shape[0]:
        raise TargetError(
            f"{name}: give one index, or one per example ({scores.shape[0]}), got shape "
            f"{list(table.shape)}"
        )
    if bool(((table < -v) | (table >= v)).any()):
        raise TargetError(f"{name}: indices {table.tolist()} out of range for {v} classes")
    return scores.gather(1, (table % v).unsqueeze(1)).squeeze(1)


class logit_diff(Metric):
    """``logits[correct] - logits[wrong]`` per example.

    Example:
        >>> metric = latent.logit_diff(correct=7, wrong=[3, 4])
        >>> metric(torch.randn(2, 5, 10)).shape
        torch.Size([2])
    """

    def __init__(self, correct: Index, wrong: Index, *, position: int = -1) -> None:
        super().__init__(position)
        self.correct, self.wrong = correct, wrong

    def __call__(self, output: Any) -> Tensor:
        scores = self.scores(output)
        return _pick(scores, self.correct, "correct", self.repeats) - _pick(
            scores, self.wrong, "wrong", self.repeats
        )


class prob(Metric):
    """The softmax probability of ``target`` per example.

    Example:
        >>> latent.prob(3)(torch.zeros(2, 4))
        tensor([0.2500, 0.2500])
    """

    def __init__(self, target: Index, *, position: int = -1) -> None:
        super().__init__(position)
        self.target = target

    def __call__(self, output: Any) -> Tensor:
        return _pick(self.scores(output).softmax(-1), self.target, "target", self.repeats)


class kl(Metric):
    """``KL(reference || output)`` of the next-token distributions, per example.

    Args:
        reference_logits: ``[B, V]`` or ``[B, T, V]`` logits of the reference run (read at the
            same position as the output).

    Example:
        >>> ref = torch.randn(2, 5)
        >>> latent.kl(ref)(ref)
        tensor([0., 0.])
    """

    def __init__(self, reference_logits: Tensor, *, position: int = -1) -> None:
        super().__init__(position)
        self.reference = self.scores(reference_logits).detach().log_softmax(-1)

    def __call__(self, output: Any) -> Tensor:
        log_q = self.scores(output).log_softmax(-1)
        ref = self._tile(self.reference.to(log_q))
        if ref.shape != log_q.shape:
            raise InputError(
                f"kl: the reference logits have shape {list(ref.shape)} at the position read, "
                f"the output {list(log_q.shape)}"
            )
        return (ref.exp() * (ref - log_q)).sum(-1)
