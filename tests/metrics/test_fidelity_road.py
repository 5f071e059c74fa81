"""MuFidelity, and ROAD with its noisy linear imputation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdlens
from tdlens.metrics import linear_impute, mu_fidelity, road
from tests.conftest import randn, seeded


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- MuFidelity --------------------------------------------------------------------------------
def test_mu_fidelity_of_exact_contributions_is_one():
    """On a linear model with a zero baseline, the drop of a subset is its attribution sum."""
    weight = randn(10, seed=3)
    model = lambda x: x @ weight  # noqa: E731
    x = randn(4, 10)
    exact = mu_fidelity(model, x, x * weight, n_samples=30, generator=generator())
    torch.testing.assert_close(exact, torch.ones(4, dtype=torch.float64))
    noisy = mu_fidelity(model, x, randn(4, 10, seed=8), n_samples=30, generator=generator())
    assert (noisy < 0.99).all()


def test_mu_fidelity_does_not_depend_on_chunks_and_shares_subsets_across_targets(mlp):
    x = randn(3, 6)
    attrs = tdlens.Saliency(mlp).attribute(x, targets=[0, 2])
    options = dict(n_samples=12, subset_fraction=0.5, targets=[0, 2])
    whole = mu_fidelity(mlp, x, attrs, generator=generator(), **options)
    chunked = mu_fidelity(mlp, x, attrs, generator=generator(), max_examples_per_batch=5, **options)
    torch.testing.assert_close(whole, chunked)
    assert whole.shape == (3, 2)
    first = mu_fidelity(
        mlp, x, attrs[:, 1], target=2, n_samples=12, subset_fraction=0.5, generator=generator()
    )
    torch.testing.assert_close(whole[:, 1], first)


# -- ROAD imputation ---------------------------------------------------------------------------
NEIGHBOURS = [
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
]


def reference_impute(image: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """ROAD's NoisyLinearImputer without noise, as a dense system: for each missing pixel,
    ``-sum_valid(w) x + sum_{missing n} w x_n = -sum_{known n} w x_n``."""
    c, h, w = image.shape
    missing = [(i, j) for i in range(h) for j in range(w) if not known[i, j]]
    index = {p: n for n, p in enumerate(missing)}
    system = torch.zeros(len(missing), len(missing), dtype=torch.float64)
    rhs = torch.zeros(len(missing), c, dtype=torch.float64)
    for n, (i, j) in enumerate(missing):
        total = 0.0
        for (di, dj), weight in NEIGHBOURS:
            a, b = i + di, j + dj
            if not (0 <= a < h and 0 <= b < w):
                continue
            total += weight
            if known[a, b]:
                rhs[n] -= weight * image[:, a, b]
            else:
                system[n, index[(a, b)]] = weight
        system[n, n] = -total
    solution = torch.linalg.solve(system, rhs)
    out = image.clone()
    for n, (i, j) in enumerate(missing):
        out[:, i, j] = solution[n]
    return out


@pytest.mark.parametrize("shape", [(2, 6, 7), (1, 5, 5)])
def test_linear_impute_solves_the_road_system(shape):
    image = randn(*shape)
    g = generator(2)
    for share in (0.2, 0.6, 0.95):
        known = torch.rand(shape[1:], generator=g) > share
        ours = linear_impute(image.unsqueeze(0), ~known.expand(1, *shape))
        torch.testing.assert_close(ours[0], reference_impute(image, known), rtol=1e-8, atol=1e-8)


def test_linear_impute_of_a_fully_removed_image_is_zero():
    image = randn(1, 1, 4, 4)
    out = linear_impute(image, torch.ones(1, 1, 4, 4, dtype=torch.bool))
    assert torch.equal(out, torch.zeros_like(image))


# -- ROAD --------------------------------------------------------------------------------------
class OnePixel(nn.Module):
    """Reads pixel (2, 2) of channel 0."""

    def forward(self, x):
        return 5 * x[:, 0, 2, 2]


def test_road_morf_of_the_right_pixel_falls_and_lerf_stays():
    x = torch.zeros(2, 2, 6, 6, dtype=torch.float64)
    x[:, :, 2, 2] = 10.0
    attr = x.clone()  # the right pixel first
    morf = road(OnePixel(), x, attr, noise=0.0)
    lerf = road(OnePixel(), x, attr, order="lerf", noise=0.0)
    assert morf.curve.shape == (2, 9)
    torch.testing.assert_close(morf.curve, torch.zeros(2, 9, dtype=torch.float64))
    assert (lerf.curve == 50).all()  # 90% of 36 pixels is 33: the right one is never removed
    assert (morf.score < lerf.score).all()


def test_road_noise_is_reproducible_and_chunk_independent(cnn):
    x = randn(3, 1, 8, 8)
    attrs = tdlens.Saliency(cnn).attribute(x, targets=[1, 3])
    options = dict(targets=[1, 3], percentages=[0.2, 0.5], noise=0.05)
    whole = road(cnn, x, attrs, generator=generator(), **options)
    chunked = road(cnn, x, attrs, generator=generator(), max_examples_per_batch=4, **options)
    torch.testing.assert_close(whole.curve, chunked.curve)
    quiet = road(cnn, x, attrs, generator=generator(), **{**options, "noise": 0.0})
    assert not torch.allclose(whole.curve, quiet.curve)
    assert whole.curve.shape == (3, 2, 2) and whole.score.shape == (3, 2)


def test_road_needs_images(mlp):
    with pytest.raises(tdlens.TdlensError, match="ROAD imputes images"):
        road(seeded(mlp), randn(2, 6), randn(2, 6))
