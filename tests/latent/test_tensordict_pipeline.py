"""latent functions on a tensordict.nn pipeline of two networks, keyed inputs in and out."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn

from tdlens import latent
from tests.conftest import assert_untouched, model_state, randn, seeded


def pipeline():
    encoder = TensorDictModule(nn.Sequential(nn.Linear(4, 6), nn.Tanh()), ["obs"], ["hidden"])
    head = TensorDictModule(nn.Linear(6, 3), ["hidden"], ["logits"])
    return seeded(TensorDictSequential(encoder, head))


def test_cache_patch_and_steer_on_a_tensordict_pipeline():
    model = pipeline()
    clean = TensorDict({"obs": randn(5, 4)}, batch_size=[5])
    corrupted = TensorDict({"obs": randn(5, 4, seed=2)}, batch_size=[5])
    before = model_state(model)
    acts = latent.cache(model, clean, paths="module.0.module.1")
    encoder = model.module[0].module
    torch.testing.assert_close(acts["module.0.module.1"], encoder(clean["obs"]))
    metric = latent.logit_diff(0, 1, position=-1)
    res = latent.patch(
        model, clean, corrupted, paths="module.0.module.1", metric=metric, positions=None
    )
    # patching the whole hidden state gives the clean logits
    torch.testing.assert_close(res.per_example[:, 0], res.clean_metric - res.corrupted_metric)
    vec = randn(6, seed=3)
    with latent.steer(model, {"module.0.module.1": vec}):
        steered = model(clean.clone())["logits"]
    torch.testing.assert_close(steered, model.module[1].module(encoder(clean["obs"]) + vec))
    assert_untouched(model, before)
