"""The convergence delta of given attributions: how far they are from completeness.

``sum(attributions) - (f(end_point) - f(start_point))`` per example, from one forward pass over
both points. Methods return the same quantity with ``return_convergence_delta=True``; this
computes it for attributions obtained elsewhere (captum's ``compute_convergence_delta``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..core.adapter import ModelAdapter
from ..core.errors import InputError, InputTypeError
from ..core.lazy import is_tensordict
from ..core.structure import InputBatch
from ..core.targets import normalize_targets

if TYPE_CHECKING:
    from .base import Attribution


def convergence_delta(
    method: Attribution,
    attributions: Any,
    start_point: Any,
    end_point: Any,
    target: Any = None,
    additional_forward_args: Any = None,
) -> Tensor:
    """``[B]``: the attributions summed per example (over every input, or every layer
    tensor) minus the change of the target between ``start_point`` and ``end_point``."""
    batch = InputBatch.build(end_point, additional_forward_args=additional_forward_args)
    b = batch.batch_size
    start = method._baselines(batch, start_point)
    targets, _ = normalize_targets(target, None, method.output, b)
    rows = torch.arange(b).repeat(2)
    values = batch.take_rows(rows, skip=batch.attributed)
    for key in batch.attributed:
        values[key] = torch.cat([batch.leaves[key], start[key]])
    with torch.no_grad(), ModelAdapter(method.model, batch, targets) as adapter:
        explained, _ = adapter.run(values)
        adapter.learn_predictions([e[:b] for e in explained], torch.arange(b))
        (ends,) = adapter.pick(explained, rows)
    totals = [t.reshape(b, -1).sum(1) for t in _tensors(attributions)]
    if not totals:
        raise InputError("compute_convergence_delta: attributions hold no tensor")
    if any(t.shape[0] != b for t in totals):
        raise InputError(
            f"compute_convergence_delta: attributions have {totals[0].shape[0]} rows but "
            f"end_point has {b} examples; pass attributions of the same examples"
        )
    total = torch.stack(totals).sum(0)
    return total - (ends[:b] - ends[b:]).to(total)


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if is_tensordict(value):
        return list(value.values(include_nested=True, leaves_only=True))
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    raise InputTypeError(
        f"attributions must be a tensor, a tuple, a dict or a TensorDict, got {type(value)}"
    )
