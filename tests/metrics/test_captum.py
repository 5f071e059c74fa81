"""Infidelity and max-sensitivity equal captum 0.9's in float64, given the same perturbations."""

from __future__ import annotations

import pytest
import torch
from captum import attr as captum_attr
from captum import metrics as captum_metrics

import tdlens
from tdlens.metrics import (
    gaussian_noise,
    infidelity,
    infidelity_perturb_func_decorator,
    sensitivity_max,
    uniform_noise,
)
from tests.conftest import randn

TOL = 1e-6


def same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=TOL, atol=TOL)


def seeded_run(fn, seed: int = 0):
    torch.manual_seed(seed)
    return fn()


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("max_examples_per_batch", [None, 10, 3])
def test_infidelity_mlp(mlp, normalize, max_examples_per_batch):
    """Tensor input, with and without normalisation, unchunked and chunked like captum."""
    x = randn(5, 6)
    attr = tdlens.Saliency(mlp).attribute(x, target=1)
    perturb = gaussian_noise(0.1)
    options = dict(
        target=1,
        n_perturb_samples=7,
        max_examples_per_batch=max_examples_per_batch,
        normalize=normalize,
    )
    ours = seeded_run(lambda: infidelity(mlp, perturb, x, attr, **options))
    with pytest.warns(UserWarning) if max_examples_per_batch == 3 else _nothing():
        theirs = seeded_run(lambda: captum_metrics.infidelity(mlp, perturb, x, attr, **options))
    same(ours, theirs)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_infidelity_cnn_per_example_targets(cnn):
    """Images, one target per example."""
    x = randn(4, 1, 8, 8)
    labels = [0, 3, 1, 4]
    attr = tdlens.IntegratedGradients(cnn).attribute(x, target=labels, n_steps=8)
    perturb = gaussian_noise(0.05)
    ours = seeded_run(lambda: infidelity(cnn, perturb, x, attr, target=labels))
    theirs = seeded_run(lambda: captum_metrics.infidelity(cnn, perturb, x, attr, target=labels))
    same(ours, theirs)


def test_infidelity_decorated_with_baselines(mlp):
    """captum's decorator computes (x - x') / (x - baseline); tdlens's does the same."""
    x, base = randn(4, 6), randn(1, 6, seed=5)
    attr = tdlens.IntegratedGradients(mlp).attribute(x, base, target=2, n_steps=8)

    def perturbed(inputs, baselines):
        keep = (torch.rand_like(inputs) > 0.5).to(inputs.dtype)
        return inputs * keep + baselines * (1 - keep)

    ours_fn = infidelity_perturb_func_decorator(True)(perturbed)
    theirs_fn = captum_metrics.infidelity_perturb_func_decorator(True)(perturbed)
    ours = seeded_run(lambda: infidelity(mlp, ours_fn, x, attr, base, target=2))
    theirs = seeded_run(lambda: captum_metrics.infidelity(mlp, theirs_fn, x, attr, base, target=2))
    same(ours, theirs)


def test_infidelity_two_inputs(two_input):
    """A tuple of inputs: perturbations and attributions are tuples."""
    x, y = randn(3, 4), randn(3, 3, seed=2)
    attr = tdlens.Saliency(two_input).attribute((x, y), target=0)
    perturb = gaussian_noise(0.1)
    ours = seeded_run(lambda: infidelity(two_input, perturb, (x, y), attr, target=0))
    theirs = seeded_run(
        lambda: captum_metrics.infidelity(two_input, perturb, (x, y), attr, target=0)
    )
    same(ours, theirs)


def _dict_model(dict_input):
    return lambda image, table, mask: dict_input(image=image, table=table, mask=mask)


