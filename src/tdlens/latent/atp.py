"""Attribution patching: a first-order estimate of every patching cell from two forward passes
and one backward pass.

AtP (Nanda 2023): ``metric(patched) - metric(corrupted) ~ (a_clean - a_corrupted) . dM/da``,
the gradient taken at the corrupted run. ``"atp*"`` adds the QK fix of Kramar et al. (2024):
for a path that feeds attention scores (queries or keys) the linear step through the softmax
is a poor guess, so the attention pattern after the patch is computed exactly, by a batched
forward pass that stops at the pattern, and only the rest of the model is linearised:
``(pattern_patched - pattern_corrupted) . dM/dpattern``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import InputError
from ..core.hooks import Scope
from ..core.outputs import read_output
from ..core.paths import get_module, parse_path, resolve_paths
from .cells import Cells, PatchResult, buffers_kept, check_pair, make_cells, n_heads_of
from .patching import Metric, _call, _metric, _patcher, _rows_per_pass

_QUERY_KEY = ("q", "k", "q_proj", "k_proj", "query", "key")
_PATTERN = ("pattern", "attn_pattern", "attention_probs")


class _Stop(Exception):
    """Ends a forward pass once the attention patterns it was run for are computed."""


def attribution_patching(
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
    variant: str = "atp",
    patterns: Mapping[str, str] | None = None,
    grad_drop: str | Iterable[str] | None = None,
    batch_size: int | None = None,
) -> PatchResult:
    """The AtP estimate of :func:`patch`'s scores, in the same layout.

    Args:
        model, clean, corrupted, paths, metric, positions, heads, output, normalize: as in
            :func:`tdlens.latent.patch`.
        variant: ``"atp"`` or ``"atp*"`` (with the QK fix for query and key paths).
        patterns: for ``"atp*"``, the attention-pattern path that each query/key path feeds
            (``{"blocks.0.attn.k": "blocks.0.attn.pattern"}``); by default a sibling module
            named ``pattern`` of a path ending in ``q``/``k``/``q_proj``/``k_proj``.
        grad_drop: for ``"atp*"``, the paths of the layers' contributions to the residual
            stream (``"blocks.*.attn"``): GradDrop (Kramar et al. 2024) repeats the estimate
            once per layer with no gradient flowing back through that layer's contribution
            and reports ``sum_l |AtP_l| / (L - 1)`` per example, an estimate of each cell's
            magnitude that cancellation between paths cannot hide, in
            ``result.extra["grad_drop"]`` (``[B, *scores.shape]``; one more forward and
            backward pass per layer). The signed ``scores`` are unchanged by it.
        batch_size: rows per forward pass of the QK fix's pattern sweep.

    Returns:
        A :class:`PatchResult`; ``forward_passes`` counts the model's forward calls.

    Example:
        >>> approx = latent.attribution_patching(model, clean, corrupted, paths="blocks.*",
        ...                                      metric=latent.logit_diff(7, 3))
        >>> approx.correlation(latent.patch(model, clean, corrupted, paths="blocks.*",
        ...                                 metric=latent.logit_diff(7, 3)))
        {'pearson': 0.97, 'spearman': 0.93}
    """
    if variant not in ("atp", "atp*"):
        raise InputError(f"variant= takes 'atp' or 'atp*', got {variant!r}")
    if grad_drop is not None and variant != "atp*":
        raise InputError("grad_drop= is part of variant='atp*'; pass variant='atp*' too")
    _, corrupt_batch = check_pair(clean, corrupted)
    with buffers_kept(model):  # a train-mode BatchNorm's statistics are put back
        b = corrupt_batch.batch_size
        with Scope(model) as scope, torch.no_grad():
            scope.get(paths)
            clean_metric = _metric(metric, read_output(scope.run(clean), output, model), b)
            clean_acts = scope.cache
        keys = list(clean_acts.keys())
        qk = _pattern_paths(model, keys, patterns) if variant == "atp*" else {}
        watched = keys + sorted(set(qk.values()) - set(keys))
        corrupt_acts, grads, corrupt_metric = _corrupted_gradients(
            model, corrupt_batch, watched, metric, output
        )
        cells = make_cells(
            keys, [clean_acts.get(k) for k in keys], positions, n_heads_of(model, heads)
        )

        def estimate(grads: dict[str, Tensor]) -> tuple[Tensor, int]:
            change = corrupt_metric.new_empty(cells.count, b)
            for i, key in enumerate(keys):
                if key in qk:
                    continue  # filled by the exact pattern sweep below
                mine = cells.for_path(i, 0, cells.count)
                assert mine is not None  # every path has cells
                delta = (clean_acts.get(key) - corrupt_acts[key]) * grads[key]
                change[mine[0]] = _per_cell(delta, cells, mine).to(change.dtype)
            passes = 0
            if qk:
                passes = _qk_fix(
                    model, corrupt_batch, cells, keys, clean_acts, qk, corrupt_acts, grads, change,
                    batch_size,
                )  # fmt: skip
            return change, passes

        change, passes = estimate(grads)
        passes += 2
        result = PatchResult.build(cells, change, clean_metric, corrupt_metric, normalize, passes)
        if grad_drop is not None:
            layers = [str(p) for p in resolve_paths(model, grad_drop)]
            if len(layers) < 2:
                raise InputError(f"grad_drop= needs at least two layers, got {layers}")
            total = torch.zeros_like(change)
            for layer in layers:
                _, dropped, _ = _corrupted_gradients(
                    model, corrupt_batch, watched, metric, output, drop=layer
                )
                part, extra = estimate(dropped)
                total += part.abs()
                result.forward_passes += 1 + extra
            magnitude = PatchResult.build(
                cells, total / (len(layers) - 1), clean_metric, corrupt_metric, False, 0
            )
            result.extra["grad_drop"] = magnitude.per_example
        return result


def _corrupted_gradients(
    model: nn.Module,
    batch: Any,
    keys: list[str],
    metric: Metric,
    output: Any,
    drop: str | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """The activations at ``keys`` in the corrupted run and ``d sum(metric) / d activation``,
    without touching the parameters' ``.grad``; with ``drop``, no gradient flows back through
    that path's output (GradDrop)."""
    live: dict[str, Tensor] = {}

    def keep(key: str) -> Any:
        def hook(value: Tensor) -> Tensor:
            if not value.requires_grad:  # frozen weights: this site becomes a graph root
                value = value.detach().requires_grad_()
            live[key] = value
            return value

        return hook

    with Scope(model) as scope, torch.enable_grad():
        for key in keys:
            scope.set(key, keep(key))
        if drop is not None:  # after the keeps: a kept site at ``drop`` still gets its gradient
            scope.set(drop, lambda value: value.detach())
        out = read_output(_call(model, batch, None), output, model)
        value = metric(out)
        found = [live[k] for k in keys]
        grads = torch.autograd.grad(value.sum(), found, allow_unused=True)
    acts = {k: v.detach() for k, v in live.items()}
    by_key = {k: torch.zeros_like(acts[k]) if g is None else g for k, g in zip(keys, grads)}
    return acts, by_key, value.detach().reshape(batch.batch_size)


