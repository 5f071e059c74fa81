"""tdlens.captum's Layer* and Neuron* classes against captum's, on a small seeded network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdlens.captum as attr
from tests.conftest import assert_untouched, model_state

captum_attr = pytest.importorskip("captum.attr")


class Net(nn.Module):
    """Linear layers with ReLUs as modules, each run once (captum's DeepLift is right here)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(6, 5)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().double().eval()


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(5, 4, dtype=torch.float64)


def _close(ours: object, theirs: object, tol: float = 1e-6) -> None:
    if isinstance(theirs, (list, tuple)):
        assert isinstance(ours, type(theirs)) and len(ours) == len(theirs)  # type: ignore[arg-type]
        for a, b in zip(ours, theirs):  # type: ignore[call-overload]
            _close(a, b, tol)
        return
    assert isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), atol=tol, rtol=tol)


# (class name, extra constructor args, attribute kwargs)
LAYER_CASES = [
    ("LayerIntegratedGradients", {}, {"target": 1, "n_steps": 20}),
    ("LayerConductance", {}, {"target": 1, "n_steps": 20}),
    ("InternalInfluence", {}, {"target": 1, "n_steps": 20}),
    ("LayerGradientXActivation", {}, {"target": 2}),
    ("LayerDeepLift", {}, {"target": 0}),
    ("LayerActivation", {}, {}),
]


@pytest.mark.parametrize(("name", "init", "kwargs"), LAYER_CASES)
@pytest.mark.parametrize("to_input", [False, True])
def test_layer_alias_matches_captum(net, x, name, init, kwargs, to_input):
    """Module object as layer, captum's signature, captum's numbers; the model untouched."""
    before = model_state(net)
    ours = getattr(attr, name)(net, net.fc2, **init)
    theirs = getattr(captum_attr, name)(net, net.fc2, **init)
    kwargs = {**kwargs, "attribute_to_layer_input": to_input}
    _close(ours.attribute(x, **kwargs), theirs.attribute(x, **kwargs))
    assert_untouched(net, before)
    assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs
    assert ours.has_convergence_delta() == theirs.has_convergence_delta()


@pytest.mark.parametrize("to_input", [False, True])
def test_layer_feature_ablation_matches_captum(net, x, to_input):
    mask = torch.tensor([[0, 0, 1, 1, 2]]) if not to_input else None
    kwargs = {"target": 1, "layer_mask": mask, "attribute_to_layer_input": to_input}
    ours = attr.LayerFeatureAblation(net, net.fc2).attribute(x, **kwargs)
    theirs = captum_attr.LayerFeatureAblation(net, net.fc2).attribute(x, **kwargs)
    _close(ours, theirs)
    permuted = attr.LayerFeaturePermutation(net, net.fc2).attribute(x, target=1)
    assert permuted.shape == (5, 5)


def test_layer_list_gives_list(net, x):
    ours = attr.LayerActivation(net, [net.fc1, net.fc2]).attribute(x)
    theirs = captum_attr.LayerActivation(net, [net.fc1, net.fc2]).attribute(x)
    _close(ours, theirs)


def test_layer_integrated_gradients_delta_layout(net, x):
    ours = attr.LayerIntegratedGradients(net, net.fc1, None, True)
    a, delta = ours.attribute(x, target=0, n_steps=30, return_convergence_delta=True)
    b, their_delta = captum_attr.LayerIntegratedGradients(net, net.fc1).attribute(
        x, target=0, n_steps=30, return_convergence_delta=True
    )
    _close(a, b)
    assert delta.shape == their_delta.shape == (5,)


def test_layer_gradcam_matches_captum():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    images = torch.randn(2, 1, 6, 6)
    ours = attr.LayerGradCam(cnn, cnn[0]).attribute(images, target=1, relu_attributions=True)
    theirs = captum_attr.LayerGradCam(cnn, cnn[0]).attribute(
        images, target=1, relu_attributions=True
    )
    _close(ours, theirs, tol=1e-5)


NEURON_CASES = [
    ("NeuronGradient", {}),
    ("NeuronIntegratedGradients", {"n_steps": 20}),
    ("NeuronConductance", {"n_steps": 20, "target": 1, "method": "gausslegendre"}),
    ("NeuronDeepLift", {}),
    ("NeuronGuidedBackprop", {}),
    ("NeuronDeconvolution", {}),
    ("NeuronFeatureAblation", {}),
]


@pytest.mark.parametrize(("name", "kwargs"), NEURON_CASES)
@pytest.mark.parametrize("selector", [3, (1,), lambda out: out[:, 2] * 1.0])
def test_neuron_alias_matches_captum(net, x, name, kwargs, selector):
    before = model_state(net)
    layer = net.fc2
    ours = getattr(attr, name)(net, layer).attribute(x, selector, **kwargs)
    theirs = getattr(captum_attr, name)(net, layer).attribute(x, selector, **kwargs)
    _close(ours, theirs)
    assert_untouched(net, before)


def test_neuron_conductance_default_rule_is_the_true_trapezoid(net, x):
    """captum's default riemann_trapezoid weighs n points 1/n; tdlens's trapezoid sums to 1:
    captum's result times n / (n - 1) (docs/captum.md)."""
    ours = attr.NeuronConductance(net, net.fc2).attribute(x, 3, target=1, n_steps=20)
    theirs = captum_attr.NeuronConductance(net, net.fc2).attribute(x, 3, target=1, n_steps=20)
    _close(ours, theirs * 20 / 19)


def test_neuron_selector_slice_sums(net, x):
    sel = (slice(0, 3),)
    ours = attr.NeuronGradient(net, net.fc2).attribute(x, sel)
    theirs = captum_attr.NeuronGradient(net, net.fc2).attribute(x, sel)
    _close(ours, theirs)


def test_neuron_deeplift_shap_and_gradient_shap(net, x):
    torch.manual_seed(2)
    background = torch.randn(4, 4, dtype=torch.float64)
    ours = attr.NeuronDeepLiftShap(net, net.fc2).attribute(x, 1, background)
    theirs = captum_attr.NeuronDeepLiftShap(net, net.fc2).attribute(x, 1, background)
    _close(ours, theirs)
    grad_shap = attr.NeuronGradientShap(net, net.fc2).attribute(x, 1, background, n_samples=3)
    assert grad_shap.shape == x.shape


def test_module_not_in_model_is_refused(net, x):
    with pytest.raises(ValueError, match="not a submodule"):
        attr.LayerConductance(net, nn.Linear(2, 2)).attribute(x, target=0)


def test_captum_only_options_refused(net, x):
    with pytest.raises(ValueError, match="device_ids"):
        attr.LayerConductance(net, net.fc1, device_ids=[0])
    with pytest.raises(ValueError, match="grad_kwargs"):
        attr.LayerConductance(net, net.fc1).attribute(x, target=0, grad_kwargs={"a": 1})
