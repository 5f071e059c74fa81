"""Plausible bad inputs across the whole API, as a new user would try them (issue 12's sweep).

Each case has a valid control call (the same call with good values), and the bad call must
raise a tdlens error whose message names the argument, before any forward pass where the
problem can be seen without one, with the model left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

import tdlens
import tdlens.metrics as metrics
from tdlens.core.errors import TdlensError
from tests.conftest import CNN, MLP, assert_untouched, model_state, randn, seeded


class Counting(nn.Module):
    """Counts forward calls, to show an error came before the work."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.inner(*args, **kwargs)


class LossAndLogits(nn.Module):
    """Returns ``(loss, logits)``, as training-ready models do."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.inner(x)
        return logits.pow(2).mean(), logits


@dataclass
class Case:
    """``call(model, **options)``: the control with ``good``, the bad call with ``bad`` over it."""

    name: str
    call: Callable[..., Any]
    good: dict[str, Any]
    bad: dict[str, Any]
    match: str
    before_work: bool = True
    model: Callable[[], nn.Module] = field(default=lambda: seeded(MLP((6, 8, 4))))


X = randn(3, 6)
NAN = X.clone()
NAN[1, 2] = math.nan
IMAGES = randn(2, 1, 8, 8)
MASK = torch.tensor([[0, 0, 1, 1, 2, 2]])
ATTR = randn(3, 6, seed=4)


class _Summing(nn.Module):
    """Sums a sequence of any length (also 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(1, keepdim=True)


def _cnn() -> nn.Module:
    return seeded(CNN())


# name -> (attribute call, control options); each takes inputs= and target=
METHODS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "Saliency": (lambda m, **o: tdlens.Saliency(m).attribute(**o), {}),
    "InputXGradient": (lambda m, **o: tdlens.InputXGradient(m).attribute(**o), {}),
    "IntegratedGradients": (
        lambda m, **o: tdlens.IntegratedGradients(m).attribute(**o),
        {"n_steps": 4},
    ),
    "NoiseTunnel": (
        lambda m, **o: tdlens.NoiseTunnel(tdlens.Saliency(m)).attribute(**o),
        {"nt_samples": 2, "seed": 0},
    ),
    "GradientShap": (
        lambda m, **o: tdlens.GradientShap(m).attribute(**o),
        {"baselines": randn(4, 6), "seed": 0},
    ),
    "DeepLift": (lambda m, **o: tdlens.DeepLift(m).attribute(**o), {}),
    "DeepLiftShap": (
        lambda m, **o: tdlens.DeepLiftShap(m).attribute(**o),
        {"baselines": randn(4, 6)},
    ),
    "LRP": (lambda m, **o: tdlens.LRP(m).attribute(**o), {}),
    "GuidedBackprop": (lambda m, **o: tdlens.GuidedBackprop(m).attribute(**o), {}),
    "Deconvolution": (lambda m, **o: tdlens.Deconvolution(m).attribute(**o), {}),
    "Conductance": (
        lambda m, **o: tdlens.Conductance(m, layer="inner.net.0").attribute(**o),
        {"n_steps": 4},
    ),
    "FeatureAblation": (lambda m, **o: tdlens.FeatureAblation(m).attribute(**o), {}),
    "Occlusion": (
        lambda m, **o: tdlens.Occlusion(m).attribute(**o),
        {"sliding_window_shapes": (2,)},
    ),
    "FeaturePermutation": (
        lambda m, **o: tdlens.FeaturePermutation(m).attribute(**o),
        {"seed": 0},
    ),
    "ShapleyValues": (
        lambda m, **o: tdlens.ShapleyValues(m).attribute(**o),
        {"feature_mask": MASK},
    ),
    "ShapleyValueSampling": (
        lambda m, **o: tdlens.ShapleyValueSampling(m).attribute(**o),
        {"n_samples": 2, "seed": 0},
    ),
    "KernelShap": (
        lambda m, **o: tdlens.KernelShap(m).attribute(**o),
        {"n_samples": 10, "seed": 0},
    ),
    "Lime": (lambda m, **o: tdlens.Lime(m).attribute(**o), {"n_samples": 10, "seed": 0}),
    "Sobol": (lambda m, **o: tdlens.Sobol(m).attribute(**o), {"n_samples": 4, "seed": 0}),
}

