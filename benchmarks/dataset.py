"""Benchmark: dataset-scale attribution (``tdlens.attribute_dataset``) on CPU.

Workload: IntegratedGradients (16 steps) of a small float32 CNN (1x28x28 inputs, 10 classes)
over 512 examples in batches of 32, targets from the labels (``TensorDataset(x, y)``).

1. **One process against a hand-written loop.** The loop a user writes today: a DataLoader,
   ``ig.attribute(x, target=y)`` per batch, results kept in a list and concatenated in memory.
   ``attribute_dataset`` does the same attributions plus what the loop lacks: a prediction
   per example (one gradient-free forward per batch), writing every batch to the memory-mapped
   result, syncing it to disk and logging it for resume (each timed run starts over with
   ``resume=False``). Variants run round robin in this process, on one torch thread by
   default (``--threads``: on a loaded machine two threads mostly measure the contention);
   the ratio is the median over rounds of the paired wall times (goal: at most 1.1); the
   CPU-time ratio is printed too.
2. **Two processes against one.** The same run launched as one process (2 threads, then 1
   thread) and with ``torch.distributed.run --nproc_per_node=2`` and gloo (torchrun gives each
   rank 1 thread). Each rank times its own ``attribute_dataset`` call (after a barrier, so
   start-up is excluded) and reports its examples per second. Two ranks on two cores can at
   best match one process that already uses both cores with two threads; against the
   one-thread process they show how the work splits.

Run with ``python benchmarks/dataset.py`` (``--quick`` for fewer rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    environment_lines,
    format_table,
    load_line,
    paired_ratio,
    paired_ratio_interval,
    time_interleaved,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tdlens

N, BATCH, STEPS = 512, 32, 16
GOAL = 1.1


def build() -> tuple[nn.Module, TensorDataset]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(256, 10),
    ).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(N, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (N,), generator=generator)
    return model, TensorDataset(x, y)


def hand_loop(ig: tdlens.IntegratedGradients, data: TensorDataset) -> torch.Tensor:
    parts = [ig.attribute(x, target=y, n_steps=STEPS) for x, y in DataLoader(data, BATCH)]
    return torch.cat(parts)


def run_dataset(
    ig: tdlens.IntegratedGradients, data: TensorDataset, out: str, prediction: bool = True
) -> object:
    return tdlens.attribute_dataset(
        ig,
        data,
        out=out,
        targets=1,
        batch_size=BATCH,
        resume=False,
        progress=False,
        prediction=prediction,
        n_steps=STEPS,
    )


def one_process(repeat: int, scratch: Path) -> tuple[dict, float, tuple[float, float]]:
    model, data = build()
    ig = tdlens.IntegratedGradients(model)
    out = str(scratch / "one")
    result = run_dataset(ig, data, out)
    # the same attributions (float32 convolutions on several threads vary in the last bits)
    torch.testing.assert_close(result["attribution"], hand_loop(ig, data), rtol=1e-4, atol=1e-7)
    timings = time_interleaved(
        {
            "hand-written loop": lambda: hand_loop(ig, data),
            "attribute_dataset": lambda: run_dataset(ig, data, out),
            "attribute_dataset, prediction=False": lambda: run_dataset(ig, data, out, False),
        },
        repeat=repeat,
    )
    ratio = paired_ratio(timings, "attribute_dataset", "hand-written loop")
    return timings, ratio, paired_ratio_interval(timings, "attribute_dataset", "hand-written loop")


def cpu_ratio(timings: dict, variant: str = "attribute_dataset") -> float:
    """The paired ratio of CPU times (less moved by other processes than wall time)."""
    pairs = zip(timings[variant].cpu_times, timings["hand-written loop"].cpu_times)
    return statistics.median(a / b for a, b in pairs)


def worker(out: str, report: str) -> None:
    """One rank of the multi-process run (or the only process)."""
    distributed = "RANK" in os.environ
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    model, data = build()
    ig = tdlens.IntegratedGradients(model)
    run_dataset(ig, TensorDataset(*(t[:BATCH] for t in data.tensors)), out + "-warm")
    if distributed:
        dist.barrier()
    start = time.perf_counter()
    run_dataset(ig, data, out)
    elapsed = time.perf_counter() - start
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    mine = sum(min(BATCH, N - s) for s in range(rank * BATCH, N, world * BATCH))
    Path(f"{report}.{rank}").write_text(
        json.dumps(
            {"rank": rank, "seconds": elapsed, "examples": mine, "threads": torch.get_num_threads()}
        )
    )
    if distributed:
        dist.barrier()  # every rank's time includes waiting for the slowest at the end
        dist.destroy_process_group()


def launch(scratch: Path, name: str, processes: int, threads: int | None) -> list[dict]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    script = [__file__, "--worker", str(scratch / name), str(scratch / f"{name}.json")]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            *script,
        ]
    subprocess.run(command, check=True, env=env, capture_output=True)
    return [json.loads(Path(f"{scratch / name}.json.{r}").read_text()) for r in range(processes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("OUT", "REPORT"))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the one-process comparison"
    )
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    torch.set_num_threads(args.threads)  # one thread: far less moved by a loaded machine
    scratch = Path(tempfile.mkdtemp(prefix="tdlens-dataset-bench-"))
    try:
        print("\n".join(environment_lines()))
        print(load_line())
        print(
            f"workload: IntegratedGradients({STEPS} steps), CNN 1x28x28, {N} examples, "
            f"batches of {BATCH}"
        )
        timings, ratio, interval = one_process(3 if args.quick else 9, scratch)
        rounds = {}
        for name, processes, threads in [
            ("1 process, 2 threads", 1, 2),
            ("1 process, 1 thread", 1, 1),
            ("2 processes (torchrun, gloo), 1 thread each", 2, None),
        ]:
            rounds[name] = launch(
                scratch, name.split(",")[0].replace(" ", "-") + str(threads), processes, threads
            )
        print(load_line())
        print()
        print(
            format_table(
                ["variant", "median s", "min s", "median CPU s"],
                [
                    [k, f"{t.median:.3f}", f"{t.min:.3f}", f"{statistics.median(t.cpu_times):.3f}"]
                    for k, t in timings.items()
                ],
            )
        )
        print()
        rows = []
        for name, reports in rounds.items():
            wall = max(r["seconds"] for r in reports)
            for r in reports:
                rows.append(
                    [
                        name,
                        str(r["rank"]),
                        str(r["threads"]),
                        str(r["examples"]),
                        f"{r['seconds']:.2f}",
                        f"{r['examples'] / r['seconds']:.0f}",
                        f"{N / wall:.0f}",
                    ]
                )
        print(
            format_table(
                [
                    "run",
                    "rank",
                    "threads",
                    "examples",
                    "s",
                    "examples/s (rank)",
                    "examples/s (all)",
                ],
                rows,
            )
        )
        print()

        def wall(name: str) -> float:
            return max(r["seconds"] for r in rounds[name])

        two = wall("2 processes (torchrun, gloo), 1 thread each")
        print(
            f"2 processes vs 1 process with 2 threads: {wall('1 process, 2 threads') / two:.2f}x "
            "the throughput"
        )
        print(
            f"2 processes vs 1 process with 1 thread: {wall('1 process, 1 thread') / two:.2f}x "
            "the throughput"
        )
        bare = "attribute_dataset, prediction=False"
        print(
            f"attribute_dataset with prediction=False / hand-written loop: "
            f"{paired_ratio(timings, bare, 'hand-written loop'):.3f}x "
            f"(CPU time {cpu_ratio(timings, bare):.3f}x)"
        )
        verdict = "met" if ratio <= GOAL else "MISSED"
        print(
            f"attribute_dataset / hand-written loop, 1 process: {ratio:.3f}x "
            f"(95% interval {interval[0]:.3f}-{interval[1]:.3f}; goal <= {GOAL}: {verdict}); "
            f"CPU time {cpu_ratio(timings):.3f}x"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
