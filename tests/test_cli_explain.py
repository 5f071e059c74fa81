"""``tdlens explain``, ``tdlens methods`` and ``tdlens explore`` from the shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import tdlens
from tdlens import cli

MODEL_MODULE = """
import torch
from torch import nn


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


model = make_model()
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding ``my_models.py`` and ``x.pt`` / ``x.npy`` inputs, as the cwd."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent(MODEL_MODULE))
    torch.manual_seed(1)
    x = torch.randn(10, 5)
    torch.save(x, tmp_path / "x.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_models", None)
    return tmp_path


def reference_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("spec", ["my_models:model", "my_models:make_model", "my_models.py:model"])
def test_explain_writes_the_python_result(
    workdir: Path, spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["explain", spec, "--input", "x.pt", "--method", "IntegratedGradients", "--target", "2"]
    args += ["--arg", "n_steps=16", "--out", "out/attr.pt", "--batch-size", "4"]
    assert cli.main(args) == 0
    written = torch.load(workdir / "out" / "attr.pt", weights_only=True)
    x = torch.load(workdir / "x.pt", weights_only=True)
    expected = tdlens.IntegratedGradients(reference_model()).attribute(x, target=2, n_steps=16)
    torch.testing.assert_close(written, expected, rtol=1e-5, atol=1e-7)
    assert "wrote IntegratedGradients attributions [10, 5]" in capsys.readouterr().out


def test_explain_npy_several_targets_and_png(workdir: Path) -> None:
    args = [
        "explain",
        "my_models:model",
        "--input",
        "x.npy",
        "--method",
        "Occlusion",
        "--target",
        "0,1",
    ]
    args += ["--arg", "sliding_window_shapes=(2,)", "--out", "attr.pt"]
    assert cli.main(args) == 0
    written = torch.load(workdir / "attr.pt", weights_only=True)
    x = torch.from_numpy(np.load(workdir / "x.npy"))
    expected = tdlens.Occlusion(reference_model()).attribute(
        x, targets=[0, 1], sliding_window_shapes=(2,)
    )
    assert written.shape == (10, 2, 5)
    torch.testing.assert_close(written, expected)
    pytest.importorskip("matplotlib")
    args = [
        "explain",
        "my_models:model",
        "--input",
        "x.pt",
        "--method",
        "Saliency",
        "--out",
        "s.pt",
        "--png",
        "s.png",
    ]
    assert cli.main(args) == 0
    assert (workdir / "s.png").read_bytes()[:4] == b"\x89PNG"
    predicted = tdlens.Saliency(reference_model()).attribute(torch.load(workdir / "x.pt"))
    torch.testing.assert_close(torch.load(workdir / "s.pt", weights_only=True), predicted)


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["my_models:modl", "--method", "Saliency"], 1, "did you mean model"),
        (["nowhere:model", "--method", "Saliency"], 1, "cannot import module 'nowhere'"),
        (["my_models", "--method", "Saliency"], 2, "expected module:attribute"),
        (["my_models:model", "--method", "Salency"], 2, "did you mean Saliency"),
        (
            ["my_models:model", "--method", "Saliency", "--arg", "n_steps"],
            2,
            "--arg expects name=value",
        ),
        (["my_models:model", "--method", "Saliency", "--target", "three"], 2, "--target must be"),
        (["my_models:model", "--method", "Saliency", "--target", "7"], 1, "Saliency failed"),
        (["my_models:model", "--method", "Saliency", "--arg", "steps=3"], 1, "unknown option"),
        (
            ["my_models:model", "--method", "Saliency", "--png", "a.jpg"],
            2,
            "--png must name a .png",
        ),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_message(
    workdir: Path, args: list[str], status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["explain", *args[:1], "--input", "x.pt", "--out", "a.pt", *args[1:]])
    err = capsys.readouterr().err
    assert code == status and message in err, err
    assert not (workdir / "a.pt").exists()


def test_bad_input_files(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "x.txt").write_text("1 2 3")
    (workdir / "evil.pt").write_bytes(b"not a tensor file")
    for name, message in [
        ("missing.pt", "no input file"),
        ("x.txt", "must be a .pt or .npy"),
        ("evil.pt", "weights_only=True"),
    ]:
        code = cli.main(
            ["explain", "my_models:model", "--input", name, "--method", "Saliency", "--out", "a.pt"]
        )
        assert code != 0 and message in capsys.readouterr().err


def test_methods_lists_every_method_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("Saliency", "IntegratedGradients", "Occlusion", "KernelShap", "GradCam"):
        assert f"\n{name}: " in "\n" + out
    assert "n_steps=50" in out and "sliding_window_shapes (required)" in out


def test_progress_bar_only_on_a_terminal() -> None:
    import io

    from tdlens.cli_explain import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    piped, terminal = io.StringIO(), Terminal()
    for stream in (piped, terminal):
        bar = Progress(3, "Occlusion", stream)
        for done in (1, 2, 3):
            bar.update(done)
    assert piped.getvalue() == ""
    assert "Occlusion [" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_explore_serves_a_user_explorer(workdir: Path) -> None:
    """``tdlens explore module:function`` in a subprocess: it prints the URL and serves the API."""
    pytest.importorskip("flask")
    (workdir / "my_app.py").write_text(
        textwrap.dedent("""
        import torch
        from tdlens.app import Explorer
        from my_models import make_model

        def make_explorer():
            x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
            return Explorer(make_model(), (x, torch.zeros(6, dtype=torch.long)), modality="tabular", methods=["Saliency"])
    """)
    )
    src = str(Path(tdlens.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(workdir)])}
    process = subprocess.Popen(
        [sys.executable, "-m", "tdlens", "explore", "my_app:make_explorer", "--port", "0"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert "open http://127.0.0.1:" in line, line + (
            process.stderr.read() if process.poll() is not None and process.stderr else ""
        )
        url = line.split("open ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "api/samples", timeout=60) as response:
            assert json.load(response)["total"] == 6
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_explore_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("flask")
    assert cli.main(["explore"]) == 2
    assert "give either --demo or module:function" in capsys.readouterr().err
    started = time.perf_counter()
    assert cli.main(["explore", "tdlens:__version__"]) == 1
    assert "not a tdlens.app.Explorer" in capsys.readouterr().err
    assert time.perf_counter() - started < 30
