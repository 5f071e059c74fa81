"""A run killed with SIGKILL midway, then resumed, equals an uninterrupted run and recomputes
no finished batch (the model counts its forward calls in a file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.dataset.runner import attribute

RUNNER = Path(__file__).with_name("runner.py")
N, BATCH = 48, 4  # 12 batches of equal size: the same number of forward calls each


def start(out: Path, count: Path) -> subprocess.Popen:
    """The run of :func:`attribute` in another process, slowed down so it can be killed."""
    command = [sys.executable, str(RUNNER), "--out", str(out), "--examples", str(N)]
    # slow enough (about 0.8 s a batch: 2 forward calls) that the spaced syncs (at most 2% of
    # the time) log batches well before the end, even where a sync takes 100 ms
    command += ["--batch-size", str(BATCH), "--count-file", str(count), "--sleep", "0.4"]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True)


def calls(count: Path) -> int:
    return len(count.read_text().splitlines()) if count.exists() else 0


def finished(out: Path) -> set[int]:
    log = out / "tdlens-done" / "rank0.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return {int(line) for line in lines if line.strip().isdigit()}


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    from tensordict import TensorDict

    whole = tmp_path / "whole"
    attribute(str(whole), N, BATCH, count_file=str(tmp_path / "whole.count"))
    per_batch = calls(tmp_path / "whole.count") / (N // BATCH)
    assert per_batch == int(per_batch) and per_batch >= 2

    out = tmp_path / "killed"
    victim = start(out, tmp_path / "killed.count")
    deadline = time.monotonic() + 240
    while len(finished(out)) < 3 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read() if victim.stderr else ""
    done = finished(out)
    assert 3 <= len(done) < N // BATCH, "the kill came too late to test a resume"

    attribute(str(out), N, BATCH, count_file=str(tmp_path / "resumed.count"))
    assert calls(tmp_path / "resumed.count") == (N // BATCH - len(done)) * per_batch
    assert finished(out) == set(range(N // BATCH))
    expected, result = TensorDict.load_memmap(whole), TensorDict.load_memmap(out)
    for key in ("attribution", "index", "target", "prediction"):
        assert torch.equal(result[key], expected[key]), key


def test_resuming_a_finished_run_computes_nothing(tmp_path):
    out, again = str(tmp_path / "run"), str(tmp_path / "again.count")
    first = attribute(out, N, BATCH, "ablation", str(tmp_path / "first.count"))
    second = attribute(out, N, BATCH, "ablation", again)
    assert calls(Path(again)) == 0
    assert torch.equal(first["attribution"], second["attribution"])
