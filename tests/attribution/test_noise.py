"""NoiseTunnel and SmoothGrad: captum equality with shared draws, K targets, chunks, structures."""

from __future__ import annotations

import pytest
import torch
from captum import attr as captum
from tensordict import TensorDict
from torch import nn

import tdlens
from tdlens.core.errors import InputError, InputTypeError, KeyNotFoundError, TargetError
from tests.attribution.gradient_models import (
    MODELS,
    as_tuple,
    captum_draws,
    close,
    make_model,
)
from tests.conftest import assert_untouched, model_state, randn

INNER = {
    "Saliency": (lambda m: tdlens.Saliency(m), lambda m: captum.Saliency(m), {}),
    "InputXGradient": (lambda m: tdlens.InputXGradient(m), lambda m: captum.InputXGradient(m), {}),
    "IntegratedGradients": (
        lambda m: tdlens.IntegratedGradients(m),
        lambda m: captum.IntegratedGradients(m),
        {"n_steps": 4},
    ),
}


def per_example_target(x):
    return [0, 2, 1][: as_tuple(x)[0].shape[0]]


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize("model_name", MODELS)
def test_matches_captum_with_the_same_noise(model_name, inner, nt_type):
    """Each noise type over each inner method equals captum's NoiseTunnel fed the same noise."""
    model, x = make_model(model_name)
    ours_method, theirs_method, options = INNER[inner]
    stdevs = (0.2, 0.5) if isinstance(x, tuple) else 0.3
    target = per_example_target(x)
    ours = tdlens.NoiseTunnel(ours_method(model)).attribute(
        x, nt_type=nt_type, nt_samples=3, stdevs=stdevs, seed=7, target=target, **options
    )
    with captum_draws(x, 3, stdevs, seed=7):
        theirs = captum.NoiseTunnel(theirs_method(model)).attribute(
            x, nt_type=nt_type, nt_samples=3, stdevs=stdevs, target=target, **options
        )
    close(ours, theirs)


def test_ig_delta_and_baseline_distribution_match_captum():
    """IG under the tunnel with baselines drawn from a distribution, and its per-copy delta."""
    model, x = make_model("cnn")
    baselines = randn(5, 1, 8, 8, seed=9) * 0.1
    ours, delta = tdlens.NoiseTunnel(tdlens.IntegratedGradients(model)).attribute(
        x, nt_samples=4, stdevs=0.2, draw_baseline_from_distrib=True, seed=3,
        baselines=baselines, target=2, n_steps=4, return_convergence_delta=True,
    )  # fmt: skip
    with captum_draws(x, 4, 0.2, seed=3, n_baselines=5, with_alphas=False):
        theirs, their_delta = captum.NoiseTunnel(captum.IntegratedGradients(model)).attribute(
            x, nt_samples=4, stdevs=0.2, draw_baseline_from_distrib=True,
            baselines=baselines, target=2, n_steps=4, return_convergence_delta=True,
        )  # fmt: skip
    close(ours, theirs)
    assert delta.shape == (3, 4)  # [B, nt_samples]; captum's is [B * nt_samples] example-major
    close(delta, their_delta.reshape(3, 4))


def test_layer_attribution_under_the_tunnel_matches_captum():
    """layer= passes to the inner method: NoiseTunnel(LayerIntegratedGradients)."""
    model, x = make_model("cnn")
    ours = tdlens.NoiseTunnel(tdlens.IntegratedGradients(model)).attribute(
        x, nt_samples=3, stdevs=0.2, seed=1, target=1, layer="conv2", n_steps=4
    )
    with captum_draws(x, 3, 0.2, seed=1):
        theirs = captum.NoiseTunnel(captum.LayerIntegratedGradients(model, model.conv2)).attribute(
            x, nt_samples=3, stdevs=0.2, target=1, n_steps=4
        )
    close(ours, theirs)


