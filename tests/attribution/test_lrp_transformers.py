"""LRP on tiny BERT-like and GPT-2-like models built from transformers configs (random
weights; transformers initialises biases to zero), and MergeBatchNorm on a ResNet-style CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdlens
from tdlens import lrp
from tdlens.core.errors import InputError
from tests.conftest import assert_untouched, model_state, randn

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

# Measured on these models (float64): with the attention pattern held constant (AH) every
# encoder layer passes on the target's value to within the epsilon stabiliser (|gap| < 1e-5);
# AttnLRP's softmax rule is not conservative (the softmax's bias term), see docs/lrp.md.
AH_TOLERANCE = 1e-4


def bert(impl):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
        initializer_range=0.3,
        attn_implementation=impl,
    )
    return transformers.BertForSequenceClassification(config).double().eval()


def gpt2(impl):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=50,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=16,
        initializer_range=0.3,
        attn_implementation=impl,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).double().eval()


def ids_and_mask():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return ids, mask


def last_token(k):
    return lambda logits: logits[:, -1, k]


@pytest.mark.parametrize("attention", ["attnlrp", "ah"])
def test_bert_eager_and_sdpa_agree_and_model_untouched(attention):
    """The decomposed F.scaled_dot_product_attention gives what the eager path gives."""
    ids, mask = ids_and_mask()
    results = []
    for impl in ("eager", "sdpa"):
        model = bert(impl)
        before = model_state(model)
        emb = model.bert.embeddings.word_embeddings(ids).detach()
        method = tdlens.LRP(model, composite=lrp.Transformer(attention=attention))
        r = method.attribute({"inputs_embeds": emb, "attention_mask": mask}, targets=[0, 2])
        r = r["inputs_embeds"]
        assert r.shape == (3, 2, 7, 16) and torch.isfinite(r).all()
        results.append(r)
        assert_untouched(model, before)
    torch.testing.assert_close(results[0], results[1], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("make", [bert, gpt2])
def test_attention_held_constant_conserves_through_the_blocks(make):
    model = make("sdpa")
    ids, mask = ids_and_mask()
    is_bert = make is bert
    inputs = {"input_ids": ids, "attention_mask": mask}
    target = 1 if is_bert else last_token(3)
    first = "bert.encoder.layer.0:input" if is_bert else "transformer.h.0:input"
    method = tdlens.LRP(model, composite=lrp.Transformer(attention="ah"))
    relevance, gap = method.attribute(
        inputs, target=target, layer=first, return_convergence_delta=True
    )
    value = model(**inputs).logits
    value = value[:, 1] if is_bert else value[:, -1, 3]
    torch.testing.assert_close(relevance.sum((1, 2)), value.detach(), atol=AH_TOLERANCE, rtol=0)
    assert gap.abs().max() < AH_TOLERANCE


def test_attnlrp_runs_end_to_end_with_token_ids_and_targets():
    model = gpt2("eager")
    before = model_state(model)
    ids, _ = ids_and_mask()
    method = tdlens.LRP(model, composite="transformer")
    both = method.attribute({"input_ids": ids}, targets=[last_token(3), last_token(7)],
                            layer="transformer.wte")  # fmt: skip
    one = method.attribute({"input_ids": ids}, target=last_token(7), layer="transformer.wte")
    assert both.shape == (3, 2, 7, 16)
    torch.testing.assert_close(both[:, 1], one)
    assert_untouched(model, before)


# -- MergeBatchNorm on a ResNet-style CNN ----------------------------------------------------
class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + skip)


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.relu = nn.ReLU()
        self.layer1 = Block(4, 4, 1)
        self.layer2 = Block(4, 8, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def resnet():
    torch.manual_seed(0)
    model = ResNet().double()
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g, dtype=torch.float64) * 0.1
            m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64))
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
    return model.eval()


def test_merge_batch_norm_resnet_restored_bit_exactly():
    model = resnet()
    x = randn(2, 3, 8, 8)
    before = model_state(model)
    params = {name: p for name, p in model.named_parameters()}
    merge = lrp.MergeBatchNorm()
    assert len(merge.find_pairs(model)) == 6
    with merge.apply(model):
        merged_out = model(x)
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 0
    torch.testing.assert_close(merged_out, model(x))  # the same function
    # the epsilon rule treats a convolution and its batch norm as the one affine map they are:
    # merging changes nothing; rules on the weights (z+, gamma) see different weights
    eps_plain = tdlens.LRP(model).attribute(x, target=2)
    eps_merged = tdlens.LRP(model, canonizers=[merge]).attribute(x, target=2)
    torch.testing.assert_close(eps_plain, eps_merged, atol=1e-7, rtol=1e-4)  # eps 1e-9
    plain = tdlens.LRP(model, composite="epsilon_plus").attribute(x, target=2)
    merged, gap = tdlens.LRP(model, composite="epsilon_plus", canonizers=[merge]).attribute(
        x, target=2, return_convergence_delta=True
    )
    assert not torch.allclose(plain, merged)
    assert torch.isfinite(merged).all() and gap.shape == (2,)
    assert_untouched(model, before)
    assert all(p is params[name] for name, p in model.named_parameters())


def test_merge_batch_norm_restores_after_an_exception_and_checks_its_use():
    model = resnet()
    before = model_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with lrp.MergeBatchNorm().apply(model):
            raise RuntimeError("boom")
    assert_untouched(model, before)
    with pytest.raises(InputError, match="found no linear or convolution layer followed by"):
        tdlens.LRP(nn.Sequential(nn.Linear(3, 2)), canonizers=[lrp.MergeBatchNorm()]).attribute(
            torch.randn(2, 3), target=0
        )
    model.train()
    with pytest.raises(InputError, match="training mode"):
        tdlens.LRP(model, canonizers=[lrp.MergeBatchNorm()]).attribute(randn(2, 3, 8, 8), target=0)
    with pytest.raises(InputError, match=r"'stem.1' is not a Linear or Conv1d"):
        lrp.MergeBatchNorm(pairs=[("stem.1", "stem.1")]).find_pairs(model)
