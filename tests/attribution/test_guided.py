"""GuidedBackprop and Deconvolution: captum 0.9 on module ReLUs, the module version of the same
network for functional, reused and in-place ReLUs (where captum keeps plain gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Deconvolution as CaptumDeconvolution
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from torch import nn

import tdlens
from tests.conftest import TwoInput, assert_untouched, model_state, randn, seeded

pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning")
TOL = dict(atol=1e-6, rtol=1e-6)
METHODS = [
    (tdlens.GuidedBackprop, CaptumGuidedBackprop),
    (tdlens.Deconvolution, CaptumDeconvolution),
]
IDS = ["guided", "deconvolution"]


def close(ours, theirs):
    if isinstance(ours, tuple):
        for a, b in zip(ours, theirs):
            close(a, b)
        return
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), **TOL)


class ReluNet(nn.Module):
    """Two hidden ReLUs written as ``style``: modules, functions, one module used twice, or in
    place. Parameter names do not depend on the style, so weights can be shared."""

    def __init__(self, style: str):
        super().__init__()
        self.style = style
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 6)
        self.head = nn.Linear(6, 4)
        if style == "modules":
            self.a1, self.a2 = nn.ReLU(), nn.ReLU()
        elif style == "reused":
            self.act = nn.ReLU()
        elif style == "inplace":
            self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        if self.style == "modules":
            acts = (self.a1, self.a2)
        elif self.style in ("reused", "inplace"):
            acts = (self.act, self.act)
        else:
            acts = (F.relu, lambda h: h.relu())
        h = F.max_pool2d(acts[0](self.conv(x)), 2)
        return self.head(acts[1](self.fc(h.flatten(1))))


X = randn(3, 1, 8, 8)


@pytest.fixture
def relu_net():
    return seeded(ReluNet("modules"))


@pytest.mark.parametrize(("ours", "theirs"), METHODS, ids=IDS)
@pytest.mark.parametrize("model_name", ["mlp", "cnn", "relu_net"])
def test_matches_captum(ours, theirs, model_name, request):
    model = request.getfixturevalue(model_name)
    x = randn(4, 6) if model_name == "mlp" else X
    for target in (0, 2):
        close(ours(model).attribute(x, target), theirs(model).attribute(x, target))


@pytest.mark.parametrize(("ours", "theirs"), METHODS, ids=IDS)
def test_two_inputs_match_captum(ours, theirs):
    model = seeded(TwoInput())  # no ReLU: both are the plain gradient
    x = (randn(3, 4), randn(3, 3, seed=2))
    close(ours(model).attribute(x, 1), theirs(model).attribute(x, 1))


@pytest.mark.parametrize(("ours", "theirs"), METHODS, ids=IDS)
@pytest.mark.parametrize("style", ["functional", "reused", "inplace"])
def test_relu_styles_equal_module_version(ours, theirs, style, relu_net):
    """Functional, reused and in-place ReLUs: the module version's result (captum's there)."""
    model = ReluNet(style)
    model.load_state_dict(relu_net.state_dict())
    model.double().eval()
    result = ours(model).attribute(X, targets=[0, 3])
    reference = torch.stack([theirs(relu_net).attribute(X, t) for t in (0, 3)], 1)
    close(result, reference)
    if style == "functional":  # captum does not see F.relu: it returns the plain gradient
        assert not torch.allclose(theirs(model).attribute(X, 0), reference[:, 0], **TOL)


@pytest.mark.parametrize(("ours", "theirs"), METHODS, ids=IDS)
def test_targets_chunks_layer_and_neuron(ours, theirs, relu_net):
    method = ours(relu_net)
    attrs = method.attribute(X, targets=[0, 1, 3])
    assert attrs.shape == (3, 3, 1, 8, 8)
    for k, t in enumerate([0, 1, 3]):
        close(attrs[:, k], theirs(relu_net).attribute(X, t))
    close(method.attribute(X, targets=[0, 1, 3], internal_batch_size=2), attrs)
    at_fc = method.attribute(X, target=1, layer="fc")
    assert at_fc.shape == (3, 6)
    expected = relu_net.head.weight[1].clamp(min=0).expand(3, 6)
    if ours is tdlens.GuidedBackprop:  # the ReLU after fc passes only where fc's output > 0
        fc_out = relu_net.fc(F.max_pool2d(relu_net.conv(X).relu(), 2).flatten(1))
        expected = expected * (fc_out > 0)
    torch.testing.assert_close(at_fc, expected.detach())
    neuron = method.attribute(X, target=(2, 3, 3), output="conv")
    assert neuron.shape == X.shape and neuron[:, :, :2].abs().sum() == 0  # outside the field


@pytest.mark.parametrize(("ours", "theirs"), METHODS, ids=IDS)
def test_model_untouched(ours, theirs, relu_net):
    """No hook, same parameters and flags, no mode left; the next backward is ordinary."""
    x = X.clone().requires_grad_()
    gradient = torch.autograd.grad(relu_net(x)[:, 0].sum(), x)[0]
    before = model_state(relu_net)
    ours(relu_net).attribute(X, targets=[0, 1], layer="conv")
    assert_untouched(relu_net, before)

    class Failing(nn.Module):
        def forward(self, x):
            relu_net(x)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ours(Failing()).attribute(X, target=0)
    assert_untouched(relu_net, before)
    assert not torch.overrides._get_current_function_mode_stack()
    x = X.clone().requires_grad_()
    close(torch.autograd.grad(relu_net(x)[:, 0].sum(), x)[0], gradient)