@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize("model_name", ["cnn", "two_input"])
def test_targets_equal_stacked_single_calls(model_name, inner):
    """targets=[...] gives [B, K, ...] whose slices are the single-target results."""
    model, x = make_model(model_name)
    method = tdlens.NoiseTunnel(INNER[inner][0](model), nt_samples=3, stdevs=0.2, **INNER[inner][2])
    targets = [0, per_example_target(x), 2]
    multi = method.attribute(x, targets=targets, seed=5)
    singles = [method.attribute(x, target=t, seed=5) for t in targets]
    for k, single in enumerate(singles):
        close(tuple(m[:, k] for m in as_tuple(multi)), as_tuple(single))


@pytest.mark.parametrize("chunks", [{"nt_samples_batch_size": 2}, {"internal_batch_size": 8}])
def test_chunking_does_not_change_results(chunks):
    """Noise sample chunks and the inner method's row chunks give the unchunked result."""
    model, x = make_model("cnn")
    method = tdlens.NoiseTunnel(tdlens.IntegratedGradients(model))
    options = dict(nt_samples=3, stdevs=0.3, seed=2, targets=[0, 3], n_steps=3)
    close(method.attribute(x, **options, **chunks), method.attribute(x, **options))


def test_dict_and_tensordict_inputs_match_tuple_inputs():
    """Noise goes on the float entries in input order, whatever the structure; an integer
    entry (or captum's additional_forward_args) is passed through; the result has the input's
    structure."""
    model, (a, b) = make_model("two_input")

    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x, y, scale):
            return self.inner(x, y) * scale.unsqueeze(1)

    scale = torch.tensor([1, 2, 3])
    method = tdlens.NoiseTunnel(tdlens.Saliency(Keyword()), nt_samples=3, stdevs=0.2, seed=4)
    plain = tdlens.NoiseTunnel(tdlens.Saliency(model)).attribute(
        (a, b), nt_samples=3, stdevs=0.2, seed=4, target=1
    )
    as_dict = method.attribute({"x": a, "y": b, "scale": torch.ones(3, dtype=torch.long)}, target=1)
    assert set(as_dict) == {"x", "y"}
    close((as_dict["x"], as_dict["y"]), plain)
    captum_style = method.attribute((a, b), additional_forward_args=(torch.ones(3),), target=1)
    close(captum_style, plain)
    td = TensorDict({"x": a, "y": b, "scale": scale}, batch_size=[3])
    as_td = method.attribute(td, targets=[1, 2])
    assert as_td.batch_size == torch.Size([3, 2])
    again = method.attribute({"x": a, "y": b, "scale": scale}, targets=[1, 2])
    close((as_td["x"], as_td["y"]), (again["x"], again["y"]))


def test_default_target_is_the_clean_prediction():
    """target=None explains the class predicted for the clean input, in every noisy copy."""
    model, x = make_model("mlp")
    method = tdlens.NoiseTunnel(tdlens.Saliency(model), nt_samples=4, stdevs=2.0, seed=0)
    predicted = model(x).argmax(1)
    close(method.attribute(x), method.attribute(x, target=predicted))


def test_seed_and_generator_reproduce():
    """The same seed (or a generator seeded alike) gives the same result; another does not."""
    model, x = make_model("cnn")
    method = tdlens.SmoothGrad(model, nt_samples=3, stdevs=0.5)
    first = method.attribute(x, target=1, seed=11)
    assert torch.equal(first, method.attribute(x, target=1, seed=11))
    generator = torch.Generator().manual_seed(11)
    assert torch.equal(first, method.attribute(x, target=1, generator=generator))
    assert not torch.equal(first, method.attribute(x, target=1, seed=12))


