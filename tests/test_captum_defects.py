"""The silent wrong answers and raw errors found by running captum's tests and a new user's
tries against tdlens (issue 12): each test failed before its fix."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerFeatureAblation as CaptumLayerAblation
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

import tdlens
from tdlens.core.errors import InputError, InputTypeError, KeyNotFoundError, TdlensError
from tests.conftest import CNN, MLP, assert_untouched, model_state, randn, seeded

PERTURBATION = [
    tdlens.FeatureAblation,
    tdlens.Occlusion,
    tdlens.FeaturePermutation,
    tdlens.ShapleyValues,
    tdlens.ShapleyValueSampling,
    tdlens.KernelShap,
    tdlens.Lime,
    tdlens.Sobol,
]


@pytest.fixture
def mlp64():
    return seeded(MLP((6, 8, 4))).double().eval()


# -- NoiseTunnel with inputs that require grad ---------------------------------------------------
@pytest.mark.parametrize("method", [tdlens.Saliency, tdlens.IntegratedGradients])
def test_noise_tunnel_takes_inputs_that_require_grad(mlp64, method):
    """captum users often pass x.requires_grad_(); the noisy copies must not join its graph."""
    x = randn(3, 6)
    options = dict(nt_samples=4, stdevs=0.1, target=1, seed=0)
    plain = tdlens.NoiseTunnel(method(mlp64)).attribute(x, **options)
    grad_x = x.clone().requires_grad_()
    before = model_state(mlp64)
    result = tdlens.NoiseTunnel(method(mlp64)).attribute(grad_x, **options)
    torch.testing.assert_close(result, plain)
    assert grad_x.grad is None
    assert_untouched(mlp64, before)


# -- layer= on perturbation methods ---------------------------------------------------------------
@pytest.mark.parametrize(
    "method",
    [m for m in PERTURBATION if m not in (tdlens.FeatureAblation, tdlens.FeaturePermutation)],
)
def test_perturbation_methods_refuse_layer(mlp64, method):
    """layer= was checked, then ignored: input attributions came back under a layer's name."""
    with pytest.raises(InputError, match="takes no layer="):
        method(mlp64, layer="net.0")


def test_feature_ablation_of_a_layer_is_captums_layer_feature_ablation():
    """layer= ablates the layer's activation (captum's LayerFeatureAblation), any chunking."""
    cnn = seeded(CNN())
    x = randn(2, 1, 8, 8)
    before = model_state(cnn)
    ours = tdlens.FeatureAblation(cnn, layer=cnn.conv2).attribute(
        x, targets=[0, 2], internal_batch_size=5
    )
    theirs = [CaptumLayerAblation(cnn, cnn.conv2).attribute(x, target=t) for t in (0, 2)]
    torch.testing.assert_close(ours, torch.stack(theirs, dim=1))
    assert_untouched(cnn, before)
    mlp = seeded(MLP((6, 8, 4)))
    mask = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    ours = tdlens.FeatureAblation(mlp, layer="net.0").attribute(
        randn(3, 6), target=1, feature_mask=mask, baselines=0.5
    )
    theirs = CaptumLayerAblation(mlp, mlp.net[0]).attribute(
        randn(3, 6), target=1, layer_mask=mask, layer_baselines=0.5
    )
    torch.testing.assert_close(ours, theirs)


def test_feature_permutation_of_a_layer_permutes_the_activation(mlp64):
    x = randn(3, 6)
    mask = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    roll = lambda t, m: torch.where(m, t.roll(1, 0), t)  # noqa: E731
    ours = tdlens.FeaturePermutation(mlp64, perm_func=roll, layer="net.0").attribute(
        x, target=1, feature_mask=mask
    )
    with torch.no_grad():
        hidden = mlp64.net[0](x)
        moved = [mlp64.net[1:](torch.where(mask == f, hidden.roll(1, 0), hidden)) for f in range(4)]
        expected = mlp64(x)[:, 1:2] - torch.stack([m[:, 1] for m in moved], dim=1)
    torch.testing.assert_close(ours[:, ::2], expected)
    with pytest.raises(InputError, match="one layer at a time"):
        tdlens.FeatureAblation(mlp64, layer=["net.0", "net.2"]).attribute(x, target=0)


