"""The explorer's JSON API over HTTP: every endpoint, the 4xx errors, answers equal to the
Python API, and 32 concurrent requests that leave the shared model untouched."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

import tdlens
from tdlens.app import Explorer, ExplorerError
from tdlens.app.demo import digits_explorer
from tests.app.conftest import CLASSES, XSS, call, make_explorer
from tests.conftest import assert_untouched, model_state

PNG = b"\x89PNG\r\n\x1a\n"


def python_attribution(
    app: Any, sample: int, method: str, target: int, **args: Any
) -> torch.Tensor:
    """What a user gets from the public API for the same sample, method and arguments."""
    x = app.sample(sample).unsqueeze(0)
    return getattr(tdlens, method)(app.model).attribute(x, target=target, **args)[0]


def test_info_and_page(served: Any) -> None:
    """/api/info lists the classes as given; / and the static files are served."""
    status, info, _ = call(served.url + "api/info")
    assert status == 200
    assert info["classes"] == CLASSES and info["n_samples"] == 359 and info["modality"] == "image"
    status, page, kind = call(served.url)
    assert status == 200 and kind.startswith("text/html") and b"/static/app.js" in page
    for name in ("app.js", "style.css"):
        assert call(served.url + "static/" + name)[0] == 200
    status, error, _ = call(served.url + "static/secret.py")
    assert status == 404 and "no static file" in error["error"]


def test_samples_filters_and_pages(served: Any) -> None:
    """/api/samples pages and filters by label, prediction and misclassification."""
    pred, _ = served._prediction_table()
    labels = served._labels
    status, page, _ = call(served.url + "api/samples?offset=10&limit=5")
    assert (
        status == 200
        and page["total"] == 359
        and [s["id"] for s in page["samples"]] == list(range(10, 15))
    )
    first = page["samples"][0]
    assert first["predicted"] == int(pred[10]) and first["label"] == int(labels[10])
    assert 0 < first["confidence"] <= 1
    _, wrong, _ = call(served.url + "api/samples?misclassified=true&limit=1000")
    expected = (labels != pred).nonzero().flatten().tolist()
    assert expected, "the digits CNN should get a few test digits wrong"
    assert [s["id"] for s in wrong["samples"]] == expected and wrong["total"] == len(expected)
    assert all(s["misclassified"] for s in wrong["samples"])
    _, threes, _ = call(served.url + "api/samples?label=3&predicted=3&limit=1000")
    assert threes["samples"] and all(s["label"] == s["predicted"] == 3 for s in threes["samples"])


def test_methods_lists_arguments_with_defaults(served: Any) -> None:
    status, body, _ = call(served.url + "api/methods")
    assert status == 200
    methods = {m["name"]: {a["name"]: a for a in m["args"]} for m in body["methods"]}
    assert list(methods) == [
        "Saliency",
        "InputXGradient",
        "IntegratedGradients",
        "GuidedBackprop",
        "Occlusion",
    ]
    assert methods["IntegratedGradients"]["n_steps"] == {
        "name": "n_steps",
        "type": "int",
        "default": 32,
    }
    assert methods["IntegratedGradients"]["method"]["type"] == "str"
    assert methods["Saliency"]["abs"] == {"name": "abs", "type": "bool", "default": True}
    assert methods["Occlusion"]["sliding_window_shapes"]["default"] == [1, 2, 2]
    assert (
        "target" not in methods["Saliency"]
        and "return_convergence_delta" not in methods["IntegratedGradients"]
    )


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("Saliency", {}),
        ("IntegratedGradients", {"n_steps": 8}),
        ("Occlusion", {"sliding_window_shapes": [1, 3, 3]}),
    ],
)
def test_attribute_equals_the_python_api(served: Any, method: str, args: dict[str, Any]) -> None:
    """POST /api/attribute answers exactly what method.attribute gives in Python."""
    status, answer, _ = call(
        served.url + "api/attribute", {"sample": 5, "method": method, "target": 2, "args": args}
    )
    assert status == 200, answer
    python_args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    if method == "IntegratedGradients":
        python_args.setdefault("n_steps", 32)
    if method == "Occlusion":
        python_args.setdefault("sliding_window_shapes", (1, 2, 2))
    expected = python_attribution(served, 5, method, 2, **python_args)
    scores = torch.tensor(answer["scores"], dtype=expected.dtype).reshape(answer["shape"])
    assert answer["shape"] == [1, 8, 8]
    assert torch.equal(scores, expected)
    assert answer["took_ms"] > 0 and 0 <= answer["deletion"]["auc"] <= 1.0
    probabilities = lambda x: served.model(x).softmax(-1)  # noqa: E731
    deletion = tdlens.metrics.deletion(
        probabilities, served.sample(5)[None], expected[None], target=2, feature_mask="pixels"
    )
    assert answer["deletion"]["auc"] == pytest.approx(float(deletion.score[0]))
    again = call(
        served.url + "api/attribute", {"sample": 5, "method": method, "target": 2, "args": args}
    )[1]
    assert again["cached"] and again["scores"] == answer["scores"]


def test_default_target_is_the_prediction_and_images(served: Any) -> None:
    pred = int(served._prediction_table()[0][9])
    _, answer, _ = call(served.url + "api/attribute", {"sample": 9, "method": "Saliency"})
    assert answer["target"] == pred
    status, image, kind = call(served.url + "api/sample/9/image")
    assert status == 200 and kind == "image/png" and image.startswith(PNG)
    status, heat, kind = call(served.url + "api/sample/9/heatmap?method=Saliency")
    assert status == 200 and kind == "image/png" and heat.startswith(PNG) and len(heat) > len(image)


@pytest.mark.parametrize(
    ("request_body", "status", "message"),
    [
        ({"sample": 9999, "method": "Saliency"}, 404, "no sample 9999"),
        ({"sample": "3", "method": "Saliency"}, 400, "'sample' must be an integer"),
        ({"sample": 3, "method": "Magic"}, 404, "unknown method 'Magic'"),
        (
            {"sample": 3, "method": "IntegratedGradients", "args": {"n_steps": "abc"}},
            400,
            "must be an integer",
        ),
        (
            {"sample": 3, "method": "IntegratedGradients", "args": {"n_steps": 10**9}},
            400,
            "at most",
        ),
        ({"sample": 3, "method": "Saliency", "args": {"abs": 1}}, 400, "true or false"),
        ({"sample": 3, "method": "Saliency", "args": {"steps": 3}}, 400, "has no argument 'steps'"),
        ({"sample": 3, "method": "Saliency", "args": [1]}, 400, "'args' must be a JSON object"),
        ({"sample": 3, "method": "Saliency", "target": 10}, 400, "class id from 0 to 9"),
        (
            {"sample": 3, "method": "Occlusion", "args": {"sliding_window_shapes": [1, 20, 2]}},
            400,
            "Occlusion failed",
        ),
        ({"sample": 3}, 400, "needs 'sample' and 'method'"),
        ({"sample": 3, "method": "Saliency", "extra": 1}, 400, "unknown field"),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    served: Any, request_body: dict, status: int, message: str
) -> None:
    code, body, kind = call(served.url + "api/attribute", request_body)
    assert code == status and kind.startswith("application/json")
    assert message in body["error"] and "Traceback" not in body["error"]


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("api/samples?offset=x", 400, "'offset' must be an integer"),
        ("api/samples?label=12", 400, "class id from 0 to 9"),
        ("api/samples?misclassified=maybe", 400, "true or false"),
        ("api/samples?limit=0", 400, "limit between 1 and 1000"),
        ("api/sample/400/image", 404, "no sample 400"),
        ("api/sample/3/heatmap?method=Saliency&args=%7Bbad", 400, "'args' must be a JSON object"),
        ("api/nothing", 404, "404 Not Found"),
    ],
)
def test_bad_queries_get_a_clear_4xx(served: Any, path: str, status: int, message: str) -> None:
    code, body, _ = call(served.url + path)
    assert code == status and message in body["error"]


def test_not_json_and_wrong_verb(served: Any) -> None:
    code, body, _ = call(served.url + "api/attribute", raw=b"sample=3")
    assert code == 400 and "send a JSON object" in body["error"]
    code, body, _ = call(served.url + "api/methods", raw=b"{}")
    assert code == 405 and "Method Not Allowed" in body["error"]


def test_32_concurrent_requests_match_serial_and_leave_the_model_alone(digits_cache: Path) -> None:
    """32 threads at once (with repeats, which merge) against answers computed one by one."""
    serial_app = make_explorer(digits_cache)
    jobs = [
        {"sample": s, "method": m, "target": t, "args": a}
        for s, t in [(0, None), (1, 3), (2, None), (3, 7)]
        for m, a in [
            ("Saliency", {}),
            ("IntegratedGradients", {"n_steps": 8}),
            ("Occlusion", {}),
            ("GuidedBackprop", {}),
        ]
    ]
    jobs = (jobs * 2)[:32]
    serial = [serial_app.attribute(**job) for job in jobs]
    app = make_explorer(digits_cache)
    before = model_state(app.model)
    app.start(port=0)
    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda job: call(app.url + "api/attribute", job), jobs))
    finally:
        app.stop()
    assert_untouched(app.model, before)
    for (status, answer, _), expected in zip(answers, serial):
        assert status == 200, answer
        for key in ("scores", "shape", "target", "args", "deletion"):
            assert answer[key] == expected[key], key


def test_explorer_rejects_bad_configuration(digits_cache: Path) -> None:
    with pytest.raises(ValueError, match="unknown method 'Nope'"):
        make_explorer(digits_cache, methods=["Nope"])
    with pytest.raises(ValueError, match="3 class names for a model with 10 outputs"):
        digits_explorer(digits_cache, classes=["a", "b", "c"])
    grey = Explorer(lambda x: x.flatten(1)[:, :4], torch.rand(3, 8, 12), methods=["Occlusion"])
    assert grey.methods()[0]["args"][0] == {
        "name": "sliding_window_shapes",
        "type": "ints",
        "default": [2, 3],
    }
    with pytest.raises(ValueError, match="text view is not built yet"):
        Explorer(lambda x: x, (torch.zeros(2, 3), torch.zeros(2)), modality="text")
    with pytest.raises(ValueError, match=r"method GradCam does not run here: .*pass layer="):
        make_explorer(digits_cache, methods={"GradCam": {}})
    app = make_explorer(digits_cache, methods={"GradCam": {"layer": "features.4"}})
    names = [arg["name"] for arg in app.methods()[0]["args"]]
    assert "relu_attributions" in names and "layer" not in names
    answer = app.attribute(0, "GradCam", 1)  # the pooled layer's 4x4 map: no deletion curve
    assert answer["shape"] == [1, 4, 4] and answer["deletion"] is None
    assert app.attribution_png(0, "GradCam", 1)[:4] == b"\x89PNG"  # drawn alone, not over 8x8
    with pytest.raises(ExplorerError, match="no sample -1"):
        app.attribute(-1, "GradCam")


def test_host_other_than_loopback_warns(digits_cache: Path) -> None:
    app = make_explorer(digits_cache)
    with pytest.warns(UserWarning, match="anyone who can reach"):
        app.start(port=0, host="0.0.0.0")
    app.stop()


def test_tabular_modality_names_the_features(tmp_path: Path) -> None:
    """Tabular samples: 'elements' are the feature names, the picture is a bar chart."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    names = ["age", "income", XSS, "debt"]
    app = Explorer(
        model,
        (x, y),
        methods=["Saliency", "FeatureAblation"],
        modality="tabular",
        feature_names=names,
    )
    app.start(port=0)
    try:
        _, answer, _ = call(
            app.url + "api/attribute", {"sample": 4, "method": "FeatureAblation", "target": 1}
        )
        assert answer["elements"] == names and answer["shape"] == [4]
        expected = tdlens.FeatureAblation(model).attribute(x[4:5], target=1)[0]
        assert torch.equal(torch.tensor(answer["scores"]), expected)
        status, bars, _ = call(app.url + "api/sample/4/heatmap?method=FeatureAblation&target=1")
        assert status == 200 and bars.startswith(PNG)
        assert call(app.url + "api/sample/4/image")[0] == 404
    finally:
        app.stop()


