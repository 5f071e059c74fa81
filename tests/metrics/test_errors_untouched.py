"""Errors that name the problem and the fix; the model is untouched after every metric."""

from __future__ import annotations

import pytest
import torch

import tdlens
from tdlens.core.errors import InputError, InputTypeError, TdlensError
from tdlens.metrics import (
    comprehensiveness,
    deletion,
    gaussian_noise,
    infidelity,
    insertion,
    mu_fidelity,
    road,
    sensitivity_max,
    sufficiency,
)
from tests.conftest import CNN, assert_untouched, model_state, randn, seeded
from tests.test_untouched import BatchNormNet, Exploding

CURVES = [deletion, insertion, comprehensiveness, sufficiency, mu_fidelity]


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", [*CURVES, road])
def test_attribution_shape_must_match_the_input(metric):
    cnn = seeded(CNN())
    with pytest.raises(InputError) as error:
        metric(cnn, randn(2, 1, 8, 8), randn(2, 1, 8, 7), target=0)
    message = str(error.value)
    assert "[2, 1, 8, 7]" in message and "[2, 1, 8, 8]" in message


def test_attribution_shape_errors_name_targets_and_infidelity_is_strict(mlp):
    x = randn(3, 6)
    with pytest.raises(InputError, match=r"\[B, K, \*input.shape\[1:\]\] = \[3, 2, 6\]"):
        deletion(mlp, x, randn(3, 6), targets=[0, 1])
    with pytest.raises(InputError, match=r"have shape \[3, 1\]"):
        infidelity(mlp, gaussian_noise(), x, randn(3, 1), target=0)
    with pytest.raises(InputError, match="attributions has 1 entries but 2 inputs"):
        deletion(lambda a, b: a.sum(1) + b.sum(1), (x, x), (x,))


@pytest.mark.parametrize(
    ("call", "bad"),
    [
        (lambda m, x, a, v: comprehensiveness(m, x, a, target=0, percentages=v), [0.0, 0.5]),
        (lambda m, x, a, v: sufficiency(m, x, a, target=0, percentages=v), [10, 20]),
        (lambda m, x, a, v: road(m, x, a, target=0, percentages=v), [0.5, 1.5]),
        (lambda m, x, a, v: mu_fidelity(m, x, a, target=0, subset_fraction=v), -0.2),
    ],
)
def test_percentages_outside_zero_one(call, bad):
    cnn = seeded(CNN())
    x = randn(2, 1, 8, 8)
    with pytest.raises(InputError, match=r"must lie in \(0, 1\]") as error:
        call(cnn, x, x, bad)
    if bad == [10, 20]:
        assert "20% is 0.2" in str(error.value)


def test_perturbation_function_returning_wrong_shapes(mlp):
    x = randn(3, 6)
    attr = randn(3, 6)
    with pytest.raises(InputError, match=r"perturbations for input 0 have shape \[30, 5\]"):
        infidelity(mlp, lambda x: (x[:, :5], x), x, attr, target=0)
    with pytest.raises(InputError, match=r"perturbed inputs for input 0 have shape \[3, 6\]"):
        infidelity(mlp, lambda x: (x, x[:3]), x, attr, target=0)
    with pytest.raises(InputError, match="infidelity_perturb_func_decorator"):
        infidelity(mlp, lambda x: x + 1, x, attr, target=0)
    with pytest.raises(InputError, match=r"expected \[30, 6\]"):
        sensitivity_max(tdlens.Saliency(mlp), x, lambda x: x[:, :2], target=0)
    with pytest.raises(InputError, match="do not line up"):
        sensitivity_max(tdlens.Saliency(mlp), x, lambda x: (x, x), target=0)


def test_other_bad_arguments(mlp):
    x, attr = randn(3, 6), randn(3, 6)
    cases = [
        (lambda: deletion(mlp, x, attr, target=0, n_steps=0), "n_steps"),
        (lambda: deletion(mlp, x, attr, target=0, max_examples_per_batch=0), "rows per forward"),
        (lambda: deletion(mlp, x, attr, target=0, feature_mask=torch.zeros(3, 5).long()), "[3, 5]"),
        (lambda: deletion(mlp, x, attr, target=0, feature_mask="pixels"), "image inputs"),
        (lambda: deletion(mlp, x, attr, target=0, baselines=torch.zeros(4)), "does not broadcast"),
        (lambda: deletion(mlp, x, attr, target=0, baselines="mean"), "not a baseline"),
        (lambda: deletion(mlp, x, attr, target=9), "out of range"),
        (lambda: sensitivity_max(tdlens.Saliency(mlp), x, target=0, norm_ord="nuc"), "norm"),
        (lambda: road(seeded(CNN()), randn(2, 1, 8, 8), randn(2, 1, 8, 8), order="up"), "morf"),
    ]
    for call, words in cases:
        with pytest.raises(TdlensError) as error:
            call()
        assert words in str(error.value), str(error.value)
    with pytest.raises(InputTypeError, match="integer tensor"):
        deletion(mlp, x, attr, target=0, feature_mask=torch.zeros(1, 6))


# -- the model is untouched --------------------------------------------------------------------
def _all_metrics(model, x, **kwargs):
    attr = randn(*x.shape, seed=3)
    yield deletion(model, x, attr, n_steps=3, **kwargs)
    yield insertion(model, x, attr, n_steps=3, **kwargs)
    yield comprehensiveness(model, x, attr, **kwargs)
    yield sufficiency(model, x, attr, **kwargs)
    yield mu_fidelity(model, x, attr, n_samples=4, **kwargs)
    yield infidelity(model, gaussian_noise(), x, attr, n_perturb_samples=3, **kwargs)
    yield sensitivity_max(tdlens.Saliency(model), x, n_perturb_samples=3, **kwargs)


@pytest.mark.parametrize("kwargs", [{"target": 0}, {"output": "lin", "target": 1}])
def test_metrics_leave_model_untouched(kwargs):
    model = seeded(BatchNormNet()).eval()
    model.lin.weight.requires_grad_(False)
    x = randn(4, 4)
    x_copy = x.clone()
    before = model_state(model)
    for _ in _all_metrics(model, x, **kwargs):
        assert_untouched(model, before)
    assert torch.equal(x, x_copy)


def test_road_leaves_model_untouched():
    model = seeded(CNN())
    before = model_state(model)
    x, attr = randn(2, 1, 8, 8), randn(2, 1, 8, 8, seed=2)
    road(model, x, attr, target=(0, 4, 4), output="conv1", percentages=[0.5])
    assert_untouched(model, before)


def test_train_mode_stays_and_model_untouched_after_errors():
    model = seeded(BatchNormNet()).train()
    x = randn(4, 4)
    list(_all_metrics(model, x, target=0))
    assert all(m.training for m in model.modules())
    exploding = seeded(Exploding())
    before = model_state(exploding)
    with pytest.raises(RuntimeError, match="boom"):
        deletion(exploding, randn(2, 4), randn(2, 4), target=0)
    assert_untouched(exploding, before)
    model = seeded(BatchNormNet()).eval()
    before = model_state(model)
    with pytest.raises(InputError):
        infidelity(model, lambda x: (x, x[:1]), x, x, target=0, output="lin")
    with pytest.raises(RuntimeError, match="inside"):

        def failing(_):
            raise RuntimeError("inside perturb_func")

        infidelity(model, failing, x, x, target=0, output="lin")
    assert_untouched(model, before)
