"""DeepLift and DeepLiftShap: captum 0.9 as the oracle where it is right; where it is not
(functional activations, a reused activation module, a ReLU feeding a max pool), DeepLift's
own summation-to-delta and the same network written with separate activation modules."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from captum.attr import DeepLift as CaptumDeepLift
from captum.attr import DeepLiftShap as CaptumDeepLiftShap
from captum.attr import LayerDeepLift, NeuronDeepLift
from torch import nn

import tdlens
from tests.conftest import CNN, assert_untouched, model_state, randn, seeded

TOL = dict(atol=1e-6, rtol=1e-6)


def close(ours, theirs):
    if isinstance(ours, tuple):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            close(a, b)
        return
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), **TOL)


def differs(ours, theirs):
    return not torch.allclose(ours, theirs.to(ours.dtype), **TOL)


# -- models ----------------------------------------------------------------------------------
class PoolNet(nn.Module):
    """Convolutions, module ReLUs and a 2d max pool that is not fed by another activation
    module (where captum's hooks are right)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 8)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.pool(self.conv2(self.relu1(self.conv1(x))))
        return self.head(self.relu2(self.fc(x.flatten(1))))


class Smooth(nn.Module):
    """Every rescale non-linearity as a module, optionally ending in a softmax."""

    def __init__(self, softmax: bool = True):
        super().__init__()
        acts = [nn.Sigmoid(), nn.Tanh(), nn.ELU(0.7), nn.LeakyReLU(0.2), nn.Softplus(1.5)]
        layers: list[nn.Module] = []
        for act in acts:
            layers += [nn.Linear(5 if not layers else 6, 6), act]
        layers.append(nn.Linear(6, 4))
        if softmax:
            layers.append(nn.Softmax(dim=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class TwoInputModules(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(3, 6)
        self.act = nn.Tanh()
        self.head = nn.Linear(6, 3)

    def forward(self, x, y):
        return self.head(self.act(self.a(x) + self.b(y)))


class Activations(nn.Module):
    """Linear layers between activations; ``style`` says how the activations are written:
    separate modules, functions and tensor methods, one module used three times, or in place.
    The parameters have the same names in every style, so weights can be shared."""

    def __init__(self, style: str):
        super().__init__()
        self.style = style
        self.l1, self.l2, self.l3, self.l4 = (
            nn.Linear(6, 8),
            nn.Linear(8, 8),
            nn.Linear(8, 8),
            nn.Linear(8, 4),
        )
        if style == "modules":
            self.a1, self.a2, self.a3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        if style == "reused":
            self.act = nn.ReLU()
        if style == "inplace":
            self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        if self.style == "modules":
            acts = (self.a1, self.a2, self.a3)
        elif self.style in ("reused", "inplace"):
            acts = (self.act,) * 3
        else:  # functional: three call styles
            acts = (F.relu, torch.relu, lambda h: h.relu_())
        h = acts[0](self.l1(x))
        h = acts[1](self.l2(h))
        return self.l4(acts[2](self.l3(h)))


class Smooth3(nn.Module):
    """Sigmoid, tanh and a ReLU between linear layers, as modules or as functions."""

    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.l1, self.l2 = nn.Linear(5, 6), nn.Linear(6, 6)
        self.l3, self.l4 = nn.Linear(6, 6), nn.Linear(6, 3)
        self.sig, self.tanh, self.relu = nn.Sigmoid(), nn.Tanh(), nn.ReLU()

    def forward(self, x):
        if self.functional:
            h = self.l2(torch.sigmoid(self.l1(x))).tanh()
            return self.l4(F.relu(self.l3(h)))
        h = self.tanh(self.l2(self.sig(self.l1(x))))
        return self.l4(self.relu(self.l3(h)))


def same_weights(target: nn.Module, source: nn.Module) -> nn.Module:
    target.load_state_dict(source.state_dict())
    return target.double().eval()


@pytest.fixture
def pool_net():
    return seeded(PoolNet())


X_POOL = randn(3, 1, 8, 8)
BASE_POOL = randn(3, 1, 8, 8, seed=5) * 0.3


# -- captum equality -------------------------------------------------------------------------
@pytest.mark.parametrize("target", [0, 3])
def test_mlp_matches_captum(mlp, target):
    """Module ReLUs: attributions and delta equal captum's."""
    x, base = randn(4, 6), randn(4, 6, seed=3)
    ours, delta = tdlens.DeepLift(mlp).attribute(x, base, target, return_convergence_delta=True)
    theirs, their_delta = CaptumDeepLift(mlp).attribute(
        x, base, target, return_convergence_delta=True
    )
    close(ours, theirs)
    close(delta, their_delta)


def test_cnn_with_max_pool_matches_captum(pool_net):
    ours = tdlens.DeepLift(pool_net).attribute(X_POOL, BASE_POOL, target=1)
    close(ours, CaptumDeepLift(pool_net).attribute(X_POOL, BASE_POOL, target=1))


@pytest.mark.parametrize("dims", [1, 3])
def test_max_pool_1d_3d_match_captum(dims):
    conv, pool = {1: (nn.Conv1d, nn.MaxPool1d), 3: (nn.Conv3d, nn.MaxPool3d)}[dims]
    model = seeded(
        nn.Sequential(conv(2, 3, 3, padding=1), pool(2), nn.Flatten(), nn.Linear(3 * 2**dims, 2))
    )
    x = randn(2, 2, *[4] * dims)
    base = randn(2, 2, *[4] * dims, seed=7)
    ours = tdlens.DeepLift(model).attribute(x, base, target=1)
    close(ours, CaptumDeepLift(model).attribute(x, base, target=1))


def test_two_inputs_match_captum():
    model = seeded(TwoInputModules())
    x = (randn(3, 4), randn(3, 3, seed=2))
    base = (randn(1, 4, seed=3), 0.5)
    ours, delta = tdlens.DeepLift(model).attribute(x, base, 2, return_convergence_delta=True)
    theirs, their_delta = CaptumDeepLift(model).attribute(x, base, 2, return_convergence_delta=True)
    close(ours, theirs)
    close(delta, their_delta)


def test_smooth_activations_match_captum():
    """Sigmoid, tanh, ELU, LeakyReLU, softplus modules; rescale keeps the delta at 0."""
    model = seeded(Smooth(softmax=False))
    x, base = randn(3, 5), randn(3, 5, seed=4)
    ours, delta = tdlens.DeepLift(model).attribute(x, base, 2, return_convergence_delta=True)
    close(ours, CaptumDeepLift(model).attribute(x, base, 2))
    assert delta.abs().max() < 1e-12


def test_softmax_output_matches_captum_per_example():
    """Softmax: captum's rule subtracts a mean over the whole batch (mixing examples); per
    example, and on a batch of one, it equals ours (mean over the softmax dimension)."""
    model = seeded(Smooth(softmax=True))
    x, base = randn(3, 5), randn(3, 5, seed=4)
    ours, delta = tdlens.DeepLift(model).attribute(x, base, 2, return_convergence_delta=True)
    captum = CaptumDeepLift(model)
    per_example = [
        captum.attribute(x[i : i + 1], base[i : i + 1], 2, return_convergence_delta=True)
        for i in range(3)
    ]
    close(ours, torch.cat([attr for attr, _ in per_example]))
    close(delta, torch.cat([d for _, d in per_example]))
    assert differs(ours, captum.attribute(x, base, 2))  # captum's batch mixes the examples


def test_multiply_by_inputs_false_and_custom_function_match_captum(pool_net):
    ours = tdlens.DeepLift(pool_net, multiply_by_inputs=False).attribute(X_POOL, BASE_POOL, 2)
    close(ours, CaptumDeepLift(pool_net, multiply_by_inputs=False).attribute(X_POOL, BASE_POOL, 2))

    def custom(multipliers, inputs, baselines):
        return tuple(m * (x - b) ** 2 for m, x, b in zip(multipliers, inputs, baselines))

    ours = tdlens.DeepLift(pool_net).attribute(X_POOL, BASE_POOL, 2, custom_attribution_func=custom)
    theirs = CaptumDeepLift(pool_net).attribute(
        X_POOL, BASE_POOL, 2, custom_attribution_func=custom
    )
    close(ours, theirs)


@pytest.mark.parametrize("layer", ["conv2", "pool", "relu1", "fc"])
def test_layer_deeplift_matches_captum(pool_net, layer):
    dl = tdlens.DeepLift(pool_net)
    ours, delta = dl.attribute(X_POOL, BASE_POOL, 1, layer=layer, return_convergence_delta=True)
    theirs, their_delta = LayerDeepLift(pool_net, pool_net.get_submodule(layer)).attribute(
        X_POOL, BASE_POOL, 1, return_convergence_delta=True
    )
    close(ours, theirs)
    close(delta, their_delta)


def test_layer_input_equals_previous_output(pool_net):
    """``relu2:input`` is ``fc``'s output: same attributions, and they sum to the change."""
    dl = tdlens.DeepLift(pool_net)
    at_input, delta = dl.attribute(
        X_POOL, BASE_POOL, 1, layer="relu2:input", return_convergence_delta=True
    )
    close(at_input, dl.attribute(X_POOL, BASE_POOL, 1, layer="fc"))
    assert delta.abs().max() < 1e-10


@pytest.mark.parametrize(("layer", "neuron"), [("fc", 3), ("conv2", (1, 2, 3))])
def test_neuron_deeplift_matches_captum(pool_net, layer, neuron):
    ours = tdlens.DeepLift(pool_net).attribute(X_POOL, BASE_POOL, target=neuron, output=layer)
    module = pool_net.get_submodule(layer)
    close(ours, NeuronDeepLift(pool_net, module).attribute(X_POOL, neuron, BASE_POOL))


@pytest.mark.parametrize("model_name", ["mlp", "pool_net"])
def test_deeplift_shap_matches_captum(model_name, request):
    model = request.getfixturevalue(model_name)
    x = randn(3, 6) if model_name == "mlp" else X_POOL
    dist = randn(4, *x.shape[1:], seed=9)
    ours, delta = tdlens.DeepLiftShap(model).attribute(x, dist, 1, return_convergence_delta=True)
    theirs, their_delta = CaptumDeepLiftShap(model).attribute(
        x, dist, 1, return_convergence_delta=True
    )
    close(ours, theirs)
    assert delta.shape == (x.shape[0], 4)  # [B, S]; captum's is the same values flat
    close(delta, their_delta.reshape(x.shape[0], 4))


def test_deeplift_shap_two_inputs_and_custom_function_match_captum():
    model = seeded(TwoInputModules())
    x = (randn(3, 4), randn(3, 3, seed=2))
    dist = (randn(5, 4, seed=3), randn(5, 3, seed=4))

    def custom(multipliers, inputs):
        return tuple(m * x.abs() for m, x in zip(multipliers, inputs))

    for options in ({}, {"custom_attribution_func": custom}):
        ours = tdlens.DeepLiftShap(model).attribute(x, dist, 0, **options)
        close(ours, CaptumDeepLiftShap(model).attribute(x, dist, 0, **options))


# -- where captum is wrong: independent references ---------------------------------------------
@pytest.mark.parametrize("style", ["functional", "reused", "inplace"])
def test_relu_styles_equal_module_version(style):
    """F.relu / torch.relu / x.relu_(), one ReLU module used three times, and in-place ReLUs
    give the same attributions as separate ReLU modules (= captum there) and sum to the
    change of the output."""
    reference = seeded(Activations("modules"))
    model = same_weights(Activations(style), reference)
    x, base = randn(4, 6), randn(4, 6, seed=3)
    ours, delta = tdlens.DeepLift(model).attribute(x, base, 1, return_convergence_delta=True)
    close(ours, tdlens.DeepLift(reference).attribute(x, base, 1))
    close(ours, CaptumDeepLift(reference).attribute(x, base, 1))
    assert delta.abs().max() < 1e-12


def test_captum_misses_functional_activations():
    """Documents why the references above are needed: captum leaves F.relu, torch.sigmoid and
    x.tanh() with plain gradients, fails on a reused module, and its delta is not 0."""
    x, base = randn(4, 5), randn(4, 5, seed=3)
    module_net = seeded(Smooth3(functional=False))
    functional_net = same_weights(Smooth3(functional=True), module_net)
    ours, delta = tdlens.DeepLift(functional_net).attribute(
        x, base, 1, return_convergence_delta=True
    )
    close(ours, CaptumDeepLift(module_net).attribute(x, base, 1))
    assert delta.abs().max() < 1e-12
    theirs, their_delta = CaptumDeepLift(functional_net).attribute(
        x, base, 1, return_convergence_delta=True
    )
    assert differs(ours, theirs) and their_delta.abs().max() > 1e-3
    reused = same_weights(Activations("reused"), seeded(Activations("modules")))
    with pytest.raises(RuntimeError, match="used more than once"):
        CaptumDeepLift(reused).attribute(randn(2, 6), target=1)


def test_relu_into_max_pool_sums_to_delta(cnn):
    """A ReLU module feeding a max pool module (the usual CNN): captum's hook on the shared
    tensor reads the gradient before the pool's rule rewrites it, so its attributions do not
    sum to the change. Ours do, and equal captum's on the same net with an identity op between
    the two modules."""

    class Separated(CNN):
        def forward(self, x):
            x = self.pool(self.relu1(self.conv1(x)) * 1.0)
            x = self.relu2(self.conv2(x))
            return self.head(x.flatten(1))

    x, base = randn(3, 1, 8, 8), randn(3, 1, 8, 8, seed=5) * 0.3
    ours, delta = tdlens.DeepLift(cnn).attribute(x, base, 2, return_convergence_delta=True)
    assert delta.abs().max() < 1e-10
    close(ours, CaptumDeepLift(same_weights(Separated(), cnn)).attribute(x, base, 2))
    theirs, their_delta = CaptumDeepLift(cnn).attribute(x, base, 2, return_convergence_delta=True)
    assert differs(ours, theirs) and their_delta.abs().max() > 1e-2


def test_overlapping_max_pool_windows_sum_to_delta():
    """An input that wins several overlapping windows gets all their shares; captum's
    ``max_unpool`` keeps one of them, so its attributions do not sum to the change."""
    model = seeded(
        nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1),
            nn.MaxPool2d(3, stride=1),
            nn.Flatten(),
            nn.Linear(2 * 6 * 6, 3),
        )
    )
    x, base = randn(2, 1, 8, 8), randn(2, 1, 8, 8, seed=3)
    ours, delta = tdlens.DeepLift(model).attribute(x, base, 1, return_convergence_delta=True)
    assert delta.abs().max() < 1e-10
    theirs, their_delta = CaptumDeepLift(model).attribute(x, base, 1, return_convergence_delta=True)
    assert differs(ours, theirs) and their_delta.abs().max() > 1e-2


# -- targets, chunks, shapes ------------------------------------------------------------------
def test_targets_equal_stacked_single_calls(pool_net):
    dl = tdlens.DeepLift(pool_net)
    attrs, delta = dl.attribute(X_POOL, BASE_POOL, targets=[0, 3, 4], return_convergence_delta=True)
    assert attrs.shape == (3, 3, 1, 8, 8) and delta.shape == (3, 3)
    for k, t in enumerate([0, 3, 4]):
        single, single_delta = dl.attribute(X_POOL, BASE_POOL, t, return_convergence_delta=True)
        close(attrs[:, k], single)
        close(delta[:, k], single_delta)


def test_deeplift_shap_targets_equal_stacked_single_calls(mlp):
    x, dist = randn(3, 6), randn(4, 6, seed=9)
    dls = tdlens.DeepLiftShap(mlp)
    attrs, delta = dls.attribute(x, dist, targets=[1, 2], return_convergence_delta=True)
    assert attrs.shape == (3, 2, 6) and delta.shape == (3, 2, 4)  # [B, K, S]
    for k, t in enumerate([1, 2]):
        single, single_delta = dls.attribute(x, dist, t, return_convergence_delta=True)
        close(attrs[:, k], single)
        close(delta[:, k], single_delta)


@pytest.mark.parametrize("size", [1, 2, 5])
def test_chunked_equals_unchunked(pool_net, size):
    """Each chunk holds whole (input, baseline) pairs; the result does not depend on it."""
    dl, dls = tdlens.DeepLift(pool_net), tdlens.DeepLiftShap(pool_net)
    dist = randn(4, 1, 8, 8, seed=9)
    for method, base in ((dl, BASE_POOL), (dls, dist)):
        whole = method.attribute(X_POOL, base, targets=[0, 2], return_convergence_delta=True)
        chunked = method.attribute(
            X_POOL, base, targets=[0, 2], return_convergence_delta=True, internal_batch_size=size
        )
        close(chunked, whole)


def test_target_none_is_the_predicted_class(pool_net):
    dl = tdlens.DeepLift(pool_net)
    attr, delta = dl.attribute(X_POOL, BASE_POOL, return_convergence_delta=True)
    predicted = pool_net(X_POOL).argmax(1)
    close(attr, dl.attribute(X_POOL, BASE_POOL, target=predicted.tolist()))
    assert delta.abs().max() < 1e-10


# -- the model is never changed -----------------------------------------------------------------
class Raising(nn.Module):
    """Raises in the pass over the inputs (they require grad) or over the baselines."""

    def __init__(self, when: str):
        super().__init__()
        self.when = when
        self.l1, self.act, self.l2 = nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)

    def forward(self, x):
        h = self.act(self.l1(x))
        if (self.when == "inputs") == torch.is_grad_enabled():
            raise RuntimeError("boom")
        return self.l2(h)


def _plain_gradient(model, x):
    x = x.clone().requires_grad_()
    return torch.autograd.grad(model(x)[:, 0].sum(), x)[0]


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: tdlens.DeepLift(m).attribute(x, targets=[0, 1], return_convergence_delta=True),
        lambda m, x: tdlens.DeepLift(m).attribute(x, target=0, layer="net.2"),
        lambda m, x: tdlens.DeepLift(m).attribute(x, target=2, output="net.1"),
        lambda m, x: tdlens.DeepLiftShap(m).attribute(x, randn(3, 6), target=1),
    ],
)
def test_model_untouched(mlp, call):
    """No hook, same parameters and flags, and the next plain backward is ordinary."""
    x = randn(4, 6)
    before, gradient = model_state(mlp), _plain_gradient(mlp, x)
    call(mlp, x)
    assert_untouched(mlp, before)
    close(_plain_gradient(mlp, x), gradient)
    assert not torch.overrides._get_current_function_mode_stack()