# bad inputs every method must refuse: (kind, bad options, what the message says)
COMMON = [
    ("empty-batch", {"inputs": randn(0, 6)}, r"inputs hold an empty batch", True),
    ("nan-input", {"inputs": NAN}, r"input 0 contains NaN", True),
    ("float32-input", {"inputs": X.float()}, r"input 0 has dtype torch.float32", True),
    ("string-input", {"inputs": "a photo of a cat"}, r"inputs must be a tensor", True),
    ("target-list-length", {"target": [0, 1]}, r"per-example target has 2 entries", True),
    ("target-and-targets", {"targets": [0, 1]}, r"either target= .* or targets=", True),
    ("target-float-tensor", {"target": torch.ones(3)}, r"a tensor target must hold integer", True),
    ("target-out-of-range", {"target": 9}, r"target=9 is out of range", False),
    ("output-missing", {"output": "logitz"}, r"output='logitz' selects an entry", False),
]

CASES: list[Case] = []
for method, (call, options) in METHODS.items():
    good = {"inputs": X, "target": 1, **options}
    for kind, bad, match, before in COMMON:
        CASES.append(Case(f"{method}-{kind}", call, good, bad, match, before))

_fa = METHODS["FeatureAblation"][0]
_ig = METHODS["IntegratedGradients"][0]
_ks = METHODS["KernelShap"][0]
_occ = METHODS["Occlusion"][0]
_nt = METHODS["NoiseTunnel"][0]
GOOD = {"inputs": X, "target": 1}
CASES += [
    # baselines: shape, NaN
    Case("IG-baselines-shape", _ig, GOOD, {"baselines": randn(6)}, r"baselines for input 0"),
    Case("IG-baselines-nan", _ig, GOOD, {"baselines": NAN}, r"baselines for input 0 contain NaN"),
    Case("IG-baselines-nan-number", _ig, GOOD, {"baselines": math.nan}, r"baselines for input 0"),
    Case(
        "GradientShap-baselines-nan",
        METHODS["GradientShap"][0],
        {**GOOD, "baselines": randn(4, 6), "seed": 0},
        {"baselines": torch.cat([NAN, X])},
        r"baselines for input 0 contain NaN",
    ),
    Case(
        "DeepLiftShap-baselines-nan",
        METHODS["DeepLiftShap"][0],
        {**GOOD, "baselines": randn(4, 6)},
        {"baselines": torch.cat([NAN, X])},
        r"baselines for input 0 contain NaN",
    ),
    Case("FA-baselines-shape", _fa, GOOD, {"baselines": randn(2, 6)}, r"baselines for input 0"),
    Case("FA-baselines-nan", _fa, GOOD, {"baselines": NAN}, r"baselines for input 0 contain NaN"),
    Case("FA-baselines-text", _fa, GOOD, {"baselines": "zero"}, r"baselines"),
    Case(
        "image-baselines-without-channel",
        lambda m, **o: tdlens.IntegratedGradients(m).attribute(**o),
        {"inputs": IMAGES, "target": 1, "n_steps": 4},
        {"baselines": randn(8, 8)},
        r"baselines for input 0 have shape \[8, 8\].*\[2, 1, 8, 8\]",
        model=_cnn,
    ),
    # counts and sizes
    Case("IG-n_steps-0", _ig, GOOD, {"n_steps": 0}, r"n_steps must be a positive int"),
    Case(
        "Conductance-n_steps-0",
        METHODS["Conductance"][0],
        GOOD,
        {"n_steps": 0},
        r"n_steps must be a positive int",
    ),
    Case("IG-method", _ig, GOOD, {"method": "simpson"}, r"method='simpson'"),
    Case(
        "Occlusion-strides-0",
        _occ,
        {**GOOD, "sliding_window_shapes": (2,)},
        {"strides": 0},
        r"strides",
    ),
    Case(
        "Occlusion-window-too-large",
        _occ,
        {**GOOD, "sliding_window_shapes": (2,)},
        {"sliding_window_shapes": (7,)},
        r"sliding window \(7,\) is larger",
    ),
    Case(
        "Occlusion-window-dims",
        _occ,
        {**GOOD, "sliding_window_shapes": (2,)},
        {"sliding_window_shapes": (2, 2)},
        r"sliding_window_shapes \(2, 2\) has 2 dimensions",
    ),
    Case(
        "Occlusion-stride-over-window",
        _occ,
        {**GOOD, "sliding_window_shapes": (2,)},
        {"strides": 3},
        r"strides \(3,\) are larger than the sliding window",
    ),
    Case("FA-mask-float", _fa, GOOD, {"feature_mask": MASK.double()}, r"feature_mask .* dtype"),
    Case(
        "FA-mask-negative",
        _fa,
        GOOD,
        {"feature_mask": MASK - 1},
        r"feature_mask holds the negative",
    ),
    Case("FA-mask-shape", _fa, GOOD, {"feature_mask": MASK[:, :4]}, r"feature_mask for input 0"),
    Case("FA-ppe-0", _fa, GOOD, {"perturbations_per_eval": 0}, r"perturbations_per_eval must be"),
    Case("FA-ibs-0", _fa, GOOD, {"internal_batch_size": 0}, r"internal_batch_size must be"),
    Case("IG-ibs-0", _ig, GOOD, {"internal_batch_size": 0}, r"internal_batch_size must be"),
    Case(
        "KernelShap-n_samples-few", _ks, {**GOOD, "n_samples": 10}, {"n_samples": 3}, r"n_samples=3"
    ),
    Case(
        "KernelShap-n_samples-0",
        _ks,
        {**GOOD, "n_samples": 10},
        {"n_samples": 0},
        r"n_samples must be",
    ),
    Case(
        "Lime-n_samples-text",
        METHODS["Lime"][0],
        {**GOOD, "n_samples": 10},
        {"n_samples": "10"},
        r"n_samples must be",
    ),
    Case(
        "KernelShap-seed-and-generator",
        _ks,
        {**GOOD, "n_samples": 10, "seed": 0},
        {"generator": torch.Generator()},
        r"either generator= or seed=",
    ),
    Case(
        "FeaturePermutation-batch-of-one",
        METHODS["FeaturePermutation"][0],
        {**GOOD, "inputs": X},
        {"inputs": X[:1]},
        r"FeaturePermutation shuffles .* a batch of 1",
    ),
    Case(
        "FeaturePermutation-perm_func-rows",
        lambda m, perm_func=None, **o: tdlens.FeaturePermutation(m, perm_func=perm_func).attribute(
            **o
        ),
        {**GOOD, "perm_func": lambda x, mask: torch.where(mask, x.flip(0), x)},
        {"perm_func": lambda x, mask: x[:2]},
        r"perm_func returned \[2, 6\] for input 0 of shape \[3, 6\]",
        before_work=False,
    ),
    Case(
        "NT-stdevs-negative",
        _nt,
        {**GOOD, "nt_samples": 2},
        {"stdevs": -1.0},
        r"stdevs for input 0",
    ),
    Case("NT-nt_type", _nt, {**GOOD, "nt_samples": 2}, {"nt_type": "smooth"}, r"nt_type"),
    Case("NT-nt_samples-0", _nt, {**GOOD, "nt_samples": 2}, {"nt_samples": 0}, r"nt_samples"),
    Case(
        "KernelShap-zero-length-sequence",
        lambda m, **o: tdlens.KernelShap(m).attribute(**o),
        {"inputs": randn(2, 3), "target": 0, "n_samples": 5, "seed": 0},
        {"inputs": randn(2, 0)},
        r"no positions to perturb \(shapes \{0: \[2, 0\]\}",
        model=lambda: _Summing(),
    ),
    # flags, keys, paths
    Case(
        "Saliency-abs-text",
        METHODS["Saliency"][0],
        GOOD,
        {"abs": "no"},
        r"abs= takes True or False",
    ),
    Case("FA-show_progress-text", _fa, GOOD, {"show_progress": "yes"}, r"show_progress= takes"),
    Case("IG-keys-missing", _ig, GOOD, {"keys": ["image"]}, r"keys= names 'image'"),
    Case("IG-layer-missing", _ig, GOOD, {"layer": "inner.net.9"}, r"no submodule 'inner.net.9'"),
    Case("IG-layer-int", _ig, GOOD, {"layer": 0}, r"layer= takes a module path"),
    Case("IG-layer-foreign-module", _ig, GOOD, {"layer": nn.Linear(2, 2)}, r"not a submodule"),
    Case("IG-output-float", _ig, GOOD, {"output": 1.5}, r"output= takes an index"),
    Case(
        "IG-targets-empty",
        _ig,
        {"inputs": X, "targets": [0, 1]},
        {"targets": []},
        r"targets= takes a non-empty",
    ),
    Case(
        "loss-and-logits-without-output",
        _ig,
        {**GOOD, "output": 1},
        {"output": None},
        r"returns a tuple of 2 entries .* output=<index>",
        before_work=False,
        model=lambda: LossAndLogits(seeded(MLP((6, 8, 4)))),
    ),
    Case(
        "GradCam-interpolate-without-upsample",
        lambda m, **o: tdlens.GradCam(m, layer="inner.conv2").attribute(**o),
        {"inputs": IMAGES, "target": 1},
        {"interpolate_mode": "bilinear"},
        r"interpolate_mode='bilinear' applies when the maps are upsampled",
        model=_cnn,
    ),
    # metrics
    Case(
        "sensitivity_max-model-instead-of-method",
        lambda m, explain=None, **o: metrics.sensitivity_max(explain or m, **o),
        {"inputs": X, "target": 1, "n_perturb_samples": 2, "explain": "saliency"},
        {"explain": None},
        r"explanation_func is a model \(Counting\)",
    ),
    Case(
        "sensitivity_max-convergence-delta",
        lambda m, **o: metrics.sensitivity_max(tdlens.IntegratedGradients(m).attribute, **o),
        {"inputs": X, "target": 1, "n_perturb_samples": 2, "n_steps": 4},
        {"return_convergence_delta": True},
        r"return_convergence_delta=True",
    ),
    Case(
        "compare-class-not-instance",
        lambda m, methods=None, **o: metrics.compare(m, X, methods, metrics=["deletion"], **o),
        {"methods": "saliency", "target": 1, "warmup": False},
        {"methods": {"ig": tdlens.IntegratedGradients}},
        r"method 'ig' is the class IntegratedGradients",
    ),
    Case(
        "compare-list-of-methods",
        lambda m, methods=None, **o: metrics.compare(m, X, methods, metrics=["deletion"], **o),
        {"methods": "saliency", "target": 1, "warmup": False},
        {"methods": ["saliency"]},
        r"methods= takes a dict",
    ),
    Case(
        "deletion-empty-batch",
        lambda m, **o: metrics.deletion(m, **o),
        {"inputs": X, "attributions": ATTR, "target": 1, "n_steps": 3},
        {"inputs": randn(0, 6), "attributions": randn(0, 6)},
        r"inputs hold an empty batch",
    ),
    Case(
        "deletion-nan-attributions",
        lambda m, **o: metrics.deletion(m, **o),
        {"inputs": X, "attributions": ATTR, "target": 1, "n_steps": 3},
        {"attributions": NAN},
        r"attributions for input 0 contain NaN",
    ),
    Case(
        "infidelity-nan-attributions",
        lambda m, **o: metrics.infidelity(m, metrics.gaussian_noise(0.1), **o),
        {"inputs": X, "attributions": ATTR, "target": 1, "n_perturb_samples": 2},
        {"attributions": NAN},
        r"attributions for input 0 contain NaN",
    ),
    Case(
        "deletion-attribution-shape",
        lambda m, **o: metrics.deletion(m, **o),
        {"inputs": X, "attributions": ATTR, "target": 1, "n_steps": 3},
        {"attributions": ATTR[:, :4]},
        r"attributions for input 0 have shape \[3, 4\]",
    ),
]


