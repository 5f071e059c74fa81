"""Ablation: replace activations by zero, by their mean over a reference batch, or by the
activations of randomly drawn reference examples (resample ablation), inside a ``with``
block."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import InputError
from ..core.hooks import Scope
from .cache import cache

HOW = ("zero", "mean", "resample")


@contextmanager
def ablate(
    model: nn.Module,
    paths: str | Iterable[str],
    *,
    how: str = "zero",
    reference: Any = None,
    seed: int = 0,
) -> Iterator[Scope]:
    """Ablate the activation at each path on every forward pass inside the block.

    Args:
        model: any ``nn.Module`` (left unchanged).
        paths: module paths (globs and tensor indexes allowed: ``"blocks.2.attn[:, 5]"``
            ablates position 5 only).
        how: ``"zero"``; ``"mean"``: the mean over ``reference``'s examples, per position
            when the reference has as many positions as the run, else over positions too;
            ``"resample"``: each example takes the activation of a reference example drawn
            with a generator seeded by ``seed`` (so two blocks with one seed agree).
        reference: inputs for ``"mean"`` and ``"resample"`` (any structure, or a loader).

    Example:
        >>> with latent.ablate(model, "blocks.1.attn", how="mean", reference=batch):
        ...     logits = model(ids)
    """
    if how not in HOW:
        raise InputError(f"how= takes one of {HOW}, got {how!r}")
    if how != "zero" and reference is None:
        raise InputError(f"how={how!r} needs reference= inputs whose activations replace them")
    if how == "zero" and reference is not None:
        raise InputError("reference= is used by how='mean' and how='resample', not 'zero'")
    acts = cache(model, reference, paths) if reference is not None else None
    generator = torch.Generator().manual_seed(seed)
    with Scope(model) as scope:
        if acts is None:
            scope.set(paths, torch.zeros_like)
        else:
            for key in list(acts.keys()):
                value = acts.get(key)
                hook = _mean(key, value) if how == "mean" else _resample(key, value, generator)
                scope.set(key, hook)
        yield scope


def _mean(key: str, reference: Tensor) -> Any:
    per_position = reference.mean(0)
    overall = per_position.mean(0) if reference.dim() >= 3 else per_position

    def replace(value: Tensor) -> Tensor:
        if value.shape[1:] == per_position.shape:
            return per_position.expand_as(value)
        if value.dim() >= 3 and value.shape[2:] == overall.shape:
            return overall.expand_as(value)  # another number of positions: the overall mean
        raise InputError(
            f"ablate: {key!r} has shape {list(value.shape)} here but {list(reference.shape)} "
            "in the reference batch"
        )

    return replace


def _resample(key: str, reference: Tensor, generator: torch.Generator) -> Any:
    def replace(value: Tensor) -> Tensor:
        if value.shape[1:] != reference.shape[1:]:
            raise InputError(
                f"resample ablation of {key!r}: the run's activation has shape "
                f"{list(value.shape)} and the reference's {list(reference.shape)}; give "
                "reference inputs of the same length"
            )
        rows = torch.randint(0, reference.shape[0], (value.shape[0],), generator=generator)
        return reference[rows].to(device=value.device, dtype=value.dtype)

    return replace