@pytest.mark.parametrize("when", ["inputs", "baselines"])
def test_model_untouched_when_forward_raises(when):
    model = seeded(Raising(when)).train()
    before = model_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        tdlens.DeepLift(model).attribute(randn(3, 6), target=0)
    assert_untouched(model, before)
    assert not torch.overrides._get_current_function_mode_stack()
    model.when = "never"
    close(
        _plain_gradient(model, randn(3, 6)), _plain_gradient(seeded(Raising("never")), randn(3, 6))
    )


# -- fallbacks and errors ---------------------------------------------------------------------
def test_gelu_falls_back_to_gradient_with_one_warning():
    """No rule for GELU: its gradient is used (as captum does) and one warning names it."""
    model = seeded(
        nn.Sequential(
            nn.Linear(5, 6),
            nn.GELU(),
            nn.Linear(6, 6),
            nn.GELU(),
            nn.Linear(6, 6),
            nn.ReLU(),
            nn.Linear(6, 3),
        )
    )
    x, base = randn(3, 5), randn(3, 5, seed=2)
    with pytest.warns(UserWarning, match="'gelu' has no DeepLift rule") as record:
        ours = tdlens.DeepLift(model).attribute(x, base, 1, internal_batch_size=1)
    assert len([w for w in record if "DeepLift rule" in str(w.message)]) == 1
    close(ours, CaptumDeepLift(model).attribute(x, base, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tdlens.DeepLift(seeded(Smooth())).attribute(randn(2, 5), target=0)


def test_baselines_of_the_wrong_shape(mlp):
    with pytest.raises(ValueError, match=r"shape \[2, 5\].*\[4, 6\]"):
        tdlens.DeepLift(mlp).attribute(randn(4, 6), randn(2, 5), target=0)


def test_deeplift_shap_baseline_errors():
    model = seeded(TwoInputModules())
    x = (randn(3, 4), randn(3, 3))
    dls = tdlens.DeepLiftShap(model)
    with pytest.raises(ValueError, match=r"shape \[5, 3\].*input has shape \[3, 4\].*\[S, 4\]"):
        dls.attribute(x, (randn(5, 3), randn(5, 3)), target=0)
    with pytest.raises(ValueError, match="number of baselines S"):
        dls.attribute(x, (randn(5, 4), randn(4, 3)), target=0)
    with pytest.raises(TypeError, match="distribution"):
        dls.attribute(x, 0.0, target=0)


@pytest.mark.parametrize(
    "baseline_path",
    [torch.relu, lambda h: torch.relu(torch.sigmoid(h))],
    ids=["other-call", "extra-call"],
)
def test_input_dependent_control_flow_is_reported(baseline_path):
    """Inputs take sigmoid; baselines (zeros) another call, or one more: both are reported."""

    class Branchy(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x) if x.sum() > 0 else baseline_path(x)

    with pytest.raises(ValueError, match="same operations on both"):
        tdlens.DeepLift(Branchy()).attribute(torch.ones(2, 3, dtype=torch.float64), target=0)
