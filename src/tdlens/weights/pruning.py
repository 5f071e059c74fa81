"""Temporary pruning: zero a share of the weights inside a ``with`` block, restored bit for bit
on exit (also after an exception).

    with weights.prune(model, paths="fc*", amount=0.5) as pruned:      # per module, |w|
        ...
    with weights.prune(model, paths="fc*", amount=0.5, scope="global"):  # one threshold
        ...
    with weights.prune(model, mask={"fc1.weight": keep}):               # a user mask
        ...
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.errors import InputError, InputTypeError, format_keys
from ..core.paths import resolve_paths
from ._snapshot import Snapshot, lookup, model_tensors

BY = ("magnitude", "random")
SCOPES = ("module", "global")


@dataclass
class Pruning:
    """What a :func:`prune` block did.

    Attributes:
        masks: ``{parameter name: bool tensor}``, True where the weight is kept.
    """

    masks: dict[str, Tensor]

    @property
    def sparsity(self) -> float:
        """The share of the pruned parameters' entries set to zero."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1 - kept / max(total, 1)


def _selected(model: nn.Module, paths: object, params: tuple[str, ...]) -> dict[str, Tensor]:
    tensors = model_tensors(model)
    if paths is None:
        modules = [name for name, _ in model.named_modules()]
    else:
        modules = [p.module for p in resolve_paths(model, paths)]  # type: ignore[arg-type]
    chosen: dict[str, Tensor] = {}
    for module in modules:
        for param in params:
            key = f"{module}.{param}" if module else param
            if key in tensors and tensors[key].is_floating_point():
                chosen[key] = tensors[key]
    if not chosen:
        raise InputError(
            f"paths={paths!r} matched {len(modules)} module(s) but none has a floating-point "
            f"parameter named {format_keys(params)}; pass params= the parameter names to prune"
        )
    return chosen


def _amount_count(amount: float | int, n: int, where: str) -> int:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise InputTypeError(f"amount must be a share (float) or a count (int), got {amount!r}")
    if isinstance(amount, int):  # a count, as in torch.nn.utils.prune
        if amount > n:
            raise InputError(f"amount={amount} weights to prune but {where} has only {n}")
        return amount
    if not 0 <= amount <= 1:
        raise InputError(f"amount must be a share in [0, 1] or a count, got {amount!r}")
    return round(float(amount) * n)


def _keep_mask(scores: Tensor, count: int) -> Tensor:
    """True everywhere except the ``count`` lowest scores (exactly ``count``, ties by index)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count:
        order = torch.argsort(scores.reshape(-1), stable=True)
        keep[order[:count]] = False
    return keep.reshape(scores.shape)


def _masks(
    chosen: dict[str, Tensor], amount: float | int, by: str, scope: str, seed: int
) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def scores_of(tensor: Tensor) -> Tensor:
        if by == "magnitude":
            return tensor.detach().abs()
        return torch.rand(tensor.shape, generator=generator).to(tensor.device)

    if scope == "module":
        return {
            key: _keep_mask(scores_of(t), _amount_count(amount, t.numel(), key))
            for key, t in chosen.items()
        }
    flat = torch.cat([scores_of(t).reshape(-1).float().cpu() for t in chosen.values()])
    keep = _keep_mask(flat, _amount_count(amount, flat.numel(), "the selected parameters"))
    masks, start = {}, 0
    for key, t in chosen.items():
        masks[key] = keep[start : start + t.numel()].reshape(t.shape).to(t.device)
        start += t.numel()
    return masks


@contextmanager
def prune(
    model: nn.Module,
    paths: str | list[str] | None = None,
    *,
    amount: float | int = 0.5,
    by: str = "magnitude",
    scope: str = "module",
    mask: Mapping[str, Tensor] | None = None,
    params: tuple[str, ...] = ("weight",),
    seed: int = 0,
) -> Iterator[Pruning]:
    """Zero weights inside the block; the model is restored bit for bit on exit.

    Args:
        model: the model, changed in place inside the block.
        paths: module paths (globs allowed) whose ``params`` are pruned; default every module.
        amount: the share (a float in [0, 1]) or number (an int) of entries to zero.
        by: ``"magnitude"`` (smallest ``|w|`` first) or ``"random"`` (seeded).
        scope: ``"module"`` prunes ``amount`` of each parameter; ``"global"`` ranks all the
            selected parameters together (one threshold).
        mask: ``{parameter name: bool tensor}``, True where the weight is kept; replaces the
            ``paths`` / ``amount`` / ``by`` selection.
        params: the parameter names pruned in each selected module.

    Yields:
        :class:`Pruning` with the masks used and the resulting sparsity.

    Example:
        >>> with weights.prune(model, paths="fc*", amount=0.5) as pruned:
        ...     accuracy = evaluate(model)
        >>> pruned.sparsity
        0.5
    """
    if by not in BY:
        raise InputError(f"by must be one of {BY}, got {by!r}")
    if scope not in SCOPES:
        raise InputError(f"scope must be one of {SCOPES}, got {scope!r}")
    tensors = model_tensors(model)
    if mask is not None:
        if not isinstance(mask, Mapping):
            raise InputTypeError(f"mask must be a dict {{name: bool tensor}}, got {type(mask)}")
        lookup(tensors, mask, "mask")
        masks = {}
        for key, keep in mask.items():
            if tuple(keep.shape) != tuple(tensors[key].shape):
                raise InputError(
                    f"mask[{key!r}] has shape {list(keep.shape)} but the parameter has "
                    f"{list(tensors[key].shape)}"
                )
            masks[key] = keep.to(tensors[key].device).bool()
    else:
        masks = _masks(_selected(model, paths, tuple(params)), amount, by, scope, seed)
    snapshot = Snapshot()
    try:
        with torch.no_grad():
            for key, keep in masks.items():
                snapshot.save(tensors[key])
                tensors[key].masked_fill_(~keep, 0)
        yield Pruning(masks)
    finally:
        snapshot.restore()
