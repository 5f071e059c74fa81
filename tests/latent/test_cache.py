"""latent.cache: activations (and gradients) of module paths as a TensorDict."""

from __future__ import annotations

import pytest
import torch
from tensordict import MemoryMappedTensor, TensorDict

from tdlens import latent
from tests.conftest import assert_untouched, model_state
from tests.latent.models import induction, induction_prompts, tiny_gpt2


def raw_hook_cache(model, ids, names):
    """The reference: hand-written forward hooks that store each module's output."""
    stored, handles = {}, []
    for name in names:
        module = model.get_submodule(name)
        handles.append(
            module.register_forward_hook(
                lambda _m, _a, out, name=name: stored.__setitem__(name, out.detach())
            )
        )
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return stored


def test_cache_equals_raw_hooks_and_leaves_the_model_untouched():
    model = induction()
    clean, *_ = induction_prompts()
    before = model_state(model)
    acts = latent.cache(model, clean, paths=["blocks.*", "blocks.1.attn.pattern"])
    assert_untouched(model, before)
    assert isinstance(acts, TensorDict) and acts.batch_size == torch.Size([6])
    expected = raw_hook_cache(model, clean, ["blocks.0", "blocks.1", "blocks.1.attn.pattern"])
    assert set(acts.keys()) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(acts[key], value, rtol=0, atol=0)


def test_reduce_last_and_mean_follow_the_attention_mask():
    model = tiny_gpt2()
    ids = torch.randint(1, 97, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    inputs = {"input_ids": ids, "attention_mask": mask}
    full = latent.cache(model, inputs, paths="transformer.h.1")["transformer.h.1"]
    last = latent.cache(model, inputs, paths="transformer.h.1", reduce="last")
    mean = latent.cache(model, inputs, paths="transformer.h.1", reduce="mean")
    torch.testing.assert_close(last["transformer.h.1"], full[[0, 1, 2], [5, 3, 5]])
    expected_mean = torch.stack([full[0].mean(0), full[1, :4].mean(0), full[2, 2:].mean(0)])
    torch.testing.assert_close(mean["transformer.h.1"], expected_mean)
    custom = latent.cache(model, inputs, paths="transformer.h.1", reduce=lambda v: v[:, 0])
    torch.testing.assert_close(custom["transformer.h.1"], full[:, 0])


def test_gradients_equal_autograd_per_example_and_leave_grads_alone():
    model = induction()
    clean, _, correct, wrong = induction_prompts()
    metric = latent.logit_diff(correct, wrong)
    before = model_state(model)
    acts = latent.cache(model, clean, paths="blocks.*", gradients=True, target=metric)
    assert_untouched(model, before)  # .grad of the parameters untouched too
    # reference: each example alone, gradient of its own metric at blocks.0's output
    for b in range(clean.shape[0]):
        stored = {}
        handle = model.blocks[0].register_forward_hook(
            lambda _m, _a, out, stored=stored: stored.__setitem__("x", out)
        )
        try:
            value = latent.logit_diff(correct[b : b + 1], wrong[b : b + 1])(model(clean[b : b + 1]))
            (grad,) = torch.autograd.grad(value.sum(), stored["x"])
        finally:
            handle.remove()
        torch.testing.assert_close(acts["blocks.0:grad"][b], grad[0])
    assert acts["blocks.1:grad"].shape == acts["blocks.1"].shape


def test_gradients_need_a_target():
    with pytest.raises(ValueError, match="gradients=True needs target="):
        latent.cache(induction(), induction_prompts()[0], paths="blocks.0", gradients=True)


def test_loader_batches_are_concatenated_and_written_to_a_memmap(tmp_path):
    model = induction()
    clean, *_ = induction_prompts(n=10)
    loader = torch.utils.data.DataLoader(clean, batch_size=4)
    whole = latent.cache(model, clean, paths="blocks.1", reduce="last")
    chunked = latent.cache(model, loader, paths="blocks.1", reduce="last", to=tmp_path / "acts")
    assert isinstance(chunked["blocks.1"], MemoryMappedTensor)
    assert chunked.batch_size == torch.Size([10])
    torch.testing.assert_close(chunked["blocks.1"].clone(), whole["blocks.1"])
    reopened = TensorDict.load_memmap(tmp_path / "acts")
    torch.testing.assert_close(reopened["blocks.1"].clone(), whole["blocks.1"])
    split = latent.cache(model, clean, paths="blocks.1", batch_size=3)
    torch.testing.assert_close(
        split["blocks.1"], latent.cache(model, clean, paths="blocks.1")["blocks.1"]
    )


def test_wrong_path_names_the_nearest():
    with pytest.raises(LookupError, match=r"did you mean.*blocks\.1"):
        latent.cache(induction(), induction_prompts()[0], paths="blocks.1.atn")
