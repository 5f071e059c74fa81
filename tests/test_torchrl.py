"""torchrl's ProbabilisticActor and ValueOperator (skipped where torchrl is not installed).

torchrl 0.14.1 declares ``tensordict<0.15``; installed with ``pip install --no-deps
torchrl==0.14.1`` it runs on the project's tensordict 0.15.3 (docs/rl.md).
"""

from __future__ import annotations

import multiprocessing
import warnings

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torch.distributions import Categorical

import tdlens

# Importing torchrl switches multiprocessing's start method to 'spawn' for the whole process;
# put the previous one back so later tests (data loader workers) run as they would without it.
_start_method = multiprocessing.get_start_method(allow_none=True)
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torchrl_modules = pytest.importorskip("torchrl.modules")
finally:
    multiprocessing.set_start_method(_start_method, force=True)


def test_probabilistic_actor_and_value_operator() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    actor = torchrl_modules.ProbabilisticActor(
        TensorDictModule(net, ["observation"], ["logits"]),
        in_keys=["logits"],
        out_keys=["action"],
        distribution_class=Categorical,
        return_log_prob=True,
    )
    value_net = nn.Linear(4, 1).double()
    critic = torchrl_modules.ValueOperator(value_net, in_keys=["observation"])
    td = TensorDict(
        {
            "observation": torch.randn(5, 4, dtype=torch.float64),
            "action": torch.randint(0, 2, (5,)),
        },
        batch_size=[5],
    )
    got = tdlens.Saliency(actor).attribute(
        td,
        target=lambda logits, rows: Categorical(logits=logits).log_prob(rows["action"]),
        output="logits",
        abs=False,
    )
    x = td["observation"].clone().requires_grad_()
    (grad,) = torch.autograd.grad(Categorical(logits=net(x)).log_prob(td["action"]).sum(), x)
    torch.testing.assert_close(got["observation"], grad, atol=1e-12, rtol=0)
    value = tdlens.IntegratedGradients(critic).attribute(td, target=0, output="state_value")
    expected = value_net.weight[0].detach() * td["observation"]  # linear: IG = w * x
    torch.testing.assert_close(value["observation"], expected, atol=1e-10, rtol=0)
    with pytest.raises(LookupError, match="observation"):
        tdlens.Saliency(critic).attribute(TensorDict({"obs": td["observation"]}, [5]), target=0)
