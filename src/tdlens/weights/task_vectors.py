"""Task vectors (Ilharco et al., 2023): ``tuned - base`` over state dicts, with arithmetic,
applied to a model inside a ``with`` block that restores it bit for bit.

    tv = weights.task_vector(base_state_dict, tuned_state_dict)
    merged = 0.5 * (tv_a + tv_b) - tv_c
    with weights.apply(model, merged, scale=0.8):
        ...
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import InputError, InputTypeError, format_keys
from ._snapshot import Snapshot, lookup, model_tensors


class TaskVector(Mapping[str, Tensor]):
    """Per-key weight differences. Supports ``+``, ``-``, unary ``-``, scalar ``*`` and ``/``,
    and ``sum()`` of several. Non-floating entries (step counters, position ids) have no
    difference and are listed in :attr:`skipped`.

    Example:
        >>> tv = weights.task_vector(base.state_dict(), tuned.state_dict())
        >>> (2 * tv - tv)["fc.weight"].equal(tv["fc.weight"])
        True
    """

    def __init__(self, deltas: Mapping[str, Tensor], skipped: tuple[str, ...] = ()) -> None:
        self._deltas = dict(deltas)
        self.skipped = tuple(skipped)

    def __getitem__(self, key: str) -> Tensor:
        return self._deltas[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._deltas)

    def __len__(self) -> int:
        return len(self._deltas)

    def _combine(self, other: Any, op: str) -> TaskVector:
        if not isinstance(other, TaskVector):
            return NotImplemented
        _check_same(self._deltas, other._deltas, "the two task vectors")
        fn = torch.add if op == "+" else torch.sub
        return TaskVector({k: fn(v, other[k]) for k, v in self._deltas.items()}, self.skipped)

    def __add__(self, other: Any) -> TaskVector:
        return self._combine(other, "+")

    def __radd__(self, other: Any) -> TaskVector:
        if isinstance(other, Real) and other == 0:  # sum([tv1, tv2]) starts from 0
            return self
        return NotImplemented

    def __sub__(self, other: Any) -> TaskVector:
        return self._combine(other, "-")

    def __neg__(self) -> TaskVector:
        return TaskVector({k: -v for k, v in self._deltas.items()}, self.skipped)

    def __mul__(self, scale: Any) -> TaskVector:
        if not isinstance(scale, Real):
            return NotImplemented
        return TaskVector({k: v * float(scale) for k, v in self._deltas.items()}, self.skipped)

    __rmul__ = __mul__

    def __truediv__(self, scale: Any) -> TaskVector:
        if not isinstance(scale, Real):
            return NotImplemented
        return TaskVector({k: v / float(scale) for k, v in self._deltas.items()}, self.skipped)

    def norm(self) -> float:
        """The L2 norm over every entry."""
        total = torch.zeros((), dtype=torch.float64)
        for value in self._deltas.values():
            total += (value.double() ** 2).sum()
        return float(total.sqrt())

    def apply_to(self, state_dict: Mapping[str, Tensor], *, scale: float = 1.0) -> dict:
        """A new state dict ``state_dict + scale * self`` (the input is not changed)."""
        _check_same({k: state_dict[k] for k in self if k in state_dict}, self._deltas, "")
        lookup(dict(state_dict), self._deltas, "the task vector")
        return {
            k: (v + scale * self._deltas[k].to(v.dtype)) if k in self._deltas else v
            for k, v in state_dict.items()
        }

    def __repr__(self) -> str:
        return f"TaskVector({len(self)} tensors, norm={self.norm():.4g})"


def _state(value: Any, name: str) -> Mapping[str, Tensor]:
    if isinstance(value, nn.Module):
        return value.state_dict()
    if isinstance(value, Mapping):
        return value
    raise InputTypeError(f"{name} must be a state dict or an nn.Module, got {type(value).__name__}")


def _check_same(a: Mapping[str, Tensor], b: Mapping[str, Tensor], what: str) -> None:
    """Same keys and shapes, or an error listing every difference."""
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    shapes = [
        f"{k}: {list(a[k].shape)} vs {list(b[k].shape)}"
        for k in a
        if k in b and a[k].shape != b[k].shape
    ]
    if only_a or only_b or shapes:
        parts = []
        if only_a:
            parts.append(f"keys only in the first: {format_keys(only_a, 10)}")
        if only_b:
            parts.append(f"keys only in the second: {format_keys(only_b, 10)}")
        if shapes:
            parts.append("shapes differ: " + "; ".join(shapes[:10]))
        raise InputError(f"{what or 'the state dicts'} do not match: " + ". ".join(parts))


def task_vector(base: Any, tuned: Any) -> TaskVector:
    """``tuned - base`` for every floating-point entry of two state dicts (or modules).

    Raises:
        InputError: the state dicts differ in keys or shapes (each difference is listed).

    Example:
        >>> tv = weights.task_vector(base_model, tuned_model)
        >>> with weights.apply(base_model, -tv):   # forget the task
        ...     logits = base_model(x)
    """
    a, b = _state(base, "base"), _state(tuned, "tuned")
    _check_same(a, b, "base and tuned state dicts")
    deltas, skipped = {}, []
    for key, before in a.items():
        after = b[key]
        if before.is_floating_point() or before.is_complex():
            deltas[key] = after.detach() - before.detach().to(after.dtype)
        else:
            skipped.append(key)
    return TaskVector(deltas, tuple(skipped))


@contextmanager
def apply(
    model: nn.Module, delta: Mapping[str, Tensor], *, scale: float = 1.0
) -> Iterator[nn.Module]:
    """Add ``scale * delta`` to the model's weights inside the block; restored bit for bit on
    exit, also after an exception. Tied weights (one tensor under several keys) get the
    delta once.

    Args:
        model: the model whose parameters / buffers change in place.
        delta: a :class:`TaskVector` or any ``{state_dict key: tensor}``.
        scale: the multiplier.

    Example:
        >>> with weights.apply(model, tv, scale=0.5) as edited:
        ...     y = edited(x)
    """
    if not isinstance(delta, Mapping):
        raise InputTypeError(f"delta must be a task vector or a dict, got {type(delta).__name__}")
    if not isinstance(scale, Real):
        raise InputTypeError(f"scale must be a number, got {type(scale).__name__}")
    tensors = model_tensors(model)
    lookup(tensors, delta, "the task vector")
    _check_same({k: tensors[k] for k in delta}, delta, "the model and the task vector")
    snapshot = Snapshot()
    try:
        with torch.no_grad():
            for key, change in delta.items():
                target = tensors[key]
                if snapshot.save(target):
                    target.add_(change.to(target.device, target.dtype), alpha=float(scale))
        yield model
    finally:
        snapshot.restore()