# -- models whose output is aggregated over the batch --------------------------------------------
class Summed(nn.Module):
    """One value per forward call (a loss over the batch), 0-d or [1]."""

    def __init__(self, inner: nn.Module, keep_dim: bool):
        super().__init__()
        self.inner, self.keep_dim = inner, keep_dim

    def forward(self, x):
        total = self.inner(x)[:, 1].sum()
        return total.reshape(1) if self.keep_dim else total


@torch.no_grad()
def _ablated_drop(model: nn.Module, x: torch.Tensor, positions: list[int]) -> float:
    ablated = x.clone()
    ablated[:, positions] = 0
    return float(model(x).reshape(()) - model(ablated).reshape(()))


@pytest.mark.parametrize("keep_dim", [False, True])
def test_aggregated_output_feature_ablation(mlp64, keep_dim):
    """captum's semantics: one forward call per perturbation, the whole batch perturbed alike,
    one attribution for the batch. It used to return zeros."""
    model = Summed(mlp64, keep_dim)
    x = randn(4, 6)
    mask = torch.tensor([[0, 0, 1, 1, 2, 2]])
    result = tdlens.FeatureAblation(model).attribute(x, feature_mask=mask)
    assert result.shape == (1, 6)
    expected = [_ablated_drop(model, x, [2 * f, 2 * f + 1]) for f in range(3)]
    torch.testing.assert_close(result[0, ::2], torch.tensor(expected, dtype=torch.float64))
    assert result.abs().sum() > 0


def test_aggregated_output_other_methods_agree_with_ablation(mlp64):
    model = Summed(mlp64, keep_dim=False)
    x = randn(4, 6)
    mask = torch.tensor([[0, 0, 1, 1, 2, 2]])
    ablation = tdlens.FeatureAblation(model).attribute(x, feature_mask=mask)
    occlusion = tdlens.Occlusion(model).attribute(x, sliding_window_shapes=(2,), strides=(2,))
    torch.testing.assert_close(occlusion, ablation)
    shapley = tdlens.ShapleyValues(model).attribute(x, feature_mask=mask)
    total = float(model(x).detach() - model(torch.zeros_like(x)).detach())
    assert shapley.shape == (1, 6)
    torch.testing.assert_close(shapley[0, ::2].sum().item(), total)
    perm = tdlens.FeaturePermutation(model).attribute(x, feature_mask=mask, seed=0)
    assert perm.shape == (1, 6) and perm.abs().sum() > 0


def test_aggregated_output_refused_where_it_has_no_meaning(mlp64):
    model = Summed(mlp64, keep_dim=False)
    x = randn(4, 6)
    with pytest.raises(InputError, match="perturbations_per_eval=1"):
        tdlens.FeatureAblation(model).attribute(x, perturbations_per_eval=3)
    with pytest.raises(InputError, match="perturbs each example differently"):
        tdlens.KernelShap(model).attribute(x, n_samples=20, seed=0)
    with pytest.raises(InputError, match="nothing for target="):
        tdlens.FeatureAblation(model).attribute(x, target=0)
    with pytest.raises(InputError, match="neither one value per row nor one value"):
        tdlens.FeatureAblation(lambda x: mlp64(x)[:2]).attribute(x)


