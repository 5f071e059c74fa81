"""Sampling estimators converge to their targets; batched linear solvers match scikit-learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdlens
from tdlens.attribution.perturbation import Lasso, LinearRegression, Ridge


@pytest.fixture
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 2)).double()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def errors(method, exact, x, counts, **options) -> list[float]:
    return [
        float((method.attribute(x, target=1, n_samples=n, seed=0, **options) - exact).abs().max())
        for n in counts
    ]


def test_kernel_shap_converges_to_exact_shapley_values(mlp, x) -> None:
    """12 features (4096 coalitions): the error falls as n_samples grows; exhaustive is exact.

    Measured max abs errors (scale of the values ~0.1): n=100: ~2e-2, 400: ~7e-3,
    1600: ~3e-3, 4095 (every coalition): <1e-12.
    """
    exact = tdlens.ShapleyValues(mlp).attribute(x, target=1)
    ks = tdlens.KernelShap(mlp)
    err = errors(ks, exact, x, [100, 400, 1600, 4095])
    print("KernelShap max abs error vs exact Shapley:", err)
    assert err[0] > err[1] > err[2] and err[2] < 1e-2
    assert err[3] < 1e-12


def test_shapley_value_sampling_converges(mlp, x) -> None:
    """Measured max abs errors: 10 orders ~1e-2, 40: ~5e-3, 160: ~2e-3."""
    exact = tdlens.ShapleyValues(mlp).attribute(x, target=1)
    err = errors(tdlens.ShapleyValueSampling(mlp), exact, x, [10, 40, 160])
    print("ShapleyValueSampling max abs error vs exact Shapley:", err)
    assert err[0] > err[2] and err[2] < 5e-3


@pytest.mark.parametrize("name", ["KernelShap", "ShapleyValueSampling"])
def test_efficiency(name, mlp, x) -> None:
    """Values sum to f(x) - f(baseline) per example and target (tolerance 1e-10, float64)."""
    attr = getattr(tdlens, name)(mlp).attribute(x, 0.5, targets=[0, 1], n_samples=30, seed=3)
    with torch.no_grad():
        gap = mlp(x) - mlp(torch.full_like(x, 0.5))
    torch.testing.assert_close(attr.sum(-1), gap, atol=1e-10, rtol=0)


def test_kernel_shap_with_one_feature_gives_the_whole_gap(mlp, x) -> None:
    """One feature (a one-word text): its value is f(x) - f(baseline), no coalition drawn."""
    mask = torch.zeros(1, 12, dtype=torch.long)
    attr = tdlens.KernelShap(mlp).attribute(x, target=1, feature_mask=mask, n_samples=5, seed=0)
    with torch.no_grad():
        gap = mlp(x)[:, 1] - mlp(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(attr, gap.unsqueeze(1).expand(-1, 12), atol=1e-12, rtol=0)


def test_lime_recovers_linear_coefficients() -> None:
    """On a linear model Lime's least-squares surrogate is the model itself (exactly, for any
    number of samples); with the default Lasso(alpha=0.01) the error is the shrinkage only."""
    torch.manual_seed(2)
    model = nn.Linear(6, 3).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    truth = model.weight[2].detach() * x  # coefficient of feature j: w_j * (x_j - baseline_j)
    for n in (20, 200):
        fit = tdlens.Lime(model, "linear").attribute(x, target=2, n_samples=n, seed=0)
        assert float((fit - truth).abs().max()) < 1e-10
    ridge = [
        float(
            (tdlens.Lime(model, Ridge(1.0)).attribute(x, target=2, n_samples=n, seed=0) - truth)
            .abs()
            .max()
        )
        for n in (25, 100, 400)
    ]
    print("Lime Ridge(1.0) max abs error vs true coefficients:", ridge)
    assert ridge[0] > ridge[1] > ridge[2]


@pytest.mark.parametrize("sampler", ["sobol", "halton", "lhs"])
def test_sobol_ranks_additive_features(sampler) -> None:
    """f = sum_i a_i x_i: the total (and first-order) index orders features as |a_i x_i|."""
    a = torch.tensor([3.0, -2.5, 2.0, 1.5, 1.0, 0.0], dtype=torch.float64)

    def model(x: torch.Tensor) -> torch.Tensor:
        return x @ a

    x = torch.ones(2, 6, dtype=torch.float64)
    sobol = tdlens.Sobol(model)
    share = (a**2 / (a**2).sum()).expand(2, 6)  # exact indices of an additive function
    total = sobol.attribute(x, n_samples=512, sampler=sampler, seed=0)
    assert torch.equal(total.argsort(dim=1, descending=True), torch.arange(6).expand(2, 6))
    torch.testing.assert_close(total, share, atol=0.05, rtol=0)
    if sampler == "sobol":  # first-order estimates are noisier; the Sobol' design is the best
        first = sobol.attribute(x, n_samples=512, order="first", sampler=sampler, seed=0)
        assert torch.equal(first.argsort(dim=1, descending=True), torch.arange(6).expand(2, 6))
        torch.testing.assert_close(first, share, atol=0.02, rtol=0)


def test_linear_solvers_match_sklearn() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(0)
    b, s, p, k = 3, 40, 5, 2
    x = (torch.rand(b, s, p, generator=g) < 0.5).double()
    y = torch.randn(b, s, k, generator=g, dtype=torch.float64)
    y = y + x @ torch.randn(p, k, generator=g, dtype=torch.float64)
    w = torch.rand(b, s, generator=g, dtype=torch.float64)
    pairs = [
        (Lasso(0.05, tol=1e-12), sklearn.Lasso(alpha=0.05, tol=1e-12, max_iter=100000)),
        (Ridge(0.7), sklearn.Ridge(alpha=0.7)),
        (LinearRegression(), sklearn.LinearRegression()),
    ]
    for ours, reference in pairs:
        coef, intercept = ours.fit(x, y, w)
        for i in range(b):
            for j in range(k):
                reference.fit(x[i].numpy(), y[i, :, j].numpy(), sample_weight=w[i].numpy())
                assert abs(reference.intercept_ - float(intercept[i, j])) < 1e-9
                ref = torch.as_tensor(reference.coef_)
                torch.testing.assert_close(coef[i, :, j], ref, atol=1e-9, rtol=0)


def sparse_problem(b: int = 4, s: int = 120, p: int = 12, k: int = 3) -> tuple:
    """Binary samples, a last feature that never varies, y from 4 of the features plus noise."""
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(b, s, p, generator=g) < 0.5).double()
    x[..., -1] = 1.0
    truth = torch.zeros(b, p, k, dtype=torch.float64)
    truth[:, :4] = (1 + torch.rand(b, 4, k, generator=g, dtype=torch.float64)) * torch.where(
        torch.rand(b, 4, k, generator=g) < 0.5, -1.0, 1.0
    )
    y = x @ truth + 0.1 * torch.randn(b, s, k, generator=g, dtype=torch.float64)
    w = 0.5 + torch.rand(b, s, generator=g, dtype=torch.float64)
    return x, y, w, truth


def test_lasso_meets_optimality_conditions_and_alpha_sparsifies() -> None:
    """At every alpha each fit is the lasso's optimum: the gradient of the weighted squared loss
    is -alpha sign(coef_j) where coef_j != 0 and at most alpha in size where coef_j == 0 (to
    1e-9; measured ~1e-15). A larger alpha zeroes more coefficients: at 0 only the feature that
    never varies (12 of 144), then 34, at 0.05 the 8 without signal too (96; the 4 with signal
    keep their sign), 121, at 10 all."""
    x, y, w, truth = sparse_problem()
    zeros = []
    for alpha in (0.0, 0.002, 0.05, 0.35, 10.0):
        coef, intercept = Lasso(alpha).fit(x, y, w)
        residual = y - x @ coef - intercept.unsqueeze(1)
        grad = -(x.transpose(1, 2) @ (w.unsqueeze(-1) * residual)) / w.sum(1).reshape(-1, 1, 1)
        active = coef != 0
        torch.testing.assert_close(grad[active], -alpha * coef.sign()[active], atol=1e-9, rtol=0)
        assert float(grad[~active].abs().max()) <= alpha + 1e-9
        zeros.append(int((~active).sum()))
        if alpha == 0.05:
            assert not active[:, 4:].any()
            assert torch.equal(coef[:, :4].sign(), truth[:, :4].sign())
    print("Lasso zero coefficients per alpha:", zeros)
    assert zeros[0] == 4 * 3 and zeros[-1] == coef.numel() and zeros == sorted(set(zeros))


def test_lasso_without_penalty_and_with_a_shared_design() -> None:
    """alpha=0 is least squares; a design shared by the examples ([1, S, P]) gives the fits of
    the design repeated per example."""
    x, y, w, _ = sparse_problem()
    for ours, reference in [(Lasso(0.0), LinearRegression()), (Lasso(0.05), Lasso(0.05))]:
        coef, intercept = ours.fit(x[:1], y, w[:1])
        ref_coef, ref_intercept = reference.fit(x[:1].expand_as(x), y, w[:1].expand_as(w))
        torch.testing.assert_close(coef, ref_coef, atol=1e-9, rtol=0)
        torch.testing.assert_close(intercept, ref_intercept, atol=1e-9, rtol=0)
