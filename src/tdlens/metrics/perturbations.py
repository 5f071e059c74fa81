"""Perturbation functions for infidelity and sensitivity, and the structures they exchange.

A perturbation function receives the attributed inputs (repeated per sample) in the structure
the user passed: a tensor, a tuple of tensors, a dict or a TensorDict, and returns the same
structure. The ones here work on any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..core.errors import InputError
from ..core.lazy import is_tensordict
from ..core.structure import InputBatch, Key


def map_structure(fn: Callable[..., Any], first: Any, *others: Any) -> Any:
    """``fn`` applied leaf by leaf to structures of the same shape (tensor, tuple, dict,
    TensorDict); a non-container in ``others`` is passed as is to every leaf."""
    if is_tensordict(first):
        out = first.empty()
        for key in first.keys(include_nested=True, leaves_only=True):
            out.set(key, fn(first.get(key), *(_at(o, key) for o in others)))
        return out
    if isinstance(first, Mapping):
        return {k: map_structure(fn, v, *(_at(o, k) for o in others)) for k, v in first.items()}
    if isinstance(first, (tuple, list)):
        return tuple(
            map_structure(fn, v, *(_at(o, i) for o in others)) for i, v in enumerate(first)
        )
    return fn(first, *others)


def _at(structure: Any, key: Any) -> Any:
    if is_tensordict(structure):
        return structure.get(key)
    if isinstance(structure, (Mapping, tuple, list)):
        return structure[key]
    return structure


def uniform_noise(inputs: Any, perturb_radius: float = 0.02) -> Any:
    """Every float input plus uniform noise in ``[-perturb_radius, perturb_radius)``, drawn in
    the input's dtype (captum's default perturbation for ``sensitivity_max`` draws float32)."""
    return map_structure(
        lambda x: x + torch.empty_like(x).uniform_(-perturb_radius, perturb_radius), inputs
    )


def gaussian_noise(std: float = 0.1) -> Callable[[Any], tuple[Any, Any]]:
    """A perturbation for infidelity: noise ``I ~ N(0, std^2)`` per element; returns
    ``(I, inputs - I)``, suited to local attributions (Saliency); for global ones, pass a
    perturbation that scales with ``inputs - baselines``."""

    def perturb(inputs: Any) -> tuple[Any, Any]:
        noise = map_structure(lambda x: std * torch.randn_like(x), inputs)
        return noise, map_structure(lambda x, n: x - n, inputs, noise)

    return perturb


# -- structures --------------------------------------------------------------------------------
def structure_of(batch: InputBatch, per_key: dict[Key, Any]) -> Any:
    """Values of the attributed inputs in the structure the user passed them in."""
    if batch.kind == "tensordict" and not all(isinstance(v, Tensor) for v in per_key.values()):
        return dict(per_key)
    return batch.pack(per_key)


def parse_structure(
    batch: InputBatch, value: Any, expected: dict[Key, torch.Size], name: str
) -> dict[Key, Tensor]:
    """Tensors per attributed input from a structure a user function returned, each checked
    against its expected shape."""
    try:
        per_key = batch.per_key(value, name)
    except (InputError, TypeError, LookupError) as error:
        raise InputError(
            f"{name} do not line up with the inputs: {error}. Return the structure the "
            "function received (a tensor, a tuple, a dict or a TensorDict of the same entries)"
        ) from None
    result = {}
    for key, shape in expected.items():
        got = per_key[key]
        if not isinstance(got, Tensor) or got.shape != shape:
            shown = list(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise InputError(
                f"{name} for input {key!r} have shape {shown}; expected {list(shape)}, the "
                "shape of the (repeated) inputs the function received"
            )
        result[key] = got
    return result