# -- Occlusion ------------------------------------------------------------------------------------
def test_occlusion_strides_per_input_for_a_tuple_of_inputs():
    """(2, 1, 2) for three inputs is one stride per input (captum), not one 3-D stride."""
    torch.manual_seed(0)
    weights = [randn(6), randn(4), randn(6)]

    def model(a, b, c):
        return torch.tanh(a * weights[0]).sum(1) + (b * weights[1]).sum(1) + (c**2).sum(1)

    inputs = (randn(2, 6, seed=1), randn(2, 4, seed=2), randn(2, 6, seed=3))
    windows, strides = ((2,), (1,), (2,)), (2, 1, 2)
    ours = tdlens.Occlusion(model).attribute(inputs, windows, strides)
    theirs = CaptumOcclusion(model).attribute(inputs, windows, strides)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.to(a.dtype))  # captum's sums are float32


def test_occlusion_of_zero_dim_values_per_example():
    """Inputs of shape [B]: one window, the drop to the baseline."""
    model = lambda x: torch.sin(x) * 3  # noqa: E731
    x = randn(5)
    result = tdlens.Occlusion(model).attribute(x, sliding_window_shapes=())
    torch.testing.assert_close(result, model(x) - model(torch.zeros_like(x)))


def test_occlusion_zero_stride_is_refused(mlp64):
    with pytest.raises(InputError, match="strides"):
        tdlens.Occlusion(mlp64).attribute(randn(2, 6), sliding_window_shapes=(2,), strides=0)


# -- a module object where a path is taken -----------------------------------------------------
def test_module_objects_stand_for_their_paths():
    cnn = seeded(CNN()).double().eval()
    x = randn(2, 1, 8, 8)
    by_name = tdlens.IntegratedGradients(cnn).attribute(x, target=0, layer="conv2", n_steps=8)
    by_object = tdlens.IntegratedGradients(cnn).attribute(x, target=0, layer=cnn.conv2, n_steps=8)
    torch.testing.assert_close(by_object, by_name)
    cam = tdlens.GradCam(cnn, layer=cnn.conv2).attribute(x, target=1)
    torch.testing.assert_close(cam, tdlens.GradCam(cnn, layer="conv2").attribute(x, target=1))
    neuron = tdlens.Saliency(cnn).attribute(x, target=(0, 2, 2), output=cnn.conv2)
    torch.testing.assert_close(
        neuron, tdlens.Saliency(cnn).attribute(x, target=(0, 2, 2), output="conv2")
    )
    with tdlens.Scope(cnn) as scope:
        scope.get(cnn.relu2)
        scope.run(x)
    assert scope.cache["relu2"].shape == (2, 4, 4, 4)
    with pytest.raises(KeyNotFoundError, match="not a submodule"):
        tdlens.Saliency(cnn).attribute(x, target=0, layer=nn.Linear(2, 2))


