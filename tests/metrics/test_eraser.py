"""ERASER comprehensiveness and sufficiency with AOPC."""

from __future__ import annotations

import torch
from torch import nn

from tdlens.metrics import comprehensiveness, sufficiency
from tests.conftest import randn

FEATURE = 6


class OneFeature(nn.Module):
    """Looks at feature 6 only: ``f(x) = 3 x_6 + 1``."""

    def forward(self, x):
        return 3 * x[:, FEATURE] + 1


def test_one_feature_model_ranks_its_feature_perfect():
    """The attribution that puts feature 6 first gets the most comprehensiveness of all and a
    sufficiency of zero; attributions that rank it lower do worse on both."""
    model = OneFeature()
    x = randn(4, 10).abs() + 0.5
    perfect = torch.zeros(4, 10, dtype=torch.float64)
    perfect[:, FEATURE] = 1.0
    best_c = comprehensiveness(model, x, perfect)
    best_s = sufficiency(model, x, perfect)
    # every fraction removes at least one feature: feature 6 each time
    torch.testing.assert_close(best_c.curve, (3 * x[:, FEATURE]).unsqueeze(1).expand(4, 5))
    torch.testing.assert_close(best_c.score, 3 * x[:, FEATURE])
    torch.testing.assert_close(best_s.score, torch.zeros(4, dtype=torch.float64))
    for seed in range(5):
        other = randn(4, 10, seed=seed)
        other[:, FEATURE] = other.min(1).values - 1  # ranked last
        c, s = comprehensiveness(model, x, other), sufficiency(model, x, other)
        assert (c.score < best_c.score).all()
        assert (s.score > best_s.score).all()


def test_fractions_and_counts():
    """Top ceil(p * n) features: 10 features at 1, 5, 10, 20, 50% -> 1, 1, 1, 2, 5."""
    weights = torch.arange(1.0, 11.0, dtype=torch.float64)
    model = lambda x: x @ weights  # noqa: E731
    x = torch.ones(1, 10, dtype=torch.float64)
    attr = weights.unsqueeze(0)  # the largest weights first
    result = comprehensiveness(model, x, attr)
    assert result.fractions.tolist() == [0.01, 0.05, 0.1, 0.2, 0.5]
    expected = torch.tensor([[10.0, 10.0, 10.0, 19.0, 40.0]], dtype=torch.float64)
    torch.testing.assert_close(result.curve, expected)
    torch.testing.assert_close(result.score, expected.mean(1))
    kept = sufficiency(model, x, attr, percentages=[0.3, 1.0])
    torch.testing.assert_close(kept.curve, torch.tensor([[55.0 - 27.0, 0.0]], dtype=torch.float64))


def test_targets_and_baselines(mlp):
    """K targets at once; a tensor baseline."""
    x, base = randn(3, 6), randn(1, 6, seed=4)
    attrs = randn(3, 2, 6, seed=5)
    both = comprehensiveness(mlp, x, attrs, targets=[1, 2], baselines=base)
    assert both.curve.shape == (3, 2, 5)
    for k, t in enumerate([1, 2]):
        one = comprehensiveness(mlp, x, attrs[:, k], target=t, baselines=base)
        torch.testing.assert_close(both.curve[:, k], one.curve)
