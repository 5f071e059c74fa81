"""A dataset run as its own process, for the tests that kill, resume, launch with torchrun or
measure memory (``python tests/dataset/runner.py --help``)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import tdlens


class CountingMLP(nn.Module):
    """A float64 MLP that appends one line per forward call to a file (the call counter)."""

    def __init__(self, count_file: str | None, sleep: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).double()
        self.count_file, self.sleep = count_file, sleep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.count_file:
            with open(self.count_file, "a") as f:
                f.write(f"{x.shape[0]}\n")
        if self.sleep:
            time.sleep(self.sleep)
        return self.net(x)


class LazyRows(Dataset):
    """``n`` rows of ``width`` float32 values made on demand: the data is never all in memory."""

    def __init__(self, n: int, width: int) -> None:
        self.n, self.width = n, width

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((self.width,), float(i % 7))


def data(n: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=generator)
    return TensorDataset(x, y)


def attribute(
    out: str,
    n: int,
    batch_size: int,
    method: str = "ig",
    count_file: str | None = None,
    sleep: float = 0.0,
    internal_batch_size: int | None = None,
):
    """The run the resume and distributed tests repeat, in this process or another."""
    model = CountingMLP(count_file, sleep)
    attribution = (
        tdlens.IntegratedGradients(model) if method == "ig" else tdlens.FeatureAblation(model)
    )
    options: dict = {"n_steps": 5} if method == "ig" else {}
    if internal_batch_size:
        options["internal_batch_size"] = internal_batch_size
    return tdlens.attribute_dataset(
        attribution, data(n), out=out, targets=1, batch_size=batch_size, **options
    )


def small_run(args: argparse.Namespace) -> None:
    rank = 0
    if args.distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank = dist.get_rank()
    n = args.examples + (args.rank1_extra if rank == 1 else 0)
    try:
        attribute(
            args.out,
            n,
            args.batch_size,
            args.method,
            args.count_file,
            args.sleep,
            args.internal_batch_size,
        )
    except BaseException:
        if args.distributed:
            dist.destroy_process_group()
        raise
    if args.distributed:
        dist.barrier()  # leave together: no rank tears gloo down while the other still reads
        dist.destroy_process_group()


def _status_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def peak_growth_mb(run: Any) -> tuple[float, Any]:
    """How far the resident memory's peak rose above its level at the start of ``run()``:
    the kernel's peak (VmHWM, what ``getrusage`` reports as ru_maxrss) is reset first, so an
    earlier, higher peak cannot hide this one."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
    except OSError:  # no /proc: the process-wide peak, an upper bound of this one
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = run()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before, result
    before = _status_mb("VmRSS")
    result = run()
    return _status_mb("VmHWM") - before, result


def memory_run(args: argparse.Namespace) -> None:
    """Peak resident memory of a run whose result is far larger than the limit, and of the
    same attributions kept in memory (the control: the probe must see those)."""
    model = nn.Linear(args.width, 2)
    method = tdlens.Saliency(model)
    # warm up every code path (imports, allocator, tensordict) on a small run first
    tdlens.attribute_dataset(
        method, LazyRows(256, args.width), out=args.out + "-warm", batch_size=args.batch_size
    )
    growth, result = peak_growth_mb(
        lambda: tdlens.attribute_dataset(
            method, LazyRows(args.examples, args.width), out=args.out, batch_size=args.batch_size
        )
    )
    result_mb = sum(v.numel() * v.element_size() for v in result.values(True, True)) / 2**20
    del result
    loader = torch.utils.data.DataLoader(LazyRows(args.examples, args.width), args.batch_size)
    kept_growth, kept = peak_growth_mb(lambda: torch.cat([method.attribute(x) for x in loader]))
    print(
        json.dumps(
            {
                "growth_mb": growth,
                "result_mb": result_mb,
                "in_memory_growth_mb": kept_growth,
                "kept_mb": kept.numel() * kept.element_size() / 2**20,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--examples", type=int, default=21)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--method", default="ig")
    parser.add_argument("--count-file")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--internal-batch-size", type=int)
    parser.add_argument("--distributed", action="store_true")
    parser.add_argument("--rank1-extra", type=int, default=0)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--width", type=int, default=32768)
    arguments = parser.parse_args()
    os.environ.setdefault("TDLENS_NO_PROGRESS", "1")
    memory_run(arguments) if arguments.memory else small_run(arguments)
