"""Snapshot and bit-exact restore of the tensors a weight method edits in place."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..core.errors import InputError, KeyNotFoundError, closest, format_keys


def model_tensors(model: nn.Module) -> dict[str, Tensor]:
    """``{state_dict key: the live parameter or buffer}`` (tied tensors appear under each key)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"the model must be an nn.Module, got {type(model).__name__}")
    return dict(model.state_dict(keep_vars=True))


def lookup(tensors: dict[str, Tensor], keys: Iterable[str], what: str) -> None:
    """Raise, naming the nearest keys, when ``keys`` are not entries of the model."""
    missing = [k for k in keys if k not in tensors]
    if missing:
        near = closest(missing[0], tensors)
        raise KeyNotFoundError(
            f"{what} has {len(missing)} key(s) the model does not: {format_keys(missing, 8)}; "
            f"nearest model keys: {format_keys(near)}"
        )


class Snapshot:
    """Copies of some live tensors; :meth:`restore` writes them back bit for bit, into the
    same tensor objects (so optimisers and tied references stay valid)."""

    def __init__(self) -> None:
        self._saved: dict[int, tuple[Tensor, Tensor]] = {}

    def save(self, tensor: Tensor) -> bool:
        """Save ``tensor`` unless already saved (tied weights); whether it is new."""
        if id(tensor) in self._saved:
            return False
        self._saved[id(tensor)] = (tensor, tensor.detach().clone())
        return True

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, copy in self._saved.values():
                tensor.copy_(copy)
        self._saved.clear()
