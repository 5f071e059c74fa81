"""A dataset whose result is several times a memory limit runs with the process's peak memory
under that limit (the kernel's peak resident size, VmHWM = getrusage's ru_maxrss, reset before
the run, measured in a fresh process after a warm-up run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUNNER = Path(__file__).with_name("runner.py")
LIMIT_MB = 48


def test_peak_memory_stays_bounded_on_a_result_larger_than_the_limit(tmp_path):
    # 1536 examples x 32768 float32 = 192 MiB of attributions, in batches of 64 (8 MiB)
    command = [sys.executable, str(RUNNER), "--memory", "--out", str(tmp_path / "big")]
    command += ["--examples", "1536", "--width", "32768", "--batch-size", "64"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["result_mb"] >= 4 * LIMIT_MB
    assert measured["growth_mb"] < LIMIT_MB, measured
    # the probe sees memory: the same results kept in memory raise the peak by their size
    assert measured["in_memory_growth_mb"] > 0.9 * measured["kept_mb"], measured
    from tensordict import TensorDict

    result = TensorDict.load_memmap(tmp_path / "big")  # and the rows are really there
    assert result["attribution"].shape == (1536, 32768)
    assert float(result["attribution"][1000, :3].abs().sum()) > 0
    assert result["index"][-1] == 1535
