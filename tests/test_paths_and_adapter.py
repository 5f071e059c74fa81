"""Module paths, and the model adapter's input and output structures."""

from __future__ import annotations

import pytest
import torch
from captum import attr as captum
from torch import nn

import tdlens
from tdlens.core.outputs import read_output
from tdlens.core.paths import ModulePath, parse_path
from tdlens.core.structure import InputBatch
from tests.conftest import randn


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("encoder.layer.3.attention", ModulePath("encoder.layer.3.attention")),
        ("encoder:input", ModulePath("encoder", "input")),
        ("encoder.layer.3:output[0]", ModulePath("encoder.layer.3", "output", (0,))),
        ("enc[last_hidden_state][0]", ModulePath("enc", "output", ("last_hidden_state", 0))),
        ("", ModulePath("")),
    ],
)
def test_parse_path(text, parsed):
    assert parse_path(text) == parsed
    assert parse_path(str(parsed)) == parsed


def test_bad_paths():
    with pytest.raises(ValueError, match="'input' or 'output'"):
        parse_path("layer:grad")
    with pytest.raises(ValueError, match="selectors are written"):
        parse_path("layer[0]x")


def test_globs_match_one_component_with_star_and_many_with_double_star():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 2))
    assert [str(p) for p in tdlens.resolve_paths(model, "*")] == ["0", "1"]
    assert [str(p) for p in tdlens.resolve_paths(model, "0.*")] == ["0.0", "0.1"]
    assert [str(p) for p in tdlens.resolve_paths(model, "**")] == ["0", "0.0", "0.1", "1"]


def test_input_batch_roundtrip_structures():
    x, y = randn(3, 2), randn(3, 4)
    ids = torch.arange(3)
    batch = InputBatch.build((x, ids, y))
    assert batch.attributed == (0, 2) and batch.batch_size == 3
    assert isinstance(batch.pack({0: x, 2: y}), tuple)
    batch = InputBatch.build({"a": x, "ids": ids})
    assert batch.attributed == ("a",) and list(batch.pack({"a": x})) == ["a"]
    rows = batch.take_rows(torch.tensor([2, 2, 0]))
    assert torch.equal(rows["ids"], torch.tensor([2, 2, 0]))


def test_read_output_structures():
    logits, value = randn(2, 3), randn(2)
    assert read_output((logits, value), None) is logits
    assert read_output({"value": value, "logits": logits}, None) is logits
    assert read_output({"value": value, "logits": logits}, "value") is value
    assert read_output([logits, value], 1) is value


def test_hugging_face_model_output_and_embedding_layer():
    """A tiny random BERT: explain ModelOutput.logits, attribute to the embedding layer."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).double().eval()
    ids = torch.tensor([[2, 5, 7, 9], [3, 4, 4, 1]])
    mask = torch.ones_like(ids)
    inputs = {"input_ids": ids, "attention_mask": mask}
    ours = tdlens.IntegratedGradients(model).attribute(
        inputs, target=1, layer="bert.embeddings.word_embeddings", n_steps=8, keys="input_ids"
    )

    def forward(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits

    theirs = captum.LayerIntegratedGradients(forward, model.bert.embeddings.word_embeddings)
    expected = theirs.attribute(ids, target=1, additional_forward_args=(mask,), n_steps=8)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="name them with keys="):
        tdlens.IntegratedGradients(model).attribute(inputs, target=1, layer="bert.embeddings")


def test_tensordict_non_tensor_entries_reach_the_model():
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModule

    seen = []

    def scale(x, mode):
        seen.append(mode)
        return x * (2.0 if mode == "double" else 1.0)

    module = TensorDictModule(scale, in_keys=["x", "mode"], out_keys=["y"])
    td = TensorDict(x=randn(3, 2), batch_size=[3])
    td.set_non_tensor("mode", "double")
    attr = tdlens.Saliency(module, abs=False).attribute(td, target=lambda y: y.sum(1))
    assert set(seen) == {"double"}
    torch.testing.assert_close(attr["x"], torch.full((3, 2), 2.0, dtype=torch.float64))
