"""Composed tensordict.nn pipelines: nested keys as inputs, outputs, targets and layers.

References are hand-written autograd in float64 with numpy's Gauss-Legendre nodes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn

import tdlens

N_STEPS = 24


def _nodes(n: int = N_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.tensor((x + 1) / 2), torch.tensor(w / 2)


def _ig_reference(fn, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """IG of the per-example scalar ``fn`` from ``base`` to ``x`` by explicit autograd."""
    alphas, weights = _nodes()
    total = torch.zeros_like(x)
    for a, w in zip(alphas, weights):
        point = (base + a * (x - base)).detach().requires_grad_()
        (grad,) = torch.autograd.grad(fn(point).sum(), point)
        total += w * grad
    return total * (x - base)


def _pipeline() -> TensorDictSequential:
    torch.manual_seed(0)
    enc = TensorDictModule(
        nn.Sequential(nn.Linear(4, 6), nn.Tanh()),
        in_keys=[("obs", "x")],
        out_keys=[("enc", "features")],
    )
    head = TensorDictModule(
        nn.Sequential(nn.Linear(6, 5), nn.Softplus(), nn.Linear(5, 3)),
        in_keys=[("enc", "features")],
        out_keys=[("head", "logits")],
    )
    return TensorDictSequential(enc, head).double().eval()


def _batch(b: int = 5) -> TensorDict:
    torch.manual_seed(1)
    return TensorDict({"obs": {"x": torch.randn(b, 4, dtype=torch.float64)}}, batch_size=[b])


def test_ig_to_first_input_and_intermediate_key_equals_autograd() -> None:
    model, td = _pipeline(), _batch()
    enc, head = model.module[0].module, model.module[1].module
    ig = tdlens.IntegratedGradients(model)
    attr = ig.attribute(td, target=1, output=("head", "logits"), n_steps=N_STEPS)
    assert isinstance(attr, TensorDict)
    x = td["obs", "x"]
    expected = _ig_reference(lambda p: head(enc(p))[:, 1], x, torch.zeros_like(x))
    torch.testing.assert_close(attr["obs", "x"], expected, atol=1e-6, rtol=0)

    # the intermediate key, by key and by the module path the hint names: baseline = enc(0)
    by_key = ig.attribute(
        td, target=1, output=("head", "logits"), layer=("enc", "features"), n_steps=N_STEPS
    )
    by_path = ig.attribute(
        td,
        target=1,
        output=("head", "logits"),
        layer="module.0:output[enc][features]",
        n_steps=N_STEPS,
    )
    features = enc(x)
    expected = _ig_reference(lambda f: head(f)[:, 1], features, enc(torch.zeros_like(x)))
    torch.testing.assert_close(by_key, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(by_path, by_key, atol=1e-12, rtol=0)


def test_output_as_module_of_key_and_targets_over_keys() -> None:
    model, td = _pipeline(), _batch()
    ig = tdlens.IntegratedGradients(model)
    many = ig.attribute(
        td,
        targets=[
            tdlens.Target(0, output=("head", "logits")),
            tdlens.Target(2, ("enc", "features")),
        ],
        n_steps=N_STEPS,
    )
    assert many["obs", "x"].shape == (5, 2, 4)
    single = ig.attribute(td, target=2, output=("enc", "features"), n_steps=N_STEPS)
    torch.testing.assert_close(many["obs", "x"][:, 1], single["obs", "x"], atol=1e-12, rtol=0)


def _actor_critic() -> TensorDictSequential:
    torch.manual_seed(2)
    body = TensorDictModule(
        nn.Sequential(nn.Linear(4, 8), nn.Tanh()), in_keys=["observation"], out_keys=["hidden"]
    )
    actor = TensorDictModule(nn.Linear(8, 2), in_keys=["hidden"], out_keys=[("actor", "logits")])
    critic = TensorDictModule(nn.Linear(8, 1), in_keys=["hidden"], out_keys=["state_value"])
    return TensorDictSequential(body, actor, critic).double().eval()


@pytest.mark.parametrize("method", ["IntegratedGradients", "Saliency", "Occlusion"])
def test_two_heads_mixed_targets_equal_single_calls(method: str) -> None:
    model = _actor_critic()
    td = TensorDict({"observation": torch.randn(6, 4, dtype=torch.float64)}, batch_size=[6])
    actions = torch.tensor([0, 1, 1, 0, 1, 0])
    explainer = getattr(tdlens, method)(model)
    options = {"sliding_window_shapes": (1,)} if method == "Occlusion" else {}
    mixed = explainer.attribute(
        td,
        targets=[
            tdlens.Target(actions, output=("actor", "logits")),
            tdlens.Target(0, "state_value"),
        ],
        **options,
    )
    logit = explainer.attribute(td, target=actions, output=("actor", "logits"), **options)
    value = explainer.attribute(td, target=0, output="state_value", **options)
    torch.testing.assert_close(mixed["observation"][:, 0], logit["observation"], atol=1e-10, rtol=0)
    torch.testing.assert_close(mixed["observation"][:, 1], value["observation"], atol=1e-10, rtol=0)


def test_trajectory_tensordict_gives_per_step_attributions() -> None:
    model = _actor_critic()
    torch.manual_seed(3)
    steps = TensorDict({"observation": torch.randn(7, 3, 4, dtype=torch.float64)}, [7, 3])
    ig = tdlens.IntegratedGradients(model)
    attr, delta = ig.attribute(
        steps, target=0, output="state_value", n_steps=8, return_convergence_delta=True
    )
    assert attr.batch_size == (7, 3) and attr["observation"].shape == (7, 3, 4)
    assert delta.shape == (7, 3)
    flat = ig.attribute(steps.reshape(-1), target=0, output="state_value", n_steps=8)
    torch.testing.assert_close(attr["observation"].reshape(21, 4), flat["observation"])
    # per-step targets in the trajectory's shape
    actions = torch.randint(0, 2, (7, 3))
    per_step = ig.attribute(steps, target=actions, output=("actor", "logits"), n_steps=8)
    flat = ig.attribute(
        steps.reshape(-1), target=actions.reshape(-1), output=("actor", "logits"), n_steps=8
    )
    torch.testing.assert_close(per_step["observation"].reshape(21, 4), flat["observation"])


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.fc = nn.Linear(4, 2)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(image * mask)


def test_wrong_input_key_raises_before_forward_with_valid_keys() -> None:
    model = _pipeline()
    calls = []
    model.module[0].module.register_forward_hook(lambda *a: calls.append(1))
    wrong = TensorDict({"obs": {"y": torch.randn(2, 4, dtype=torch.float64)}}, batch_size=[2])
    with pytest.raises(LookupError, match=r"\('obs', 'x'\)"):
        tdlens.IntegratedGradients(model).attribute(wrong, target=0)
    assert not calls

    plain = _Counting()
    x = {"imgae": torch.randn(2, 4), "mask": torch.ones(2, 4)}
    with pytest.raises(LookupError, match="'image', 'mask'"):
        tdlens.Saliency(plain).attribute(x, target=0)
    with pytest.raises(LookupError, match="requires"):
        tdlens.Saliency(plain).attribute({"image": torch.randn(2, 4)}, target=0)
    td = TensorDict({"image": torch.randn(2, 4), "maks": torch.ones(2, 4)}, batch_size=[2])
    with pytest.raises(LookupError, match="'image', 'mask'"):
        tdlens.Saliency(plain).attribute(td, target=0)
    assert plain.calls == 0


def test_tensordict_module_layer_hint_names_real_keys_and_refuses_inputs() -> None:
    """Defect: the hint said '[0]', which selected the module's *input* and gave zeros."""
    model, td = _pipeline(), _batch()
    ig = tdlens.IntegratedGradients(model)
    with pytest.raises(TypeError, match=r"\('enc', 'features'\)"):
        ig.attribute(td, target=0, layer="module.0")
    with pytest.raises(LookupError, match="input the module reads"):
        ig.attribute(td, target=0, layer="module.0:output[obs][x]")
    with pytest.raises(LookupError, match="by key"):
        ig.attribute(td, target=0, layer="module.0:output[0]")
    by_key = ig.attribute(td, target=0, layer=("enc", "features"))
    assert by_key.abs().sum() > 0
    with pytest.raises(TypeError, match=r"output=\('head', 'logits'\)"):
        ig.attribute(td, target=0, output="module.1")


