"""NeuronConductance: captum's NeuronConductance, K targets sharing each chunk's forward pass
and the neuron's gradient at the inputs."""

from __future__ import annotations

import pytest
import torch
from captum import attr as captum

import tdlens
from tdlens.core.errors import InputError, KeyNotFoundError, TargetError
from tests.attribution.gradient_models import as_tuple, close, make_model
from tests.conftest import assert_untouched, model_state, randn

pytestmark = pytest.mark.filterwarnings("ignore:The neuron_selector provided is a callable")

# model -> (layer, neuron, attribute_to_neuron_input); two_input's `head:input` is the tanh
# both inputs feed (captum raises for a neuron that an input does not reach, see below)
NEURONS = {
    "mlp": ("net.2", 3, False),
    "cnn": ("conv2", (2, 1, 2), False),
    "two_input": ("head", 4, True),
}
# captum's Riemann alphas and step sizes are float32, 1e-7 from exact; its trapezoid weights
# sum to (n - 1) / n (tdlens's trapezoid is the true rule, tested on IG)
RULES = ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"]
TARGET = [0, 2, 1]


def baselines_for(x):
    values = tuple(torch.full_like(t[:1], 0.1) for t in as_tuple(x))
    return values if isinstance(x, tuple) else values[0]


def both(model_name, multiply_by_inputs=True):
    """tdlens's and captum's NeuronConductance on a model, and its inputs and neuron."""
    model, x = make_model(model_name)
    path, neuron, to_input = NEURONS[model_name]
    ours = tdlens.NeuronConductance(model, path, multiply_by_inputs=multiply_by_inputs)
    theirs = captum.NeuronConductance(
        model, model.get_submodule(path), multiply_by_inputs=multiply_by_inputs
    )
    return ours, theirs, x, neuron, dict(attribute_to_neuron_input=to_input)


@pytest.mark.parametrize("model_name", list(NEURONS))
def test_matches_captum_with_baselines_and_per_example_targets(model_name):
    ours, theirs, x, neuron, kwargs = both(model_name)
    base = baselines_for(x)
    expected = theirs.attribute(
        x, neuron, base, target=TARGET, n_steps=6, method="riemann_middle", **kwargs
    )
    assert any(t.abs().max() > 1e-2 for t in as_tuple(expected))  # the neuron is alive
    result = ours.attribute(
        x, neuron, base, target=TARGET, n_steps=6, method="riemann_middle", **kwargs
    )
    close(result, expected)


@pytest.mark.parametrize("method", RULES)
def test_every_rule_matches_captum(method):
    ours, theirs, x, neuron, _ = both("cnn")
    close(
        ours.attribute(x, neuron, target=3, n_steps=5, method=method),
        theirs.attribute(x, neuron, target=3, n_steps=5, method=method),
    )


@pytest.mark.parametrize("model_name", list(NEURONS))
def test_without_multiplication_matches_captum(model_name):
    """multiply_by_inputs=False: the integrated gradient through the neuron."""
    ours, theirs, x, neuron, kwargs = both(model_name, multiply_by_inputs=False)
    base = baselines_for(x)
    close(
        ours.attribute(x, neuron, base, 1, n_steps=5, method="gausslegendre", **kwargs),
        theirs.attribute(x, neuron, base, 1, n_steps=5, method="gausslegendre", **kwargs),
    )


def test_neuron_input_matches_captum():
    """attribute_to_neuron_input=True: the neuron is an entry of the layer's input."""
    model, x = make_model("cnn")
    ours = tdlens.NeuronConductance(model, "relu2").attribute(
        x, (2, 1, 2), target=TARGET, n_steps=5, method="riemann_right",
        attribute_to_neuron_input=True,
    )  # fmt: skip
    theirs = captum.NeuronConductance(model, model.relu2).attribute(
        x, (2, 1, 2), target=TARGET, n_steps=5, method="riemann_right",
        attribute_to_neuron_input=True,
    )  # fmt: skip
    close(ours, theirs)
    # the input of relu2 is the output of conv2
    close(
        ours,
        tdlens.NeuronConductance(model, "conv2").attribute(
            x, (2, 1, 2), target=TARGET, n_steps=5, method="riemann_right"
        ),
    )