# -- integer and boolean inputs to perturbation methods -------------------------------------------
class Categorical(nn.Module):
    """Three categorical features (ids 0..4), embedded and summed."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, ids):
        return self.head(self.embed(ids).sum(1))


@pytest.mark.parametrize("method", PERTURBATION)
def test_integer_inputs_are_attributed_by_perturbation(method):
    model = seeded(Categorical()).eval()
    ids = torch.tensor([[1, 2, 3], [4, 0, 2], [3, 3, 1], [2, 4, 0]])
    options = {"sliding_window_shapes": (1,)} if method is tdlens.Occlusion else {}
    if method in (tdlens.KernelShap, tdlens.Lime, tdlens.ShapleyValueSampling, tdlens.Sobol):
        options["seed"] = 0
    if method in (tdlens.KernelShap, tdlens.Lime):
        options["n_samples"] = 16
    if method is tdlens.Sobol:
        options["n_samples"] = 8
    result = method(model).attribute(ids, target=1, **options)
    assert result.shape == ids.shape and result.is_floating_point()
    assert result.abs().sum() > 0


def test_integer_feature_ablation_is_exact():
    model = seeded(Categorical()).eval()
    ids = torch.tensor([[1, 2, 3], [4, 0, 2]])
    result = tdlens.FeatureAblation(model).attribute(ids, target=0, baselines=0)
    for f in range(3):
        ablated = ids.clone()
        ablated[:, f] = 0
        torch.testing.assert_close(result[:, f], (model(ids) - model(ablated))[:, 0])
    flags = torch.tensor([[True, False], [False, True]])
    gate = lambda m: m.float() @ torch.tensor([[1.0], [2.0]])  # noqa: E731
    torch.testing.assert_close(
        tdlens.FeatureAblation(gate).attribute(flags, target=0),
        torch.tensor([[1.0, 0.0], [0.0, 2.0]]),
    )


def test_gradient_methods_keep_the_integer_error():
    with pytest.raises(InputError, match="no floating-point input"):
        tdlens.Saliency(seeded(Categorical())).attribute(torch.tensor([[1, 2, 3]]), target=0)


# -- raw errors that escaped -------------------------------------------------------------------
def test_kernel_shap_with_one_feature(mlp64):
    x = randn(3, 6)
    mask = torch.zeros(1, 6, dtype=torch.long)
    result = tdlens.KernelShap(mlp64).attribute(x, target=2, feature_mask=mask, n_samples=5)
    gap = (mlp64(x) - mlp64(torch.zeros_like(x)))[:, 2]
    torch.testing.assert_close(result, gap.unsqueeze(1).expand(3, 6))


@pytest.mark.parametrize("method", [tdlens.KernelShap, tdlens.Lime, tdlens.ShapleyValueSampling])
def test_feature_ids_with_gaps_are_the_renumbered_mask(mlp64, method):
    """Ids 0, 2, 4 are three features, not five: the result equals the renumbered mask's."""
    x = randn(3, 6)
    gaps = torch.tensor([[0, 0, 2, 2, 4, 4]])
    options = dict(target=1, seed=0, n_samples=12)
    with_gaps = method(mlp64).attribute(x, feature_mask=gaps, **options)
    renumbered = method(mlp64).attribute(x, feature_mask=gaps // 2, **options)
    torch.testing.assert_close(with_gaps, renumbered)
    if method is not tdlens.ShapleyValueSampling:
        per_id = method(mlp64).attribute(x, feature_mask=gaps, return_input_shape=False, **options)
        assert per_id.shape == (3, 5)  # columns stay the user's ids; 1 and 3 are empty
        torch.testing.assert_close(per_id[:, [0, 2, 4]], renumbered[:, ::2])
        assert not per_id[:, [1, 3]].any()


def test_input_dtype_other_than_the_model_names_both(mlp64):
    x32 = randn(2, 6).float()
    for method in (tdlens.Saliency(mlp64), tdlens.FeatureAblation(mlp64)):
        with pytest.raises(InputTypeError, match=r"input 0 has dtype torch.float32.*float64"):
            method.attribute(x32, target=0)


@pytest.mark.parametrize("shape", [(8, 8), (1, 8, 8), (3, 1, 8, 8), (2, 1, 1, 8)])
def test_baselines_only_in_captum_forms(shape):
    cnn = seeded(CNN()).double().eval()
    x = randn(2, 1, 8, 8)
    for method in (tdlens.IntegratedGradients(cnn), tdlens.FeatureAblation(cnn)):
        with pytest.raises(
            InputError, match=r"shape \[.*\], which is not a form.*input's shape \[2, 1, 8, 8\]"
        ):
            method.attribute(x, target=0, baselines=randn(*shape))
    for good in (0.5, torch.tensor(0.5), randn(1, 1, 8, 8), randn(2, 1, 8, 8)):
        tdlens.IntegratedGradients(cnn).attribute(x, target=0, baselines=good, n_steps=4)


def test_errors_are_tdlens_errors():
    """Every error above derives from TdlensError and the builtin a user would catch."""
    assert issubclass(InputError, TdlensError) and issubclass(InputError, ValueError)
    assert issubclass(InputTypeError, TypeError)