def test_smoothgrad_shortcut():
    """SmoothGrad(model) is NoiseTunnel(Saliency) with captum's defaults; base= names others
    and sends constructor options to them."""
    model, x = make_model("cnn")
    close(
        tdlens.SmoothGrad(model).attribute(x, target=2, seed=0),
        tdlens.NoiseTunnel(tdlens.Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=5, stdevs=1.0, target=2, seed=0
        ),
    )
    smooth_ig = tdlens.SmoothGrad(
        model, base="integrated_gradients", multiply_by_inputs=False, n_steps=3, nt_samples=2
    )
    reference = tdlens.NoiseTunnel(tdlens.IntegratedGradients(model, multiply_by_inputs=False))
    close(
        smooth_ig.attribute(x, target=1, seed=0),
        reference.attribute(x, target=1, seed=0, n_steps=3, nt_samples=2),
    )
    with pytest.raises(KeyNotFoundError, match="IntegratedGradients"):
        tdlens.SmoothGrad(model, base="integrated_gradient")


def test_constructor_defaults_and_call_values():
    """Options given to the constructor are defaults; a call's own value wins, even one equal
    to the signature's default."""
    model, x = make_model("mlp")
    method = tdlens.NoiseTunnel(tdlens.Saliency(model), nt_samples=2, abs=False, stdevs=0.5)
    explicit = tdlens.NoiseTunnel(tdlens.Saliency(model)).attribute(
        x, nt_samples=5, stdevs=0.5, abs=False, target=0, seed=1
    )
    close(method.attribute(x, nt_samples=5, target=0, seed=1), explicit)
    with pytest.raises(InputError, match="unknown option"):
        tdlens.NoiseTunnel(tdlens.Saliency(model), n_stepz=3)


@pytest.mark.parametrize(
    "method, message",
    [
        (lambda m: m, "not a model|got a model"),
        (lambda m: tdlens.Saliency, r"NoiseTunnel\(Saliency\(model\)\)"),
        (lambda m: captum.Saliency(m), "captum method: use tdlens.Saliency"),
        (lambda m: "saliency", "tdlens attribution method"),
    ],
)
def test_noise_tunnel_over_something_that_is_not_a_method(method, message):
    """A model, a method class, a captum method or a name is refused, with the fix."""
    model, _ = make_model("mlp")
    with pytest.raises(InputTypeError, match=message):
        tdlens.NoiseTunnel(method(model))


def test_option_errors():
    """Bad noise options and a delta the method lacks fail before any forward pass."""
    model, x = make_model("mlp")
    method = tdlens.NoiseTunnel(tdlens.Saliency(model))
    with pytest.raises(InputError, match=r"nt_type='smooth'.*smoothgrad_sq"):
        method.attribute(x, nt_type="smooth", target=0)
    with pytest.raises(InputError, match="nt_samples must be a positive int"):
        method.attribute(x, nt_samples=0, target=0)
    with pytest.raises(InputError, match="stdevs for input 0 must be a non-negative number"):
        method.attribute(x, stdevs=-1.0, target=0)
    with pytest.raises(InputError, match="Saliency has no convergence delta"):
        method.attribute(x, target=0, return_convergence_delta=True)
    with pytest.raises(InputError, match="draw_baseline_from_distrib=True draws baselines"):
        tdlens.NoiseTunnel(tdlens.IntegratedGradients(model)).attribute(
            x, target=0, draw_baseline_from_distrib=True
        )


@pytest.mark.parametrize("kwargs", [{}, {"layer": "net.2"}, {"output": "net.2", "target": 1}])
def test_model_untouched(kwargs):
    """No hook, parameter, flag or gradient changes, after success or an error."""
    model, x = make_model("mlp")
    model.net[0].weight.requires_grad_(False)
    before = model_state(model)
    kwargs = {"targets": [0, 1], **kwargs} if "target" not in kwargs else kwargs
    tdlens.NoiseTunnel(tdlens.IntegratedGradients(model)).attribute(
        x, nt_samples=2, n_steps=2, seed=0, **kwargs
    )
    tdlens.SmoothGrad(model).attribute(x, seed=0, **kwargs)
    assert_untouched(model, before)
    with pytest.raises(TargetError):  # raised after the forward pass, with hooks in place
        tdlens.SmoothGrad(model).attribute(x, target=9, layer="net.2")
    assert_untouched(model, before)
