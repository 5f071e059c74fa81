"""The explorer's text modality: answers equal to the tdlens.text explainers, a hostile token
returned as text, errors, and a model left untouched."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import tdlens
from tdlens.app import Explorer
from tests.app.conftest import TEXTS, XSS, call, text_explorer
from tests.conftest import assert_untouched, model_state

text = pytest.importorskip("tdlens.text")


def python_explanation(app: Any, sample: int, method: str, target: int, **args: Any) -> Any:
    """What a user gets from tdlens.text for the same text, method and arguments."""
    explainer = getattr(text, method)(app.model, app.tokenizer, granularity="word", **args)
    return explainer([TEXTS[sample]], targets=target)[0]


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("IntegratedGradients", {"n_steps": 8}),
        ("Saliency", {"abs": False}),
        ("KernelShap", {"n_samples": 40, "seed": 3}),
        ("Occlusion", {"sliding_window_shapes": [2]}),
    ],
)
def test_attribute_equals_the_text_explainer(text_served: Any, method: str, args: Any) -> None:
    body = {"sample": 1, "method": method, "target": 2, "args": args}
    status, answer, _ = call(text_served.url + "api/attribute", body)
    assert status == 200, answer
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    expected = python_explanation(text_served, 1, method, 2, **options)
    assert answer["elements"] == expected.elements
    assert answer["shape"] == [len(expected.elements)] and answer["granularity"] == "word"
    assert torch.equal(torch.tensor(answer["scores"], dtype=torch.float64), expected.scores[0])
    assert answer["took_ms"] > 0
    # deletion on the class probability, as tdlens.text's evaluate computes it
    curve = text.FeatureAblation(
        text_served.model, text_served.tokenizer, granularity="word", inference_mode="softmax"
    ).evaluate(tdlens.metrics.deletion, [expected])[0]
    assert answer["deletion"]["auc"] == pytest.approx(float(curve.score[0, 0]), abs=1e-12)
    assert 0 <= answer["deletion"]["auc"] <= 1


def test_info_samples_and_methods(text_served: Any) -> None:
    _, info, _ = call(text_served.url + "api/info")
    assert info["modality"] == "text" and info["granularity"] == "word" and info["n_samples"] == 4
    _, page, _ = call(text_served.url + "api/samples")
    assert [s["text"] for s in page["samples"]] == TEXTS
    _, methods, _ = call(text_served.url + "api/methods")
    args = {m["name"]: {a["name"]: a["default"] for a in m["args"]} for m in methods["methods"]}
    assert args["IntegratedGradients"]["n_steps"] == 8 and args["KernelShap"]["n_samples"] == 40
    assert args["Occlusion"]["sliding_window_shapes"] == [1]
    assert "stdevs" not in args["IntegratedGradients"]


def test_hostile_token_comes_back_as_text(text_served: Any) -> None:
    """The tag is one token of the text: the API returns it verbatim as a JSON string (the
    page puts it in a text node), and the class named like it stays a plain string."""
    status, answer, kind = call(
        text_served.url + "api/attribute", {"sample": 2, "method": "Saliency", "target": 2}
    )
    assert status == 200 and kind.startswith("application/json")
    assert XSS in answer["elements"] and answer["elements"].count(XSS) == 1
    _, info, _ = call(text_served.url + "api/info")
    assert info["classes"][2] == XSS
    # the page builds token spans from text nodes only (no innerHTML anywhere)
    _, script, _ = call(text_served.url + "static/app.js")
    assert b"innerHTML" not in script and b"insertAdjacentHTML" not in script


def test_token_granularity_and_pictures_refused(text_served: Any) -> None:
    app = text_explorer(granularity="token", methods=["Saliency"])
    answer = app.attribute(0, "Saliency", 1)
    saliency = text.Saliency(app.model, app.tokenizer, granularity="token")
    expected = saliency([TEXTS[0]], targets=1)[0]
    assert answer["elements"] == expected.elements and answer["granularity"] == "token"
    assert torch.equal(torch.tensor(answer["scores"], dtype=torch.float64), expected.scores[0])
    status, error, _ = call(text_served.url + "api/sample/0/image")
    assert status == 404 and "no picture" in error["error"]
    status, error, _ = call(text_served.url + "api/sample/0/heatmap?method=Saliency")
    assert status == 404 and "highlighted text" in error["error"]


def test_bad_configuration_names_the_fix() -> None:
    with pytest.raises(ValueError, match="tokenizer="):
        text_explorer(tokenizer=None)
    with pytest.raises(ValueError, match="unknown text method 'GradCam'"):
        text_explorer(methods=["GradCam"])
    with pytest.raises(ValueError, match="granularity must be one of"):
        text_explorer(granularity="sentence")
    with pytest.raises(ValueError, match="n_stepz"):
        text_explorer(methods={"IntegratedGradients": {"n_stepz": 3}})


def test_bad_request_and_model_untouched(text_served: Any) -> None:
    before = model_state(text_served.model)
    status, error, _ = call(
        text_served.url + "api/attribute",
        {"sample": 0, "method": "IntegratedGradients", "args": {"n_steps": "many"}},
    )
    assert status == 400 and "must be an integer" in error["error"]
    status, _, _ = call(text_served.url + "api/attribute", {"sample": 9, "method": "Saliency"})
    assert status == 404
    for method in ("IntegratedGradients", "KernelShap"):
        assert call(text_served.url + "api/attribute", {"sample": 3, "method": method})[0] == 200
    assert_untouched(text_served.model, before)


def test_no_mask_or_pad_token_gives_a_null_deletion() -> None:
    """Without a mask or pad token nothing can stand for a removed word: deletion is null,
    the scores are still tdlens.text's (Saliency with an explicit baseline token)."""
    from tests.text.conftest import bert_classifier, bert_tokenizer

    tokenizer = bert_tokenizer(mask=False, pad=False)
    model = bert_classifier(len(tokenizer))
    dot = tokenizer.convert_tokens_to_ids(".")
    app = Explorer(
        model,
        TEXTS[:2],
        modality="text",
        tokenizer=tokenizer,
        methods={"Saliency": {"baseline_token_id": dot}},
    )
    answer = app.attribute(0, "Saliency", 0)
    expected = text.Saliency(model, tokenizer, granularity="word", baseline_token_id=dot)(
        [TEXTS[0]], targets=0
    )[0]
    assert answer["deletion"] is None and answer["elements"] == expected.elements
    assert torch.equal(torch.tensor(answer["scores"], dtype=torch.float64), expected.scores[0])
