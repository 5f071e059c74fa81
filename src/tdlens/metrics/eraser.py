"""ERASER comprehensiveness and sufficiency (DeYoung et al. 2020), with AOPC over top-k%.

For each fraction ``p`` of the features (the ERASER bins are 1, 5, 10, 20 and 50%), the
rationale is the ``ceil(p * n_features)`` most attributed features of an example:

- comprehensiveness ``f(x) - f(x without the rationale)``: high when the rationale matters;
- sufficiency ``f(x) - f(the rationale alone)``: low (zero or below) when it suffices.

Removed features take the baseline's value (for text: the pad or mask token id, with
``keys=["input_ids"]`` and attributions per token). The score is AOPC, the mean over the
fractions. ERASER computes these on class probabilities: give a model (or ``output=``) that
returns probabilities to follow the paper exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._common import CurveResult, check_fractions
from .curves import baseline_replacement, top_fraction_scores

ERASER_FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)


def comprehensiveness(
    model: Callable[..., Any],
    inputs: Any,
    attributions: Any,
    target: Any = None,
    *,
    targets: Any = None,
    percentages: Sequence[float] = ERASER_FRACTIONS,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    max_examples_per_batch: int | None = None,
    output: Any = None,
    keys: Any = None,
) -> CurveResult:
    """How much the target score drops when the top features are removed; higher is better.

    Args:
        percentages: fractions of the features in (0, 1] (0.2 is 20%).
        Others: as :func:`tdlens.metrics.deletion`.

    Returns:
        :class:`CurveResult`: ``fractions`` ``[P]``, ``curve`` ``[B, P]`` (``[B, K, P]``) the
        drop ``f(x) - f(x without the top features)`` at each fraction, ``score`` the AOPC.

    Example:
        >>> result = tdlens.metrics.comprehensiveness(model, x, attr, target=1)
        >>> result.score            # [B]: AOPC over 1, 5, 10, 20 and 50% of the features
    """
    return _eraser(**locals(), keep=False)


def sufficiency(
    model: Callable[..., Any],
    inputs: Any,
    attributions: Any,
    target: Any = None,
    *,
    targets: Any = None,
    percentages: Sequence[float] = ERASER_FRACTIONS,
    baselines: Any = 0.0,
    feature_mask: Any = None,
    max_examples_per_batch: int | None = None,
    output: Any = None,
    keys: Any = None,
) -> CurveResult:
    """How much the target score drops when only the top features are kept; lower is better.
    Arguments and result as :func:`comprehensiveness` (``curve``: ``f(x) - f(top features
    alone)``)."""
    return _eraser(**locals(), keep=True)


def _eraser(
    *, percentages: Sequence[float], baselines: Any, keep: bool, **options: Any
) -> CurveResult:
    fractions = check_fractions(percentages, "percentages")
    original, scores, finish = top_fraction_scores(
        fractions=fractions, keep=keep, replacement=baseline_replacement(baselines), **options
    )
    curve = original - scores
    return CurveResult(fractions, finish(curve), finish(curve.mean(-1)))