def test_callable_selector_matches_captum_and_the_index():
    model, x = make_model("cnn")
    select = lambda activation: activation[:, 2, 1, 2]  # noqa: E731
    ours = tdlens.NeuronConductance(model, "conv2").attribute(
        x, select, target=TARGET, n_steps=5, method="riemann_left"
    )
    theirs = captum.NeuronConductance(model, model.conv2).attribute(
        x, select, target=TARGET, n_steps=5, method="riemann_left"
    )
    close(ours, theirs)
    close(
        ours,
        tdlens.NeuronConductance(model, "conv2").attribute(
            x, (2, 1, 2), target=TARGET, n_steps=5, method="riemann_left"
        ),
    )


def test_an_input_that_does_not_reach_the_neuron_gets_zeros():
    """Layer `a` sees only the first input: the second one's conductance is 0 (captum raises,
    "appears to not have been used in the graph"). With the second input held fixed as an
    additional forward argument, the first one's is captum's."""
    model, (x, y) = make_model("two_input")
    ours = tdlens.NeuronConductance(model, "a").attribute(
        (x, y), 4, target=TARGET, n_steps=5, method="riemann_middle"
    )
    assert torch.equal(ours[1], torch.zeros_like(y)) and ours[0].abs().max() > 1e-2
    kwargs = dict(target=TARGET, n_steps=5, method="riemann_middle", additional_forward_args=y)
    close(
        tdlens.NeuronConductance(model, "a").attribute(x, 4, **kwargs),
        captum.NeuronConductance(model, model.a).attribute(x, 4, **kwargs),
    )


def test_dict_inputs_with_an_integer_input_passed_through(dict_input):
    """Dict inputs come back as a dict of the attributed (floating-point) entries."""
    image, table = randn(3, 5), randn(3, 2, seed=2)
    mask = torch.tensor([1, 0, 1])
    ours = tdlens.NeuronConductance(dict_input, "head:input").attribute(
        {"image": image, "table": table, "mask": mask}, 1, target=TARGET, n_steps=4,
        method="riemann_middle",
    )  # fmt: skip
    assert set(ours) == {"image", "table"}
    theirs = captum.NeuronConductance(dict_input, dict_input.head).attribute(
        (image, table), 1, target=TARGET, n_steps=4, method="riemann_middle",
        additional_forward_args=(mask,), attribute_to_neuron_input=True,
    )  # fmt: skip
    close((ours["image"], ours["table"]), theirs)


@pytest.mark.parametrize("model_name", ["cnn", "two_input"])
def test_targets_equal_stacked_single_calls(model_name):
    """K targets (one per example among them) give what K single-target calls give."""
    ours, _, x, neuron, kwargs = both(model_name)
    targets = [0, [2, 0, 1], 2]
    multi = ours.attribute(x, neuron, targets=targets, n_steps=4, **kwargs)
    for k, target in enumerate(targets):
        single = ours.attribute(x, neuron, target=target, n_steps=4, **kwargs)
        close(tuple(m[:, k] for m in as_tuple(multi)), as_tuple(single))


def test_target_none_is_the_predicted_class():
    model, x = make_model("cnn")
    method = tdlens.NeuronConductance(model, "conv2", n_steps=4)
    predicted = model(x).argmax(1).tolist()
    assert len(set(predicted)) > 1
    close(method.attribute(x, (2, 1, 2)), method.attribute(x, (2, 1, 2), target=predicted))


@pytest.mark.parametrize("internal_batch_size", [1, 2, 4, 7])
def test_chunking_does_not_change_results(internal_batch_size):
    """Chunks of any size, smaller than the batch (3) included, give the unchunked result."""
    model, x = make_model("cnn")
    method = tdlens.NeuronConductance(model, "conv2", n_steps=4)
    close(
        method.attribute(x, (2, 1, 2), targets=[1, 3], internal_batch_size=internal_batch_size),
        method.attribute(x, (2, 1, 2), targets=[1, 3]),
    )


def test_one_forward_pass_per_chunk_whatever_the_targets():
    """The K targets share each chunk's forward pass (and the neuron's input gradient)."""
    model, x = make_model("cnn")
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        tdlens.NeuronConductance(model, "conv2").attribute(
            x, (2, 1, 2), targets=[0, 1, 2, 3], n_steps=4, internal_batch_size=6
        )
    finally:
        handle.remove()
    assert len(calls) == 2  # 12 rows in chunks of 6