def test_datasets_of_pairs_and_without_labels() -> None:
    """A list of (input, label) pairs reads like tensors; without labels nothing is misclassified."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2)).eval()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    pairs = Explorer(model, list(zip(x, y)), methods=["Saliency"], modality="tabular")
    tensors = Explorer(model, (x, y), methods=["Saliency"], modality="tabular")
    assert pairs.samples() == tensors.samples()
    assert (
        pairs.attribute(2, "Saliency", 1)["scores"] == tensors.attribute(2, "Saliency", 1)["scores"]
    )
    bare = Explorer(model, x, methods=["Saliency"], modality="tabular")
    assert bare.info()["has_labels"] is False and bare.classes == ["0", "1"]
    assert bare.samples()["samples"][0]["label"] is None
    with pytest.raises(ExplorerError, match="no labels"):
        bare.samples(misclassified=True)
    with pytest.raises(ValueError, match="tabular samples must be vectors"):
        Explorer(model, torch.zeros(4, 2, 3), modality="tabular")
    with pytest.raises(ValueError, match="2 feature names for 3"):
        Explorer(model, x, modality="tabular", feature_names=["a", "b"])


def test_worker_refuses_when_the_queue_is_full() -> None:
    """A full queue answers 503 after a short wait; identical jobs in flight are merged."""
    import threading

    from tdlens.app.worker import Worker

    release = threading.Event()
    worker = Worker(max_queued=1, wait_s=0.05)
    running = worker.submit("a", lambda: release.wait(10))
    for _ in range(1000):  # until the worker took "a" off the queue
        if running.running():
            break
        threading.Event().wait(0.01)
    waiting = worker.submit("b", lambda: "b")  # fills the one slot
    assert worker.submit("b", lambda: "other") is waiting
    with pytest.raises(ExplorerError, match="busy") as refused:
        worker.submit("c", lambda: "c")
    assert refused.value.status == 503
    release.set()
    assert running.result(10) is True and waiting.result(10) == "b"
    worker.close()