def _resolve(case: Case, model: nn.Module, options: dict[str, Any]) -> dict[str, Any]:
    """Stand-ins that need the model: ``"saliency"`` -> a Saliency method on it."""
    out = dict(options)
    for key, value in options.items():
        if value == "saliency" and isinstance(value, str):
            out[key] = (
                {"saliency": tdlens.Saliency(model)}
                if key == "methods"
                else tdlens.Saliency(model).attribute
            )
    return {k: v for k, v in out.items() if v is not None}


def test_there_are_at_least_100_cases():
    assert len(CASES) >= 100


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_with_a_message_naming_it(case: Case):
    model = Counting(case.model())
    case.call(model, **_resolve(case, model, case.good))  # the control call works
    model.calls = 0
    before = model_state(model)
    bad = _resolve(case, model, {**case.good, **case.bad})
    with pytest.raises(TdlensError, match=case.match):
        case.call(model, **bad)
    if case.before_work:
        assert model.calls == 0, "the error came after forward passes"
    assert_untouched(model, before)


# -- kinds that are not errors -----------------------------------------------------------------
class WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 4))

    def forward(self, x):
        return self.net(x)


def test_train_mode_warns_once_per_call():
    model = seeded(WithDropout()).train()
    with pytest.warns(
        tdlens.core.errors.TrainModeWarning, match=r"Dropout 'net.1' .* model.eval\(\)"
    ):
        tdlens.Saliency(model).attribute(X, target=0)
    assert model.training  # the mode is the user's
    with pytest.warns(tdlens.core.errors.TrainModeWarning) as record:
        tdlens.FeatureAblation(model).attribute(X, target=0)
    assert len(record) == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tdlens.Saliency(model.eval()).attribute(X, target=0)  # eval mode: no warning


def test_scope_errors():
    cnn = seeded(CNN())
    with tdlens.Scope(cnn) as scope:
        with pytest.raises(TdlensError, match="a module path is a string"):
            scope.get(0)
    with tdlens.Scope(cnn) as scope:
        scope.set("conv1", lambda value: "nothing")
        with pytest.raises(TdlensError, match=r"set\('conv1'\): the new value is str"):
            scope.run(IMAGES)


def test_scope_set_takes_numbers_and_arrays():
    cnn = seeded(CNN())
    with tdlens.Scope(cnn) as scope:
        scope.set("relu2", lambda value: value.detach().numpy() * 0)
        scope.get("relu2")
        out = scope.run(IMAGES)
    assert torch.equal(scope.cache["relu2"], torch.zeros(2, 4, 4, 4, dtype=torch.float64))
    torch.testing.assert_close(out, cnn.head.bias.expand(2, -1).detach())


def test_cli_checks_paths_before_the_demo(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from tdlens.cli import main

    taken = tmp_path / "report.html"
    taken.write_text("")
    assert main(["demo", "--out", str(taken)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "out"), "--cache-dir", str(taken)]) == 2
    assert "cache_dir" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was written: the check came first
