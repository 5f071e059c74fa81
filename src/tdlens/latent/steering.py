"""Steering: add a direction to an activation on every forward pass, e.g. during generation.

:func:`steering_vector` builds the direction from contrast pairs (the mean difference of the
activations of positive and negative examples at one position; ActAdd with a single pair).
:func:`steer` adds ``scale * vector`` at each path inside a ``with`` block. Under Hugging Face
``generate`` with a KV cache each step's forward pass holds only the new positions, so the
vector is added to each new position once and never re-added to cached ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import InputError, InputTypeError
from ..core.hooks import Scope
from .cache import MaskedReduce, cache, last_position, mean_over_positions


def steering_vector(
    model: nn.Module,
    positive: Any,
    negative: Any,
    *,
    path: str,
    position: int | None = -1,
) -> Tensor:
    """``mean(activation | positive) - mean(activation | negative)`` at ``path``.

    Args:
        model: any ``nn.Module`` (left unchanged).
        positive, negative: batches of inputs (any structure; a batch of one pair is ActAdd).
        path: one module path producing ``[B, T, D]`` (or ``[B, D]``).
        position: the position read (default the last; with an ``attention_mask`` input, the
            last non-padding one), or ``None`` for the mean over positions.

    Returns:
        The vector ``[D]``.

    Example:
        >>> vec = latent.steering_vector(model, love_ids, hate_ids, path="transformer.h.3[0]")
        >>> vec.shape
        torch.Size([64])
    """
    means = []
    for inputs in (positive, negative):
        acts = cache(model, inputs, paths=path, reduce=_reader(position))
        if len(acts.keys()) != 1:
            raise InputError(f"steering_vector reads one path; {path!r} matches {len(acts.keys())}")
        means.append(acts.get(next(iter(acts.keys()))).mean(0))
    return means[0] - means[1]


def _reader(position: int | None) -> MaskedReduce:
    """The reducer for ``position``; an activation without positions (``[B, D]``, e.g. an
    MLP's hidden layer) is read whole, since there is no position to pick."""
    if position is not None and not isinstance(position, int):
        raise InputError(f"position= takes an int or None, got {position!r}")

    def at(value: Tensor, mask: Tensor | None) -> Tensor:
        if value.dim() == 2:
            return value
        if position is None:
            return mean_over_positions(value, mask)
        if position == -1:
            return last_position(value, mask)
        if value.dim() < 3 or not -value.shape[1] <= position < value.shape[1]:
            raise InputError(
                f"position={position} does not exist: the activation has shape "
                f"{list(value.shape)} ({value.shape[1]} positions, valid "
                f"0..{value.shape[1] - 1})"
            )
        return value[:, position]

    return MaskedReduce(at)


@contextmanager
def steer(
    model: nn.Module,
    vectors: Mapping[str, Tensor],
    *,
    scale: float = 1.0,
) -> Iterator[Scope]:
    """Add ``scale * vector`` to the activation at each path, at every position, on every
    forward pass inside the block (plain calls and ``generate``); the model is unchanged after.

    A path with a tensor index steers only that part (``"blocks.3[:, -1]"``: the last position
    of each forward pass).

    Example:
        >>> with latent.steer(model, {"transformer.h.3[0]": vec}, scale=4.0):
        ...     out = model.generate(ids, max_new_tokens=10)
    """
    if not isinstance(vectors, Mapping) or not vectors:
        raise InputTypeError("steer takes a dict {path: vector}, e.g. {'blocks.3': vec}")
    with Scope(model) as scope:
        for path, vector in vectors.items():
            if not isinstance(vector, Tensor):
                raise InputTypeError(f"the vector for {path!r} is {type(vector).__name__}")
            scope.set(path, _adder(path, vector.detach(), scale))
        yield scope


def _adder(path: str, vector: Tensor, scale: float) -> Any:
    def add(value: Tensor) -> Tensor:
        if not isinstance(value, Tensor):
            raise InputTypeError(
                f"steer: {path!r} holds {type(value).__name__}, not a tensor; pick the tensor "
                f"with a selector, e.g. '{path}[0]'"
            )
        if vector.shape[-1] != value.shape[-1] or vector.dim() > value.dim():
            raise InputError(
                f"steer: the vector for {path!r} has shape {list(vector.shape)} but the "
                f"activation has width {value.shape[-1]} (shape {list(value.shape)})"
            )
        return value + scale * vector.to(dtype=value.dtype, device=value.device)

    return add


def random_like(vector: Tensor, *, seed: int = 0) -> Tensor:
    """A random direction with the norm of ``vector`` (the control for a steering test)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(vector.shape, generator=generator, dtype=vector.dtype)
    return noise * (vector.norm() / noise.norm())
