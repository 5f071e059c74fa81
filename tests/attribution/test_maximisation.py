"""ActivationMaximisation: equals a plain torch optimisation loop; K targets; model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdlens
from tdlens.core.errors import InputError, TargetError
from tests.attribution.gradient_models import MODELS, as_tuple, close, make_model
from tests.conftest import DictInput, assert_untouched, model_state, seeded


def reference(model, start, objective, n_steps, lr, l2=0.0, tv=0.0, bounds=None):
    """Plain torch: Adam on copies of the start (a tensor or a tuple of them), maximising
    objective(model(*values)) - penalties."""
    values = [v.clone().requires_grad_() for v in as_tuple(start)]
    optimizer = torch.optim.Adam(values, lr=lr)
    for _ in range(n_steps):
        loss = -objective(model(*values)).sum()
        for value in values:
            loss = loss + l2 * (value**2).sum()
            for dim in range(2, value.dim()):
                loss = loss + tv * value.diff(dim=dim).abs().sum()
        grads = torch.autograd.grad(loss, values)
        for value, grad in zip(values, grads):
            value.grad = grad
        optimizer.step()
        if bounds is not None:
            with torch.no_grad():
                for value in values:
                    value.clamp_(*bounds)
    result = tuple(v.detach() for v in values)
    return result if isinstance(start, tuple) else result[0]


@pytest.mark.parametrize("model_name", MODELS)
def test_matches_a_plain_adam_loop_on_a_class(model_name):
    """Equals Adam on the inputs in plain torch, per-example class targets."""
    model, x = make_model(model_name)
    ours = tdlens.ActivationMaximisation(model).attribute(x, target=[0, 2, 1], n_steps=8, lr=0.1)
    close(ours, reference(model, x, lambda out: out[[0, 1, 2], [0, 2, 1]], 8, 0.1))


def test_matches_a_plain_loop_with_penalties_and_bounds():
    """L2 and total variation penalties and clamping as in plain torch."""
    model, x = make_model("cnn")
    ours = tdlens.ActivationMaximisation(model).attribute(
        x, target=2, n_steps=10, lr=0.05, l2=0.01, tv=0.02, bounds=(-0.5, 0.5)
    )
    close(
        ours,
        reference(
            model, x.clamp(-0.5, 0.5), lambda out: out[:, 2], 10, 0.05, 0.01, 0.02, (-0.5, 0.5)
        ),
    )


def test_neuron_of_a_module_path():
    """output=<module path> with a neuron index: the neuron's activation goes up; the forward
    pass stops at the module."""
    model, x = make_model("cnn")
    method = tdlens.ActivationMaximisation(model, output="conv2")
    ours, value = method.attribute(x, target=(1, 2, 2), n_steps=8, return_objective=True)

    def upto_conv2(v):
        return model.conv2(model.pool(model.relu1(model.conv1(v))))

    close(ours, reference(upto_conv2, x, lambda out: out[:, 1, 2, 2], 8, 0.05))
    with torch.no_grad():
        assert (value > upto_conv2(x)[:, 1, 2, 2]).all()
        close(value, upto_conv2(ours)[:, 1, 2, 2])


def test_targets_equal_stacked_single_calls():
    """K targets run as K * B rows of one batch; each row is optimised alone (Adam is per
    element), from the same seeded starting noise."""
    model, x = make_model("two_input")
    method = tdlens.ActivationMaximisation(model, n_steps=8, lr=0.1, init_noise=0.3, seed=1)
    targets = [0, [2, 1, 0], 1]
    multi, values = method.attribute(x, targets=targets, return_objective=True)
    assert values.shape == (3, 3)
    for k, target in enumerate(targets):
        single, value = method.attribute(x, target=target, return_objective=True)
        close(tuple(m[:, k] for m in multi), single)
        close(values[:, k], value)


def test_seed_makes_it_deterministic():
    """The same seed gives the same result, another seed another one."""
    model, x = make_model("cnn")
    method = tdlens.ActivationMaximisation(model, n_steps=5, init_noise=0.5)
    first = method.attribute(x, target=1, seed=3)
    assert torch.equal(first, method.attribute(x, target=1, seed=3))
    assert not torch.equal(first, method.attribute(x, target=1, seed=4))


def test_layer_activation_is_optimised():
    """layer= optimises the layer's activation instead of the inputs, from its value at x."""
    model, x = make_model("cnn")
    method = tdlens.ActivationMaximisation(model)
    start = model.conv2(model.pool(model.relu1(model.conv1(x)))).detach()
    ours = method.attribute(x, target=4, layer="conv2", n_steps=6, lr=0.1)

    def head(activation):
        return model.head(model.relu2(activation).flatten(1))

    close(ours, reference(head, start, lambda out: out[:, 4], 6, 0.1))


def test_dict_inputs_pass_integers_through():
    """Only the named float input is optimised; the integer mask passes through."""
    model = seeded(DictInput())
    inputs = {
        "image": torch.zeros(2, 5, dtype=torch.float64),
        "table": torch.zeros(2, 2, dtype=torch.float64),
        "mask": torch.tensor([1, 1]),
    }
    result = tdlens.ActivationMaximisation(model).attribute(
        inputs, targets=[0, 1], n_steps=3, keys=["image"]
    )
    assert set(result) == {"image"} and result["image"].shape == (2, 2, 5)


class Argmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        return self.lin(x).argmax(1)


def test_target_without_gradient_is_an_error():
    """A target that the optimised values do not reach differentiably is refused."""
    with pytest.raises(TargetError, match=r"has no gradient.*argmax"):
        tdlens.ActivationMaximisation(Argmax().double()).attribute(torch.zeros(2, 3).double())
    model, x = make_model("cnn")
    with pytest.raises(TargetError, match=r"output 'conv1'.*layer activation"):
        tdlens.ActivationMaximisation(model).attribute(
            x, output="conv1", target=(0, 1, 1), layer="conv2"
        )
    with pytest.raises(TargetError, match=r"target <function.*of the model's output has no"):
        tdlens.ActivationMaximisation(model).attribute(x, targets=[1, lambda o: o[:, 0].detach()])


def test_option_errors():
    """Total variation without spatial dims, unknown optimizers and bad bounds."""
    model, x = make_model("mlp")
    method = tdlens.ActivationMaximisation(model)
    with pytest.raises(InputError, match="total variation runs over spatial dimensions"):
        method.attribute(x, target=0, tv=0.1, n_steps=1)
    with pytest.raises(InputError, match="optimizer='lbfgs'"):
        method.attribute(x, target=0, optimizer="lbfgs")
    with pytest.raises(InputError, match=r"bounds must be \(low, high\)"):
        method.attribute(x, target=0, bounds=1.0)


@pytest.mark.parametrize(
    "kwargs", [{}, {"layer": "conv2"}, {"output": "conv2", "target": (0, 1, 1)}]
)
def test_model_untouched(kwargs):
    """A train-mode model with frozen weights keeps hooks, weights, grads and flags."""
    model, x = make_model("cnn")
    model.conv1.weight.requires_grad_(False)
    model.train()
    before = model_state(model)
    kwargs = kwargs if "target" in kwargs else {"targets": [0, 1], **kwargs}
    tdlens.ActivationMaximisation(model).attribute(x, n_steps=3, **kwargs)
    assert_untouched(model, before)
    with pytest.raises(TargetError):
        tdlens.ActivationMaximisation(model).attribute(x, target=lambda o: o.sum(1).detach())
    assert_untouched(model, before)
