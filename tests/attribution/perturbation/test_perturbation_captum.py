"""Perturbation methods against captum 0.9 (the oracle), in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdlens

captum_attr = pytest.importorskip("captum.attr")

TOL = dict(atol=1e-6, rtol=0)


class DocsModel(nn.Module):
    """captum's BasicModel_MultiLayer (its Shapley tests): relu(x @ ones(4, 3).T + b1) summed."""

    def __init__(self) -> None:
        super().__init__()
        self.linear1 = nn.Linear(3, 4)
        self.linear2 = nn.Linear(4, 2)
        with torch.no_grad():
            self.linear1.weight.fill_(1.0)
            self.linear1.bias.copy_(torch.tensor([-10.0, 1.0, 1.0, 1.0]))
            self.linear2.weight.fill_(1.0)
            self.linear2.bias.copy_(torch.tensor([-1.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(torch.relu(self.linear1(x)))


@pytest.fixture
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.a, self.b = nn.Linear(4, 3).double(), nn.Linear(2, 3).double()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a(a) * self.b(b)) + self.a(a)


def test_shapley_values_docs_example() -> None:
    """captum's documented Shapley values, without and with a feature mask."""
    net = DocsModel().double()
    inp = torch.tensor([[20.0, 50.0, 30.0]], dtype=torch.float64)
    sv = tdlens.ShapleyValues(net)
    expected = torch.tensor([[76.66666667, 196.66666667, 116.66666667]], dtype=torch.float64)
    torch.testing.assert_close(sv.attribute(inp, target=0), expected, **TOL)
    masked = sv.attribute(inp, target=0, feature_mask=torch.tensor([[0, 0, 1]]))
    torch.testing.assert_close(masked, torch.tensor([[275.0, 275.0, 115.0]]).double(), **TOL)


@pytest.mark.parametrize("method", ["FeatureAblation", "ShapleyValues"])
@pytest.mark.parametrize("mask", [None, torch.tensor([[0, 0, 1, 1, 2, 2]]), "per_example"])
def test_feature_methods_match_captum(method, mask, mlp, x) -> None:
    """FeatureAblation and exact ShapleyValues equal captum's, with and without masks."""
    if isinstance(mask, str):
        mask = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 2, 2]] * 2)
    baselines = torch.full((1, 6), 0.3, dtype=torch.float64)
    ours = getattr(tdlens, method)(mlp).attribute(x, baselines, 1, feature_mask=mask)
    theirs = getattr(captum_attr, method)(mlp).attribute(x, baselines, 1, feature_mask=mask)
    # captum sums Shapley marginals in float32 whatever the inputs (dtype=torch.float in
    # shapley_value.py): 720 float32 additions of O(0.3) values are 1e-6 apart
    tol = TOL if method == "FeatureAblation" else dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, theirs.double(), **tol)


def test_shapley_values_match_brute_force_permutations(mlp, x) -> None:
    """Exact ShapleyValues equal the average over all M! orders, computed in float64."""
    import itertools

    mask = torch.tensor([[0, 0, 1, 2, 3, 3]])
    ours = tdlens.ShapleyValues(mlp).attribute(x, 0.2, 1, feature_mask=mask)
    total = torch.zeros(x.shape[0], 4, dtype=torch.float64)
    orders = list(itertools.permutations(range(4)))
    with torch.no_grad():
        for order in orders:
            present = torch.zeros(6, dtype=torch.bool)
            before = mlp(torch.full_like(x, 0.2))[:, 1]
            for feature in order:
                present |= mask[0] == feature
                after = mlp(torch.where(present, x, torch.full_like(x, 0.2)))[:, 1]
                total[:, feature] += after - before
                before = after
    expected = (total / len(orders))[:, mask[0]]
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)


