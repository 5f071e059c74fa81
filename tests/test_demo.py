"""``tdlens demo``: report files, the weights cache, the CLI, and K=2 attributions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import tdlens
from tdlens import cli, demo

N_EXAMPLES = 4
IG_STEPS = 16
METHODS = ("Saliency", "InputXGradient", "IntegratedGradients")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh output folder and a fresh weights cache, shared by the module's tests."""
    return tmp_path_factory.mktemp("demo-out"), tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="module")
def first_run(dirs: tuple[Path, Path]) -> demo.DemoResult:
    """The demo run once on an empty cache: it trains and caches the weights."""
    out, cache = dirs
    return demo.run_demo(out, cache, n_examples=N_EXAMPLES, ig_steps=IG_STEPS, log=None)


def test_first_run_trains_and_writes_report(
    first_run: demo.DemoResult, dirs: tuple[Path, Path]
) -> None:
    out, cache = dirs
    assert first_run.trained
    assert first_run.accuracy > 0.9
    assert first_run.weights_path is not None and first_run.weights_path.parent == cache
    assert first_run.weights_path.is_file()
    png, html = out / "attributions.png", out / "index.html"
    assert set(first_run.files) == {png, html}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html.read_text(encoding="utf-8")
    assert "data:image/png;base64," in page
    for name in METHODS:
        assert name in page
        assert f"{first_run.timings[name] * 1e3:.1f} ms" in page
    for row in range(N_EXAMPLES):
        pred = int(first_run.pred[row])
        assert f"{pred} (p = {float(first_run.probs[row, pred]):.3f})" in page


def test_second_run_loads_the_cache_without_training(
    first_run: demo.DemoResult,
    dirs: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second run trained instead of loading the cache")

    monkeypatch.setattr(demo, "train_model", no_training)
    again = demo.run_demo(tmp_path, dirs[1], n_examples=N_EXAMPLES, ig_steps=IG_STEPS, log=None)
    assert not again.trained
    assert again.weights_path == first_run.weights_path
    assert again.accuracy == first_run.accuracy
    torch.testing.assert_close(again.pred, first_run.pred)
    assert (tmp_path / "attributions.png").is_file() and (tmp_path / "index.html").is_file()


def test_cache_key_follows_the_settings() -> None:
    key = demo.DemoConfig().cache_key()
    assert key == demo.DemoConfig().cache_key()
    assert key != demo.DemoConfig(epochs=7).cache_key()
    assert key != demo.DemoConfig(channels=(8, 16)).cache_key()


def test_default_cache_dir_honours_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert demo.default_cache_dir() == tmp_path / "tdlens"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG spec ignores those
    assert demo.default_cache_dir() == Path.home() / ".cache" / "tdlens"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert demo.default_cache_dir() == Path.home() / ".cache" / "tdlens"


@pytest.mark.parametrize("name", METHODS)
def test_two_target_call_matches_single_target_calls(first_run: demo.DemoResult, name: str) -> None:
    attr = first_run.attributions[name]
    assert attr.shape == (N_EXAMPLES, 2, 1, 8, 8)
    assert not torch.equal(attr[:, 0], attr[:, 1])
    method = getattr(tdlens, name)(first_run.model)
    options = {"n_steps": IG_STEPS} if name == "IntegratedGradients" else {}
    for k, target in enumerate((first_run.pred, first_run.runner_up)):
        single = method.attribute(first_run.inputs, target=target, **options)
        assert single.shape == first_run.inputs.shape
        torch.testing.assert_close(attr[:, k], single, rtol=1e-5, atol=1e-6)


def test_cli_demo_uses_the_cache(
    first_run: demo.DemoResult,
    dirs: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["demo", "--out", str(tmp_path), "--cache-dir", str(dirs[1]), "--n-examples", "2"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "loaded cached weights" in printed
    assert f"test accuracy: {first_run.accuracy:.1%}" in printed
    for name in METHODS:
        assert name in printed
    assert str(tmp_path / "index.html") in printed
    assert (tmp_path / "attributions.png").is_file()


def test_cli_version_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("tdlens ")
    assert cli.main([]) == 2
    with pytest.raises(SystemExit):
        cli.main(["demo", "--n-examples", "0"])


def test_importing_the_cli_is_light() -> None:
    code = (
        "import sys, tdlens.cli; "
        "heavy = [m for m in ('sklearn', 'matplotlib') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    src = str(Path(cli.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)
