"""``torch.distributed.run --nproc_per_node=2`` with gloo gives the single-process result, and
ranks that see different datasets fail together with a clear error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

RUNNER = Path(__file__).with_name("runner.py")
N, BATCH = 21, 4  # 6 batches, the last of one example: 3 for each rank, unequal in examples
TEARDOWN_ABORT = "terminate called without an active exception"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TDLENS_NO_PROGRESS": "1"}  # as torchrun sets


def launch(out: Path, *extra: str, processes: int = 2) -> subprocess.CompletedProcess:
    script = [
        str(RUNNER),
        "--out",
        str(out),
        "--examples",
        str(N),
        "--batch-size",
        str(BATCH),
        *extra,
    ]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={processes}", *script, "--distributed"]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    if done.returncode and TEARDOWN_ABORT in done.stderr:
        # One launch in about 26 on this machine had a rank abort in gloo's C++ teardown after
        # its work (std::terminate: a thread still joinable), not reproduced in 18 launches
        # alone, loaded or not. Launch once more into a fresh directory: the assertions below
        # still check the result.
        shutil.rmtree(out, ignore_errors=True)
        done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    return done


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path):
    from tensordict import TensorDict

    fixed = ("--internal-batch-size", "3")
    for name, processes, extra in [
        ("one", 1, fixed),
        ("two", 2, fixed),
        ("two-default-chunks", 2, ()),
    ]:
        done = launch(tmp_path / name, *extra, processes=processes)
        assert done.returncode == 0, done.stderr[-3000:]
    one = TensorDict.load_memmap(tmp_path / "one")
    two = TensorDict.load_memmap(tmp_path / "two")
    for key in ("attribution", "index", "target", "prediction"):
        assert torch.equal(two[key], one[key]), key  # bit-identical
    free = TensorDict.load_memmap(tmp_path / "two-default-chunks")
    torch.testing.assert_close(free["attribution"], one["attribution"], rtol=0, atol=1e-12)
    assert torch.equal(one["index"], torch.arange(N))
    logs = sorted(p.name for p in (tmp_path / "two" / "tdlens-done").iterdir())
    assert logs == ["rank0.log", "rank1.log"]  # both ranks wrote their batches
    assert {int(b) for b in (tmp_path / "two/tdlens-done/rank1.log").read_text().split()} == {
        1,
        3,
        5,
    }


@pytest.mark.slow
def test_ranks_disagreeing_on_the_length_fail_on_every_rank(tmp_path):
    done = launch(tmp_path / "bad", "--rank1-extra", "1")
    assert done.returncode != 0
    assert done.stderr.count("ranks disagree on the dataset length (rank 0: 21, rank 1: 22") >= 2
    assert not (tmp_path / "bad").exists()  # refused before any work
