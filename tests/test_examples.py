"""The examples' --fast modes run and assert their headline numbers (each under a minute)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:  # the examples import their shared _report module
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cartpole_fast(tmp_path: Path) -> None:
    pytest.importorskip("gymnasium")
    pytest.importorskip("matplotlib")
    numbers = _load("cartpole").main(["--fast", "--out", str(tmp_path)])
    assert numbers["probe R2 pole angle (critic hidden)"] > 0.5
    assert numbers["return after"] != numbers["return before"]
    assert numbers["IG completeness gap (max)"] < 1e-2
    assert (tmp_path / "cartpole_attributions.png").stat().st_size > 0
    assert "<table>" in (tmp_path / "cartpole_report.html").read_text()


def test_captioning_fast(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    numbers = _load("captioning").main(["--fast", "--out", str(tmp_path)])
    assert numbers["probe_accuracy"] > numbers["majority_class"] + 0.2
    assert numbers["patched_tokens_changed"] > 0.3
    assert (tmp_path / "captioning_attributions.png").stat().st_size > 0


def test_language_fast(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("matplotlib")
    numbers = _load("language").main(["--fast", "--out", str(tmp_path)])
    assert numbers["agreement accuracy"] > 0.9
    assert numbers["IG: subject outweighs attractor"] > 0.8
    assert (
        numbers["plural verb share after steering"]
        > numbers["plural verb share before steering"] + 0.3
    )
    assert "<span" in (tmp_path / "language_report.html").read_text()
