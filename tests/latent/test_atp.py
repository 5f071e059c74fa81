"""latent.attribution_patching: AtP and AtP* against the exact sweep."""

from __future__ import annotations

import pytest
import torch

from tdlens import latent
from tests.conftest import assert_untouched, model_state
from tests.latent.models import induction, induction_prompts, tiny_gpt2

INDUCTION_PEARSON = 0.8


def test_atp_correlates_with_the_exact_sweep_on_the_induction_model():
    model = induction()
    clean, corrupted, correct, wrong = induction_prompts(n=16)
    metric = latent.logit_diff(correct, wrong)
    paths = ["blocks.0.attn", "blocks.1.attn"]
    before = model_state(model)
    approx = latent.attribution_patching(model, clean, corrupted, paths=paths, metric=metric)
    assert_untouched(model, before)
    exact = latent.patch(model, clean, corrupted, paths=paths, metric=metric)
    assert approx.scores.shape == exact.scores.shape and approx.forward_passes == 2
    corr = approx.correlation(exact)
    assert corr["pearson"] >= INDUCTION_PEARSON, corr


def test_atp_is_exact_for_a_patch_that_acts_linearly():
    """Patching the last block's output changes the logits linearly: AtP is exact there."""
    model = induction()
    clean, corrupted, correct, wrong = induction_prompts(n=4)
    metric = latent.logit_diff(correct, wrong)
    approx = latent.attribution_patching(model, clean, corrupted, paths="blocks.1", metric=metric)
    exact = latent.patch(model, clean, corrupted, paths="blocks.1", metric=metric)
    torch.testing.assert_close(approx.per_example, exact.per_example, atol=1e-9, rtol=1e-9)


def test_atp_star_qk_fix_is_exact_up_to_the_pattern():
    """With the QK fix a key patch is computed exactly up to the attention pattern; when the
    pattern feeds the metric linearly (the last layer, values fixed) that is exact."""
    model = induction()
    clean, corrupted, correct, wrong = induction_prompts(n=6)
    metric = latent.logit_diff(correct, wrong)
    paths = ["blocks.1.attn.k", "blocks.1.attn.q"]
    star = latent.attribution_patching(
        model, clean, corrupted, paths=paths, metric=metric, variant="atp*"
    )
    exact = latent.patch(model, clean, corrupted, paths=paths, metric=metric)
    plain = latent.attribution_patching(model, clean, corrupted, paths=paths, metric=metric)
    torch.testing.assert_close(star.per_example, exact.per_example, atol=1e-8, rtol=1e-8)
    err_star = (star.scores - exact.scores).abs().sum()
    err_plain = (plain.scores - exact.scores).abs().sum()
    assert err_star < err_plain
    assert star.forward_passes > 2


def test_atp_heads_layout_matches_patch():
    model = induction()
    clean, corrupted, correct, wrong = induction_prompts(n=6)
    metric = latent.logit_diff(correct, wrong)
    kwargs = dict(paths="blocks.*.attn.o:input", metric=metric, heads=4, positions=[-1, -2])
    approx = latent.attribution_patching(model, clean, corrupted, **kwargs)
    exact = latent.patch(model, clean, corrupted, **kwargs)
    assert approx.scores.shape == exact.scores.shape == (2, 4, 2)
    assert approx.correlation(exact)["pearson"] > 0.8
    whole = latent.attribution_patching(
        model, clean, corrupted, paths="blocks.*", metric=metric, positions=None
    )
    assert whole.scores.shape == (2,)


def test_atp_on_gpt2_reports_its_correlation():
    model = tiny_gpt2()
    gen = torch.Generator().manual_seed(3)
    clean = torch.randint(1, 97, (8, 8), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(1, 97, (8,), generator=gen)  # one token changed
    metric = latent.logit_diff(5, 9)
    paths = "transformer.h.*"
    approx = latent.attribution_patching(model, clean, corrupted, paths=paths, metric=metric)
    exact = latent.patch(model, clean, corrupted, paths=paths, metric=metric)
    corr = approx.correlation(exact)
    print("gpt2 atp correlation", corr)
    assert corr["pearson"] > 0.5, corr


def test_errors():
    model = induction()
    clean, corrupted, correct, wrong = induction_prompts(n=2)
    metric = latent.logit_diff(correct, wrong)
    with pytest.raises(ValueError, match="variant="):
        latent.attribution_patching(
            model, clean, corrupted, paths="blocks.0", metric=metric, variant="x"
        )
    with pytest.raises(ValueError, match=r"clean \[2, 24\], corrupted \[2, 23\]"):
        latent.attribution_patching(model, clean, corrupted[:, 1:], paths="blocks.0", metric=metric)


def test_grad_drop_equals_hand_written_gradients_with_a_layer_cut():
    """Two layers: GradDrop's layer-0 cells are |AtP| with no gradient through layer 1's
    attention, its layer-1 cells |AtP| itself (dropping layer 0 leaves them as they are)."""
    model = induction()
    clean, corrupted, correct, wrong = induction_prompts(n=4)
    metric = latent.logit_diff(correct, wrong)
    paths = ["blocks.0.attn", "blocks.1.attn"]
    star = latent.attribution_patching(
        model, clean, corrupted, paths=paths, metric=metric, variant="atp*",
        grad_drop="blocks.*.attn",
    )  # fmt: skip
    plain = latent.attribution_patching(model, clean, corrupted, paths=paths, metric=metric)
    gd = star.extra["grad_drop"]
    assert gd.shape == (4, 2, 24) and star.forward_passes == 4
    torch.testing.assert_close(gd[:, 1], plain.per_example[:, 1].abs())
    with torch.no_grad():
        clean_out = []
        h = model.blocks[0].attn.register_forward_hook(lambda _m, _a, o: clean_out.append(o))
        model(clean)
        h.remove()
    kept = []
    h0 = model.blocks[0].attn.register_forward_hook(lambda _m, _a, o: kept.append(o))
    h1 = model.blocks[1].attn.register_forward_hook(lambda _m, _a, o: o.detach())
    try:
        value = metric(model(corrupted)).sum()
        (grad,) = torch.autograd.grad(value, kept[0])
    finally:
        h0.remove()
        h1.remove()
    expected = ((clean_out[0] - kept[0].detach()) * grad).sum(-1).abs()
    torch.testing.assert_close(gd[:, 0], expected)
    with pytest.raises(ValueError, match="variant='atp\\*'"):
        latent.attribution_patching(
            model, clean, corrupted, paths=paths, metric=metric, grad_drop="blocks.*.attn"
        )
