"""captum's Layer* and Neuron* methods are tdlens methods with ``layer=`` and ``output=``; and
several layers in one call (a list or a glob) give what one call per layer gives."""

from __future__ import annotations

import pytest
from captum import attr as captum

import tdlens
from tests.attribution.gradient_models import captum_draws, close, make_model
from tests.conftest import randn

pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks:UserWarning")

TARGET = [0, 2, 1]


@pytest.mark.parametrize("multiply", [True, False])
def test_layer_gradient_x_activation(multiply):
    """LayerGradientXActivation is InputXGradient(layer=...)."""
    model, x = make_model("cnn")
    ours = tdlens.InputXGradient(model, multiply_by_inputs=multiply).attribute(
        x, target=TARGET, layer="conv2"
    )
    theirs = captum.LayerGradientXActivation(
        model, model.conv2, multiply_by_inputs=multiply
    ).attribute(x, target=TARGET)
    close(ours, theirs)


def test_layer_integrated_gradients():
    """LayerIntegratedGradients is IntegratedGradients(layer=...)."""
    model, x = make_model("two_input")
    ours = tdlens.IntegratedGradients(model).attribute(x, target=TARGET, layer="a", n_steps=7)
    theirs = captum.LayerIntegratedGradients(model, model.a).attribute(x, target=TARGET, n_steps=7)
    close(ours, theirs)


@pytest.mark.parametrize("model_name, path", [("cnn", "conv2"), ("two_input", "a")])
def test_layer_gradient_shap(model_name, path):
    """Same draws: gradients at the layer, times its change from the baseline to the noisy
    input, and the delta averaged over samples."""
    model, x = make_model(model_name)
    baselines = tuple(randn(4, *t.shape[1:], seed=30 + i) for i, t in enumerate(_tuple(x)))
    baselines = baselines if isinstance(x, tuple) else baselines[0]
    ours, delta = tdlens.GradientShap(model).attribute(
        x, baselines, n_samples=3, stdevs=0.2, target=TARGET, layer=path, seed=2,
        return_convergence_delta=True,
    )  # fmt: skip
    with captum_draws(x, 3, 0.2, seed=2, n_baselines=4):
        theirs, their_delta = captum.LayerGradientShap(model, model.get_submodule(path)).attribute(
            x, baselines, n_samples=3, stdevs=0.2, target=TARGET, return_convergence_delta=True
        )
    close(ours, theirs)
    close(delta, their_delta.reshape(3, 3).mean(1))


NEURON = (1, 2, 2)


def test_neuron_gradient():
    """NeuronGradient is Saliency(output=<path>, target=<neuron>, abs=False)."""
    model, x = make_model("cnn")
    ours = tdlens.Saliency(model).attribute(x, output="conv2", target=NEURON, abs=False)
    theirs = captum.NeuronGradient(model, model.conv2).attribute(x, neuron_selector=NEURON)
    close(ours, theirs)


def test_neuron_integrated_gradients():
    """NeuronIntegratedGradients is IntegratedGradients(output=<path>)."""
    model, x = make_model("cnn")
    ours = tdlens.IntegratedGradients(model).attribute(x, output="conv2", target=NEURON, n_steps=6)
    theirs = captum.NeuronIntegratedGradients(model, model.conv2).attribute(
        x, neuron_selector=NEURON, n_steps=6
    )
    close(ours, theirs)


def test_neuron_gradient_shap():
    """NeuronGradientShap is GradientShap(output=<path>), with shared draws."""
    model, x = make_model("cnn")
    baselines = randn(4, 1, 8, 8, seed=8)
    ours = tdlens.GradientShap(model, output="conv2").attribute(
        x, baselines, n_samples=3, stdevs=0.1, target=NEURON, seed=5
    )
    with captum_draws(x, 3, 0.1, seed=5, n_baselines=4):
        theirs = captum.NeuronGradientShap(model, model.conv2).attribute(
            x, NEURON, baselines, n_samples=3, stdevs=0.1
        )
    close(ours, theirs)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (tdlens.GuidedBackprop, captum.NeuronGuidedBackprop),
        (tdlens.Deconvolution, captum.NeuronDeconvolution),
    ],
)
def test_neuron_guided_backprop_and_deconvolution(ours, theirs):
    """NeuronGuidedBackprop / NeuronDeconvolution are the methods with output=."""
    model, x = make_model("cnn")
    close(
        ours(model).attribute(x, output="conv2", target=NEURON),
        theirs(model, model.conv2).attribute(x, neuron_selector=NEURON),
    )


def test_smoothgrad_of_a_neuron():
    """NoiseTunnel(NeuronGradient) is SmoothGrad(output=<path>), with shared noise."""
    model, x = make_model("cnn")
    ours = tdlens.SmoothGrad(model, nt_samples=3, stdevs=0.2).attribute(
        x, output="conv2", target=NEURON, seed=0, abs=False
    )
    with captum_draws(x, 3, 0.2, seed=0):
        theirs = captum.NoiseTunnel(captum.NeuronGradient(model, model.conv2)).attribute(
            x, nt_samples=3, stdevs=0.2, neuron_selector=NEURON
        )
    close(ours, theirs)


# -- several layers in one call ---------------------------------------------------------------
METHODS = {
    "Saliency": lambda m: (tdlens.Saliency(m), {}),
    "InputXGradient": lambda m: (tdlens.InputXGradient(m), {}),
    "IntegratedGradients": lambda m: (tdlens.IntegratedGradients(m), {"n_steps": 4}),
    "GradientShap": lambda m: (tdlens.GradientShap(m), {"seed": 0, "stdevs": 0.1}),
    "Conductance": lambda m: (tdlens.Conductance(m), {"n_steps": 4}),
    "GradCam": lambda m: (tdlens.GradCam(m), {}),
    "SmoothGrad": lambda m: (tdlens.SmoothGrad(m, nt_samples=2), {"seed": 0}),
}


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("layer", [["conv1", "conv2"], "conv*", ["relu1", "conv2:input"]])
def test_several_layers_equal_one_call_per_layer(name, layer):
    """A list or glob of layers gives {path: result}, each equal to the call with that layer
    alone, also when one layer feeds the next (conv1 -> conv2), and when two paths name the
    same tensor (relu1's output is, after pooling, conv2's input)."""
    model, x = make_model("cnn")
    method, options = METHODS[name](model)
    together = method.attribute(x, targets=[0, 3], layer=layer, **options)
    assert isinstance(together, dict) and len(together) == 2
    for path, value in together.items():
        alone = method.attribute(x, targets=[0, 3], layer=path, **options)
        close(value, alone)
        assert value.abs().sum() > 0


@pytest.mark.parametrize("name", ["Conductance", "GradientShap"])
def test_several_layers_give_one_delta_per_layer(name):
    """Each layer's attributions alone account for f(x) - f(b): the delta is per layer."""
    model, x = make_model("cnn")
    method, options = METHODS[name](model)
    _, deltas = method.attribute(
        x, targets=[1, 2], layer="conv*", return_convergence_delta=True, **options
    )
    assert set(deltas) == {"conv1", "conv2"}
    for path, delta in deltas.items():
        _, alone = method.attribute(
            x, targets=[1, 2], layer=path, return_convergence_delta=True, **options
        )
        close(delta, alone)


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)
