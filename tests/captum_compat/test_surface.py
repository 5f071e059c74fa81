"""captum's surface on tdlens methods: properties, convergence deltas, futures, Lime forms."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from torch import nn

import tdlens
import tdlens.captum as attr
from tests.conftest import assert_untouched, model_state

captum_attr = pytest.importorskip("captum.attr")


@pytest.fixture
def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(5, 4, dtype=torch.float64)


METHODS = [
    "Saliency",
    "InputXGradient",
    "IntegratedGradients",
    "DeepLift",
    "DeepLiftShap",
    "GradientShap",
    "GuidedBackprop",
    "Deconvolution",
    "FeatureAblation",
    "Occlusion",
    "FeaturePermutation",
    "ShapleyValues",
    "ShapleyValueSampling",
    "KernelShap",
    "Lime",
]


@pytest.mark.parametrize("name", METHODS)
def test_flags_equal_captums(net, name):
    ours, theirs = getattr(attr, name)(net), getattr(captum_attr, name)(net)
    assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs
    assert ours.has_convergence_delta() == theirs.has_convergence_delta()
    assert ours.get_name() == theirs.get_name()
    nt_ours = attr.NoiseTunnel(attr.IntegratedGradients(net, False))
    assert nt_ours.multiplies_by_inputs is False and nt_ours.has_convergence_delta()


@pytest.mark.parametrize("name", ["IntegratedGradients", "InputXGradient", "GradientShap"])
def test_multiply_by_inputs_positional(net, x, name):
    """captum's second constructor argument; False gives the local attribution."""
    local = getattr(tdlens, name)(net, False)
    assert local.multiplies_by_inputs is False
    kwargs = {"baselines": torch.zeros(1, 4, dtype=torch.float64)} if name == "GradientShap" else {}
    a = local.attribute(x, target=0, **kwargs)
    if name == "IntegratedGradients":  # captum's InputXGradient has no such argument
        b = captum_attr.IntegratedGradients(net, False).attribute(x, target=0)
        torch.testing.assert_close(a, b)
    if name == "InputXGradient":  # the gradient alone
        torch.testing.assert_close(a, tdlens.Saliency(net).attribute(x, target=0, abs=False))
    with pytest.raises(TypeError, match="multiply_by_inputs"):
        getattr(tdlens, name)(net, "yes")


@pytest.mark.parametrize("name", ["IntegratedGradients", "DeepLift"])
def test_compute_convergence_delta(net, x, name):
    method = getattr(tdlens, name)(net)
    base = torch.randn(1, 4, dtype=torch.float64)
    a, delta = method.attribute(x, base, target=2, return_convergence_delta=True)
    before = model_state(net)
    ours = method.compute_convergence_delta(a, base, x, target=2)
    assert_untouched(net, before)
    torch.testing.assert_close(ours, delta)
    theirs = getattr(captum_attr, name)(net).compute_convergence_delta(a, base, x, target=2)
    torch.testing.assert_close(ours, theirs)
    with pytest.raises(ValueError, match="no convergence delta"):
        tdlens.Saliency(net).compute_convergence_delta(a, base, x, target=2)


def test_captum_delta_layouts(net, x):
    b = x.shape[0]
    ig = attr.IntegratedGradients(net)
    _, d = attr.NoiseTunnel(ig).attribute(
        x, nt_samples=3, stdevs=0.01, target=0, return_convergence_delta=True
    )
    assert d.shape == (b * 3,)
    background = torch.randn(4, 4, dtype=torch.float64)
    _, d = attr.DeepLiftShap(net).attribute(x, background, 0, return_convergence_delta=True)
    assert d.shape == (b * 4,)
    _, main = tdlens.DeepLiftShap(net).attribute(x, background, 0, return_convergence_delta=True)
    torch.testing.assert_close(d, main.reshape(-1))


def test_gradient_shap_per_sample_delta(net, x):
    """captum's layout: one gap per sample; their mean is tdlens's delta of the mean."""
    background = torch.randn(6, 4, dtype=torch.float64)
    gs = tdlens.GradientShap(net)
    a, mean_delta = gs.attribute(
        x, background, n_samples=7, target=1, return_convergence_delta=True, seed=3
    )
    a2, per_sample = gs.attribute(
        x,
        background,
        n_samples=7,
        target=1,
        return_convergence_delta=True,
        seed=3,
        per_sample_delta=True,
    )
    torch.testing.assert_close(a, a2)
    assert per_sample.shape == (5, 7)
    torch.testing.assert_close(per_sample.mean(1), mean_delta)
    _, flat = attr.GradientShap(net).attribute(
        x, background, n_samples=7, target=1, return_convergence_delta=True, seed=3
    )
    torch.testing.assert_close(flat, per_sample.reshape(-1))
    linear = nn.Linear(4, 2).double()
    _, zero = attr.GradientShap(linear).attribute(
        x, background, n_samples=4, stdevs=0.1, target=0, return_convergence_delta=True
    )
    torch.testing.assert_close(zero, torch.zeros(20, dtype=torch.float64))


def test_attribute_future(net, x):
    def future_model(inp: torch.Tensor) -> torch.futures.Future:
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(net(inp))
        return fut

    mask = torch.tensor([[0, 0, 1, 2]])
    expected = tdlens.FeatureAblation(net).attribute(x, target=1, feature_mask=mask)
    for cls in (tdlens.FeatureAblation, tdlens.ShapleyValues):
        got = cls(future_model).attribute_future(x, target=1, feature_mask=mask)
        assert isinstance(got, torch.futures.Future)
        if cls is tdlens.FeatureAblation:
            torch.testing.assert_close(got.wait(), expected)
    with pytest.raises(TypeError, match="returned Tensor"):
        tdlens.FeatureAblation(net).attribute_future(x, target=1)
    with pytest.raises(NotImplementedError, match="Saliency"):
        tdlens.Saliency(net).attribute_future(x, target=1)


