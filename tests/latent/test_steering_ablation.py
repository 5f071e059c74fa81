"""latent.steering_vector / steer and latent.ablate, checked against hand-written hooks; and
attribution methods run inside these interventions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdlens
from tdlens import latent
from tdlens.latent.steering import random_like
from tests.conftest import MLP, assert_untouched, model_state, randn, seeded
from tests.latent.models import VOCAB, induction, induction_prompts, tiny_gpt2

POSITIVE, NEGATIVE = list(range(0, 8)), list(range(8, 16))


def prompts_predicting(tokens, n, seed):
    """Induction prompts whose correct next token is drawn from ``tokens``."""
    clean, _, correct, _ = induction_prompts(n=n, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.tensor(tokens)[torch.randint(0, len(tokens), (n,), generator=gen)]
    ids = clean.clone()
    ids[ids == correct.unsqueeze(1)] = VOCAB - 1  # drop other copies of the old token
    ids[:, 16] = chosen  # the first copy's last token: what induction predicts next
    return ids


def mass(logits, tokens):
    return logits[:, -1].softmax(-1)[:, tokens].sum(-1).mean()


def test_mean_difference_vector_moves_the_next_token_toward_the_positive_set():
    model = induction()
    before = model_state(model)
    vec = latent.steering_vector(
        model,
        prompts_predicting(POSITIVE, 32, seed=1),
        prompts_predicting(NEGATIVE, 32, seed=2),
        path="blocks.1",
    )
    assert vec.shape == (64,)
    test_ids, *_ = induction_prompts(n=32, seed=5)
    with torch.no_grad():
        plain = mass(model(test_ids), POSITIVE)
        with latent.steer(model, {"blocks.1": vec}, scale=4.0):
            steered = mass(model(test_ids), POSITIVE)
        random = []
        for seed in range(4):  # random directions of the same norm
            with latent.steer(model, {"blocks.1": random_like(vec, seed=seed)}, scale=4.0):
                random.append(float(mass(model(test_ids), POSITIVE)))
    assert_untouched(model, before)
    # measured: 0.165 -> 0.671; random directions 0.13-0.25
    assert steered > plain + 0.3, (plain, steered)
    assert all(abs(r - plain) < (steered - plain) / 3 for r in random), (plain, steered, random)


def test_steer_equals_a_hand_written_hook_and_selects_positions():
    model = induction()
    ids, *_ = induction_prompts(n=3)
    vec = randn(64)
    handle = model.blocks[0].register_forward_hook(lambda _m, _a, out: out + 2.0 * vec)
    try:
        with torch.no_grad():
            expected = model(ids)
    finally:
        handle.remove()
    with torch.no_grad(), latent.steer(model, {"blocks.0": vec}, scale=2.0):
        torch.testing.assert_close(model(ids), expected)

    def last_only(_m, _a, out):
        out = out.clone()
        out[:, -1] += vec
        return out

    handle = model.blocks[0].register_forward_hook(last_only)
    try:
        with torch.no_grad():
            expected = model(ids)
    finally:
        handle.remove()
    with torch.no_grad(), latent.steer(model, {"blocks.0[:, -1]": vec}):
        torch.testing.assert_close(model(ids), expected)


def test_steering_during_generate_with_a_kv_cache_adds_each_position_once():
    model = tiny_gpt2()
    ids = torch.randint(3, 97, (2, 5), generator=torch.Generator().manual_seed(0))
    vec = randn(32, seed=4) * 3
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with latent.steer(model, {"transformer.h.1": vec}):
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
        full = model(cached).logits  # one pass over the whole steered sequence
    plain = model.generate(ids, **kwargs)
    assert torch.equal(cached, uncached)  # cached positions were not steered twice
    assert not torch.equal(cached, plain)
    assert torch.equal(full[:, 4:-1].argmax(-1), cached[:, 5:])
    assert not model.transformer.h[1]._forward_hooks


def test_wrong_width_and_bad_paths():
    model = induction()
    ids, *_ = induction_prompts(n=2)
    before = model_state(model)
    with pytest.raises(ValueError, match=r"has shape \[5\] but the activation has width 64"):
        with latent.steer(model, {"blocks.0": torch.ones(5)}):
            model(ids)
    assert_untouched(model, before)
    with pytest.raises(LookupError, match="did you mean"):
        latent.steering_vector(model, ids, ids, path="blocks.9")
    with pytest.raises(ValueError, match=r"position=30 does not exist.*0\.\.23"):
        latent.steering_vector(model, ids, ids, path="blocks.0", position=30)


def hook_replacing(module, fn):
    return module.register_forward_hook(lambda _m, _a, out: fn(out))


def test_zero_and_mean_ablation_equal_hand_written_hooks():
    model = induction()
    ids, corrupted, *_ = induction_prompts(n=4)
    reference = torch.cat([corrupted, ids])
    with torch.no_grad():
        ref_acts = []
        h = hook_replacing(model.blocks[0].attn, lambda out: ref_acts.append(out))
        model(reference)
        h.remove()
        mean = ref_acts[0].mean(0)
        for how, fn in (("zero", torch.zeros_like), ("mean", lambda out: mean.expand_as(out))):
            h = hook_replacing(model.blocks[0].attn, fn)
            expected = model(ids)
            h.remove()
            before = model_state(model)
            kwargs = {} if how == "zero" else {"reference": reference}
            with latent.ablate(model, "blocks.0.attn", how=how, **kwargs):
                got = model(ids)
            assert_untouched(model, before)
            torch.testing.assert_close(got, expected)
    # another length: the mean over positions too
    with torch.no_grad(), latent.ablate(model, "blocks.0.attn", how="mean", reference=reference):
        shorter = model(ids[:, :10])
    h = hook_replacing(model.blocks[0].attn, lambda out: mean.mean(0).expand_as(out))
    with torch.no_grad():
        expected = model(ids[:, :10])
    h.remove()
    torch.testing.assert_close(shorter, expected)


def test_resample_ablation_equals_seeded_hand_written_draws_and_repeats():
    model = induction()
    ids, corrupted, *_ = induction_prompts(n=5)
    with torch.no_grad():
        store = []
        h = hook_replacing(model.blocks[1].attn, lambda out: store.append(out))
        model(corrupted)
        h.remove()
        gen = torch.Generator().manual_seed(3)
        draws = []

        def resample(out):
            rows = torch.randint(0, 5, (out.shape[0],), generator=gen)
            draws.append(rows)
            return store[0][rows]

        h = hook_replacing(model.blocks[1].attn, resample)
        expected = [model(ids), model(ids)]
        h.remove()
        with latent.ablate(model, "blocks.1.attn", how="resample", reference=corrupted, seed=3):
            got = [model(ids), model(ids)]
        with latent.ablate(model, "blocks.1.attn", how="resample", reference=corrupted, seed=3):
            again = model(ids)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    torch.testing.assert_close(again, got[0])
    assert not torch.equal(draws[0], draws[1])


def test_ablate_errors():
    model = induction()
    ids, *_ = induction_prompts(n=2)
    with pytest.raises(ValueError, match="needs reference="):
        with latent.ablate(model, "blocks.0", how="mean"):
            pass
    with pytest.raises(ValueError, match="how= takes"):
        with latent.ablate(model, "blocks.0", how="noise"):
            pass
    before = model_state(model)
    with pytest.raises(ValueError, match=r"shape \[2, 10, 64\].*\[2, 24, 64\]"):
        with latent.ablate(model, "blocks.0", how="resample", reference=ids):
            model(ids[:, :10])
    assert_untouched(model, before)


class Shift(nn.Module):
    """The MLP with ``vec`` added after its first layer, written by hand."""

    def __init__(self, mlp, vec, zero=False):
        super().__init__()
        self.mlp, self.vec, self.zero = mlp, vec, zero

    def forward(self, x):
        net = self.mlp.net
        h = net[0](x)
        h = torch.zeros_like(h) if self.zero else h + self.vec
        for layer in list(net)[1:]:
            h = layer(h)
        return h


@pytest.mark.parametrize("method", ["IntegratedGradients", "Saliency"])
def test_attribution_methods_see_the_intervened_model(method):
    mlp = seeded(MLP())
    x = randn(4, 6)
    vec = randn(8, seed=9)
    make = getattr(tdlens, method)
    with latent.steer(mlp, {"net.0": vec}):
        steered = make(mlp).attribute(x, target=1)
    torch.testing.assert_close(steered, make(Shift(mlp, vec)).attribute(x, target=1))
    with latent.ablate(mlp, "net.2", how="zero"):
        ablated = make(mlp).attribute(x, target=1)
    torch.testing.assert_close(ablated, torch.zeros_like(ablated))
    with tdlens.Scope(mlp) as scope:
        scope.set("net.0", lambda h: h + vec)
        in_scope = make(mlp).attribute(x, target=1)
    torch.testing.assert_close(in_scope, steered)


def test_steering_vector_reads_activations_without_positions_whole():
    """An MLP's hidden layer ``[B, D]`` has no position to pick: the vector is the plain mean
    difference, whatever ``position`` says."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    positive, negative = torch.randn(6, 4), torch.randn(5, 4)
    before = model_state(model)
    with torch.no_grad():
        expected = model[:2](positive).mean(0) - model[:2](negative).mean(0)
    for position in (-1, None, 3):
        vec = latent.steering_vector(model, positive, negative, path="1", position=position)
        torch.testing.assert_close(vec, expected)
    assert_untouched(model, before)
