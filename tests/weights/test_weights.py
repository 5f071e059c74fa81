"""Task vectors, temporary pruning and module replacement: arithmetic by hand, and the model
restored bit for bit (state_dict bytes, hooks, flags), also after an exception."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tdlens import Scope, weights
from tests.conftest import assert_untouched, model_state


def state_bytes(model):
    return {
        k: v.detach().flatten().view(torch.uint8).clone() for k, v in model.state_dict().items()
    }


def assert_bit_exact(model, before_bytes, before_state):
    after = state_bytes(model)
    assert after.keys() == before_bytes.keys()
    for key, value in before_bytes.items():
        assert torch.equal(after[key], value), key
    assert_untouched(model, before_state)


def net(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(6, 8))
    model.add_module("norm", nn.BatchNorm1d(8))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(8, 3))
    return model.double().eval()


# -- task vectors ---------------------------------------------------------------------------------
def test_task_vector_arithmetic_equals_hand_computation():
    base, tuned_a, tuned_b = net(0).state_dict(), net(1).state_dict(), net(2).state_dict()
    tv_a, tv_b = weights.task_vector(base, tuned_a), weights.task_vector(base, tuned_b)
    assert "norm.num_batches_tracked" in tv_a.skipped and "norm.num_batches_tracked" not in tv_a
    combined = 0.5 * (tv_a + tv_b) - tv_a / 4 + -tv_b * 2 + sum([tv_a, tv_b])
    for key in tv_a:
        a, b = tuned_a[key] - base[key], tuned_b[key] - base[key]
        hand = 0.5 * (a + b) - a / 4 + (-b) * 2 + (a + b)
        torch.testing.assert_close(combined[key], hand, rtol=0, atol=1e-14)
    merged = tv_a.apply_to(base, scale=0.3)
    torch.testing.assert_close(merged["fc1.weight"], base["fc1.weight"] + 0.3 * tv_a["fc1.weight"])
    assert torch.equal(merged["norm.num_batches_tracked"], base["norm.num_batches_tracked"])
    assert tv_a.norm() == pytest.approx(
        float(torch.sqrt(sum(((tuned_a[k] - base[k]) ** 2).sum() for k in tv_a))), rel=1e-12
    )


def test_apply_gives_the_tuned_model_and_restores_bit_exactly():
    base, tuned = net(0), net(1)
    tv = weights.task_vector(base, tuned)
    x = torch.randn(4, 6, dtype=torch.float64)
    before, before_bytes = model_state(base), state_bytes(base)
    with weights.apply(base, tv) as edited:
        torch.testing.assert_close(edited(x), tuned(x), rtol=1e-12, atol=1e-12)
    assert_bit_exact(base, before_bytes, before)
    with pytest.raises(RuntimeError, match="inside"), weights.apply(base, tv, scale=-1.0):
        raise RuntimeError("inside")
    assert_bit_exact(base, before_bytes, before)


def test_apply_adds_a_tied_weight_once():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    model[1].weight = model[0].weight  # tied: two state_dict keys, one tensor
    delta = {"0.weight": torch.ones(5, 4), "1.weight": torch.ones(5, 4)}
    original = model[0].weight.detach().clone()
    with weights.apply(model, delta):
        torch.testing.assert_close(model[0].weight.detach(), original + 1)
    assert torch.equal(model[0].weight, original)


def test_task_vector_errors_list_keys_and_shapes():
    a = {"w": torch.zeros(2, 3), "only_a": torch.zeros(1), "b": torch.zeros(4)}
    b = {"w": torch.zeros(3, 3), "only_b": torch.zeros(1), "b": torch.zeros(4)}
    with pytest.raises(ValueError) as info:
        weights.task_vector(a, b)
    message = str(info.value)
    assert "'only_a'" in message and "'only_b'" in message and "w: [2, 3] vs [3, 3]" in message
    with pytest.raises(LookupError, match=r"fc3\.weight"):
        with weights.apply(net(), {"fc3.weight": torch.zeros(3, 8)}):
            pass
    with pytest.raises(ValueError, match=r"fc2.weight: \[3, 8\] vs \[8, 3\]"):
        with weights.apply(net(), {"fc2.weight": torch.zeros(8, 3)}):
            pass


# -- pruning --------------------------------------------------------------------------------------
def test_prune_by_magnitude_per_module_and_global():
    model = net()
    before, before_bytes = model_state(model), state_bytes(model)
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    with weights.prune(model, paths="fc*", amount=0.5) as pruned:
        for w, live in ((w1, model.fc1.weight), (w2, model.fc2.weight)):
            zeroed = live == 0
            assert int(zeroed.sum()) == w.numel() // 2
            assert w.abs()[zeroed].max() <= w.abs()[~zeroed].min()  # the smallest went
        assert torch.equal(model.fc1.bias, before["tensors"]["fc1.bias"])
        assert pruned.sparsity == pytest.approx(0.5)
    assert_bit_exact(model, before_bytes, before)
    with weights.prune(model, paths=["fc1", "fc2"], amount=0.5, scope="global"):
        both = torch.cat([w1.abs().flatten(), w2.abs().flatten()])
        threshold = both.sort().values[len(both) // 2 - 1]
        for w, live in ((w1, model.fc1.weight), (w2, model.fc2.weight)):
            assert torch.equal(live == 0, w.abs() <= threshold)
    assert_bit_exact(model, before_bytes, before)


def test_prune_with_a_user_mask_restores_after_an_exception():
    model = net()
    before, before_bytes = model_state(model), state_bytes(model)
    keep = torch.rand(8, 6, generator=torch.Generator().manual_seed(0)) > 0.3
    with pytest.raises(KeyError), weights.prune(model, mask={"fc1.weight": keep}):
        assert torch.equal(model.fc1.weight != 0, keep)
        raise KeyError("boom")
    assert_bit_exact(model, before_bytes, before)
    with pytest.raises(ValueError, match=r"mask\['fc1.weight'\] has shape \[6, 8\]"):
        with weights.prune(model, mask={"fc1.weight": keep.T}):
            pass
    with pytest.raises(ValueError, match="amount"):
        with weights.prune(model, amount=1.5):
            pass


# -- replace --------------------------------------------------------------------------------------
class SAE(nn.Module):
    def __init__(self, dim=8, latents=16):
        super().__init__()
        torch.manual_seed(3)
        self.encoder = nn.Sequential(nn.Linear(dim, latents), nn.ReLU())
        self.decoder = nn.Linear(latents, dim)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def test_replace_swaps_the_output_and_keep_error_gives_back_the_original():
    model, sae = net(), SAE().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    before, before_bytes = model_state(model), state_bytes(model)
    clean = model(x)
    with weights.replace(model, "fc1", sae):
        swapped = model(x)
    expected = model.fc2(model.act(model.norm(sae(model.fc1(x)))))
    torch.testing.assert_close(swapped, expected)
    with weights.replace(model, "fc1", sae, keep_error=True):
        torch.testing.assert_close(model(x), clean, rtol=1e-12, atol=1e-12)
        with Scope(sae) as scope:  # an edit on a latent: only the edit propagates
            scope.set("encoder", lambda f: f * 0)
            edited = model(x)
    h = model.fc1(x)
    edit = sae.decoder(torch.zeros(5, 16, dtype=torch.float64)) - sae(h)
    torch.testing.assert_close(edited, model.fc2(model.act(model.norm(h + edit))))
    assert_bit_exact(model, before_bytes, before)
    with pytest.raises(ZeroDivisionError), weights.replace(model, "fc1", sae):
        model(x)
        1 / 0  # noqa: B018
    assert_bit_exact(model, before_bytes, before)


def test_replace_errors_show_both_shapes():
    model = net()
    x = torch.randn(5, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"returns \[5, 4\] .* shape \[5, 8\]"):
        with weights.replace(model, "fc1", nn.Linear(8, 4).double()):
            model(x)
    before = model_state(model)
    assert_untouched(model, before)
    with pytest.raises(LookupError, match="fc1"):
        with weights.replace(model, "fc9", nn.Identity()):
            pass


def test_transcoder_reads_one_path_and_replaces_another():
    model = net()
    x = torch.randn(5, 6, dtype=torch.float64)
    transcoder = nn.Linear(6, 8).double()
    with weights.replace(model, "fc1", transcoder, read="fc1:input"):
        out = model(x)
    torch.testing.assert_close(out, model.fc2(model.act(model.norm(transcoder(x)))))


def test_prune_amount_as_a_count_and_random():
    model = net()
    with weights.prune(model, paths="fc1", amount=5) as pruned:
        assert int((model.fc1.weight == 0).sum()) == 5
        assert pruned.sparsity == pytest.approx(5 / 48)
    with weights.prune(model, paths="fc1", amount=0.25, by="random", seed=1):
        assert int((model.fc1.weight == 0).sum()) == 12
    with pytest.raises(ValueError, match="amount=100 weights"):
        with weights.prune(model, paths="fc1", amount=100):
            pass
