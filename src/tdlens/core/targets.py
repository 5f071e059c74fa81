"""Targets: which scalar per example an attribution explains.

``target`` follows captum: ``None`` (the predicted class of a ``[B, C]`` output, or the ``[B]``
output itself), an int, a tuple index, a per-example list or 1-D tensor of length B, or a
callable ``output -> Tensor[N]`` applied row-wise. ``targets`` is a sequence of such targets,
explained together from one forward pass. :class:`Target` also names *which* output a target
reads, so one call can mix the heads of a multi-output model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import InputError, InputTypeError, TargetError


@dataclass(frozen=True)
class Target:
    """One target: an index into an output, and which output (``None``: the call's ``output=``).

    Example:
        >>> targets = [tdlens.Target(2, output="logits"), tdlens.Target(output="state_value")]
    """

    index: Any = None
    output: Any = None


def normalize_targets(
    target: Any, targets: Any, output: Any, batch_size: int
) -> tuple[list[Target], bool]:
    """The list of targets to explain and whether the result gets a K dimension."""
    if targets is not None and target is not None:
        raise InputError("pass either target= (one target) or targets=[...] (several), not both")
    if targets is None:
        chosen, multi = [target], False
    else:
        if isinstance(targets, Tensor):
            if targets.dim() != 1:
                raise InputError(
                    f"targets= as a tensor must be 1-D (one class index per target), got shape "
                    f"{list(targets.shape)}; for per-example targets pass a list of 1-D tensors"
                )
            targets = targets.tolist()
        if isinstance(targets, (str, int)) or not isinstance(targets, Sequence) or not targets:
            raise InputError(
                f"targets= takes a non-empty list of targets, got {targets!r}; for one target "
                "use target="
            )
        chosen, multi = list(targets), True
    normalized = []
    for item in chosen:
        t = item if isinstance(item, Target) else Target(item, None)
        if t.output is None and output is not None:
            t = Target(t.index, output)
        _check_static(t.index, batch_size)
        normalized.append(t)
    return normalized, multi


def _check_static(index: Any, batch_size: int) -> None:
    if index is None or callable(index) or isinstance(index, (int, tuple)):
        return
    if isinstance(index, Tensor):
        if index.dim() == 0:
            return
        if index.dim() > 2 or index.is_floating_point():
            raise InputTypeError(
                f"a tensor target must hold integer indices of shape [B] or [B, d], got "
                f"{index.dtype} of shape {list(index.shape)}"
            )
        length = index.shape[0]
    elif isinstance(index, list):
        length = len(index)
    else:
        raise InputTypeError(
            f"target must be None, an int, a tuple, a per-example list or tensor, or a callable; "
            f"got {type(index).__name__}"
        )
    if length != batch_size:
        raise TargetError(
            f"the per-example target has {length} entries but the batch has {batch_size} "
            "examples; give one target per example, or an int for the same target in all"
        )


def takes_context(index: Any) -> bool:
    """Whether a callable target takes a second argument: the inputs of each row's example.

    ``lambda out: ...`` gets the explained output of the rows; ``lambda out, batch: ...`` also
    gets the original inputs of the example each row belongs to (a tensor, tuple, dict or
    TensorDict like the call's inputs, one entry per row), e.g. the action actually taken.
    """
    if not callable(index) or isinstance(index, Tensor):
        return False
    try:
        params = inspect.signature(index).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and p.default is inspect.Parameter.empty
    ]
    return len(positional) >= 2 or (
        len(positional) == 1 and any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    )


def predicted(values: Tensor) -> Tensor | None:
    """The predicted class per row of a ``[N, C]`` output, ``None`` if one value per row."""
    per_row = values[0].numel() if values.shape[0] else 1
    if per_row == 1:
        return None
    if values.dim() != 2:
        raise TargetError(
            f"target=None means the predicted class only for [B, C] outputs; this output has "
            f"shape {list(values.shape)}: pass a target index or a callable"
        )
    return values.detach().argmax(dim=1)


def select(
    values: Tensor, index: Any, examples: Tensor | Callable[[], Tensor], name: str
) -> Tensor:
    """The scalar per row that ``index`` picks from ``values`` (``[N, ...]`` -> ``[N]``).

    Args:
        values: the explained output for N rows (integration points, noise samples...).
        index: the target, per-example targets indexed by ``examples``.
        examples: the example each row belongs to (``[N]``, values in ``0..B-1``), or a
            function making them (called only for per-example targets).
        name: the output's name for error messages.
    """
    if values.dim() == 0:
        raise TargetError(
            f"output {name} is a single number (0-d) for the whole forward call, not one value "
            "per example: return [B] or [B, ...] from the model, or pick another entry with "
            "output="
        )
    n = values.shape[0]
    if type(index) is int and values.dim() == 2 and -values.shape[1] <= index < values.shape[1]:
        return values[:, index]  # the common case, without the general checks
    if callable(index) and not isinstance(index, Tensor):
        picked = index(values)
        if not isinstance(picked, Tensor) or picked.reshape(-1).shape[0] != n:
            shape = list(picked.shape) if isinstance(picked, Tensor) else type(picked).__name__
            raise TargetError(
                f"a callable target must return one value per row ([{n}]), got {shape}"
            )
        return picked.reshape(n)
    if index is None:
        if values[0].numel() != 1 if n else False:
            raise TargetError(
                f"target=None on output {name} of shape {_shape(values)}: pass a target "
                "index (the predicted class is used only for [B, C] outputs)"
            )
        return values.reshape(n)
    if isinstance(index, Tensor) and index.dim() == 0:
        index = int(index)
    if isinstance(index, int):
        index = (index,)
    if isinstance(index, tuple):
        _check_range(values, index, name)
        picked = values[(slice(None), *index)]
    else:
        table = torch.as_tensor(index, device=values.device)
        table = table.reshape(table.shape[0], -1).to(torch.long)
        for column in range(table.shape[1]):
            _check_range(
                values,
                (int(table[:, column].min()), int(table[:, column].max())),
                name,
                dim=1 + column,
                per_example=True,
            )
        if callable(examples):
            examples = examples()
        rows = table.index_select(0, examples.to(values.device))
        picked = values[(torch.arange(n, device=values.device), *rows.unbind(1))]
    if picked.dim() != 1:
        raise TargetError(
            f"the target selects a slice of shape {_shape(picked)} from output {name} of "
            f"shape {_shape(values)}; give one index per dimension after the batch "
            "(e.g. a tuple), or a callable returning one value per example"
        )
    return picked


def _check_range(
    values: Tensor, index: tuple, name: str, dim: int = 1, per_example: bool = False
) -> None:
    if per_example:
        low, high = index
        size = values.shape[dim] if values.dim() > dim else None
        if size is None or low < -size or high >= size:
            raise TargetError(
                f"per-example targets range over {low}..{high} but output {name} has shape "
                f"{_shape(values)}: valid indices are 0..{(size or 1) - 1}"
            )
        return
    if len(index) > values.dim() - 1:
        raise TargetError(
            f"target {index} has {len(index)} indices but output {name} of shape "
            f"{_shape(values)} has only {values.dim() - 1} dimension(s) after the batch"
        )
    for offset, i in enumerate(index):
        size = values.shape[1 + offset]
        if not isinstance(i, int) or not -size <= i < size:
            shown = index[0] if len(index) == 1 else index
            raise TargetError(
                f"target={shown} is out of range for output {name} of shape "
                f"{_shape(values)}: valid indices along dimension {1 + offset} are "
                f"0..{size - 1}"
            )


def _shape(values: Tensor) -> str:
    """``[B, 4]``: the batch dimension of the rows is not the user's batch size, so say B."""
    return "[" + ", ".join(["B", *map(str, values.shape[1:])]) + "]"


Selectable = int | tuple | list | Tensor | Callable[[Tensor], Tensor] | None