@pytest.mark.parametrize("as_tensordict", [False, True])
def test_infidelity_dict_and_tensordict_replace_additional_forward_args(dict_input, as_tensordict):
    """A dict (or TensorDict) with an integer entry equals captum's tuple plus
    additional_forward_args; the perturbation function sees the float entries only."""
    image, table, mask = randn(3, 5), randn(3, 2, seed=2), torch.tensor([1, 0, 1])
    inputs = {"image": image, "table": table, "mask": mask}
    if as_tensordict:
        from tensordict import TensorDict

        inputs = TensorDict(inputs, batch_size=[3])
    attr = tdlens.Saliency(dict_input).attribute(inputs, target=1)
    seen = []

    def perturb(structure):
        seen.append(sorted(structure.keys()) if hasattr(structure, "keys") else len(structure))
        return gaussian_noise(0.1)(structure)

    ours = seeded_run(lambda: infidelity(dict_input, perturb, inputs, attr, target=1))
    theirs = seeded_run(
        lambda: captum_metrics.infidelity(
            _dict_model(dict_input),
            perturb,
            (image, table),
            (attr["image"], attr["table"]),
            additional_forward_args=(mask,),
            target=1,
        )
    )
    same(ours, theirs)
    assert seen[0] == ["image", "table"]
    tupled = seeded_run(
        lambda: infidelity(
            _dict_model(dict_input),
            perturb,
            (image, table),
            (attr["image"], attr["table"]),
            additional_forward_args=(mask,),
            target=1,
        )
    )
    same(tupled, theirs)


def test_infidelity_targets_equal_one_run_per_target(mlp):
    """targets=[...] scores K targets on shared perturbations: each column equals captum's run
    for that target with the same seed."""
    x = randn(4, 6)
    attrs = tdlens.Saliency(mlp).attribute(x, targets=[0, 3])
    perturb = gaussian_noise(0.1)
    ours = seeded_run(lambda: infidelity(mlp, perturb, x, attrs, targets=[0, 3]))
    assert ours.shape == (4, 2)
    for k, t in enumerate([0, 3]):
        theirs = seeded_run(
            lambda t=t, k=k: captum_metrics.infidelity(mlp, perturb, x, attrs[:, k], target=t)
        )
        same(ours[:, k], theirs)


@pytest.mark.parametrize("max_examples_per_batch", [None, 10])
def test_sensitivity_max_saliency(mlp, max_examples_per_batch):
    """tdlens Saliency under tdlens's sensitivity_max equals captum Saliency under captum's."""
    x = randn(5, 6)
    options = dict(
        perturb_func=uniform_noise,
        n_perturb_samples=6,
        max_examples_per_batch=max_examples_per_batch,
        target=1,
    )
    ours = seeded_run(lambda: sensitivity_max(tdlens.Saliency(mlp).attribute, x, **options))
    theirs = seeded_run(
        lambda: captum_metrics.sensitivity_max(captum_attr.Saliency(mlp).attribute, x, **options)
    )
    same(ours, theirs)


def test_sensitivity_max_ig_per_example_options(two_input):
    """Per-example targets and baselines are repeated per sample, as captum does; chunked."""
    x, y = randn(3, 4), randn(3, 3, seed=2)
    base = (randn(3, 4, seed=3), 0.5)
    options = dict(
        perturb_func=uniform_noise,
        perturb_radius=0.1,
        n_perturb_samples=5,
        max_examples_per_batch=6,
        target=[0, 2, 1],
        baselines=base,
        n_steps=6,
    )
    ours = seeded_run(
        lambda: sensitivity_max(tdlens.IntegratedGradients(two_input), (x, y), **options)
    )
    theirs = seeded_run(
        lambda: captum_metrics.sensitivity_max(
            captum_attr.IntegratedGradients(two_input).attribute, (x, y), **options
        )
    )
    same(ours, theirs)


def test_sensitivity_max_tensordict(dict_input):
    """A TensorDict's integer entry reaches the explanation function, repeated per sample."""
    from tensordict import TensorDict

    image, table, mask = randn(3, 5), randn(3, 2, seed=2), torch.tensor([1, 1, 0])
    inputs = TensorDict({"image": image, "table": table, "mask": mask}, batch_size=[3])
    options = dict(perturb_func=uniform_noise, n_perturb_samples=4, target=2)
    ours = seeded_run(lambda: sensitivity_max(tdlens.Saliency(dict_input), inputs, **options))
    theirs = seeded_run(
        lambda: captum_metrics.sensitivity_max(
            captum_attr.Saliency(_dict_model(dict_input)).attribute,
            (image, table),
            additional_forward_args=(mask,),
            **options,
        )
    )
    same(ours, theirs)
