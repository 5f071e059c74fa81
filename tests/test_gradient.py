"""Saliency, InputXGradient and IntegratedGradients against captum 0.9, in float64."""

from __future__ import annotations

import pytest
import torch
from captum import attr as captum
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn

import tdlens
from tests.conftest import randn, seeded

TOL = dict(atol=1e-6, rtol=1e-6)
IG_METHODS = ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"]


def close(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            close(x, y)
        return
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b.to(a.dtype), **TOL)


def tdlens_and_captum(name, model):
    if name == "Saliency":
        return tdlens.Saliency(model), captum.Saliency(model)
    if name == "InputXGradient":
        return tdlens.InputXGradient(model), captum.InputXGradient(model)
    return tdlens.IntegratedGradients(model), captum.IntegratedGradients(model)


@pytest.mark.parametrize("name", ["Saliency", "InputXGradient", "IntegratedGradients"])
@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_single_input_models_match_captum(name, model_name, request):
    """Every method equals captum on an MLP and a CNN, for an int and a per-example target."""
    model = request.getfixturevalue(model_name)
    x = randn(3, 6) if model_name == "mlp" else randn(3, 1, 8, 8)
    ours, theirs = tdlens_and_captum(name, model)
    for target in (1, [0, 2, 3]):
        close(ours.attribute(x, target=target), theirs.attribute(x, target=target))


@pytest.mark.parametrize("method", IG_METHODS)
@pytest.mark.parametrize("model_name", ["mlp", "cnn", "two_input"])
def test_ig_every_rule_matches_captum_with_delta(method, model_name, request):
    """IG with each integration rule, baselines and the convergence delta equal captum's."""
    model = request.getfixturevalue(model_name)
    if model_name == "two_input":
        x = (randn(4, 4), randn(4, 3, seed=2))
        baselines = (randn(1, 4, seed=3), 0.5)
    else:
        x = randn(4, 6) if model_name == "mlp" else randn(4, 1, 8, 8)
        baselines = torch.full_like(x, 0.1)
    ours, delta = tdlens.IntegratedGradients(model).attribute(
        x, baselines, target=2, n_steps=20, method=method, return_convergence_delta=True
    )
    theirs, their_delta = captum.IntegratedGradients(model).attribute(
        x, baselines, target=2, n_steps=20, method=method, return_convergence_delta=True
    )
    close(ours, theirs)
    close(delta, their_delta)


def test_ig_trapezoid_is_the_true_trapezoid_rule(mlp):
    """captum's trapezoid weights sum to (n-1)/n; ours sum to 1, so ours = captum * n/(n-1)."""
    x, n = randn(3, 6), 12
    ours = tdlens.IntegratedGradients(mlp).attribute(
        x, target=0, n_steps=n, method="riemann_trapezoid"
    )
    theirs = captum.IntegratedGradients(mlp).attribute(
        x, target=0, n_steps=n, method="riemann_trapezoid"
    )
    close(ours, theirs * n / (n - 1))


def test_two_input_model(two_input):
    x = (randn(3, 4), randn(3, 3, seed=2))
    for name in ("Saliency", "InputXGradient", "IntegratedGradients"):
        ours, theirs = tdlens_and_captum(name, two_input)
        result = ours.attribute(x, target=1)
        assert isinstance(result, tuple) and len(result) == 2
        close(result, theirs.attribute(x, target=1))


def test_dict_input_model_passes_integer_mask_through(dict_input):
    """Dict inputs are keyword arguments; the integer mask is not attributed nor returned."""
    image, table = randn(3, 5), randn(3, 2, seed=2)
    mask = torch.tensor([1, 0, 1])
    inputs = {"image": image, "table": table, "mask": mask}
    ours = tdlens.IntegratedGradients(dict_input).attribute(inputs, target=2)
    assert set(ours) == {"image", "table"}

    def positional(image, table, mask):
        return dict_input(image=image, table=table, mask=mask)

    theirs = captum.IntegratedGradients(positional).attribute(
        (image, table), target=2, additional_forward_args=(mask,)
    )
    close((ours["image"], ours["table"]), theirs)
    # Example 1 is masked out: nothing can matter.
    assert ours["image"][1].abs().max() == 0


def test_captum_style_additional_forward_args(dict_input):
    image, table, mask = randn(2, 5), randn(2, 2, seed=2), torch.tensor([1, 1])
    model = lambda image, table, mask: dict_input(image=image, table=table, mask=mask)  # noqa: E731
    ours = tdlens.Saliency(model).attribute((image, table), 0, additional_forward_args=(mask,))
    theirs = captum.Saliency(model).attribute((image, table), 0, additional_forward_args=(mask,))
    close(ours, theirs)


