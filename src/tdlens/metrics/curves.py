"""Deletion and insertion curves (Petsiuk et al. 2018, RISE) and the area under them.

Deletion replaces the features of each example by the baseline, most attributed first, and
records the target score after each step: a faithful attribution makes it fall fast (low area).
Insertion starts from the baseline (``"blur"``: a blurred image) and puts the features back in
the same order: a faithful attribution makes the score rise fast (high area).

All ``n_steps`` perturbed copies of the batch for all K targets are scored in forward passes
of at most ``max_examples_per_batch`` rows: ``ceil(B / budget) + ceil(K * n_steps * B /
budget)`` model calls in all (the first term scores the inputs themselves).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.structure import InputBatch, Key
from ._common import CurveResult, MetricCall, check_count, feature_counts
from .features import FeatureGroups, baseline_rows, resolve_baselines

Replace = Callable[[Key, Tensor, Tensor, Tensor, Tensor], Tensor]


def deletion(
    model: Callable[..., Any],
    inputs: Any,
    attributions: Any,
    target: Any = None,
    *,
    targets: Any = None,
    n_steps: int = 20,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    max_examples_per_batch: int | None = None,
    output: Any = None,
    keys: Any = None,
) -> CurveResult:
    """The target score as features are removed, most attributed first; lower area is better.

    Args:
        model: any model; called on inputs laid out like ``inputs``.
        inputs: a tensor, tuple, dict or TensorDict (entries not attributed pass unchanged).
        attributions: shaped like the attributed inputs (``[B, K, ...]`` with ``targets``);
            ``[B, 1, H, W]`` maps broadcast over the channels of ``[B, C, H, W]`` images.
        target: captum's target (``None``: the predicted class of a ``[B, C]`` output).
        targets: K targets; each is scored on the attributions ``[:, k]`` made for it.
        n_steps: the curve has ``n_steps + 1`` points at fractions ``0, 1/n, ..., 1``; at
            fraction f, ``ceil(f * n_features)`` features are removed.
        baselines: what replaces a removed feature (number, tensor, ``"blur"``, callable).
        feature_mask: feature ids per element (see :mod:`tdlens.metrics.features`);
            ``"pixels"`` removes whole pixels of an image.
        max_examples_per_batch: rows per forward pass (``None``: all at once).
        output: which model output to explain; keys: which inputs the attributions explain.

    Returns:
        :class:`CurveResult`: ``fractions`` ``[n_steps + 1]``, ``curve`` ``[B, n_steps + 1]``
        (``[B, K, n_steps + 1]``), ``score`` the area under the curve ``[B]`` (``[B, K]``).

    Example:
        >>> result = tdlens.metrics.deletion(model, x, attr, target=3, n_steps=10)
        >>> result.curve.shape, result.score.shape      # ([B, 11], [B])
    """
    return _curve(**locals(), insert=False)


def insertion(
    model: Callable[..., Any],
    inputs: Any,
    attributions: Any,
    target: Any = None,
    *,
    targets: Any = None,
    n_steps: int = 20,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    max_examples_per_batch: int | None = None,
    output: Any = None,
    keys: Any = None,
) -> CurveResult:
    """The target score as features are put back into the baseline, most attributed first;
    higher area is better. Arguments and result as :func:`deletion` (``baselines="blur"``
    starts from a blurred image, as in RISE)."""
    return _curve(**locals(), insert=True)


def _curve(*, n_steps: int, baselines: Any, insert: bool, **options: Any) -> CurveResult:
    n_steps = check_count(n_steps, "n_steps")
    fractions = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    # deletion scores fractions 1/n..1 and has f(x) at 0; insertion 0..(n-1)/n and f(x) at 1
    original, scores, finish = top_fraction_scores(
        fractions=fractions[:-1] if insert else fractions[1:],
        keep=insert,
        replacement=baseline_replacement(baselines),
        **options,
    )
    curve = torch.cat([scores, original] if insert else [original, scores], dim=-1)
    area = torch.trapezoid(curve, fractions.to(curve.dtype), dim=-1)
    return CurveResult(fractions, finish(curve), finish(area))


def top_fraction_scores(
    model: Callable[..., Any],
    inputs: Any,
    attributions: Any,
    *,
    fractions: Tensor,
    keep: bool,
    replacement: Callable[[MetricCall], Replace],
    feature_mask: Any,
    descending: bool = True,
    check: Callable[[InputBatch], None] | None = None,
    **options: Any,
) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
    """Target scores with the top ``ceil(fraction * n_features)`` features of each example
    removed, or (``keep``) with all others removed, for every fraction and target.

    Features are ranked by their summed attribution, most first (``descending=False``: least
    first). ``replacement(call)`` gives the function that fills removed elements.
    ``options`` are :class:`MetricCall`'s (target, targets, output, keys, budget).

    Returns:
        ``f(x)`` as ``[B, K, 1]``, the scores ``[B, K, P]`` (target k on the inputs perturbed
        in the order of its own attributions), and the function dropping K for one target.
    """
    with MetricCall(model, inputs, attributions, **options) as call:
        if check is not None:
            check(call.batch)
        feats = FeatureGroups.build(call.batch, feature_mask)
        ranks = feats.ranks(feats.scores(call.attributions), descending=descending)
        counts = feature_counts(fractions, feats.count)
        original = call.original().unsqueeze(-1)
        replace = replacement(call)
        b, k, p = call.batch.batch_size, call.k, counts.shape[0]

        def perturb(blocks: Tensor, examples: Tensor, values: dict[Key, Any]) -> dict[Key, Tensor]:
            which, step = blocks // p, blocks % p  # blocks run target-major, then by fraction
            chosen = ranks[examples, which] < counts[step, examples].unsqueeze(1)
            removed = feats.masks(~chosen if keep else chosen, examples)
            return {
                key: replace(key, values[key], removed[key], blocks, examples)
                for key in call.batch.attributed
            }

        scores = call.score_blocks(k * p, perturb).reshape(k, p, b, k)
        own = scores.diagonal(dim1=0, dim2=3).permute(1, 2, 0)  # [B, K, P]
    return original, own, call.finish


def baseline_replacement(baselines: Any) -> Callable[[MetricCall], Replace]:
    """Removed elements take the baseline's value."""

    def make(call: MetricCall) -> Replace:
        fills = resolve_baselines(call.batch, baselines)

        def replace(key: Key, x: Tensor, removed: Tensor, _: Tensor, examples: Tensor) -> Tensor:
            return torch.where(removed, baseline_rows(fills[key], examples), x)

        return replace

    return make