def test_sums_to_the_layer_conductance_of_the_neuron():
    """Summed over the input features, the conductance through a neuron is the layer
    conductance of that neuron (both follow the same path; they differ by the O(1 / n)
    error of the layer conductance's sum of differences)."""
    model, x = make_model("two_input")
    errors = []
    for n in (50, 400):
        through = tdlens.NeuronConductance(model, "a").attribute(x, 4, target=1, n_steps=n)
        summed = sum(t.sum(1) for t in through)
        layer = tdlens.Conductance(model, "a").attribute(x, target=1, n_steps=n)[:, 4]
        assert layer.abs().max() > 1e-2
        errors.append((summed - layer).abs().max() / layer.abs().max())
    assert errors[1] < 5e-3 and errors[1] < errors[0] / 4, errors


def test_float32_and_no_grad():
    """A float32 model and inputs, called under torch.no_grad(), give the float64 result to
    float32 precision."""
    model, x = make_model("cnn")
    double = tdlens.NeuronConductance(model, "conv2").attribute(x, (2, 1, 2), target=1, n_steps=5)
    with torch.no_grad():
        single = tdlens.NeuronConductance(model.float(), "conv2").attribute(
            x.float(), (2, 1, 2), target=1, n_steps=5
        )
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), double, rtol=1e-4, atol=1e-5)


def test_errors_before_any_forward_pass():
    model, x = make_model("cnn")
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(InputError, match=r"NeuronConductance\(model, '<module path>'\)"):
            tdlens.NeuronConductance(model).attribute(x, (2, 1, 2), target=0)
        for bad in ["2", (2, "1", 2), (), (2, 1.0, 2), slice(0, 2), True, None]:
            with pytest.raises(InputError, match="does not pick a neuron"):
                tdlens.NeuronConductance(model, "conv2").attribute(x, bad, target=0)
        with pytest.raises(InputError, match="names 2: 'conv1', 'conv2'; name one"):
            tdlens.NeuronConductance(model, "conv*").attribute(x, (2, 1, 2), target=0)
        with pytest.raises(KeyNotFoundError, match="did you mean"):
            tdlens.NeuronConductance(model, "conv3").attribute(x, (2, 1, 2), target=0)
        with pytest.raises(TargetError):
            tdlens.NeuronConductance(model, "conv2").attribute(x, (2, 1, 2), target=[0, 1])
    finally:
        handle.remove()
    assert not calls


def test_neuron_checked_against_the_activation():
    """The layer's shape is known after the first forward pass: the neuron is checked then,
    and the message shows the activation's shape."""
    model, x = make_model("cnn")
    method = tdlens.NeuronConductance(model, "conv2", n_steps=2)
    with pytest.raises(InputError, match=r"has 2 index\(es\) .* shape \[B, 4, 4, 4\]"):
        method.attribute(x, (2, 1), target=0)
    with pytest.raises(InputError, match=r"has 1 index\(es\) .* e\.g\. neuron_selector=\(0, 0"):
        method.attribute(x, 2, target=0)
    with pytest.raises(InputError, match=r"\[B, 4, 4, 4\]: valid indices along dimension 3"):
        method.attribute(x, (2, 1, 4), target=0)
    with pytest.raises(
        InputError, match=r"rows of shape \[6, 4, 4, 4\] it returned \[6, 4\], not \[6\]"
    ):
        method.attribute(x, lambda activation: activation[:, 2, 1], target=0)
    close(method.attribute(x, (-2, 1, -2), target=0), method.attribute(x, (2, 1, 2), target=0))


def test_model_untouched_after_a_call_and_after_errors():
    model, x = make_model("mlp")
    model.net[2].bias.requires_grad_(False)
    before = model_state(model)
    tdlens.NeuronConductance(model, "net.2").attribute(x, 3, targets=[0, 1], n_steps=3)
    assert_untouched(model, before)
    with pytest.raises(TargetError):  # raised after a forward pass, with hooks in place
        tdlens.NeuronConductance(model, "net.2").attribute(x, 3, target=7, n_steps=3)
    assert_untouched(model, before)
    with pytest.raises(InputError, match="out of range"):  # raised inside a hook
        tdlens.NeuronConductance(model, "net.2").attribute(x, 8, target=0, n_steps=3)
    assert_untouched(model, before)
    reused, y = make_model("reused")
    before = model_state(reused)
    with pytest.raises(InputError, match="ran more than once"):
        tdlens.NeuronConductance(reused, "act").attribute(y, (0, 0, 0), target=0, n_steps=2)
    assert_untouched(reused, before)
