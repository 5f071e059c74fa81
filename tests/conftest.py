"""Shared fixtures: tiny seeded models with float64 weights, and the model-untouched check."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn

warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
warnings.filterwarnings("ignore", message="Setting forward, backward hooks and attributes")


def model_state(model: nn.Module) -> dict:
    """Everything the 'model is never changed' promise covers, as comparable values."""
    modules = dict(model.named_modules())
    return {
        "hooks": {
            name: (
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(m._backward_pre_hooks),
                len(getattr(m, "_state_dict_hooks", {})),
            )
            for name, m in modules.items()
        },
        "global_hooks": (
            len(nn.modules.module._global_forward_hooks),
            len(nn.modules.module._global_forward_pre_hooks),
            len(nn.modules.module._global_backward_hooks),
        ),
        "tensors": {
            name: t.detach().clone()
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        },
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "training": {name: m.training for name, m in modules.items()},
        "grads": {name: p.grad is None for name, p in model.named_parameters()},
        "classes": {name: type(m) for name, m in modules.items()},
        "forward": {
            name: m.forward.__func__ if hasattr(m.forward, "__func__") else m.forward
            for name, m in modules.items()
        },
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = model_state(model)
    for key in (
        "hooks",
        "global_hooks",
        "requires_grad",
        "training",
        "grads",
        "classes",
        "forward",
    ):
        assert after[key] == before[key], key
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, value in before["tensors"].items():
        assert torch.equal(after["tensors"][name], value), name


class MLP(nn.Module):
    def __init__(self, sizes=(6, 8, 8, 4)):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        return self.head(x.flatten(1))


class TwoInput(nn.Module):
    """Two positional inputs, smooth (tanh) so integration rules differ measurably."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(3, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x, y):
        return self.head(torch.tanh(self.a(x) + self.b(y)))


class DictInput(nn.Module):
    """Keyword inputs, one of them an integer mask passed through unchanged."""

    def __init__(self):
        super().__init__()
        self.img = nn.Linear(5, 4)
        self.tab = nn.Linear(2, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, image, table, mask):
        return self.head(torch.sigmoid(self.img(image) + self.tab(table)) * mask.unsqueeze(1))


class TupleOutput(nn.Module):
    """Returns (logits, value): an actor-critic style pair of heads."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
        self.policy = nn.Linear(7, 4)
        self.value = nn.Linear(7, 1)

    def forward(self, x):
        h = self.body(x)
        return self.policy(h), self.value(h).squeeze(-1)


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    return model.double().eval()


@pytest.fixture
def mlp():
    return seeded(MLP())


@pytest.fixture
def cnn():
    return seeded(CNN())


@pytest.fixture
def two_input():
    return seeded(TwoInput())


@pytest.fixture
def dict_input():
    return seeded(DictInput())


@pytest.fixture
def tuple_output():
    return seeded(TupleOutput())


def randn(*shape, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)
