"""Helpers for the gradient-family tests: the model zoo, captum with tdlens's random draws.

The sampling methods (NoiseTunnel, GradientShap) draw from a torch generator in a documented
order; captum draws noise with ``torch.normal`` and baseline indices and alphas with numpy's
global generator. To compare exactly, :func:`captum_draws` makes captum use the very numbers
tdlens draws: it replaces captum's noise function and numpy's ``choice``/``uniform`` for the
duration of one call, re-drawing tdlens's sequence from the same seed and laying it out as
captum does (``repeat_interleave``: row ``example * S + sample``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch
from captum.attr._core.noise_tunnel import NoiseTunnel as CaptumNoiseTunnel
from torch import nn

from tests.conftest import CNN, MLP, TwoInput, randn, seeded

TOL = dict(atol=1e-6, rtol=1e-6)


class ReusedActivation(nn.Module):
    """A CNN whose one ReLU module runs twice (after each convolution)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(4 * 3 * 3, 4)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = self.pool(self.act(self.conv2(x)))
        return self.head(x.flatten(1))


def close(ours, theirs):
    """Equal to 1e-6 (tuples elementwise), shapes included."""
    if isinstance(ours, (tuple, list)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            close(a, b)
        return
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), **TOL)


# name -> (model, inputs); every model has a convolution-free path for the MLP-only methods
MODELS = ["mlp", "cnn", "two_input", "reused"]


def make_model(name: str):
    """A seeded float64 model and a batch of 3 inputs for it."""
    if name == "mlp":
        return seeded(MLP()), randn(3, 6)
    if name == "cnn":
        return seeded(CNN()), randn(3, 1, 8, 8)
    if name == "two_input":
        return seeded(TwoInput()), (randn(3, 4), randn(3, 3, seed=2))
    if name == "reused":
        return seeded(ReusedActivation()), randn(3, 2, 6, 6)
    raise KeyError(name)


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def tdlens_draws(
    inputs: Sequence[torch.Tensor],
    n_samples: int,
    stdevs: Sequence[float],
    seed: int,
    n_baselines: int | None = None,
    with_alphas: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor]]:
    """What tdlens draws from ``torch.Generator().manual_seed(seed)``, in its order: baseline
    indices ``[S, B]`` (when ``n_baselines`` is given), alphas ``[S, B]`` (GradientShap), then
    per sample one normal per input (in its dtype) with a non-zero stdev. Returned in captum's
    layout: indices and alphas flattened example-major, noise ``[B * S, ...]`` per input."""
    generator = torch.Generator().manual_seed(seed)
    b = inputs[0].shape[0]
    indices = alphas = None
    if n_baselines is not None:
        indices = torch.randint(n_baselines, (n_samples, b), generator=generator)
    if n_baselines is not None and with_alphas:
        alphas = torch.rand((n_samples, b), generator=generator, dtype=torch.float64)
    drawn: list[list[torch.Tensor]] = [[] for _ in inputs]
    for _ in range(n_samples):
        for i, x in enumerate(inputs):
            if stdevs[i]:
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
                drawn[i].append(noise * stdevs[i])
    noise = [
        torch.stack(d).transpose(0, 1).reshape(-1, *x.shape[1:])
        if d
        else torch.zeros(b * n_samples, *x.shape[1:], dtype=x.dtype)
        for d, x in zip(drawn, inputs)
    ]

    def example_major(t):
        return None if t is None else t.T.reshape(-1)

    return example_major(indices), example_major(alphas), noise


@contextlib.contextmanager
def captum_draws(
    inputs,
    n_samples: int,
    stdevs,
    seed: int,
    n_baselines: int | None = None,
    with_alphas: bool = True,
) -> Iterator[None]:
    """Inside, captum's NoiseTunnel noise and numpy draws (baseline indices, GradientShap's
    alphas) are tdlens's."""
    inputs = as_tuple(inputs)
    stdevs = stdevs if isinstance(stdevs, tuple) else (stdevs,) * len(inputs)
    indices, alphas, noise = tdlens_draws(inputs, n_samples, stdevs, seed, n_baselines, with_alphas)
    calls = iter(noise)  # captum adds noise to the inputs in order, once each (one partition)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            CaptumNoiseTunnel,
            "_add_noise_to_input",
            staticmethod(lambda x, _stdev, n: x.repeat_interleave(n, dim=0) + next(calls)),
        )
        if indices is not None:
            patch.setattr(np.random, "choice", lambda _n, _size: indices.numpy().copy())
        if alphas is not None:
            patch.setattr(np.random, "uniform", lambda _lo, _hi, _size: alphas.numpy().copy())
        yield