def test_show_progress_text(net, x, monkeypatch):
    pytest.importorskip("tqdm")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    tdlens.FeatureAblation(net).attribute(x, target=0, show_progress=True)
    assert "Feature Ablation attribution: 100%" in err.getvalue()


def test_lime_with_captum_callables_and_models(x):
    """captum's per-sample similarity and perturbation functions, captum's Model and a
    scikit-learn estimator: on a linear model the surrogate is exact, whatever is drawn."""
    pytest.importorskip("sklearn")
    from captum._utils.models.linear_model import SkLearnLinearRegression
    from captum.attr._core.lime import get_exp_kernel_similarity_function
    from sklearn.linear_model import LinearRegression

    torch.manual_seed(0)
    linear = nn.Linear(4, 2).double()
    mask = torch.tensor([[0, 0, 1, 2]])
    expected = torch.zeros(5, 3, dtype=torch.float64)
    contrib = linear.weight[1] * x  # [5, 4], baseline 0
    expected[:, 0] = contrib[:, :2].sum(1)
    expected[:, 1:] = contrib[:, 2:]

    def perturb(original, **kwargs):
        return torch.bernoulli(torch.full((1, kwargs["num_interp_features"]), 0.5))

    for model in (SkLearnLinearRegression(), LinearRegression()):
        lime = attr.Lime(
            linear,
            interpretable_model=model,
            similarity_func=get_exp_kernel_similarity_function("euclidean", 5.0),
            perturb_func=perturb,
        )
        coefs = lime.attribute(
            x, target=1, feature_mask=mask, n_samples=40, return_input_shape=False
        )
        torch.testing.assert_close(coefs.double(), expected, atol=1e-4, rtol=1e-4)
        spread = lime.attribute(x, target=1, feature_mask=mask, n_samples=40)
        assert spread.shape == x.shape
        torch.testing.assert_close(spread[:, 2].double(), expected[:, 1], atol=1e-4, rtol=1e-4)


def test_lime_base_in_input_space(x):
    pytest.importorskip("sklearn")
    from captum._utils.models.linear_model import SkLearnLinearRegression

    torch.manual_seed(0)
    linear = nn.Linear(4, 1).double()
    one = x[:1]

    def perturb(original, **kwargs):
        return original * torch.bernoulli(torch.full_like(original, 0.5))

    def to_interp(sample, original, **kwargs):
        return (sample != 0).double()

    lime = attr.LimeBase(
        linear,
        SkLearnLinearRegression(),
        lambda *args, **kw: 1.0,
        perturb,
        False,
        None,
        to_interp,
    )
    coefs = lime.attribute(one, target=0, n_samples=50)
    torch.testing.assert_close(
        coefs.double().reshape(-1), (linear.weight[0] * one[0]), atol=1e-4, rtol=1e-4
    )
    with pytest.raises(ValueError, match="to_interp_rep_transform"):
        attr.LimeBase(linear, SkLearnLinearRegression(), None, perturb, False, None, None)


def test_exact_shapley_values_of_integer_outputs():
    """The kernel weights are fractions: integer scores must not truncate them to 0."""
    x = torch.tensor([[2.0, 10.0, 3.0]])
    weights = torch.tensor([3.0, 1.0, 2.0])

    def model(inp: torch.Tensor) -> torch.Tensor:
        return (inp * weights).sum(1).long()

    phi = tdlens.ShapleyValues(model).attribute(x, feature_mask=torch.tensor([[0, 0, 1]]))
    torch.testing.assert_close(phi, torch.tensor([[16.0, 16.0, 6.0]]))


def test_gradient_shap_baselines_function_of_the_inputs(net, x):
    """As captum: a baselines function that takes an argument gets the inputs."""
    seen = []

    def baselines(inputs: torch.Tensor) -> torch.Tensor:
        seen.append(inputs)
        return torch.zeros(3, inputs.shape[1], dtype=inputs.dtype)

    got = tdlens.GradientShap(net).attribute(x, baselines, n_samples=3, target=0, seed=0)
    want = tdlens.GradientShap(net).attribute(
        x, torch.zeros(3, 4, dtype=torch.float64), n_samples=3, target=0, seed=0
    )
    torch.testing.assert_close(got, want)
    assert seen[0] is x
    with pytest.raises(AssertionError):  # captum's contract: arrays are refused
        attr.GradientShap(net).attribute(x, lambda: x.numpy(), target=0)


def test_perturbation_target_none_explains_every_output(net, x):
    """captum's target=None for perturbation methods on a [B, C] output: one attribution per
    output entry, [B, C, ...] (tdlens's own target=None is the predicted class)."""
    got = attr.ShapleyValues(net).attribute(x)
    assert got.shape == (5, 3, 4)
    for c in range(3):
        torch.testing.assert_close(got[:, c], tdlens.ShapleyValues(net).attribute(x, target=c))
    theirs = captum_attr.ShapleyValues(net).attribute(x)  # captum sums in float32 here
    torch.testing.assert_close(got, theirs.double(), rtol=1e-5, atol=1e-5)
    flat = attr.FeatureAblation(net).attribute(x)  # captum: one row per output entry
    torch.testing.assert_close(flat, captum_attr.FeatureAblation(net).attribute(x))
    torch.testing.assert_close(
        flat.reshape(5, 3, 4)[:, 1], tdlens.FeatureAblation(net).attribute(x, target=1)
    )