def test_callable_target_gets_each_rows_example() -> None:
    """Defect: a callable saw [B * n_steps] rows with no way to line up per-example data."""
    model = _actor_critic()
    td = TensorDict(
        {
            "observation": torch.randn(4, 4, dtype=torch.float64),
            "action": torch.tensor([1, 0, 0, 1]),
        },
        batch_size=[4],
    )

    def log_prob(logits: torch.Tensor, batch: TensorDict) -> torch.Tensor:
        return torch.distributions.Categorical(logits=logits).log_prob(batch["action"])

    for method, options in [
        ("IntegratedGradients", {"n_steps": 10, "internal_batch_size": 7}),
        ("IntegratedGradients", {"n_steps": 10}),
        ("NoiseTunnel", {"nt_samples": 3, "stdevs": 0.1, "seed": 0}),
        ("FeatureAblation", {}),
        ("ShapleyValueSampling", {"n_samples": 2, "seed": 0}),
    ]:
        if method == "NoiseTunnel":
            explainer = tdlens.NoiseTunnel(tdlens.Saliency(model))
        else:
            explainer = getattr(tdlens, method)(model)
        got = explainer.attribute(td, target=log_prob, output=("actor", "logits"), **options)
        assert got["observation"].shape == (4, 4), method
    # equals the per-example integer target on log_softmax
    ig = tdlens.IntegratedGradients(model)
    got = ig.attribute(td, target=log_prob, output=("actor", "logits"), n_steps=10)
    want = ig.attribute(
        td,
        target=lambda out: torch.log_softmax(out, -1)[:, 0] * 0,  # shape check only
        output=("actor", "logits"),
        n_steps=10,
    )
    assert want["observation"].abs().sum() == 0
    log_softmax = TensorDictSequential(
        model, TensorDictModule(lambda z: torch.log_softmax(z, -1), [("actor", "logits")], ["lp"])
    )
    ref = tdlens.IntegratedGradients(log_softmax).attribute(
        td, target=td["action"], output="lp", n_steps=10
    )
    torch.testing.assert_close(got["observation"], ref["observation"], atol=1e-10, rtol=0)
