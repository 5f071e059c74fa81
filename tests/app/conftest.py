"""Fixtures of the explorer tests: the demo's digits CNN (trained once per session into a
temporary cache) and explorers over its held-out digits."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("flask", reason="the explorer needs flask (pip install 'tdlens[app]')")

from tdlens.app import Explorer
from tdlens.app.demo import digits_explorer

XSS = "<img src=x onerror=alert(1)>"
CLASSES = [str(i) for i in range(10)]
CLASSES[7] = XSS  # class 7 is named by an attacker: every view must show it as text


@pytest.fixture(scope="session")
def digits_cache() -> Path:
    """The weights cache: ``.tdlens-cache/`` in the checkout (git-ignored), so the CNN is
    trained once per checkout rather than once per test run (weights are keyed by settings)."""
    return Path(__file__).resolve().parents[2] / ".tdlens-cache"


def make_explorer(cache: Path, **options: Any) -> Explorer:
    """A fresh explorer (own cache and worker) over the demo's test digits."""
    return digits_explorer(cache, classes=CLASSES, **options)


@pytest.fixture(scope="session")
def served(digits_cache: Path) -> Any:
    """An explorer served on a free port of 127.0.0.1 for the whole session."""
    app = make_explorer(digits_cache)
    app.start(port=0)
    yield app
    app.stop()


def call(url: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any, str]:
    """One HTTP request: GET, or POST of ``body`` as JSON (``raw`` bytes as they are).
    Returns the status, the parsed JSON (or the bytes for other types) and the content type."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, payload, kind = (
                response.status,
                response.read(),
                response.headers["Content-Type"],
            )
    except urllib.error.HTTPError as error:
        status, payload, kind = error.code, error.read(), error.headers["Content-Type"]
    if kind and kind.startswith("application/json"):
        return status, json.loads(payload), kind
    return status, payload, kind or ""


TEXTS = [
    "the movie was great and the actors were wonderful.",
    "a dull and long film, i hated it!",
    f"this story is {XSS} not very good",
    "i loved the acting. the script was terrible?",
]


def text_explorer(**options: Any) -> Explorer:
    """An explorer over four labelled texts and a tiny random BERT classifier (tests/text's
    fixed-vocabulary tokenizer, plus the hostile tag as one added token)."""
    pytest.importorskip("transformers")
    from tests.text.conftest import bert_classifier, bert_tokenizer

    tokenizer = bert_tokenizer()
    tokenizer.add_tokens([XSS])
    model = bert_classifier(len(tokenizer))
    methods = {
        "IntegratedGradients": {"n_steps": 8},
        "Saliency": {},
        "KernelShap": {"n_samples": 40, "seed": 0},
        "Occlusion": {},
    }
    options = {
        "classes": ["negative", "neutral", XSS],
        "methods": methods,
        "tokenizer": tokenizer,
        **options,
    }
    data = [(text, i % 3) for i, text in enumerate(TEXTS)]
    return Explorer(model, data, modality="text", **options)


@pytest.fixture(scope="session")
def text_served() -> Any:
    app = text_explorer()
    app.start(port=0)
    yield app
    app.stop()
