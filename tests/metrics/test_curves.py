"""Deletion and insertion curves: exact values on a linear model, ordering, batching."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tdlens
from tdlens.metrics import blur, deletion, insertion
from tests.conftest import CNN, randn, seeded


class Linear(nn.Module):
    """``f(x) = x @ w``: feature i contributes exactly ``x_i * w_i`` against a zero baseline."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return x @ self.weight


class Counting(nn.Module):
    """Counts forward calls and the rows each one sees."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.rows: list[int] = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.model(x)


@pytest.fixture
def linear():
    return Linear(randn(12, seed=7)).double()


def test_deletion_of_exact_contributions_is_the_remaining_sum(linear):
    """With one step per feature, point s is the sum of the contributions left after the s
    largest are removed."""
    x = randn(3, 12)
    contributions = x * linear.weight.detach()
    result = deletion(linear, x, contributions, n_steps=12)
    ordered = contributions.sort(dim=1, descending=True).values
    remaining = contributions.sum(1, keepdim=True) - torch.cat(
        [torch.zeros(3, 1, dtype=x.dtype), ordered.cumsum(1)], dim=1
    )
    torch.testing.assert_close(result.curve, remaining)
    torch.testing.assert_close(result.fractions, torch.arange(13, dtype=torch.float64) / 12)
    torch.testing.assert_close(result.score, torch.trapezoid(remaining, result.fractions))


def test_insertion_of_exact_contributions_is_the_inserted_sum(linear):
    x = randn(3, 12)
    contributions = x * linear.weight.detach()
    result = insertion(linear, x, contributions, n_steps=12)
    ordered = contributions.sort(dim=1, descending=True).values
    inserted = torch.cat([torch.zeros(3, 1, dtype=x.dtype), ordered.cumsum(1)], dim=1)
    torch.testing.assert_close(result.curve, inserted)


def test_perfect_attribution_beats_random_on_deletion_and_insertion(linear):
    """Removing the largest contributions first leaves the least at every step."""
    x = randn(16, 12)
    perfect = x * linear.weight.detach()
    random = randn(16, 12, seed=3)
    for n_steps in (12, 5):
        best, other = (
            deletion(linear, x, perfect, n_steps=n_steps),
            deletion(linear, x, random, n_steps=n_steps),
        )
        assert (best.score <= other.score + 1e-12).all()
        assert best.score.mean() < other.score.mean()
        best_in = insertion(linear, x, perfect, n_steps=n_steps)
        other_in = insertion(linear, x, random, n_steps=n_steps)
        assert (best_in.score >= other_in.score - 1e-12).all()


@pytest.mark.parametrize("metric", [deletion, insertion])
def test_forward_calls_bounded_by_the_budget_on_a_cnn(metric):
    """Batch 32, 20 steps: ceil(32 / budget) calls for the inputs, ceil(20 * 32 / budget) for
    the perturbed copies; the result does not depend on the budget."""
    cnn = Counting(seeded(CNN()))
    x = randn(32, 1, 8, 8)
    attr = randn(32, 1, 8, 8, seed=4)
    full = metric(cnn, x, attr, target=1, n_steps=20)
    assert cnn.rows == [32, 640]
    for budget in (64, 20):
        cnn.rows.clear()
        chunked = metric(cnn, x, attr, target=1, n_steps=20, max_examples_per_batch=budget)
        assert len(cnn.rows) == math.ceil(32 / budget) + math.ceil(640 / budget)
        assert max(cnn.rows) <= budget
        torch.testing.assert_close(chunked.curve, full.curve)


def test_targets_equal_one_run_per_target(cnn):
    """With targets=[...], column k is the single-target curve of attributions [:, k]."""
    x = randn(3, 1, 8, 8)
    attrs = tdlens.Saliency(cnn).attribute(x, targets=[0, 4])
    result = deletion(cnn, x, attrs, targets=[0, 4], n_steps=6, feature_mask="pixels")
    assert result.curve.shape == (3, 2, 7) and result.score.shape == (3, 2)
    for k, t in enumerate([0, 4]):
        one = deletion(cnn, x, attrs[:, k], target=t, n_steps=6, feature_mask="pixels")
        torch.testing.assert_close(result.curve[:, k], one.curve)


def test_target_none_is_the_predicted_class(cnn):
    x = randn(3, 1, 8, 8)
    attr = randn(3, 1, 8, 8, seed=2)
    predicted = cnn(x).argmax(1)
    torch.testing.assert_close(
        deletion(cnn, x, attr, n_steps=4).curve,
        deletion(cnn, x, attr, target=predicted, n_steps=4).curve,
    )


def test_feature_mask_groups_and_never_perturbed_elements(linear):
    """Features are groups of elements scored by their summed attribution; -1 stays put."""
    x = randn(2, 12)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2, -1, -1, -1]])
    attr = x * linear.weight.detach()
    result = deletion(linear, x, attr, n_steps=3, feature_mask=mask)
    contributions = attr[:, :9].reshape(2, 3, 3).sum(-1)
    fixed = attr[:, 9:].sum(1, keepdim=True)
    ordered = contributions.sort(dim=1, descending=True).values
    expected = (
        fixed
        + contributions.sum(1, keepdim=True)
        - torch.cat([torch.zeros(2, 1, dtype=x.dtype), ordered.cumsum(1)], dim=1)
    )
    torch.testing.assert_close(result.curve, expected)
    inserted = insertion(linear, x, attr, n_steps=3, feature_mask=mask)
    # the never-perturbed elements keep their values at the start of insertion too
    torch.testing.assert_close(inserted.curve[:, 0], fixed[:, 0])


def test_per_example_feature_masks_with_different_feature_counts(linear):
    """Each example has its own grouping; fractions are of its own features."""
    x = randn(2, 12)
    mask = torch.stack([torch.arange(12) // 6, torch.arange(12) // 2])  # 2 and 6 features
    attr = x * linear.weight.detach()
    result = deletion(linear, x, attr, n_steps=2, feature_mask=mask)
    half = [attr[0].reshape(2, 6).sum(1), attr[1].reshape(6, 2).sum(1)]
    for b in range(2):
        top = half[b].sort(descending=True).values
        n = len(top)
        assert torch.isclose(result.curve[b, 1], attr[b].sum() - top[: n // 2].sum())
        assert torch.isclose(result.curve[b, 2], torch.zeros((), dtype=x.dtype))


def test_pixels_remove_every_channel_of_a_position():
    """feature_mask='pixels' ranks positions by their attribution summed over channels."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 1)).double()
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].bias.zero_()
    x = torch.ones(1, 2, 3, 3, dtype=torch.float64)
    attr = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    attr[0, :, 1, 1] = 1.0
    result = deletion(model, x, attr, n_steps=9, feature_mask="pixels")
    assert result.curve[0, 1] == 16  # the middle pixel's 2 channels went first
    narrow = torch.ones(1, 1, 3, 3, dtype=torch.float64)  # a [B, 1, H, W] map broadcasts
    assert deletion(model, x, narrow, n_steps=9, feature_mask="pixels").curve.shape == (1, 10)


