"""LRP: captum 0.9 as the oracle where it is right; each rule against a dense plain-tensor
re-implementation; composites and conservation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LRP as CaptumLRP
from captum.attr._utils.lrp_rules import (
    Alpha1_Beta0_Rule,
    EpsilonRule,
    GammaRule,
    IdentityRule,
)
from captum.testing.helpers.basic_models import SimpleLRPModel
from torch import nn

import tdlens
from tdlens import lrp
from tdlens.core.errors import InputError, KeyNotFoundError
from tests.conftest import CNN, MLP, randn
from tests.conftest import seeded as _seeded

TOL = dict(atol=1e-6, rtol=1e-6)


def seeded(model, seed=0):
    return _seeded(model, seed)


class CaptumCNN(nn.Module):
    """Everything captum's LRP has a rule for: convolution, batch norm, ReLU, max and average
    pooling, adaptive average pooling, dropout, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(2)
        self.adapt = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = self.pool1(self.relu1(self.bn(self.conv1(x))))
        x = self.adapt(self.pool2(self.relu2(self.conv2(x))))
        return self.fc(self.drop(x.reshape(x.shape[0], -1)))


def bn_ready(model):
    """Batch norms with non-trivial running statistics."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64))
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
    return model


# -- captum's defaults -----------------------------------------------------------------------
@pytest.mark.parametrize("inplace", [False, True])
def test_simple_lrp_model_matches_captum_example(inplace):
    """captum's own SimpleLRPModel example: [18, 36, 54]."""
    model = SimpleLRPModel(inplace).double().eval()
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    attr = tdlens.LRP(model).attribute(x, target=0)
    torch.testing.assert_close(attr, torch.tensor([[18.0, 36.0, 54.0]], dtype=torch.float64))


@pytest.mark.parametrize("make", [lambda: seeded(CNN()), lambda: bn_ready(seeded(CaptumCNN()))])
def test_default_lrp_equals_captum_on_cnns(make):
    model = make()
    x = randn(3, *((1, 8, 8) if isinstance(model, CNN) else (2, 8, 8)))
    for target in (0, 3):
        ours = tdlens.LRP(model).attribute(x, target=target)
        theirs = CaptumLRP(model).attribute(x, target=target)
        torch.testing.assert_close(ours, theirs.detach(), **TOL)
    both = tdlens.LRP(model).attribute(x, targets=[0, 3])
    torch.testing.assert_close(both[:, 1], theirs.detach(), **TOL)


def test_default_lrp_equals_captum_on_mlp_with_delta():
    model = seeded(MLP())
    x = randn(4, 6)
    ours, delta = tdlens.LRP(model).attribute(x, target=2, return_convergence_delta=True)
    theirs, their_delta = CaptumLRP(model).attribute(x, target=2, return_convergence_delta=True)
    torch.testing.assert_close(ours, theirs.detach(), **TOL)
    torch.testing.assert_close(delta, -their_delta.detach(), **TOL)  # the library's sign


def test_captum_rule_attributes_are_honoured():
    model = seeded(CNN())
    x = randn(2, 1, 8, 8).abs()

    def set_rules():
        model.conv1.rule = GammaRule(0.5)
        model.conv2.rule = Alpha1_Beta0_Rule()
        model.head.rule = EpsilonRule(0.1)
        model.relu2.rule = IdentityRule()

    set_rules()
    ours = tdlens.LRP(model).attribute(x, target=1)
    theirs = CaptumLRP(model).attribute(x, target=1)  # removes the rule attributes
    torch.testing.assert_close(ours, theirs.detach(), **TOL)
    plain = tdlens.LRP(model).attribute(x, target=1)
    assert not torch.allclose(plain, ours)


def test_epsilon_to_zero_is_gradient_times_input_without_biases():
    model = seeded(MLP((6, 10, 10, 4)))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.bias = None
    x = randn(5, 6)
    ours = tdlens.LRP(model, composite=lrp.EpsilonComposite(1e-12)).attribute(x, targets=[0, 2])
    gxi = tdlens.InputXGradient(model).attribute(x, targets=[0, 2])
    torch.testing.assert_close(ours, gxi, atol=1e-9, rtol=1e-7)


# -- each rule against a dense re-implementation ---------------------------------------------
def dense(layer, shape):
    """The layer as a matrix ``[n_out, n_in]`` and bias ``[n_out]`` (from basis inputs)."""
    n = int(torch.tensor(shape).prod())
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    if isinstance(layer, nn.Linear):
        cols = F.linear(basis, layer.weight)
        bias = layer.bias
    else:
        cols = F.conv2d(basis, layer.weight, None, layer.stride, layer.padding)
        bias = layer.bias[:, None, None].expand(cols.shape[1:])
    return cols.reshape(n, -1).t(), bias.reshape(-1)


def stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def reference(rule_name, w, b, x, r, eps=1e-3, low=-2.0, high=2.0):
    """Input relevance for output relevance ``r`` by the textbook formula of each rule."""
    pos, neg = w.clamp(min=0), w.clamp(max=0)
    if rule_name == "epsilon":
        return x * (w.t() @ (r / stab(w @ x + b, eps)))
    if rule_name == "gamma":
        wg, bg = w + 0.25 * pos, b + 0.25 * b.clamp(min=0)
        return x * (wg.t() @ (r / stab(wg @ x + bg, eps)))
    if rule_name in ("alphabeta", "zplus"):
        alpha, beta = (2.0, 1.0) if rule_name == "alphabeta" else (1.0, 0.0)
        c = w * x[None, :]  # contributions c_ij = w_ij x_j
        zp = c.clamp(min=0).sum(1) + b.clamp(min=0) + eps
        zn = c.clamp(max=0).sum(1) + b.clamp(max=0) - eps
        return (alpha * c.clamp(min=0) / zp[:, None] - beta * c.clamp(max=0) / zn[:, None]).t() @ r
    if rule_name == "flat":
        m = (w != 0).to(w)
        return m.t() @ (r / stab(m.sum(1), eps))
    if rule_name == "wsquare":
        return (w**2).t() @ (r / stab((w**2).sum(1), eps))
    if rule_name == "zbox":
        c = w * x[None, :] - low * pos - high * neg
        return c.t() @ (r / stab(c.sum(1), eps))
    if rule_name == "pass":
        return r
    raise AssertionError(rule_name)


RULES = {
    "epsilon": lrp.Epsilon(1e-3),
    "gamma": lrp.Gamma(0.25, epsilon=1e-3),
    "alphabeta": lrp.AlphaBeta(2, 1, epsilon=1e-3),
    "zplus": lrp.ZPlus(epsilon=1e-3),
    "flat": lrp.Flat(epsilon=1e-3),
    "wsquare": lrp.WSquare(epsilon=1e-3),
    "zbox": lrp.ZBox(-2.0, 2.0, epsilon=1e-3),
    "pass": lrp.Pass(),
}


