"""Activation patching: run the corrupted input with one cell (path, position, head) taken
from the clean run, for every cell, in batched sweeps.

The patched variants are stacked along the batch dimension, ``row = variant * B + example``,
and run in chunks of variants under a row budget, so a sweep over L paths x P positions costs
about ``L * P * B / rows`` forward passes instead of ``L * P``. The clean activations are
cached once, by a :class:`tdlens.Scope`; each path's ``set`` hook writes the clean values into
the rows of the variants that patch it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import InputError
from ..core.hooks import Scope
from ..core.outputs import read_output
from ..core.structure import InputBatch
from .cells import Cells, PatchResult, buffers_kept, check_pair, make_cells, n_heads_of
from .metrics import Metric as MetricBase

Metric = Callable[[Any], Tensor]

PATCH_ROW_ELEMENTS = {"cpu": 2**21, "other": 2**24}
"""Rows per forward pass of a sweep: such that one chunk's output and patched activations
hold at most this many elements (clamped to [B, 8192] rows, whole variants). A sweep is
forward-only, so no graph is kept and a chunk may be larger than the gradient engine's. On a
4-layer GPT-2 (width 64, 24 positions, vocabulary 512, 2 prompt pairs, 96 cells, one thread)
the sweep took 0.36 s in chunks of ~100 rows (this budget), 0.40 s with 64, 0.49 s with 16 and
1.5 s with one variant (2 rows) per pass: on CPU larger chunks keep winning, and 2**21
elements (8 MiB of float32 for the logits and patched activations) bounds the memory."""


def patch(
    model: nn.Module,
    clean: Any,
    corrupted: Any,
    *,
    paths: str | Iterable[str],
    metric: Metric,
    positions: str | list[int] | None = "all",
    heads: bool | int | None = None,
    output: Any = None,
    normalize: bool = False,
    batch_size: int | None = None,
) -> PatchResult:
    """Patch each cell from the clean run into the corrupted run and measure the metric.

    Args:
        model: any ``nn.Module`` (left unchanged).
        clean, corrupted: inputs of the same structure and shapes (tensor, tuple, dict,
            TensorDict).
        paths: module paths (globs allowed); each must produce a tensor ``[B, T, ...]`` for
            positional sweeps (pick a tuple entry with ``"block[0]"``).
        metric: ``(output) -> Tensor[B]`` on the explained output (``latent.logit_diff``...).
        positions: ``None`` (patch the whole activation), ``"all"`` (each position in turn)
            or a list of positions (negative counts from the end).
        heads: split a ``[B, T, H*D]`` activation into H heads and patch each separately:
            ``True`` reads H from ``model.config`` (``num_attention_heads`` / ``n_head``), an
            int gives it.
        output: which model output the metric reads (default ``logits`` or the only one).
        normalize: divide by ``clean - corrupted`` metric (0 = corrupted, 1 = clean): the
            scores by the batch means, ``per_example`` example by example.
        batch_size: rows per forward pass (whole variants of B rows); default from
            :data:`PATCH_ROW_ELEMENTS`. The result does not depend on it.

    Returns:
        A :class:`PatchResult`: ``scores`` ``[n_paths, (n_heads,) n_positions]`` (no
        positions dimension with ``positions=None``), ``per_example`` ``[B, ...]``, ``paths``.

    Example:
        >>> res = latent.patch(model, clean, corrupted, paths="blocks.*.attn",
        ...                    metric=latent.logit_diff(correct, wrong))
        >>> res.scores.shape                         # [layers, positions]
        torch.Size([2, 24])
    """
    _, corrupt_batch = check_pair(clean, corrupted)
    with buffers_kept(model):
        return _sweep(
            model, clean, corrupt_batch, paths, metric, positions, heads, output, normalize,
            batch_size,
        )  # fmt: skip


def _sweep(
    model: nn.Module,
    clean: Any,
    corrupt_batch: InputBatch,
    paths: str | Iterable[str],
    metric: Metric,
    positions: Any,
    heads: Any,
    output: Any,
    normalize: bool,
    batch_size: int | None,
) -> PatchResult:
    b = corrupt_batch.batch_size
    with Scope(model) as scope, torch.no_grad():
        scope.get(paths)
        clean_metric = _metric(metric, read_output(scope.run(clean), output, model), b)
        acts = scope.cache
    keys = list(acts.keys())
    n_heads = n_heads_of(model, heads)
    cells = make_cells(keys, [acts.get(k) for k in keys], positions, n_heads)
    with torch.no_grad():
        corrupt_out = read_output(_call(model, corrupt_batch, None), output, model)
        corrupt_metric = _metric(metric, corrupt_out, b)
    rows = _rows_per_pass(batch_size, b, corrupt_out, [acts.get(k) for k in keys])
    per_variant = max(1, rows // b)
    patched = corrupt_metric.new_empty(cells.count, b)
    passes = 2
    with Scope(model) as scope, torch.no_grad():
        state: dict[str, Any] = {}
        for i, key in enumerate(keys):
            scope.set(key, _patcher(i, acts.get(key), cells, state))
        for first in range(0, cells.count, per_variant):
            stop = min(cells.count, first + per_variant)
            state["variants"] = (first, stop)
            out = _call(model, corrupt_batch, stop - first)
            values = read_output(out, output, model)
            patched[first:stop] = _metric_rows(metric, values, b, stop - first)
            passes += 1
    return PatchResult.build(
        cells, patched - corrupt_metric, clean_metric, corrupt_metric, normalize, passes
    )


def _patcher(
    path_index: int, clean: Tensor, cells: Cells, state: dict[str, Any]
) -> Callable[[Tensor], Tensor | None]:
    """The set hook of one path: the clean values into the rows of its variants."""
    b = clean.shape[0]

    def write(value: Tensor) -> Tensor | None:
        first, stop = state["variants"]
        mine = cells.for_path(path_index, first, stop)
        if mine is None:
            return None  # no variant of this chunk patches this path
        # the cells' indices live on the CPU; the activation may not
        variant, position, head = (None if t is None else t.to(value.device) for t in mine)
        assert variant is not None
        if value.shape[0] != (stop - first) * b or value.shape[1:] != clean.shape[1:]:
            raise InputError(
                f"patch: {cells.paths[path_index]!r} gave an activation of shape "
                f"{list(value.shape)} in the patched run and {list(clean.shape)} in the clean "
                "run; patching needs the same shape per example"
            )
        new = value.clone()
        examples = torch.arange(b, device=value.device)
        rows = ((variant - first).unsqueeze(1) * b + examples).reshape(-1)
        ex = examples.repeat(variant.shape[0])
        if position is None:
            new[rows] = clean[ex].to(new.dtype)
            return new
        pos = position.repeat_interleave(b)
        if head is None:
            new[rows, pos] = clean[ex, pos].to(new.dtype)
            return new
        hd = head.repeat_interleave(b)
        h = int(cells.n_heads or 1)
        split = new.view(*new.shape[:2], h, -1)
        clean_split = clean.view(*clean.shape[:2], h, -1)
        split[rows, pos, hd] = clean_split[ex, pos, hd].to(new.dtype)
        return new

    return write


def _call(model: nn.Module, batch: InputBatch, repeats: int | None) -> Any:
    """The model on the batch, or on ``repeats`` copies of it stacked along the batch."""
    if repeats is None:
        return batch.call(model, dict(batch.leaves))
    rows = torch.arange(batch.batch_size).repeat(repeats)
    return batch.call(model, batch.take_rows(rows))


def _metric(metric: Any, output: Tensor, b: int, *args: Any) -> Tensor:
    value = metric(output, *args)
    if not isinstance(value, Tensor) or value.reshape(-1).shape[0] != b:
        got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise InputError(f"the metric must return one value per example ([{b}]), got {got}")
    return value.reshape(b).detach()


def _metric_rows(metric: Metric, values: Tensor, b: int, repeats: int) -> Tensor:
    """``[repeats, B]``: the metric of each stacked copy of the batch; the built-in metrics in
    one call, any other callable once per copy (it sees the B rows of one variant)."""
    if isinstance(metric, MetricBase):
        return _metric(metric.tiled, values, b * repeats, repeats).reshape(repeats, b)
    return torch.stack([_metric(metric, values[v * b : (v + 1) * b], b) for v in range(repeats)])


def _rows_per_pass(
    batch_size: int | None, b: int, output: Tensor, activations: list[Tensor]
) -> int:
    if batch_size is not None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int (rows), got {batch_size!r}")
        return max(b, batch_size)
    per_row = output[0].numel() + sum(a[0].numel() for a in activations)
    budget = PATCH_ROW_ELEMENTS["cpu" if output.device.type == "cpu" else "other"]
    return int(min(8192, max(b, budget // max(1, per_row))))
