"""Conductance (captum's LayerConductance, and InternalInfluence without the multiplication)."""

from __future__ import annotations

import pytest
import torch
from captum import attr as captum

import tdlens
from tdlens.core.errors import InputError, TargetError
from tests.attribution.gradient_models import MODELS, as_tuple, close, make_model
from tests.conftest import assert_untouched, model_state, randn

LAYER = {"mlp": "net.2", "cnn": "conv2", "two_input": "a", "reused": "conv2"}
# captum's Riemann alphas are float32 (torch.linspace in the default dtype), 1e-7 from exact
RULES = ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"]


def baselines_for(x):
    values = tuple(torch.full_like(t[:1], 0.1) for t in as_tuple(x))
    return values if isinstance(x, tuple) else values[0]


@pytest.mark.parametrize("model_name", MODELS)
def test_matches_captum_layer_conductance_with_delta(model_name):
    """LayerConductance and its delta, with baselines and per-example targets."""
    model, x = make_model(model_name)
    path = LAYER[model_name]
    base = baselines_for(x)
    ours, delta = tdlens.Conductance(model, path).attribute(
        x, base, target=[0, 2, 1], n_steps=8, return_convergence_delta=True
    )
    theirs, their_delta = captum.LayerConductance(model, model.get_submodule(path)).attribute(
        x, base, target=[0, 2, 1], n_steps=8, return_convergence_delta=True
    )
    close(ours, theirs)
    close(delta, their_delta)


@pytest.mark.parametrize("method", RULES)
def test_every_rule_matches_captum(method):
    """Each integration rule places the n_steps + 1 points as captum does."""
    model, x = make_model("cnn")
    ours = tdlens.Conductance(model, "conv1").attribute(x, target=3, n_steps=6, method=method)
    theirs = captum.LayerConductance(model, model.conv1).attribute(
        x, target=3, n_steps=6, method=method
    )
    close(ours, theirs)


@pytest.mark.parametrize("method", RULES)
@pytest.mark.parametrize("model_name", ["cnn", "two_input"])
def test_without_multiplication_is_internal_influence(model_name, method):
    """multiply_by_inputs=False is captum's InternalInfluence."""
    model, x = make_model(model_name)
    path = LAYER[model_name]
    ours = tdlens.Conductance(model, path, multiply_by_inputs=False).attribute(
        x, baselines_for(x), target=1, n_steps=6, method=method
    )
    theirs = captum.InternalInfluence(model, model.get_submodule(path)).attribute(
        x, baselines_for(x), target=1, n_steps=6, method=method
    )
    close(ours, theirs)


def test_layer_input_matches_captum():
    """attribute_to_layer_input=True attributes to the layer's input."""
    model, x = make_model("cnn")
    ours = tdlens.Conductance(model, "relu2").attribute(
        x, target=1, n_steps=5, attribute_to_layer_input=True
    )
    theirs = captum.LayerConductance(model, model.relu2).attribute(
        x, target=1, n_steps=5, attribute_to_layer_input=True
    )
    close(ours, theirs)


@pytest.mark.parametrize("model_name", ["cnn", "two_input"])
def test_targets_equal_stacked_single_calls(model_name):
    """K targets (and their deltas) equal K single-target calls."""
    model, x = make_model(model_name)
    method = tdlens.Conductance(model, LAYER[model_name], n_steps=5)
    targets = [0, [2, 0, 1], 2]
    multi, delta = method.attribute(x, targets=targets, return_convergence_delta=True)
    for k, target in enumerate(targets):
        single, single_delta = method.attribute(x, target=target, return_convergence_delta=True)
        close(multi[:, k], single)
        close(delta[:, k], single_delta)


@pytest.mark.parametrize("internal_batch_size", [2, 4])
def test_chunking_does_not_change_results(internal_batch_size):
    """Consecutive points pair up across chunks of any size (smaller than B included)."""
    model, x = make_model("cnn")
    method = tdlens.Conductance(model, "conv2", n_steps=4)
    close(
        method.attribute(x, targets=[1, 3], internal_batch_size=internal_batch_size),
        method.attribute(x, targets=[1, 3]),
    )


def test_completeness():
    """The conductances of a layer every path crosses add up to f(x) - f(b), up to the O(1 / n)
    error of the sum (with endpoints 0 and 1, the layer's change telescopes exactly)."""
    model, x = make_model("mlp")
    errors = [
        tdlens.Conductance(model, "net.1")
        .attribute(
            x, target=2, n_steps=n, method="riemann_trapezoid", return_convergence_delta=True
        )[1]
        .abs()
        .max()
        for n in (50, 500)
    ]
    assert errors[1] < errors[0] / 5


def test_errors():
    """No layer, or a layer that runs twice, is refused with the fix."""
    model, x = make_model("reused")
    with pytest.raises(InputError, match="layer='<module path>'"):
        tdlens.Conductance(model).attribute(x, target=0)
    with pytest.raises(InputError, match="ran more than once"):
        tdlens.Conductance(model, "act").attribute(x, target=0, n_steps=2)


@pytest.mark.parametrize("kwargs", [{"layer": "net.2"}, {"layer": ["net.0", "net.2"]}])
def test_model_untouched(kwargs):
    """No hook, parameter, flag or gradient changes, after success or an error."""
    model, x = make_model("mlp")
    model.net[2].bias.requires_grad_(False)
    before = model_state(model)
    tdlens.Conductance(model).attribute(x, targets=[0, 1], n_steps=3, **kwargs)
    assert_untouched(model, before)
    with pytest.raises(TargetError):  # raised after a forward pass, with hooks in place
        tdlens.Conductance(model).attribute(x, target=7, n_steps=3, **kwargs)
    assert_untouched(model, before)
    with pytest.raises(InputError, match="ran more than once"):
        tdlens.Conductance(make_model("reused")[0]).attribute(randn(2, 2, 6, 6), layer="act")


@pytest.mark.parametrize("multiply_by_inputs", [True, False])
def test_float32_model_and_inputs(multiply_by_inputs):
    """A float32 model with float32 inputs (the quadrature is computed in float64) gives the
    float64 result to float32 precision."""
    model, x = make_model("cnn")
    method = tdlens.Conductance(model.float(), "conv2", multiply_by_inputs=multiply_by_inputs)
    single = method.attribute(x.float(), target=1, n_steps=6)
    assert single.dtype == torch.float32
    double = tdlens.Conductance(
        model.double(), "conv2", multiply_by_inputs=multiply_by_inputs
    ).attribute(x, target=1, n_steps=6)
    torch.testing.assert_close(single.double(), double, rtol=1e-4, atol=1e-5)