@pytest.mark.parametrize("name", ["Saliency", "InputXGradient", "IntegratedGradients"])
def test_tuple_outputs_by_index(tuple_output, name):
    """output=0 explains the policy head, output=1 the [B] value head (target=None)."""
    x = randn(3, 5)
    ours, _ = tdlens_and_captum(name, tuple_output)
    for index, target in ((0, 3), (1, None)):
        theirs = tdlens_and_captum(name, lambda x, i=index: tuple_output(x)[i])[1]
        close(ours.attribute(x, target=target, output=index), theirs.attribute(x, target=target))


def test_multi_head_targets_mix_outputs(tuple_output):
    """One call explains an action logit and the state value together."""
    x = randn(3, 5)
    ig = tdlens.IntegratedGradients(tuple_output)
    both = ig.attribute(x, targets=[tdlens.Target(2, output=0), tdlens.Target(output=1)])
    close(both[:, 0], ig.attribute(x, target=2, output=0))
    close(both[:, 1], ig.attribute(x, output=1))


def two_network_pipeline():
    torch.manual_seed(0)
    encoder = TensorDictModule(nn.Sequential(nn.Linear(4, 6), nn.Tanh()), ["obs"], ["hidden"])
    head = TensorDictModule(nn.Linear(6 + 2, 3), ["hidden_and_goal"], ["logits"])
    concat = TensorDictModule(
        lambda h, g: torch.cat([h, g], -1), ["hidden", "goal"], ["hidden_and_goal"]
    )
    return seeded(TensorDictSequential(encoder, concat, head))


@pytest.mark.parametrize("name", ["Saliency", "InputXGradient", "IntegratedGradients"])
def test_tensordict_sequential_of_two_networks(name):
    """A TensorDict in gives a TensorDict out, keyed like the attributed inputs."""
    pipeline = two_network_pipeline()
    obs, goal = randn(3, 4), randn(3, 2, seed=2)
    td = TensorDict(obs=obs, goal=goal, batch_size=[3])
    ours, _ = tdlens_and_captum(name, pipeline)
    result = ours.attribute(td, targets=[0, 2])
    assert isinstance(result, TensorDict) and result.batch_size == torch.Size([3, 2])
    assert set(result.keys()) == {"obs", "goal"}

    def positional(obs, goal):
        return pipeline(TensorDict(obs=obs, goal=goal, batch_size=[obs.shape[0]]))["logits"]

    theirs = tdlens_and_captum(name, positional)[1]
    for k, target in enumerate((0, 2)):
        close(
            (result["obs"][:, k], result["goal"][:, k]),
            theirs.attribute((obs, goal), target=target),
        )
    assert "logits" not in td.keys()  # the user's TensorDict is not written to


@pytest.mark.parametrize("name", ["Saliency", "InputXGradient", "IntegratedGradients"])
@pytest.mark.parametrize("model_name", ["mlp", "cnn", "two_input"])
def test_targets_equal_stacked_single_calls(name, model_name, request):
    model = request.getfixturevalue(model_name)
    x = {"mlp": randn(3, 6), "cnn": randn(3, 1, 8, 8)}.get(model_name)
    if x is None:
        x = (randn(3, 4), randn(3, 3, seed=2))
    method = tdlens_and_captum(name, model)[0]
    targets = [0, [2, 1, 0], torch.tensor([1, 1, 2]), None]
    many = method.attribute(x, targets=targets)
    for k, target in enumerate(targets):
        one = method.attribute(x, target=target)
        if isinstance(many, tuple):
            close(tuple(m[:, k] for m in many), one)
        else:
            close(many[:, k], one)


@pytest.mark.parametrize("chunk", [1, 5, 7, 64])
def test_ig_chunking_does_not_change_results(cnn, chunk):
    x = randn(4, 1, 8, 8)
    ig = tdlens.IntegratedGradients(cnn)
    full, delta = ig.attribute(x, targets=[0, 3], n_steps=8, return_convergence_delta=True)
    chunked, chunked_delta = ig.attribute(
        x, targets=[0, 3], n_steps=8, internal_batch_size=chunk, return_convergence_delta=True
    )
    close(chunked, full)
    close(chunked_delta, delta)
    assert delta.shape == (4, 2)


