"""No argument is accepted and then ignored: for every public method class, every parameter of
its constructor and of ``attribute()`` is given a value that cannot be right, and the call must
raise (an argument that is silently ignored would let it through)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import tdlens
from tdlens.attribution.base import Attribution
from tests.conftest import CNN, MLP, randn, seeded


class Unusable:
    """A value no parameter accepts: not a number, tensor, path, callable or container."""

    def __repr__(self) -> str:
        return "<unusable>"


def _mlp() -> nn.Module:
    return seeded(MLP((6, 8, 4)))


def _cnn() -> nn.Module:
    return seeded(CNN())


X = randn(3, 6)
IMAGES = randn(2, 1, 8, 8)

# class -> (model factory, constructor arguments, inputs, attribute() arguments): a valid call
CONTROLS: dict[str, tuple[Callable[[], nn.Module], dict, Any, dict]] = {
    "Saliency": (_mlp, {}, X, {"target": 1}),
    "InputXGradient": (_mlp, {}, X, {"target": 1}),
    "IntegratedGradients": (_mlp, {}, X, {"target": 1, "n_steps": 4}),
    "GradientShap": (_mlp, {}, X, {"target": 1, "baselines": randn(4, 6), "seed": 0}),
    "DeepLift": (_mlp, {}, X, {"target": 1}),
    "DeepLiftShap": (_mlp, {}, X, {"target": 1, "baselines": randn(4, 6)}),
    "GuidedBackprop": (_mlp, {}, X, {"target": 1}),
    "Deconvolution": (_mlp, {}, X, {"target": 1}),
    "GradCam": (_cnn, {"layer": "conv2"}, IMAGES, {"target": 1}),
    "GuidedGradCam": (_cnn, {"layer": "conv2"}, IMAGES, {"target": 1}),
    "Conductance": (_mlp, {"layer": "net.0"}, X, {"target": 1, "n_steps": 4}),
    "NeuronConductance": (_mlp, {"layer": "net.0"}, X, {"neuron_selector": 2, "n_steps": 4}),
    "ActivationMaximisation": (_mlp, {}, randn(1, 6), {"target": 1, "n_steps": 3, "seed": 0}),
    "FeatureAblation": (_mlp, {}, X, {"target": 1}),
    "Occlusion": (_mlp, {}, X, {"target": 1, "sliding_window_shapes": (2,)}),
    "FeaturePermutation": (_mlp, {}, X, {"target": 1, "seed": 0}),
    "ShapleyValues": (
        _mlp,
        {},
        X,
        {"target": 1, "feature_mask": torch.tensor([[0, 0, 1, 1, 2, 2]])},
    ),
    "ShapleyValueSampling": (_mlp, {}, X, {"target": 1, "n_samples": 2, "seed": 0}),
    "KernelShap": (_mlp, {}, X, {"target": 1, "n_samples": 10, "seed": 0}),
    "Lime": (_mlp, {}, X, {"target": 1, "n_samples": 10, "seed": 0}),
    "Sobol": (_mlp, {}, X, {"target": 1, "n_samples": 4, "seed": 0}),
    "LRP": (_mlp, {}, X, {"target": 1}),
    "NoiseTunnel": (_mlp, {}, X, {"target": 1, "nt_samples": 2, "seed": 0}),
    "SmoothGrad": (_mlp, {}, X, {"target": 1, "nt_samples": 2, "seed": 0}),
}

# parameters that take any object by design, each with why
OPEN_BY_DESIGN = {
    ("*", "model"),  # the model itself (a bad one is refused, see test_errors)
    ("*", "inputs"),
    ("NoiseTunnel", "attribution_method"),  # checked separately below
    ("NoiseTunnel", "kwargs"),  # passed to the wrapped method, which checks them
    ("SmoothGrad", "kwargs"),
}


def public_classes() -> list[str]:
    names = [
        n
        for n in tdlens.__all__
        if isinstance(getattr(tdlens, n), type)
        and issubclass(getattr(tdlens, n), Attribution)
        and getattr(tdlens, n) is not Attribution
    ]
    return sorted(names)


def build(name: str, init: dict) -> Any:
    factory, base_init, _, _ = CONTROLS[name]
    model = factory()
    if name == "NoiseTunnel":
        return tdlens.NoiseTunnel(tdlens.Saliency(model), **init)
    return getattr(tdlens, name)(model, **{**base_init, **init})


def parameters(name: str) -> list[tuple[str, str]]:
    """(where, parameter) for the constructor ('init') and attribute() ('call')."""
    cls = getattr(tdlens, name)
    found = []
    for where, fn in (("init", cls.__init__), ("call", cls.attribute)):
        for param in list(inspect.signature(fn).parameters.values())[1:]:
            if ("*", param.name) in OPEN_BY_DESIGN or (name, param.name) in OPEN_BY_DESIGN:
                continue
            if param.kind is param.VAR_KEYWORD:
                continue
            found.append((where, param.name))
    return found


def test_every_public_class_has_a_control():
    assert set(public_classes()) == set(CONTROLS)


CASES = [(name, where, param) for name in sorted(CONTROLS) for where, param in parameters(name)]


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_control_call_runs(name):
    _, _, inputs, call = CONTROLS[name]
    result = build(name, {}).attribute(inputs, **call)
    assert result is not None


@pytest.mark.parametrize(
    ("name", "where", "param"), CASES, ids=[f"{n}-{w}-{p}" for n, w, p in CASES]
)
def test_an_unusable_argument_raises(name, where, param):
    """The value reaches code that uses it, which refuses it: nothing is ignored."""
    _, _, inputs, call = CONTROLS[name]
    call = dict(call)
    if param == "targets":
        call.pop("target", None)
    if param == "neuron_selector":
        call.pop("neuron_selector", None)
    with pytest.raises((TypeError, ValueError, LookupError, RuntimeError)):
        if where == "init":
            method = build(name, {param: Unusable()})
            method.attribute(inputs, **call)
        else:
            build(name, {}).attribute(inputs, **{**call, param: Unusable()})


def test_noise_tunnel_refuses_a_non_method():
    with pytest.raises(TypeError):
        tdlens.NoiseTunnel(Unusable())
