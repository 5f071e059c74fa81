"""RL policies written with tensordict.nn: the taken action's log-probability explained."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
)
from torch import nn
from torch.distributions import Categorical, Normal

import tdlens


def _categorical_policy() -> tuple[ProbabilisticTensorDictSequential, nn.Module]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    policy = ProbabilisticTensorDictSequential(
        TensorDictModule(net, in_keys=["observation"], out_keys=["logits"]),
        ProbabilisticTensorDictModule(
            in_keys=["logits"],
            out_keys=["action"],
            distribution_class=Categorical,
            return_log_prob=True,
        ),
    )
    return policy.eval(), net


def _steps(b: int = 6) -> TensorDict:
    torch.manual_seed(1)
    return TensorDict(
        {
            "observation": torch.randn(b, 4, dtype=torch.float64),
            "action": torch.randint(0, 3, (b,)),
        },
        batch_size=[b],
    )


def _log_prob(logits: torch.Tensor, batch: TensorDict) -> torch.Tensor:
    return Categorical(logits=logits).log_prob(batch["action"])


def test_taken_action_log_prob_saliency_equals_autograd() -> None:
    policy, net = _categorical_policy()
    td = _steps()
    got = tdlens.Saliency(policy).attribute(td, target=_log_prob, output="logits", abs=False)
    x = td["observation"].clone().requires_grad_()
    (grad,) = torch.autograd.grad(Categorical(logits=net(x)).log_prob(td["action"]).sum(), x)
    torch.testing.assert_close(got["observation"], grad, atol=1e-12, rtol=0)
    assert set(got.keys()) == {"observation"}  # the integer action is passed through


def test_taken_action_log_prob_ig_is_complete_and_per_logit_targets() -> None:
    policy, net = _categorical_policy()
    td = _steps()
    ig = tdlens.IntegratedGradients(policy)
    attr, delta = ig.attribute(
        td, target=_log_prob, output="logits", n_steps=64, return_convergence_delta=True
    )
    assert delta.abs().max() < 1e-6
    zeros = torch.zeros_like(td["observation"])
    gap = _log_prob(net(td["observation"]), td) - _log_prob(net(zeros), td)
    torch.testing.assert_close(attr["observation"].sum(-1), gap, atol=1e-6, rtol=0)
    # each action logit in one call equals the single calls
    each = ig.attribute(td, targets=[0, 1, 2], output="logits", n_steps=16)
    one = ig.attribute(td, target=2, output="logits", n_steps=16)
    torch.testing.assert_close(each["observation"][:, 2], one["observation"], atol=1e-12, rtol=0)


def test_gaussian_policy_log_prob_over_a_trajectory() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    policy = TensorDictModule(net, in_keys=["observation"], out_keys=["params"]).eval()

    def log_prob(params: torch.Tensor, batch: TensorDict) -> torch.Tensor:
        loc, scale = params[:, :2], nn.functional.softplus(params[:, 2:]) + 1e-3
        return Normal(loc, scale).log_prob(batch["action"]).sum(-1)

    steps = TensorDict(
        {
            "observation": torch.randn(5, 2, 3, dtype=torch.float64),
            "action": torch.randn(5, 2, 2, dtype=torch.float64),
        },
        batch_size=[5, 2],
    )
    got = tdlens.Saliency(policy).attribute(
        steps, target=log_prob, output="params", keys=["observation"], abs=False
    )
    assert got["observation"].shape == (5, 2, 3)
    x = steps["observation"].clone().requires_grad_()
    (grad,) = torch.autograd.grad(log_prob(net(x.reshape(10, 3)), steps.reshape(-1)).sum(), x)
    torch.testing.assert_close(got["observation"], grad, atol=1e-12, rtol=0)
