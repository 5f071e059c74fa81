"""How the gradient engine chunks rows without internal_batch_size: the memory budget, the
bytes per row it measures (weights not counted) and remembers, and the example-major order
of whole-sample chunks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdlens
from tdlens.attribution import engine
from tests.conftest import randn


class Counting(nn.Module):
    """A CNN that counts its forward calls and the rows of each."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(4 * 4 * 4, 3),
        ).double()  # fmt: skip
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return self.net(x)


@pytest.fixture
def small_budget(monkeypatch):
    """A CPU budget of about 6 rows of the Counting model, so chunking shows on tiny inputs."""
    model, x = Counting(), randn(2, 1, 8, 8, seed=1)
    saved = {}
    measured = engine.ChunkPlan.measured

    def spy(plan, total, rows, device):
        saved["per_row"] = total // rows
        measured(plan, total, rows, device)

    monkeypatch.setattr(engine.ChunkPlan, "measured", spy)
    monkeypatch.setattr(engine, "PROBE_ROWS", 4)
    tdlens.IntegratedGradients(Counting()).attribute(x, target=0, n_steps=8)
    monkeypatch.setitem(engine.MEMORY_BUDGET, "cpu", 6 * saved["per_row"])
    return model, x


def test_default_chunks_follow_the_budget_and_equal_one_chunk(small_budget):
    model, x = small_budget
    ours = tdlens.IntegratedGradients(model).attribute(x, target=0, n_steps=8)
    # a probe of 4 rows (2 whole samples), then the other 12 rows in chunks of at most 6
    # rows (the budget), whole samples of B=2, as even as can be
    assert model.rows == [4, 6, 6]
    whole = tdlens.IntegratedGradients(model).attribute(
        x, target=0, n_steps=8, internal_batch_size=16
    )
    torch.testing.assert_close(ours, whole, rtol=1e-12, atol=1e-12)


def test_several_targets_halve_the_budget(small_budget):
    """With K > 1 the graph is kept for K backward passes, each with its temporaries: the
    chunks save at most half the budget (3 rows here, so one whole sample of B=2 each)."""
    model, x = small_budget
    ig = tdlens.IntegratedGradients(model)
    ig.attribute(x, target=0, n_steps=8)  # measured: later calls plan up front
    model.rows.clear()
    ours = ig.attribute(x, targets=[0, 2], n_steps=8)
    assert model.rows == [2] * 8
    whole = ig.attribute(x, targets=[0, 2], n_steps=8, internal_batch_size=16)
    torch.testing.assert_close(ours, whole, rtol=1e-12, atol=1e-12)


def test_bytes_per_row_are_remembered_per_model_and_layout(small_budget):
    model, x = small_budget
    ig = tdlens.IntegratedGradients(model)
    ig.attribute(x, target=0, n_steps=8)
    first = list(model.rows)
    model.rows.clear()
    ig.attribute(x, target=0, n_steps=8)
    assert first == [4, 6, 6]  # measured on the first 4 rows
    assert model.rows == [6, 6, 4]  # planned up front, no probe
    model.rows.clear()
    ig.attribute(randn(3, 1, 8, 8, seed=2), target=0, n_steps=8)  # B=3, same row layout
    assert model.rows == [6, 6, 6, 6]
    model.rows.clear()
    ig.attribute(x, target=0, n_steps=8, layer="net.1")  # another layout: measured again
    assert model.rows[0] == 4


def test_weights_whose_first_dim_equals_the_rows_are_not_activations(monkeypatch):
    """A convolution with 32 output channels on a probe of 32 rows saves its weight, shaped
    [32, ...]: only the input counts as bytes per row."""
    model = nn.Sequential(nn.Conv2d(16, 32, 5), nn.Flatten()).double()
    seen = {}
    measured = engine.ChunkPlan.measured

    def spy(plan, total, rows, device):
        seen["per_row"] = total // rows
        measured(plan, total, rows, device)

    monkeypatch.setattr(engine.ChunkPlan, "measured", spy)
    tdlens.Saliency(model).attribute(randn(40, 16, 5, 5, seed=3), target=1)
    assert seen["per_row"] == 16 * 5 * 5 * 8  # the saved input row, float64


@pytest.mark.parametrize("name", ["IntegratedGradients", "GradientShap", "SmoothGrad"])
def test_example_major_chunks_equal_single_sample_chunks(name):
    """Whole-sample chunks run example by example; one sample per chunk runs in the original
    order: the results agree."""
    model, x = Counting(), randn(3, 1, 8, 8, seed=4)
    method = getattr(tdlens, name)(model)
    options = {
        "IntegratedGradients": {"n_steps": 6},
        "GradientShap": {"baselines": randn(4, 1, 8, 8, seed=5), "n_samples": 6, "seed": 0},
        "SmoothGrad": {"nt_samples": 6, "stdevs": 0.2, "seed": 0},
    }[name]
    run = method.attribute(x, targets=[0, 1], **options)
    single = dict(options)
    single["nt_samples_batch_size" if name == "SmoothGrad" else "internal_batch_size"] = (
        1 if name == "SmoothGrad" else 3
    )
    torch.testing.assert_close(run, method.attribute(x, targets=[0, 1], **single))


def test_a_call_that_fits_one_probe_runs_one_chunk_without_the_memo(monkeypatch, small_budget):
    """At most PROBE_ROWS rows run as one chunk: no layout key is computed, nothing measured,
    even where the memo would split them (the probe itself would have run them at once)."""
    model, x = small_budget
    ig = tdlens.IntegratedGradients(model)
    ig.attribute(x, target=0, n_steps=8)  # 16 rows: the memo now holds this layout
    calls = []
    layout = engine.GradientEngine._layout

    def spy(self, *args):
        calls.append(args)
        return layout(self, *args)

    monkeypatch.setattr(engine.GradientEngine, "_layout", spy)
    model.rows.clear()
    ig.attribute(x, target=0, n_steps=2)  # 4 rows = PROBE_ROWS
    assert model.rows == [4] and calls == []
    ig.attribute(x, target=0, n_steps=8)
    assert model.rows[1:] == [6, 6, 4] and len(calls) == 1  # the memo's plan, no probe
