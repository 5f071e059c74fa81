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


TRAIN_MODE_CALLS = {
    "Saliency": lambda m, x: tdlens.Saliency(m).attribute(x, targets=[0, 1]),
    "IntegratedGradients": lambda m, x: tdlens.IntegratedGradients(m).attribute(
        x, target=0, n_steps=3, internal_batch_size=4
    ),
    "SmoothGrad": lambda m, x: tdlens.SmoothGrad(m).attribute(x, target=0, nt_samples=3, seed=0),
    "GradientShap": lambda m, x: tdlens.GradientShap(m).attribute(x, randn(2, 4), target=0),
    "DeepLift": lambda m, x: tdlens.DeepLift(m).attribute(x, target=0),
    "Conductance": lambda m, x: tdlens.Conductance(m).attribute(x, target=0, layer="norm"),
    "FeatureAblation": lambda m, x: tdlens.FeatureAblation(m).attribute(x, target=0),
    "Occlusion": lambda m, x: tdlens.Occlusion(m).attribute(x, (2,), target=0),
    "KernelShap": lambda m, x: tdlens.KernelShap(m).attribute(x, target=0, n_samples=8, seed=0),
    "infidelity": lambda m, x: tdlens.metrics.infidelity(
        m, lambda x: (0.1 * torch.ones_like(x), x - 0.1), x, torch.ones_like(x), target=0
    ),
}


@pytest.mark.parametrize("call", TRAIN_MODE_CALLS.values(), ids=TRAIN_MODE_CALLS)
def test_train_mode_batchnorm_statistics_are_restored(call):
    """In training mode every forward pass updates BatchNorm's running statistics (in place,
    without bumping their version); the call puts them back: same values, same tensors."""
    model = seeded(BatchNormNet()).train()
    before = model_state(model)
    buffers = dict(model.named_buffers())
    call(model, randn(5, 4))
    assert_untouched(model, before)
    assert all(after is buffers[name] for name, after in model.named_buffers())
    assert all(model_state(model)["training"].values())


def test_train_mode_buffers_are_restored_after_an_exception():
    model = seeded(BatchNormNet()).train()
    before = model_state(model)

    def explode(*_args):
        if model.norm.num_batches_tracked > 2:
            raise RuntimeError("boom")

    handle = model.head.register_forward_pre_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            tdlens.IntegratedGradients(model).attribute(
                randn(5, 4), target=0, n_steps=4, internal_batch_size=5
            )
    finally:
        handle.remove()
    assert_untouched(model, before)


def test_a_replaced_buffer_is_put_back():
    """A module that assigns a new tensor to its buffer in forward gets the original back."""

    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls = self.calls + 1
            return self.lin(x)

    model = seeded(Counter()).train()
    original = model.calls
    tdlens.Saliency(model).attribute(randn(5, 4), target=0)
    assert model.calls is original and float(original) == 0.0


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