def test_feature_ablation_tuple_inputs_match_captum() -> None:
    """Two positional inputs, a cross-input feature mask, per-input scalar baselines."""
    model = TwoInputs()
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 4, generator=g).double(), torch.randn(3, 2, generator=g).double()
    masks = (torch.tensor([[0, 0, 1, 2]]), torch.tensor([[2, 3]]))
    for mask in (None, masks):
        ours = tdlens.FeatureAblation(model).attribute((a, b), (0.5, -1.0), 2, feature_mask=mask)
        theirs = captum_attr.FeatureAblation(model).attribute(
            (a, b), (0.5, -1.0), 2, feature_mask=mask
        )
        for o, t in zip(ours, theirs):
            torch.testing.assert_close(o, t, **TOL)


@pytest.mark.parametrize(
    ("window", "strides"),
    [((1, 2, 2), None), ((2, 3, 2), (1, 2, 1)), ((1, 3, 3), (1, 2, 2)), ((2, 5, 6), 1)],
)
def test_occlusion_matches_captum(window, strides) -> None:
    """Occlusion on a small CNN, windows and strides that do and do not tile the input."""
    torch.manual_seed(4)
    cnn = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(36, 4)).double()
    img = torch.randn(2, 2, 5, 6, dtype=torch.float64)
    ours = tdlens.Occlusion(cnn).attribute(img, window, strides, 0.1, 2)
    theirs = captum_attr.Occlusion(cnn).attribute(img, window, strides, 0.1, 2)
    # captum divides by float32 window counts; the values agree far below the tolerance
    torch.testing.assert_close(ours, theirs.double(), **TOL)


def test_occlusion_tuple_inputs_match_captum() -> None:
    model = TwoInputs()
    a, b = torch.randn(3, 4).double(), torch.randn(3, 2).double()
    ours = tdlens.Occlusion(model).attribute((a, b), ((2,), (1,)), ((2,), (1,)), target=0)
    theirs = captum_attr.Occlusion(model).attribute((a, b), ((2,), (1,)), ((2,), (1,)), target=0)
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t.double(), **TOL)


def test_feature_permutation_fixed_permutation_matches_captum(mlp, x) -> None:
    """With the same (deterministic) perm_func the results are captum's."""

    def reverse(batch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.bool(), batch.flip(0), batch)

    mask = torch.tensor([[0, 0, 1, 1, 2, 2]])
    for feature_mask in (None, mask):
        ours = tdlens.FeaturePermutation(mlp, reverse).attribute(x, 1, feature_mask=feature_mask)
        theirs = captum_attr.FeaturePermutation(mlp, reverse).attribute(
            x, 1, feature_mask=feature_mask
        )
        torch.testing.assert_close(ours, theirs, **TOL)


def test_lime_matches_captum_on_the_same_design(mlp, x) -> None:
    """Lime's estimator (captum's kernel and Lasso default) equals captum when both see every
    coalition of 3 features: same samples, same weights, same fit."""
    mask = torch.tensor([[0, 0, 1, 1, 2, 2]])
    codes = torch.arange(8)
    design = ((codes.unsqueeze(1) >> torch.arange(3)) & 1).bool()

    def every_coalition(run, n_samples, n_features):
        return design.unsqueeze(0).expand(run.batch.batch_size, -1, -1)

    ours = tdlens.Lime(mlp, "linear", perturb_func=every_coalition).attribute(
        x, target=1, feature_mask=mask, n_samples=8
    )
    from captum._utils.models.linear_model import SkLearnLinearRegression

    def cycle(_inputs, **_kwargs):
        for row in design:
            yield row.long().unsqueeze(0)

    theirs = torch.stack(
        [
            captum_attr.Lime(mlp, SkLearnLinearRegression(), perturb_func=cycle).attribute(
                x[i : i + 1], target=1, feature_mask=mask, n_samples=8
            )[0]
            for i in range(x.shape[0])
        ]
    )
    torch.testing.assert_close(ours, theirs.double(), atol=1e-5, rtol=0)