def test_blur_and_tensor_baselines():
    """Insertion starts from the baseline: a tensor, or the blurred image."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1)).double()
    x = randn(2, 1, 4, 4)
    attr = randn(2, 1, 4, 4, seed=2)
    blurred = blur(1.0)(x)
    assert blurred.shape == x.shape and not torch.allclose(blurred, x)
    assert torch.allclose(blurred.mean((2, 3)), x.mean((2, 3)), atol=0.3)
    with torch.no_grad():
        start = model(blurred)[:, 0]
    result = insertion(model, x, attr, n_steps=4, baselines=blur(1.0), target=0)
    torch.testing.assert_close(result.curve[:, 0], start)
    result = insertion(model, x, attr, n_steps=4, baselines="blur", target=0)
    torch.testing.assert_close(result.curve[:, -1], model(x)[:, 0].detach())
    base = randn(1, 1, 4, 4, seed=9)
    result = insertion(model, x, attr, n_steps=4, baselines=base, target=0)
    torch.testing.assert_close(result.curve[:, 0], model(base.expand_as(x))[:, 0].detach())


def test_dict_inputs_and_integer_tokens():
    """Token ids are perturbed like any input when named in keys= (attributions per token,
    word ids as feature_mask, -1 for padding, the mask token as baseline): the text path."""

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 1)
            with torch.no_grad():
                self.embed.weight.copy_(torch.arange(10.0).reshape(10, 1))

        def forward(self, input_ids, scale):
            return self.embed(input_ids).sum((1, 2)) * scale

    model = Bag().double()
    ids = torch.tensor([[3, 4, 5, 0], [9, 1, 2, 0]])
    inputs = {"input_ids": ids, "scale": torch.ones(2, dtype=torch.float64)}
    attr = {"input_ids": ids.to(torch.float64)}  # each token's own contribution
    words = torch.tensor([[0, 0, 1, -1], [0, 1, 1, -1]])
    result = comprehensiveness_like = deletion(
        model, inputs, attr, n_steps=2, baselines=0, feature_mask=words
    )
    assert result.curve.shape == (2, 3)
    # example 0: words {3, 4} = 7 and {5} = 5; example 1: {9} = 9 and {1, 2} = 3
    expected = torch.tensor([[12.0, 5.0, 0.0], [12.0, 3.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(comprehensiveness_like.curve, expected)


def test_blur_is_a_separable_gaussian_with_replicated_edges():
    """Against conv2d with a normalised Gaussian of radius ceil(3 sigma), edges replicated."""
    x, sigma = randn(2, 3, 9, 11), 1.3
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    flat = x.reshape(-1, 1, 9, 11)
    flat = F.conv2d(
        F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.reshape(1, 1, -1, 1)
    )
    flat = F.conv2d(
        F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.reshape(1, 1, 1, -1)
    )
    torch.testing.assert_close(blur(sigma)(x), flat.reshape(x.shape))
