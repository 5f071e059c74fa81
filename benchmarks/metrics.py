"""Benchmark: infidelity and max-sensitivity, tdlens against captum 0.9, on CPU.

Both libraries get the same model, inputs, attributions and perturbation function, seeded the
same way inside every timed call, so they do the same perturbations; max-sensitivity gets the
same explanation function too (captum's Saliency), so that the timing is the metric's own and
not that of two attribution implementations. Before timing, every case
checks that the two agree (float64 to 1e-6 on the benchmark inputs cast to float64, float32
to 1e-4 relative). Cases: an MLP on tabular rows and a CNN on 3x32x32 images, with all
perturbations in one forward pass and chunked (``max_examples_per_batch``).

Every variant runs once untimed, then all run ``--repeat`` times in round-robin order (the
order reversed every other round). By default torch uses one thread (``--threads``), so that
the comparison does not depend on how busy the machine's other cores are. Each run records its wall-clock time and the CPU time of this process (all its threads): on a
machine shared with other jobs the wall clock also counts the time others hold the cores, the
CPU time does not. The final table gives medians and the captum / tdlens ratios (above 1:
tdlens is faster).

Run with ``python benchmarks/metrics.py``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _common import environment_lines, format_table
from captum.attr import Saliency as CaptumSaliency
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max as captum_sensitivity_max
from torch import nn

import tdlens
from tdlens.metrics import infidelity, sensitivity_max, uniform_noise


@dataclass
class Case:
    """One setting: model, inputs, attributions and metric options."""

    name: str
    model: nn.Module
    inputs: torch.Tensor
    target: int
    n_perturb_samples: int
    max_examples_per_batch: int | None


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    ).eval()


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    ).eval()


def build_cases(n_samples: int) -> list[Case]:
    torch.manual_seed(0)
    tabular, images = torch.randn(256, 64), torch.randn(32, 3, 32, 32)
    small, big = mlp(), cnn()
    return [
        Case("mlp B=256", small, tabular, 3, n_samples, None),
        Case("mlp B=256 chunked", small, tabular, 3, n_samples, 256 * 5),
        Case("cnn B=32", big, images, 3, n_samples, None),
        Case("cnn B=32 chunked", big, images, 3, n_samples, 32 * 5),
    ]


def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    noise = 0.05 * torch.randn_like(inputs)
    return noise, inputs - noise


def variants(case: Case, model: nn.Module, x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The four timed calls of a case, each seeding torch's generator first."""
    attr = tdlens.Saliency(model).attribute(x, target=case.target)
    common = {
        "target": case.target,
        "n_perturb_samples": case.n_perturb_samples,
        "max_examples_per_batch": case.max_examples_per_batch,
    }
    sens = {**common, "perturb_func": uniform_noise}
    explain = CaptumSaliency(model).attribute

    def seeded(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            torch.manual_seed(1)
            return fn()

        return run

    return {
        "infidelity tdlens": seeded(lambda: infidelity(model, perturb, x, attr, **common)),
        "infidelity captum": seeded(lambda: captum_infidelity(model, perturb, x, attr, **common)),
        "sensitivity_max tdlens": seeded(lambda: sensitivity_max(explain, x, **sens)),
        "sensitivity_max captum": seeded(lambda: captum_sensitivity_max(explain, x, **sens)),
    }


def check(case: Case) -> dict[str, float]:
    """Relative differences tdlens vs captum, float64 and float32; raises if too large."""
    errors = {}
    for dtype, tolerance in ((torch.float64, 1e-6), (torch.float32, 1e-4)):
        model = copy.deepcopy(case.model).to(dtype)
        calls = variants(case, model, case.inputs.to(dtype))
        for metric in ("infidelity", "sensitivity_max"):
            ours, theirs = calls[f"{metric} tdlens"](), calls[f"{metric} captum"]()
            error = float((ours - theirs).abs().max() / theirs.abs().max().clamp(min=1e-12))
            errors[f"{metric} {dtype}"] = error
            if error > tolerance:
                raise AssertionError(f"{case.name}: {metric} in {dtype} differs by {error:.1e}")
    return errors


def time_both(
    fns: dict[str, Callable[[], Any]], repeat: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Wall-clock and process CPU seconds of each run, interleaved after one warm-up run."""
    for fn in fns.values():
        fn()
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in fns}
    for round_ in range(repeat):
        order = list(fns.items())
        for name, fn in order if round_ % 2 == 0 else order[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name][0].append(time.perf_counter() - wall)
            times[name][1].append(time.process_time() - cpu)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per variant")
    parser.add_argument("--n-perturb-samples", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for line in environment_lines():
        print(line, flush=True)
    rows = []
    for case in build_cases(args.n_perturb_samples):
        errors = check(case)
        print(
            f"== {case.name}: inputs {tuple(case.inputs.shape)}, n_perturb_samples="
            f"{case.n_perturb_samples}, max_examples_per_batch={case.max_examples_per_batch}; "
            + ", ".join(f"{k} rel. diff {v:.0e}" for k, v in errors.items()),
            flush=True,
        )
        times = time_both(variants(case, case.model, case.inputs), args.repeat)
        for metric in ("infidelity", "sensitivity_max"):
            ours, theirs = times[f"{metric} tdlens"], times[f"{metric} captum"]
            cells = [case.name, metric]
            for kind in (1, 0):  # CPU time first, then wall clock
                mine, peer = statistics.median(ours[kind]), statistics.median(theirs[kind])
                cells += [f"{mine * 1e3:.1f}", f"{peer * 1e3:.1f}", f"{peer / mine:.2f}"]
            rows.append(cells)
    print()
    print(f"Medians of {args.repeat} runs after one untimed run, milliseconds of process CPU time")
    print("and of wall-clock time; ratio = captum / tdlens (above 1: tdlens is faster).")
    headers = ["case", "metric", "tdlens cpu", "captum cpu", "ratio cpu"]
    headers += ["tdlens wall", "captum wall", "ratio wall"]
    print(format_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