@pytest.mark.parametrize("layer_kind", ["linear", "conv2d", "conv2d_same"])
@pytest.mark.parametrize("rule_name", list(RULES))
def test_rule_equals_plain_tensor_reference(rule_name, layer_kind):
    torch.manual_seed(0)
    if layer_kind == "linear":
        layer = nn.Linear(7, 7 if rule_name == "pass" else 5)
        shape = (7,)
    else:
        out = 2 if rule_name == "pass" else 3
        layer = nn.Conv2d(2, out, 3, padding=1 if layer_kind == "conv2d" else "same")
        shape = (2, 4, 4)
    layer = seeded(layer, 1)
    x = randn(2, *shape, seed=4)
    model = nn.Sequential(layer, nn.Flatten())
    attr = tdlens.LRP(model, composite=lrp.Composite({type(layer): RULES[rule_name]}))
    result = attr.attribute(x, targets=[0, 3])
    w, b = dense(layer, shape)
    for i in range(2):
        z = w @ x[i].reshape(-1) + b
        for k, t in enumerate((0, 3)):
            r = torch.zeros_like(z)
            r[t] = z[t]
            expected = reference(rule_name, w, b, x[i].reshape(-1), r)
            torch.testing.assert_close(result[i, k].reshape(-1), expected, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("rule_name", ["flat", "wsquare", "zbox"])
def test_input_rules_give_zero_inputs_their_relevance(rule_name):
    """Relevance that a rule gives an input entry equal to 0 is not lost."""
    layer = seeded(nn.Linear(6, 4), 2)
    x = randn(2, 6, seed=3)
    x[:, ::2] = 0
    attr = tdlens.LRP(layer, composite=lrp.Composite({nn.Linear: RULES[rule_name]}))
    result = attr.attribute(x, target=1)
    w, b = dense(layer, (6,))
    for i in range(2):
        z = w @ x[i] + b
        r = torch.zeros_like(z)
        r[1] = z[1]
        expected = reference(rule_name, w, b, x[i], r)
        assert expected[::2].abs().min() > 0
        torch.testing.assert_close(result[i], expected, atol=1e-9, rtol=1e-7)


def test_alpha_beta_must_conserve():
    with pytest.raises(InputError, match="alpha - beta = 1"):
        lrp.AlphaBeta(2, 2)


# -- composites ------------------------------------------------------------------------------
def test_composite_paths_win_over_types_and_match_globs():
    model = seeded(MLP((6, 8, 8, 4)))
    x = randn(3, 6)
    comp = lrp.Composite({nn.Linear: lrp.Epsilon(0.5), "net.0": lrp.ZPlus()})
    resolved = {path: rule for path, rule in comp.resolve(model).values()}
    assert isinstance(resolved["net.0"], lrp.ZPlus)
    assert isinstance(resolved["net.2"], lrp.Epsilon) and isinstance(resolved["net.4"], lrp.Epsilon)
    globbed = lrp.Composite({"net.*": lrp.Epsilon(0.5)}).resolve(model)
    assert {p for p, _ in globbed.values()} == {f"net.{i}" for i in range(5)}
    # a rule on a container applies to the layers inside it without one of their own
    whole = tdlens.LRP(model, composite=lrp.Composite({"net": lrp.Epsilon(0.5)}))
    each = tdlens.LRP(model, composite=lrp.Composite({nn.Linear: lrp.Epsilon(0.5)}))
    torch.testing.assert_close(whole.attribute(x, target=1), each.attribute(x, target=1))


def test_registered_composites():
    model = seeded(CNN())
    x = randn(2, 1, 8, 8)
    for name in ("epsilon", "epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1"):
        attr = tdlens.LRP(model, composite=name).attribute(x, target=1)
        assert attr.shape == x.shape and torch.isfinite(attr).all()
    box = lrp.EpsilonGammaBox(low=-3, high=3)
    manual = lrp.Composite(
        {"conv1": lrp.ZBox(-3, 3), nn.Conv2d: lrp.Gamma(0.25), nn.Linear: lrp.Epsilon(1e-6)}
    )
    torch.testing.assert_close(
        tdlens.LRP(model, composite=box).attribute(x, target=1),
        tdlens.LRP(model, composite=manual).attribute(x, target=1),
    )
    assert isinstance(lrp.get_composite("transformer"), lrp.Composite)
    with pytest.raises(InputError, match=r"registered: .*epsilon_plus"):
        tdlens.LRP(model, composite="epsilon_pluss")

    @lrp.register("my_composite")
    def mine():
        return lrp.Composite({nn.Conv2d: lrp.ZPlus()})

    assert isinstance(lrp.get_composite("my_composite").rules[nn.Conv2d], lrp.ZPlus)


def test_strict_composite_names_module_and_suggests_rule():
    model = seeded(CNN())
    x = randn(1, 1, 8, 8)
    strict = lrp.Composite({nn.Conv2d: lrp.ZPlus(), nn.ReLU: lrp.Pass()}, strict=True)
    with pytest.raises(InputError, match=r"'pool' \(MaxPool2d\) has no rule.*lrp.Epsilon"):
        tdlens.LRP(model, composite=strict).attribute(x, target=0)
    full = lrp.Composite(
        {
            nn.Conv2d: lrp.ZPlus(),
            nn.ReLU: lrp.Pass(),
            nn.MaxPool2d: lrp.Epsilon(),
            nn.Linear: lrp.Epsilon(),
        },
        strict=True,
    )
    tdlens.LRP(model, composite=full).attribute(x, target=0)


def test_rule_for_missing_path_is_an_error():
    model = seeded(CNN())
    with pytest.raises(KeyNotFoundError, match=r"'conv3'.*did you mean.*conv1"):
        tdlens.LRP(model, composite=lrp.Composite({"conv3": lrp.ZPlus()})).attribute(
            randn(1, 1, 8, 8), target=0
        )
    with pytest.raises(TypeError, match=r"not a tdlens.lrp rule"):
        lrp.Composite({nn.Linear: "epsilon"})


def test_pass_on_a_layer_that_changes_shape_is_an_error():
    model = seeded(MLP())
    with pytest.raises(InputError, match=r"Pass on module .net.0. .Linear. gives each input"):
        tdlens.LRP(model, composite=lrp.Composite({"net.0": lrp.Pass()})).attribute(
            randn(2, 6), target=0
        )


# -- conservation ----------------------------------------------------------------------------
def bias_free_relu_net():
    model = seeded(MLP((6, 10, 10, 4)), 2)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.bias = None
    return model


@pytest.mark.parametrize("rule", [lrp.ZPlus(epsilon=1e-9), lrp.Epsilon(1e-9)])
def test_conservation_bias_free(rule):
    model = bias_free_relu_net()
    x = randn(3, 6, seed=5).abs()
    report = lrp.conservation(model, x, target=1, composite=lrp.Composite({nn.Linear: rule}))
    torch.testing.assert_close(report.input, report.target, atol=1e-7, rtol=1e-6)
    assert list(report.layers) == ["net.0", "net.1", "net.2", "net.3", "net.4"]
    for path, total in report.layers.items():
        torch.testing.assert_close(total, report.target, atol=1e-7, rtol=1e-6, msg=path)
    assert "net.2" in str(report)


def test_conservation_shows_where_biases_absorb():
    model = seeded(MLP((6, 10, 10, 4)), 2)
    x = randn(3, 6, seed=5)
    report = lrp.conservation(
        model, x, target=1, composite=lrp.Composite({nn.Linear: lrp.Epsilon(1e-9)})
    )
    assert (report.gap().abs() > 1e-3).all()
    # the output layer holds the target's value; each linear layer's bias moves the sum
    torch.testing.assert_close(report.layers["net.4"], report.target)
