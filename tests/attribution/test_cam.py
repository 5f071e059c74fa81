"""GradCam and GuidedGradCam against captum 0.9; K targets, chunks, several layers, errors."""

from __future__ import annotations

import pytest
import torch
from captum import attr as captum
from captum.attr import LayerAttribution

import tdlens
from tdlens.core.errors import InputError, InputTypeError, TargetError
from tests.attribution.gradient_models import close, make_model
from tests.conftest import assert_untouched, model_state

pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks:UserWarning")

OPTIONS = [
    {},
    {"relu_attributions": True},
    {"attr_dim_summation": False},
    {"attribute_to_layer_input": True},
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize(
    "model_name, path", [("cnn", "conv2"), ("cnn", "pool"), ("reused", "conv1")]
)
def test_grad_cam_matches_captum(model_name, path, options):
    """LayerGradCam's options, at a convolution, a pooling layer and a reused-ReLU model."""
    model, x = make_model(model_name)
    ours = tdlens.GradCam(model, path).attribute(x, target=[0, 2, 1], **options)
    theirs = captum.LayerGradCam(model, model.get_submodule(path)).attribute(
        x, target=[0, 2, 1], **options
    )
    close(ours, theirs)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "area"])
def test_upsampling_matches_captum_interpolate(mode):
    """upsample_to='input' or a size equals LayerAttribution.interpolate."""
    model, x = make_model("cnn")
    cam = captum.LayerGradCam(model, model.conv2).attribute(x, target=1)
    method = tdlens.GradCam(model, "conv2")
    close(
        method.attribute(x, target=1, upsample_to="input", interpolate_mode=mode),
        LayerAttribution.interpolate(cam, (8, 8), mode),
    )
    close(
        method.attribute(x, targets=[1, 2], upsample_to=(5, 7), interpolate_mode=mode)[:, 0],
        LayerAttribution.interpolate(cam, (5, 7), mode),
    )


@pytest.mark.parametrize("model_name", ["cnn", "reused"])
def test_guided_grad_cam_matches_captum(model_name):
    """Guided backpropagation times the upsampled positive map, as captum's."""
    model, x = make_model(model_name)
    ours = tdlens.GuidedGradCam(model, "conv2").attribute(x, target=[0, 2, 1])
    theirs = captum.GuidedGradCam(model, model.conv2).attribute(x, target=[0, 2, 1])
    close(ours, theirs)


@pytest.mark.parametrize("make", [tdlens.GradCam, tdlens.GuidedGradCam])
def test_targets_equal_stacked_single_calls_and_chunks(make):
    """K targets equal K single calls; internal_batch_size changes nothing."""
    model, x = make_model("cnn")
    method = make(model, "conv2")
    targets = [0, [2, 0, 1], 4]
    multi = method.attribute(x, targets=targets)
    assert multi.shape[:2] == (3, 3)
    for k, target in enumerate(targets):
        close(multi[:, k], method.attribute(x, target=target))
    close(method.attribute(x, targets=targets, internal_batch_size=2), multi)


def test_several_layers_give_a_dict_of_maps():
    """A glob of layers gives one map per layer, each as if alone."""
    model, x = make_model("cnn")
    maps = tdlens.GradCam(model).attribute(x, targets=[1, 2], layer="conv*")
    assert set(maps) == {"conv1", "conv2"}
    for path in maps:
        close(maps[path], tdlens.GradCam(model, path).attribute(x, targets=[1, 2]))


def test_layer_without_spatial_dims_is_an_error():
    """A layer without spatial dimensions, no layer, or a bad size name the fix."""
    model, x = make_model("cnn")
    with pytest.raises(InputError, match=r"layer 'head'.*\[B, 5\].*no spatial dimension"):
        tdlens.GradCam(model, "head").attribute(x, target=0)
    with pytest.raises(InputError, match="needs the layer"):
        tdlens.GradCam(model).attribute(x, target=0)
    with pytest.raises(InputError, match="upsample_to='inputs'"):
        tdlens.GradCam(model, "conv2").attribute(x, target=0, upsample_to="inputs")
    with pytest.raises(InputTypeError, match=r"\(8, 8\)"):
        tdlens.GradCam(model, "conv2").attribute(x, target=0, upsample_to=8)
    with pytest.raises(InputError, match="one layer"):
        tdlens.GuidedGradCam(model, "conv*").attribute(x, target=0)


@pytest.mark.parametrize("make", [tdlens.GradCam, tdlens.GuidedGradCam])
def test_model_untouched(make):
    """No hook, parameter, flag or gradient changes, after success or an error."""
    model, x = make_model("reused")
    model.conv1.weight.requires_grad_(False)
    before = model_state(model)
    make(model, "conv2").attribute(x, targets=[0, 1])
    assert_untouched(model, before)
    with pytest.raises(TargetError):  # raised after a forward pass, with hooks in place
        make(model, "conv2").attribute(x, target=11)
    assert_untouched(model, before)
    with pytest.raises(InputError):
        make(model, "head").attribute(x, target=0)
    assert_untouched(model, before)
    assert torch.is_grad_enabled()