def _per_cell(
    delta: Tensor, cells: Cells, mine: tuple[Tensor, Tensor | None, Tensor | None]
) -> Tensor:
    """``[n_variants, B]``: ``delta`` summed over each variant's cell."""
    variants, position, head = mine
    b = delta.shape[0]
    if position is None and head is None:
        return delta.reshape(b, -1).sum(1).expand(variants.shape[0], b)
    if head is not None:
        per_head = delta.reshape(*delta.shape[:2], int(cells.n_heads or 1), -1).sum(-1)
        if position is None:
            return per_head.sum(1)[:, head].T
        return per_head[:, position, head].T
    per_position = delta.reshape(*delta.shape[:2], -1).sum(-1)  # [B, T]
    return per_position[:, position].T


def _pattern_paths(
    model: nn.Module, keys: list[str], patterns: Mapping[str, str] | None
) -> dict[str, str]:
    """Which query/key paths get the QK fix, and the pattern path each feeds."""
    if patterns is not None:
        unknown = [k for k in patterns if k not in keys]
        if unknown:
            raise InputError(f"patterns= names {unknown}, which are not among paths {keys}")
        resolve_paths(model, list(patterns.values()))  # raises naming the nearest paths
        return dict(patterns)
    found = {}
    for key in keys:
        path = parse_path(key)
        parent, _, name = path.module.rpartition(".")
        if name not in _QUERY_KEY or path.site != "output" or path.selector:
            continue
        owner = get_module(model, parse_path(parent))
        for candidate in _PATTERN:
            if hasattr(owner, candidate) and isinstance(getattr(owner, candidate), nn.Module):
                found[key] = f"{parent}.{candidate}" if parent else candidate
                break
    return found


def _qk_fix(
    model: nn.Module,
    batch: Any,
    cells: Cells,
    keys: list[str],
    clean_acts: Any,
    qk: dict[str, str],
    corrupt_acts: dict[str, Tensor],
    grads: dict[str, Tensor],
    change: Tensor,
    batch_size: int | None,
) -> int:
    """Fill the cells of query/key paths with ``(pattern_patched - pattern) . dM/dpattern``:
    the patched patterns come from a batched sweep of forward passes that stop once the
    patterns are computed. Returns the number of forward passes."""
    b = batch.batch_size
    fixed = [k for k in keys if k in qk]
    sub = make_cells(fixed, [clean_acts.get(k) for k in fixed], cells.positions, cells.n_heads)
    # the sub-sweep's variants in the full sweep's order (both path-major, same grid per path)
    full = torch.cat([_variants(cells, keys.index(k)) for k in fixed])
    pattern_keys = sorted(set(qk.values()))
    rows = _rows_per_pass(batch_size, b, corrupt_acts[pattern_keys[0]], [])
    per_pass = max(1, rows // b)
    state: dict[str, Any] = {}
    seen: dict[str, Tensor] = {}

    def capture(key: str) -> Any:
        def hook(value: Tensor) -> None:
            seen[key] = value
            if len(seen) == len(pattern_keys):
                raise _Stop

        return hook

    passes = 0
    with Scope(model, strict=False) as scope, torch.no_grad():
        for i, key in enumerate(fixed):
            scope.set(key, _patcher(i, clean_acts.get(key), sub, state))
        for key in pattern_keys:
            scope.set(key, capture(key))
        for first in range(0, sub.count, per_pass):
            stop = min(sub.count, first + per_pass)
            state["variants"] = (first, stop)
            seen.clear()
            try:
                _call(model, batch, stop - first)
            except _Stop:
                pass
            passes += 1
            for v in range(first, stop):
                pattern = qk[fixed[int(sub.path[v])]]
                rows_v = slice((v - first) * b, (v - first + 1) * b)
                diff = seen[pattern][rows_v] - corrupt_acts[pattern]
                total = (diff * grads[pattern]).reshape(b, -1).sum(1)
                change[int(full[v])] = total.to(change.dtype)
    return passes


def _variants(cells: Cells, index: int) -> Tensor:
    found = cells.for_path(index, 0, cells.count)
    assert found is not None  # every path has cells
    return found[0]
