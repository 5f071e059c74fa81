"""GradientShap: captum equality with shared draws, delta, K targets, chunks, errors."""

from __future__ import annotations

import pytest
import torch
from captum import attr as captum

import tdlens
from tdlens.core.errors import InputError, TargetError
from tests.attribution.gradient_models import MODELS, as_tuple, captum_draws, close, make_model
from tests.conftest import assert_untouched, model_state, randn

N_BASELINES = 4


def distribution(x):
    """Four baseline samples per input, shaped like one example each."""
    return tuple(
        randn(N_BASELINES, *t.shape[1:], seed=20 + i) * 0.5 for i, t in enumerate(as_tuple(x))
    )


def unwrap(x, value):
    return value if isinstance(x, tuple) else value[0]


@pytest.mark.parametrize("stdevs", [0.0, 0.25])
@pytest.mark.parametrize("model_name", MODELS)
def test_matches_captum_with_the_same_draws(model_name, stdevs):
    """Attributions and the delta (captum's per-sample gaps averaged over samples) equal
    captum's fed the same baseline indices, alphas and noise."""
    model, x = make_model(model_name)
    baselines = unwrap(x, distribution(x))
    target = [0, 2, 1]
    ours, delta = tdlens.GradientShap(model).attribute(
        x, baselines, n_samples=3, stdevs=stdevs, target=target, seed=4,
        return_convergence_delta=True,
    )  # fmt: skip
    with captum_draws(x, 3, stdevs, seed=4, n_baselines=N_BASELINES):
        theirs, their_delta = captum.GradientShap(model).attribute(
            x, baselines, n_samples=3, stdevs=stdevs, target=target,
            return_convergence_delta=True,
        )  # fmt: skip
    close(ours, theirs)
    close(delta, their_delta.reshape(3, 3).mean(1))


def test_without_multiplying_by_inputs_matches_captum():
    """multiply_by_inputs=False gives the mean gradient, as captum's."""
    model, x = make_model("cnn")
    baselines = distribution(x)[0]
    ours = tdlens.GradientShap(model, multiply_by_inputs=False).attribute(
        x, baselines, n_samples=4, stdevs=0.1, target=3, seed=0
    )
    with captum_draws(x, 4, 0.1, seed=0, n_baselines=N_BASELINES):
        theirs = captum.GradientShap(model, multiply_by_inputs=False).attribute(
            x, baselines, n_samples=4, stdevs=0.1, target=3
        )
    close(ours, theirs)


@pytest.mark.parametrize("model_name", ["cnn", "two_input"])
def test_targets_equal_stacked_single_calls(model_name):
    """One call for K targets (same seed, so the same draws) equals K single-target calls."""
    model, x = make_model(model_name)
    baselines = unwrap(x, distribution(x))
    method = tdlens.GradientShap(model, n_samples=4, stdevs=0.2)
    targets = [0, [2, 0, 1], 2]
    multi, delta = method.attribute(
        x, baselines, targets=targets, seed=1, return_convergence_delta=True
    )
    for k, target in enumerate(targets):
        single, single_delta = method.attribute(
            x, baselines, target=target, seed=1, return_convergence_delta=True
        )
        close(tuple(m[:, k] for m in as_tuple(multi)), as_tuple(single))
        close(delta[:, k], single_delta)


@pytest.mark.parametrize("internal_batch_size", [2, 3])
def test_chunking_does_not_change_results(internal_batch_size):
    """Chunks of rows (aligned with samples or not) draw the same noise: same result."""
    model, x = make_model("cnn")
    options = dict(n_samples=3, stdevs=0.3, targets=[1, 4], seed=9, return_convergence_delta=True)
    baselines = distribution(x)[0]
    chunked = tdlens.GradientShap(model).attribute(
        x, baselines, internal_batch_size=internal_batch_size, **options
    )
    close(chunked, tdlens.GradientShap(model).attribute(x, baselines, **options))


def test_default_baseline_is_zero_and_targets_default_to_prediction():
    """No baselines means one zero baseline; no target means the predicted class."""
    model, x = make_model("mlp")
    method = tdlens.GradientShap(model)
    close(
        method.attribute(x, seed=0),
        method.attribute(x, torch.zeros(1, 6), seed=0, target=model(x).argmax(1)),
    )


def test_delta_shrinks_with_more_samples():
    """The delta compares averaged quantities; it tends to 0 like the sampling error."""
    model, x = make_model("two_input")
    baselines = distribution(x)
    small = tdlens.GradientShap(model).attribute(
        x, baselines, n_samples=4, target=1, seed=0, return_convergence_delta=True
    )[1]
    large = tdlens.GradientShap(model).attribute(
        x, baselines, n_samples=400, target=1, seed=0, return_convergence_delta=True
    )[1]
    assert large.abs().mean() < small.abs().mean()


def test_errors():
    """Misshaped or mismatched baseline distributions and bad options name the fix."""
    model, x = make_model("two_input")
    method = tdlens.GradientShap(model)
    with pytest.raises(InputError, match=r"shape \[4, 5\].*\[N, 4\]"):
        method.attribute(x, (randn(4, 5), randn(4, 3)), target=0)
    with pytest.raises(InputError, match="different numbers of samples"):
        method.attribute(x, (randn(4, 4), randn(3, 3)), target=0)
    with pytest.raises(InputError, match="n_samples must be a positive int"):
        method.attribute(x, n_samples=0, target=0)
    with pytest.raises(InputError, match="either generator= or seed="):
        method.attribute(x, target=0, seed=1, generator=torch.Generator())


@pytest.mark.parametrize("kwargs", [{}, {"layer": "a"}, {"output": "a", "target": 2}])
def test_model_untouched(kwargs):
    """No hook, parameter, flag or gradient changes, after success or an error."""
    model, x = make_model("two_input")
    model.a.weight.requires_grad_(False)
    before = model_state(model)
    kwargs = kwargs if "target" in kwargs else {"targets": [0, 1], **kwargs}
    tdlens.GradientShap(model).attribute(
        x, distribution(x), stdevs=0.1, seed=0, return_convergence_delta=True, **kwargs
    )
    assert_untouched(model, before)
    with pytest.raises(TargetError):  # raised after a forward pass, with hooks in place
        tdlens.GradientShap(model).attribute(x, target=9, layer="a")
    assert_untouched(model, before)
