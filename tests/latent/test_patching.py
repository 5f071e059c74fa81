"""latent.patch: batched activation-patching sweeps, checked against single patches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdlens
from tdlens import latent
from tests.conftest import assert_untouched, model_state, randn
from tests.latent.models import induction, induction_prompts, tiny_gpt2

INDUCTION_RESTORED = 0.8  # share of the clean-corrupted logit difference the head restores


def loop_reference(model, clean, corrupted, paths, positions, metric):
    with torch.no_grad():
        base = metric(model(corrupted))
    out = torch.empty(clean.shape[0], len(paths), len(positions), dtype=torch.float64)
    for i, path in enumerate(paths):
        with tdlens.Scope(model) as scope:
            scope.get(path, name="clean")
            scope.run(clean)
        cached = scope.cache["clean"]
        for j, t in enumerate(positions):
            with tdlens.Scope(model) as scope, torch.no_grad():
                scope.set(f"{path}[:, {t}]", cached[:, t])
                out[:, i, j] = metric(model(corrupted)) - base
    return out


def test_patching_the_induction_head_restores_the_logit_difference():
    model = induction()
    clean, corrupted, correct, wrong = induction_prompts(n=16)
    metric = latent.logit_diff(correct, wrong)
    res = latent.patch(
        model, clean, corrupted, paths="blocks.*.attn", metric=metric, normalize=True
    )
    assert res.scores.shape == (2, 24) and res.paths == ["blocks.0.attn", "blocks.1.attn"]
    assert float(res.clean_metric.mean()) > float(res.corrupted_metric.mean()) + 3
    restored = float(res.scores[1, -1])  # layer 1's attention at the last position
    assert restored >= INDUCTION_RESTORED, restored
    # per head: this model spreads induction over its four layer-1 heads (each restores
    # 0.18-0.27 of the difference alone, measured); layer 0 at the last position matters little
    heads = latent.patch(
        model,
        clean,
        corrupted,
        paths="blocks.1.attn.o:input",
        metric=metric,
        positions=[-1],
        heads=4,
        normalize=True,
    )
    assert heads.scores.shape == (1, 4, 1)
    assert bool((heads.scores > 0.1).all()), heads.scores
    assert abs(float(res.scores[0, -1])) < 0.2


@pytest.fixture(scope="module")
def induction_loop():
    """The induction model, prompts, and the hand-written loop's result (computed once)."""
    model = induction()
    clean, corrupted, correct, wrong = induction_prompts(n=6)
    metric = latent.logit_diff(correct, wrong)
    paths = ["blocks.0", "blocks.1.attn"]
    expected = loop_reference(model, clean, corrupted, paths, range(24), metric)
    return model, clean, corrupted, metric, paths, expected


@pytest.mark.parametrize("batch_size", [None, 6, 18])
def test_sweep_equals_a_loop_of_single_patches(induction_loop, batch_size):
    model, clean, corrupted, metric, paths, expected = induction_loop
    res = latent.patch(model, clean, corrupted, paths=paths, metric=metric, batch_size=batch_size)
    torch.testing.assert_close(res.per_example, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.scores, expected.mean(0), atol=1e-6, rtol=0)
    if batch_size is None:
        assert res.forward_passes < 2 + 48  # batched: fewer passes than cells


def test_sweep_on_gpt2_equals_the_loop_and_whole_activation_patching():
    model = tiny_gpt2()
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(1, 97, (3, 7), generator=gen)
    corrupted = torch.randint(1, 97, (3, 7), generator=gen)
    metric = latent.logit_diff(5, 9)
    res = latent.patch(model, clean, corrupted, paths="transformer.h.*", metric=metric)
    paths = ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
    assert res.paths == paths
    # the loop reference, one Scope per cell
    with torch.no_grad():
        base = metric(model(corrupted).logits)
    for i, path in enumerate(paths):
        with tdlens.Scope(model) as scope:
            scope.get(path, name="clean")
            scope.run(clean)
        cached = scope.cache["clean"]
        for t in (0, 3, 6):
            with tdlens.Scope(model) as scope, torch.no_grad():
                scope.set(f"{path}[:, {t}]", cached[:, t])
                expected = metric(model(corrupted).logits) - base
            torch.testing.assert_close(res.per_example[:, i, t], expected, atol=1e-6, rtol=0)
    whole = latent.patch(
        model, clean, corrupted, paths="transformer.h.*", metric=metric, positions=None
    )
    assert whole.scores.shape == (3,)
    # patching the last block's whole output gives the clean logits: the full difference
    torch.testing.assert_close(
        whole.per_example[:, 2], res.clean_metric - res.corrupted_metric, atol=1e-6, rtol=0
    )


def test_heads_from_the_config_and_metric_kinds():
    model = tiny_gpt2()
    gen = torch.Generator().manual_seed(2)
    clean, corrupted = (
        torch.randint(1, 97, (2, 5), generator=gen),
        torch.randint(1, 97, (2, 5), generator=gen),
    )
    with torch.no_grad():
        reference = model(clean).logits
    for metric in (latent.prob(4), latent.kl(reference), lambda out: out[:, -1, 3]):
        res = latent.patch(
            model,
            clean,
            corrupted,
            paths="transformer.h.1.attn.c_proj:input",
            metric=metric,
            heads=True,
            positions=[-1, 2],
        )
        assert res.scores.shape == (1, 4, 2) and res.n_heads == 4
        assert torch.isfinite(res.scores).all()


def test_model_untouched_also_after_an_exception():
    model = induction()
    clean, corrupted, correct, wrong = induction_prompts(n=3)
    before = model_state(model)
    latent.patch(
        model, clean, corrupted, paths="blocks.*", metric=latent.logit_diff(correct, wrong)
    )
    assert_untouched(model, before)
    calls = []

    def failing(out):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("metric failed")
        return out[:, -1, 0]

    with pytest.raises(RuntimeError, match="metric failed"):
        latent.patch(model, clean, corrupted, paths="blocks.*", metric=failing)
    assert_untouched(model, before)


def test_errors_show_shapes_and_ranges():
    model = induction()
    clean, corrupted, correct, wrong = induction_prompts(n=3)
    metric = latent.logit_diff(correct, wrong)
    with pytest.raises(ValueError, match=r"clean \[3, 24\], corrupted \[3, 20\]"):
        latent.patch(model, clean, corrupted[:, :20], paths="blocks.0", metric=metric)
    with pytest.raises(ValueError, match=r"positions \[30\] do not exist.*0\.\.23"):
        latent.patch(model, clean, corrupted, paths="blocks.0", metric=metric, positions=[30])
    with pytest.raises(LookupError, match="did you mean"):
        latent.patch(model, clean, corrupted, paths="block.0", metric=metric)
    with pytest.raises(ValueError, match="one value per example"):
        latent.patch(model, clean, corrupted, paths="blocks.0", metric=lambda out: out.sum())


def test_train_mode_batchnorm_statistics_are_restored():
    """Patching and AtP run the model many times; a train-mode BatchNorm's running
    statistics are put back afterwards."""
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    model = model.double().train()
    clean, corrupted = randn(5, 4), randn(5, 4, seed=2)
    before = model_state(model)
    metric = latent.logit_diff(0, 1)
    latent.patch(model, clean, corrupted, paths=["0", "2"], metric=metric, positions=None)
    assert_untouched(model, before)
    latent.attribution_patching(model, clean, corrupted, paths="0", metric=metric, positions=None)
    assert_untouched(model, before)
