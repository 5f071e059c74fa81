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
