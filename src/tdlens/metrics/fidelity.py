"""MuFidelity (Bhatt et al. 2020): does the attribution of a set of features predict what
removing them does?

For each example, ``n_samples`` random subsets of ``ceil(subset_fraction * n_features)``
features are set to the baseline; the score is the Pearson correlation, over the subsets,
between the sum of the subset's attributions and the drop of the target score
``f(x) - f(x with the subset removed)``. The subsets are drawn sample by sample (one
``[B, G]`` draw each, from ``generator``), so the result does not depend on
``max_examples_per_batch``; with ``targets=[...]`` all K targets share the subsets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.structure import Key
from ._common import (
    MetricCall,
    PerBlock,
    check_count,
    check_fractions,
    feature_counts,
    pearson,
)
from .curves import baseline_replacement
from .features import FeatureGroups


def mu_fidelity(
    model: Callable[..., Any],
    inputs: Any,
    attributions: Any,
    target: Any = None,
    *,
    targets: Any = None,
    n_samples: int = 100,
    subset_fraction: float = 0.2,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    generator: torch.Generator | None = None,
    max_examples_per_batch: int | None = None,
    output: Any = None,
    keys: Any = None,
) -> Tensor:
    """Correlation between subset attributions and the output drop; higher is better.

    Args:
        n_samples: random subsets per example.
        subset_fraction: the share of the features in each subset, in (0, 1].
        generator: the random generator of the subsets (default: torch's global one).
        Others: as :func:`tdlens.metrics.deletion` (``feature_mask`` sets what a feature is:
            for images, superpixels or ``"pixels"``).

    Returns:
        ``[B]`` (``[B, K]``) correlations in [-1, 1]; NaN where the attribution sums or the
        drops do not vary over the subsets.

    Example:
        >>> tdlens.metrics.mu_fidelity(model, x, attr, target=0, feature_mask="pixels")   # [B]
    """
    n = check_count(n_samples, "n_samples", minimum=2)
    fraction = check_fractions(subset_fraction, "subset_fraction")
    with MetricCall(
        model,
        inputs,
        attributions,
        target=target,
        targets=targets,
        output=output,
        keys=keys,
        max_examples_per_batch=max_examples_per_batch,
    ) as call:
        b, k = call.batch.batch_size, call.k
        feats = FeatureGroups.build(call.batch, feature_mask)
        group_scores = feats.scores(call.attributions)
        size = feature_counts(fraction, feats.count)[0]
        original = call.original()
        subset_sums = group_scores.new_zeros(n, b, k)

        def draw(sample: int) -> Tensor:
            priority = torch.rand(b, feats.n_groups, generator=generator).to(feats.present.device)
            priority = torch.where(feats.present, priority, torch.full_like(priority, 2.0))
            chosen = priority.argsort(dim=1).argsort(dim=1) < size.unsqueeze(1)
            subset_sums[sample] = (group_scores * chosen.unsqueeze(1)).sum(-1)
            return chosen

        subsets = PerBlock(draw)
        fill = baseline_replacement(baselines)(call)

        def perturb(blocks: Tensor, examples: Tensor, values: dict[Key, Any]) -> dict[Key, Any]:
            chosen = subsets.rows(blocks, examples, lambda drawn: drawn)
            removed = feats.masks(chosen, examples)
            return {
                key: fill(key, values[key], removed[key], blocks, examples)
                for key in call.batch.attributed
            }

        drops = original.unsqueeze(0) - call.score_blocks(n, perturb)
        correlation = pearson(subset_sums.to(drops.dtype), drops, dim=0)
        return call.finish(correlation)
