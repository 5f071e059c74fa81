"""Bad input gets an error that names the problem and the fix, before any work is done."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn

import tdlens
from tdlens.core.errors import InputError, InputTypeError, KeyNotFoundError, TargetError
from tests.conftest import randn


class Counting(nn.Module):
    """Counts forward calls, to show errors come before the work."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_wrong_key_lists_the_keys(dict_input):
    inputs = {"image": randn(2, 5), "table": randn(2, 2), "mask": torch.ones(2)}
    with pytest.raises(KeyNotFoundError, match=r"'imgae'.*'image', 'table', 'mask'"):
        tdlens.Saliency(dict_input).attribute(inputs, target=0, keys=["imgae"])


def test_wrong_output_key_lists_the_outputs():
    model = lambda x: {"logits": x * 2, "value": x.sum(1)}  # noqa: E731
    with pytest.raises(KeyNotFoundError, match=r"no entry 'logit'.*'logits', 'value'"):
        tdlens.Saliency(model).attribute(randn(2, 3), target=0, output="logit")


def test_unknown_module_path_suggests_the_closest(cnn):
    with pytest.raises(
        KeyNotFoundError, match=r"no submodule 'conv3'; did you mean 'conv2', 'conv1'"
    ):
        tdlens.IntegratedGradients(cnn).attribute(randn(2, 1, 8, 8), target=0, layer="conv3")
    with pytest.raises(KeyNotFoundError, match="matches no module"):
        tdlens.resolve_paths(cnn, "blocks.*.mlp")


def test_target_out_of_range(mlp):
    model = Counting(mlp)
    with pytest.raises(TargetError, match=r"target=7 is out of range .* shape \[B, 4\].*0\.\.3"):
        tdlens.IntegratedGradients(model).attribute(randn(2, 6), target=7)
    with pytest.raises(TargetError, match=r"per-example targets range over 0\.\.9"):
        tdlens.Saliency(model).attribute(randn(2, 6), target=[0, 9])


def test_per_example_target_list_of_wrong_length(mlp):
    model = Counting(mlp)
    with pytest.raises(TargetError, match="has 3 entries but the batch has 2 examples"):
        tdlens.IntegratedGradients(model).attribute(randn(2, 6), target=[0, 1, 2])
    assert model.calls == 0


def test_baselines_of_the_wrong_shape(mlp):
    model = Counting(mlp)
    with pytest.raises(InputError, match=r"shape \[2, 5\].*input's shape \[2, 6\]"):
        tdlens.IntegratedGradients(model).attribute(randn(2, 6), torch.zeros(2, 5), target=0)
    assert model.calls == 0


def test_integer_input_asked_to_be_attributed(dict_input):
    inputs = {"image": randn(2, 5), "table": randn(2, 2), "mask": torch.ones(2, dtype=torch.long)}
    with pytest.raises(InputTypeError, match=r"'mask' has dtype torch.int64.*layer="):
        tdlens.IntegratedGradients(dict_input).attribute(inputs, target=0, keys=["mask"])
    with pytest.raises(InputError, match="no floating-point input"):
        tdlens.Saliency(nn.Embedding(5, 3)).attribute(torch.tensor([[1, 2]]), target=0)


def test_nan_in_the_input_says_so(mlp):
    x = randn(3, 6)
    x[1, 2] = float("nan")
    model = Counting(mlp)
    with pytest.raises(InputError, match=r"contains NaN \(1 entries, in examples \[1\]\)"):
        tdlens.IntegratedGradients(model).attribute(x, target=0)
    assert model.calls == 0


def test_model_that_returns_no_tensor():
    with pytest.raises(InputTypeError, match="is a str, not a tensor"):
        tdlens.Saliency(lambda x: "nothing").attribute(randn(2, 3), target=0)
    with pytest.raises(InputTypeError, match="is a NoneType"):
        tdlens.Saliency(lambda x: None).attribute(randn(2, 3), target=0)


def test_target_that_selects_a_slice():
    with pytest.raises(TargetError, match=r"slice of shape \[B, 4\]"):
        tdlens.Saliency(lambda x: x.reshape(2, 3, 4)).attribute(randn(2, 12), target=1)


def test_unknown_option_and_target_plus_targets(mlp):
    with pytest.raises(InputError, match=r"unknown option.*'n_step'"):
        tdlens.IntegratedGradients(mlp, n_step=4)
    with pytest.raises(InputError, match=r"either target= .* or targets="):
        tdlens.Saliency(mlp).attribute(randn(2, 6), target=0, targets=[0, 1])
    with pytest.raises(InputError, match="method='simpson' is not an integration rule"):
        tdlens.IntegratedGradients(mlp).attribute(randn(2, 6), target=0, method="simpson")


def test_tensordict_without_batch_size(mlp):
    with pytest.raises(InputError, match="batch_size=\\[B\\]"):
        tdlens.Saliency(mlp).attribute(TensorDict(x=randn(2, 6)), target=0)


def test_errors_are_builtin_exceptions_too():
    assert issubclass(KeyNotFoundError, LookupError) and issubclass(TargetError, ValueError)
    assert issubclass(InputTypeError, TypeError)


def test_predicted_class_is_learnt_across_chunks_of_the_original_rows(mlp):
    """target=None resolved chunk by chunk (metrics, perturbation) equals the explicit classes."""
    x = randn(5, 6)
    predicted = mlp(x).argmax(1)
    fa = tdlens.FeatureAblation(mlp)
    torch.testing.assert_close(
        fa.attribute(x, internal_batch_size=2), fa.attribute(x, target=predicted)
    )
    attr = tdlens.Saliency(mlp).attribute(x, target=predicted)
    noise = tdlens.metrics.gaussian_noise(0.1)
    torch.manual_seed(0)
    chunked = tdlens.metrics.infidelity(mlp, noise, x, attr, max_examples_per_batch=2)
    torch.manual_seed(0)
    explicit = tdlens.metrics.infidelity(
        mlp, noise, x, attr, target=predicted, max_examples_per_batch=2
    )
    torch.testing.assert_close(chunked, explicit)