def test_ig_delta_shrinks_with_more_steps(two_input):
    """On a smooth model the completeness gap falls as n_steps grows (Riemann: ~1/n)."""
    x = (randn(4, 4) * 2, randn(4, 3, seed=2) * 2)
    ig = tdlens.IntegratedGradients(two_input)
    gaps = []
    for n in (2, 8, 32, 128):
        _, delta = ig.attribute(
            x, target=0, n_steps=n, method="riemann_left", return_convergence_delta=True
        )
        gaps.append(delta.abs().max().item())
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < gaps[0] / 20
    _, gl = ig.attribute(x, target=0, n_steps=32, return_convergence_delta=True)
    assert gl.abs().max() < 1e-8  # Gauss-Legendre converges much faster


def test_saliency_abs_and_constructor_defaults(mlp):
    x = randn(3, 6)
    signed = tdlens.Saliency(mlp, abs=False).attribute(x, target=1)
    close(signed, captum.Saliency(mlp).attribute(x, target=1, abs=False))
    # the call's value wins over the constructor's
    close(tdlens.Saliency(mlp, abs=False).attribute(x, target=1, abs=True), signed.abs())


def test_predicted_class_is_the_default_target(mlp):
    x = randn(5, 6)
    predicted = mlp(x).argmax(1)
    for method in (tdlens.Saliency(mlp), tdlens.IntegratedGradients(mlp)):
        close(method.attribute(x), method.attribute(x, target=predicted))


class TestLayerAndNeuron:
    """layer= equals captum's Layer* methods, output=<path> its Neuron* methods."""

    def test_layer_integrated_gradients(self, cnn):
        x = randn(3, 1, 8, 8)
        for path, module in (("conv2", cnn.conv2), ("relu1", cnn.relu1)):
            ours, delta = tdlens.IntegratedGradients(cnn).attribute(
                x, target=1, layer=path, n_steps=16, return_convergence_delta=True
            )
            theirs, their_delta = captum.LayerIntegratedGradients(cnn, module).attribute(
                x, target=1, n_steps=16, return_convergence_delta=True
            )
            close(ours, theirs)
            close(delta, their_delta)

    def test_layer_input_and_multi_target(self, mlp):
        x = randn(3, 6)
        ours = tdlens.IntegratedGradients(mlp, layer="net.2:input").attribute(x, targets=[0, 3])
        lig = captum.LayerIntegratedGradients(mlp, mlp.net[2])
        for k, t in enumerate((0, 3)):
            close(ours[:, k], lig.attribute(x, target=t, attribute_to_layer_input=True))

    def test_layer_gradient_x_activation(self, cnn):
        x = randn(3, 1, 8, 8)
        ours = tdlens.InputXGradient(cnn).attribute(x, target=4, layer="conv1")
        close(ours, captum.LayerGradientXActivation(cnn, cnn.conv1).attribute(x, target=4))
        grad_only = tdlens.InputXGradient(cnn, multiply_by_inputs=False)
        close(
            grad_only.attribute(x, target=4, layer="conv1"),
            captum.LayerGradientXActivation(cnn, cnn.conv1, multiply_by_inputs=False).attribute(
                x, target=4
            ),
        )

    def test_neuron_integrated_gradients(self, cnn):
        x = randn(3, 1, 8, 8)
        for neuron in ((1, 2, 3), (0, 0, 0)):
            ours = tdlens.IntegratedGradients(cnn).attribute(
                x, target=neuron, output="conv2", n_steps=16
            )
            theirs = captum.NeuronIntegratedGradients(cnn, cnn.conv2).attribute(
                x, neuron, n_steps=16
            )
            close(ours, theirs)

    def test_neuron_gradient_several_neurons_at_once(self, mlp):
        x = randn(3, 6)
        ours = tdlens.Saliency(mlp, abs=False).attribute(x, targets=[0, 5, 7], output="net.1")
        ng = captum.NeuronGradient(mlp, mlp.net[1])
        for k, neuron in enumerate((0, 5, 7)):
            close(ours[:, k], ng.attribute(x, neuron))

    def test_layer_with_glob_gives_a_dict(self, mlp):
        x = randn(2, 6)
        result = tdlens.Saliency(mlp, abs=False).attribute(x, target=0, layer="net.*")
        assert list(result) == [f"net.{i}" for i in range(5)]
        close(
            result["net.2"],
            captum.LayerGradientXActivation(mlp, mlp.net[2], multiply_by_inputs=False).attribute(
                x, target=0
            ),
        )
