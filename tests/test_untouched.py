"""The model is never changed: no hook left, same parameters, buffers and flags."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdlens
from tests.conftest import CNN, assert_untouched, model_state, randn, seeded


class BatchNormNet(nn.Module):
    """Has buffers and a train-mode flag that a careless method would change."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.norm = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.lin(x))))


class Exploding(nn.Module):
    """Raises inside forward after its first layer ran (so hooks there have fired)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        self.lin(x)
        raise RuntimeError("boom")


METHODS = [
    lambda m: tdlens.Saliency(m),
    lambda m: tdlens.InputXGradient(m),
    lambda m: tdlens.IntegratedGradients(m, n_steps=4),
]


@pytest.mark.parametrize("make", METHODS)
@pytest.mark.parametrize("kwargs", [{}, {"layer": "lin"}, {"output": "lin"}, {"layer": "norm"}])
def test_methods_leave_model_untouched(make, kwargs):
    model = seeded(BatchNormNet()).eval()
    model.lin.weight.requires_grad_(False)  # a mix of frozen and trainable parameters
    before = model_state(model)
    make(model).attribute(randn(5, 4), targets=[0, 1], **kwargs)
    assert_untouched(model, before)


def test_train_mode_model_stays_in_train_mode():
    model = seeded(BatchNormNet()).train()
    before = model_state(model)
    tdlens.IntegratedGradients(model).attribute(randn(5, 4), target=0, n_steps=3)
    before["tensors"] = {
        k: v for k, v in before["tensors"].items() if "running" not in k and "num_batches" not in k
    }
    after = model_state(model)
    assert after["training"] == before["training"] and all(after["training"].values())
    assert after["hooks"] == before["hooks"]


@pytest.mark.parametrize("make", METHODS)
@pytest.mark.parametrize("kwargs", [{}, {"layer": "lin"}, {"output": "lin", "target": 0}])
def test_model_untouched_after_forward_raises(make, kwargs):
    model = seeded(Exploding())
    before = model_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        kwargs = {"target": 0, **kwargs}
        if "output" in kwargs:  # explaining `lin` stops the forward before the raise
            make(model).attribute(randn(2, 4), **kwargs)
            raise RuntimeError("boom")
        make(model).attribute(randn(2, 4), **kwargs)
    assert_untouched(model, before)


def test_model_untouched_after_bad_target():
    model = seeded(CNN())
    before = model_state(model)
    with pytest.raises(tdlens.TdlensError):
        tdlens.IntegratedGradients(model).attribute(randn(2, 1, 8, 8), target=99, layer="conv1")
    assert_untouched(model, before)


def test_scope_leaves_model_untouched_even_on_exception():
    model = seeded(CNN())
    before = model_state(model)
    with pytest.raises(ValueError, match="inside"):
        with tdlens.Scope(model) as scope:
            scope.get("conv*", grad=True)
            scope.set("relu1", lambda out: out * 0.5)
            model(randn(2, 1, 8, 8)).sum().backward()
            raise ValueError("inside the scope")
    for p in model.parameters():  # the backward above filled .grad: that is the user's doing
        p.grad = None
    assert_untouched(model, before)


def test_inputs_are_not_modified(mlp):
    x = randn(3, 6)
    x_copy = x.clone()
    tdlens.IntegratedGradients(mlp).attribute(x, target=0)
    assert torch.equal(x, x_copy) and not x.requires_grad and x.grad is None


def test_works_under_no_grad_and_inference_mode(mlp):
    x = randn(3, 6)
    expected = tdlens.Saliency(mlp).attribute(x, target=0)
    with torch.no_grad():
        torch.testing.assert_close(tdlens.Saliency(mlp).attribute(x, target=0), expected)
    with torch.inference_mode():
        x_inf = x.clone()
    torch.testing.assert_close(tdlens.Saliency(mlp).attribute(x_inf, target=0), expected)
