"""Cache activations of any module paths over a batch or a data loader, as a TensorDict.

Built on :class:`tdlens.Scope` (the hooks) and the model adapter (input structures, targets).
With ``gradients=True`` the gradient of a target with respect to every cached activation is
cached beside it, under ``"<path>:grad"``; with ``to=`` a directory the cache is written as a
memory-mapped TensorDict there and reopened lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter
from ..core.errors import InputError, InputTypeError
from ..core.hooks import Scope
from ..core.lazy import is_tensordict
from ..core.structure import InputBatch
from ..core.targets import normalize_targets


class MaskedReduce:
    """A reducer that also receives each batch's attention mask (``None`` without one):
    ``fn(value, mask) -> Tensor``. The built-in ``"last"`` and ``"mean"`` are such reducers."""

    def __init__(self, fn: Callable[[Tensor, Tensor | None], Tensor]) -> None:
        self.fn = fn


Reduce = str | Callable[[Tensor], Tensor] | MaskedReduce | None


def cache(
    model: nn.Module,
    inputs: Any,
    paths: str | Iterable[str],
    *,
    gradients: bool = False,
    target: Any = None,
    output: Any = None,
    reduce: Reduce = None,
    batch_size: int | None = None,
    to: str | Path | None = None,
) -> Any:
    """The activations at ``paths`` (globs allowed) for every example of ``inputs``.

    Args:
        model: any ``nn.Module`` (left unchanged).
        inputs: a tensor, tuple, dict or TensorDict of model inputs, or an iterable of such
            batches (a ``DataLoader``): results are concatenated over batches.
        paths: module paths as :class:`tdlens.Scope` takes them (``"blocks.*"``,
            ``"head:input"``, ``"blocks.0[:, -1]"``).
        gradients: also cache ``d target / d activation`` under ``"<path>:grad"``. The target
            is summed over the batch, so each example gets the gradient of its own target.
        target: what the gradients explain, in any form ``attribute()`` takes (an int, a
            tuple index, per-example indices, a callable ``output -> Tensor[B]`` such as
            ``latent.logit_diff(...)``); required with ``gradients=True``.
        output: which model output the target reads (as in ``attribute()``).
        reduce: ``None`` (whole activations), ``"last"`` (the last non-padding position, from
            the inputs' ``attention_mask`` when there is one), ``"mean"`` (over positions,
            padding excluded) or a callable ``[B, T, ...] -> [B, ...]``.
        batch_size: examples per forward pass (default: the whole batch, or each loader batch).
        to: a directory: write the cache there as a memory-mapped TensorDict and return it
            reopened from disk.

    Returns:
        A TensorDict with batch size ``[N]`` keyed by path as written, plus ``"<path>:grad"``.

    Example:
        >>> acts = latent.cache(model, ids, paths="blocks.*", reduce="last")
        >>> acts
        TensorDict(fields={blocks.0: Tensor(shape=torch.Size([4, 64]), ...), ...},
                   batch_size=torch.Size([4]), ...)
    """
    if gradients and target is None:
        raise InputError(
            "gradients=True needs target=: the scalar per example whose gradient is cached, "
            "e.g. target=latent.logit_diff(correct, wrong) or target=(-1, token_id)"
        )
    if not gradients and target is not None:
        raise InputError("target= is used only with gradients=True; pass gradients=True too")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    reducer = _reducer(reduce)
    parts = (
        _cache_batch(model, batch, paths, gradients, target, output, reducer)
        for batch in _batches(inputs, batch_size)
    )
    if to is None:
        collected = list(parts)
        if not collected:
            raise InputError("inputs hold no batch: the data loader is empty")
        return collected[0] if len(collected) == 1 else torch.cat(collected, dim=0)
    return _write(parts, _total(inputs), Path(to))


def _write(parts: Iterable[Any], total: int | None, to: Path) -> Any:
    """Write the batches' caches into one memory-mapped TensorDict at ``to``, batch by batch
    when the number of examples is known (only one batch is in memory at a time)."""
    from tensordict import TensorDict

    to.mkdir(parents=True, exist_ok=True)
    if total is None:  # a loader without a length: gather, then write
        collected = list(parts)
        if not collected:
            raise InputError("inputs hold no batch: the data loader is empty")
        joined: Any = torch.cat(collected, dim=0)
        joined.memmap_(prefix=str(to))
        return TensorDict.load_memmap(str(to))
    out, offset = None, 0
    for part in parts:
        if out is None:  # empty files of the final size, from the first batch's layout
            out = part[:1].expand(total).memmap_like(prefix=str(to))
        stop = offset + part.batch_size[0]
        if stop > total:
            raise InputError(f"the loader gave more than the {total} examples its dataset holds")
        out[offset:stop] = part
        offset = stop
    if out is None:
        raise InputError("inputs hold no batch: the data loader is empty")
    if offset != total:
        raise InputError(f"the loader gave {offset} examples, its dataset holds {total}")
    return TensorDict.load_memmap(str(to))


def _total(inputs: Any) -> int | None:
    """The number of examples, when known before running."""
    if not _is_loader(inputs):
        return InputBatch.build(
            inputs, keys=[], require_float=False, need_attributed=False
        ).batch_size
    dataset = getattr(inputs, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None  # type: ignore[arg-type]
    except TypeError:
        return None


def _batches(inputs: Any, batch_size: int | None) -> Iterable[InputBatch]:
    """One InputBatch per forward pass: the inputs cut in ``batch_size`` pieces, or a loader's
    batches (each cut too)."""
    if _is_loader(inputs):
        for item in inputs:
            yield from _batches(item, batch_size)
        return
    batch = InputBatch.build(inputs, keys=[], require_float=False, need_attributed=False)
    b = batch.batch_size
    step = batch_size or b
    for first in range(0, b, step):
        stop = min(b, first + step)
        if first == 0 and stop == b:
            yield batch
            continue
        values = batch.take_rows(None, run=(first, stop))
        rows, _ = batch.rebuild(values)
        yield InputBatch.build(rows, keys=[], require_float=False, need_attributed=False)


def _is_loader(inputs: Any) -> bool:
    if isinstance(inputs, (Tensor, tuple, list, Mapping)) or is_tensordict(inputs):
        return False
    if isinstance(inputs, Iterable):
        return True
    raise InputTypeError(
        f"inputs must be a tensor, tuple, dict, TensorDict or a data loader of them, got "
        f"{type(inputs).__name__}"
    )


def _cache_batch(
    model: nn.Module,
    batch: InputBatch,
    paths: str | Iterable[str],
    gradients: bool,
    target: Any,
    output: Any,
    reducer: Callable[[Tensor, Tensor | None], Tensor] | None,
) -> Any:
    targets, _ = normalize_targets(target, None, output, batch.batch_size)
    values = dict(batch.leaves)
    with Scope(model) as scope, ModelAdapter(model, batch, targets) as adapter:
        live: list[Tensor] = []
        if gradients:
            scope.set(paths, lambda v: _keep(v, live))
        scope.get(paths, grad=gradients)
        with torch.enable_grad() if gradients else torch.no_grad():
            explained, _ = adapter.run(values)
            if gradients:
                (scalars,) = adapter.pick(explained, torch.arange(batch.batch_size), True)
                # autograd.grad, not backward: the parameters' .grad stay as the user left them;
                # the scope's tensor hooks capture the gradient at each site on the way
                torch.autograd.grad(scalars.sum(), live, allow_unused=True)
    captured = scope.captured()
    if reducer is not None:
        mask = _mask(batch)
        captured = {key: reducer(value, mask) for key, value in captured.items()}
    from tensordict import TensorDict

    return TensorDict(captured, batch_size=[batch.batch_size])


def _keep(value: Any, live: list[Tensor]) -> Any:
    """Collect a site's tensor for the backward pass. An activation computed from frozen
    weights and integer inputs has no graph: it becomes the graph's root (nothing upstream
    needs a gradient)."""
    if isinstance(value, Tensor) and value.is_floating_point():
        if not value.requires_grad:
            value = value.detach().requires_grad_()
        live.append(value)
    return value


def _mask(batch: InputBatch) -> Tensor | None:
    mask = batch.leaves.get("attention_mask")
    return mask if isinstance(mask, Tensor) and mask.dim() == 2 else None


def _reducer(reduce: Reduce) -> Callable[[Tensor, Tensor | None], Tensor] | None:
    if reduce is None:
        return None
    if isinstance(reduce, MaskedReduce):
        return reduce.fn
    if callable(reduce):
        return lambda value, _mask: reduce(value)
    if reduce == "last":
        return last_position
    if reduce == "mean":
        return mean_over_positions
    raise InputError(f"reduce= takes None, 'last', 'mean' or a callable, got {reduce!r}")


def last_position(value: Tensor, mask: Tensor | None) -> Tensor:
    """``value[:, t]`` at each example's last non-padding position (``t = T - 1`` without a
    mask; left or right padding alike)."""
    _check_sequence(value, "last")
    if mask is None:
        return value[:, -1]
    _check_mask(value, mask)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.to(torch.bool) * positions).amax(1)
    return value[torch.arange(value.shape[0], device=value.device), last.to(value.device)]


def mean_over_positions(value: Tensor, mask: Tensor | None) -> Tensor:
    """The mean over positions (dimension 1), padding positions excluded."""
    _check_sequence(value, "mean")
    if mask is None:
        return value.mean(1)
    _check_mask(value, mask)
    weights = mask.to(value.dtype).reshape(*mask.shape, *([1] * (value.dim() - 2)))
    return (value * weights).sum(1) / weights.sum(1).clamp_min(1)


def _check_sequence(value: Tensor, how: str) -> None:
    if value.dim() < 3:
        raise InputError(
            f"reduce={how!r} works on sequence activations [B, T, ...]; this one has shape "
            f"{list(value.shape)}: use reduce=None"
        )


def _check_mask(value: Tensor, mask: Tensor) -> None:
    if tuple(mask.shape) != tuple(value.shape[:2]):
        raise InputError(
            f"attention_mask of shape {list(mask.shape)} does not match the activation's "
            f"batch and positions {list(value.shape[:2])}"
        )
