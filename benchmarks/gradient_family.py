"""Benchmark: the gradient family of tdlens against captum 0.9, in one process, on CPU.

Every method on the same small CNN (float32, eval mode; a batch of 16 images 3x32x32,
conv-relu-pool-conv-relu-pool-linear, 10 classes), for K=1 target and K=10 targets. captum
explains K targets with K calls (it has no multi-target mode); tdlens makes one call with
``targets=[...]`` (one forward pass per chunk, K backward passes over its graph). Methods:
Saliency, InputXGradient, IntegratedGradients (20 steps), SmoothGrad (NoiseTunnel over
Saliency, 10 samples), GradientShap (10 samples, 8 baselines), DeepLift, GuidedBackprop,
Deconvolution, GradCam and GuidedGradCam (at the second convolution) and LayerConductance
(20 steps, second convolution); those tdlens does not have yet are skipped and listed.

Before timing, every deterministic method is checked against captum (float32, relative error
below 1e-4; tdlens's DeepLift has its own max-pooling rule, so it differs on this model by
design); the sampling ones (SmoothGrad, GradientShap) draw differently and are compared in
float64 with shared draws in the tests instead. Each variant then runs once untimed
(warm-up), then in round-robin order (alternating which goes first) ``--repeat`` times, or
more for short calls: as many runs as fill two seconds of captum's time, up to 301 (column
"runs": the median of paired ratios of a 5 ms call then moves by about 1% between runs of
the script, against 2% with 101). The fastest run of each is reported (on a shared machine other jobs only ever add
time, so the minimum is the least noisy). Peak memory is the extra CPU memory PyTorch's allocator holds during one call (``_common.allocator_peak_bytes``).
The ratio table comes last. ``speedup`` is the median over rounds of ``captum time / tdlens
time`` within the round (the two runs of a round are adjacent in time, so the ratio cancels
the machine's slower and faster spells; at 5 ms per call the minimum alone moved by 10% from
run to run); the column "of minima" divides the fastest runs instead. The targets are
``speedup >= 1`` at K=1 and ``speedup >= 1.6`` at K=10.

Run with ``python benchmarks/gradient_family.py`` (``--repeat``, ``--threads``: one torch
thread by default, the steadiest setting on a machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _common import (
    MB,
    allocator_peak_bytes,
    environment_lines,
    format_table,
    paired_ratio,
    paired_ratio_interval,
    rounds_for,
    time_interleaved,
)
from captum import attr as captum
from torch import nn

import tdlens

TARGET_K1 = 1.0
TARGET_K10 = 1.6
CHECK_TOLERANCE = 1e-4
N_STEPS = 20
N_SAMPLES = 10
MIN_SECONDS = 2.0  # timed seconds per variant at least (short calls get more runs)
MAX_REPEAT = 301


class SmallCNN(nn.Module):
    """Two convolutions with their own ReLU modules (captum's DeepLift and guided backprop
    need one module per use), max pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.head = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.head(x.flatten(1))


@dataclass
class Method:
    """How each library explains a list of targets with one method."""

    name: str
    captum_one: Callable[[nn.Module, torch.Tensor, int], torch.Tensor]
    # tdlens for a list of targets: ``target=`` for one (as a captum user calls it, no K dim),
    # ``targets=`` for several
    tdlens_many: Callable[[nn.Module, torch.Tensor, list[int]], torch.Tensor] | None
    deterministic: bool = True
    differs: str | None = None  # why the results differ from captum's by design


def methods(baselines: torch.Tensor) -> list[Method]:
    """The methods, captum's call for one target and tdlens's call for a list of targets."""

    def has(name: str) -> bool:
        try:
            getattr(tdlens, name)
        except (AttributeError, ImportError):
            return False
        return True

    def ours(name: str, build: Callable[[nn.Module], Any], **options: Any) -> Any:
        if not has(name):
            return None

        def call(model: nn.Module, x: torch.Tensor, targets: list[int]) -> Any:
            if len(targets) == 1:
                return build(model).attribute(x, target=targets[0], **options)
            return build(model).attribute(x, targets=targets, **options)

        return call

    return [
        Method(
            "Saliency",
            lambda m, x, t: captum.Saliency(m).attribute(x, target=t),
            ours("Saliency", lambda m: tdlens.Saliency(m)),
        ),
        Method(
            "InputXGradient",
            lambda m, x, t: captum.InputXGradient(m).attribute(x, target=t),
            ours("InputXGradient", lambda m: tdlens.InputXGradient(m)),
        ),
        Method(
            "IntegratedGradients",
            lambda m, x, t: captum.IntegratedGradients(m).attribute(x, target=t, n_steps=N_STEPS),
            ours("IntegratedGradients", lambda m: tdlens.IntegratedGradients(m), n_steps=N_STEPS),
        ),
        Method(
            "SmoothGrad",
            lambda m, x, t: captum.NoiseTunnel(captum.Saliency(m)).attribute(
                x, nt_samples=N_SAMPLES, stdevs=0.1, target=t
            ),
            ours("SmoothGrad", lambda m: tdlens.SmoothGrad(m), nt_samples=N_SAMPLES, stdevs=0.1),
            deterministic=False,
        ),
        Method(
            "GradientShap",
            lambda m, x, t: captum.GradientShap(m).attribute(
                x, baselines, n_samples=N_SAMPLES, stdevs=0.1, target=t
            ),
            ours(
                "GradientShap",
                lambda m: tdlens.GradientShap(m, baselines=baselines),
                n_samples=N_SAMPLES,
                stdevs=0.1,
            ),
            deterministic=False,
        ),
        Method(
            "DeepLift",
            lambda m, x, t: captum.DeepLift(m).attribute(x, target=t),
            ours("DeepLift", lambda m: tdlens.DeepLift(m)),
            differs="max-pool rule",  # tdlens.attribution.rules: its own max pooling rule
        ),
        Method(
            "GuidedBackprop",
            lambda m, x, t: captum.GuidedBackprop(m).attribute(x, target=t),
            ours("GuidedBackprop", lambda m: tdlens.GuidedBackprop(m)),
        ),
        Method(
            "Deconvolution",
            lambda m, x, t: captum.Deconvolution(m).attribute(x, target=t),
            ours("Deconvolution", lambda m: tdlens.Deconvolution(m)),
        ),
        Method(
            "GradCam",
            lambda m, x, t: captum.LayerGradCam(m, m.conv2).attribute(x, target=t),
            ours("GradCam", lambda m: tdlens.GradCam(m, "conv2")),
        ),
        Method(
            "GuidedGradCam",
            lambda m, x, t: captum.GuidedGradCam(m, m.conv2).attribute(x, target=t),
            ours("GuidedGradCam", lambda m: tdlens.GuidedGradCam(m, "conv2")),
        ),
        Method(
            "LayerConductance",
            lambda m, x, t: captum.LayerConductance(m, m.conv2).attribute(
                x, target=t, n_steps=N_STEPS
            ),
            ours("Conductance", lambda m: tdlens.Conductance(m, "conv2"), n_steps=N_STEPS),
        ),
    ]


def captum_loop(method: Method, model: nn.Module, x: torch.Tensor, targets: list[int]) -> Any:
    """captum for K targets: one call per target, stacked like tdlens's [B, K, ...]."""
    results = [method.captum_one(model, x, t) for t in targets]
    return results[0] if len(targets) == 1 else torch.stack(results, dim=1)


def tdlens_call(method: Method, model: nn.Module, x: torch.Tensor, targets: list[int]) -> Any:
    """tdlens for K targets: one call (``target=`` for K=1, like a captum user would)."""
    assert method.tdlens_many is not None
    return method.tdlens_many(model, x, targets)


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    if ours.shape != theirs.shape:
        raise AssertionError(f"shape {tuple(ours.shape)} != captum's {tuple(theirs.shape)}")
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12))


@dataclass
class Row:
    method: str
    k: int
    captum_s: float
    tdlens_s: float
    captum_peak: int
    tdlens_peak: int
    error: float | None
    differs: str | None = None
    runs: int = 0
    paired: float = 0.0  # median over rounds of captum time / tdlens time
    interval: tuple[float, float] = (0.0, 0.0)  # its 95% bootstrap interval

    @property
    def speedup(self) -> float:
        return self.paired or self.captum_s / self.tdlens_s


def measure(
    method: Method,
    model: nn.Module,
    x: torch.Tensor,
    k: int,
    repeat: int,
    log: Callable,
    rounds: int | None = None,
) -> Row:
    targets = list(range(k))
    theirs_fn = lambda: captum_loop(method, model, x, targets)  # noqa: E731
    ours_fn = lambda: tdlens_call(method, model, x, targets)  # noqa: E731
    error = None
    if method.deterministic:
        error = relative_error(ours_fn(), theirs_fn())
        if error > CHECK_TOLERANCE and method.differs is None:
            log(f"  {method.name} K={k}: DIFFERS from captum by {error:.1e} (timed anyway)")
    peaks = (allocator_peak_bytes(theirs_fn), allocator_peak_bytes(ours_fn))
    start = time.perf_counter()
    theirs_fn()
    once = time.perf_counter() - start
    # short calls get more runs (the minimum of a few 5 ms runs is still noisy), up to
    # MIN_SECONDS per variant
    runs = rounds or rounds_for(once, repeat, MIN_SECONDS, MAX_REPEAT)
    timings = time_interleaved({"captum": theirs_fn, "tdlens": ours_fn}, repeat=runs)
    row = Row(
        method.name,
        k,
        timings["captum"].min,
        timings["tdlens"].min,
        *peaks,
        error,
        method.differs,
        runs,
        paired_ratio(timings, "captum", "tdlens"),
        paired_ratio_interval(timings, "captum", "tdlens"),
    )
    log(
        f"  {method.name:20s} K={k:2d}: captum {row.captum_s * 1e3:8.1f} ms, tdlens "
        f"{row.tdlens_s * 1e3:8.1f} ms, speedup {row.speedup:5.2f} "
        f"({row.interval[0]:.2f}-{row.interval[1]:.2f}); peak "
        f"{row.captum_peak / MB:6.1f} / {row.tdlens_peak / MB:6.1f} MiB"
    )
    return row


def render(rows: list[Row]) -> str:
    headers = [
        "method",
        "K",
        "captum ms (min)",
        "tdlens ms (min)",
        "speedup",
        "95% interval",
        "of minima",
        "target",
        "captum peak MiB",
        "tdlens peak MiB",
        "peak ratio",
        "rel. err",
        "runs",
    ]
    cells = []
    for r in rows:
        speedup = r.speedup
        goal = TARGET_K1 if r.k == 1 else TARGET_K10
        cells.append(
            [
                r.method,
                str(r.k),
                f"{r.captum_s * 1e3:.1f}",
                f"{r.tdlens_s * 1e3:.1f}",
                f"{speedup:.2f}",
                f"{r.interval[0]:.2f}-{r.interval[1]:.2f}",
                f"{r.captum_s / r.tdlens_s:.2f}",
                f">= {goal} {_verdict(speedup, r.interval, goal)}",
                f"{r.captum_peak / MB:.1f}",
                f"{r.tdlens_peak / MB:.1f}",
                f"{r.tdlens_peak / max(r.captum_peak, 1):.2f}",
                _error_cell(r),
                str(r.runs),
            ]
        )
    return format_table(headers, cells)


def _verdict(speedup: float, interval: tuple[float, float], goal: float) -> str:
    """``met`` when the paired speed-up reaches the goal; ``within noise`` when it does not
    but the goal lies inside its 95% interval (the run cannot tell the two apart: rerun with
    more ``--rounds``); ``MISSED`` when the whole interval is below the goal."""
    if speedup >= goal:
        return "met"
    return "within noise" if interval[1] >= goal else "MISSED"


def _error_cell(row: Row) -> str:
    if row.error is None:
        return "sampled"
    if row.error <= CHECK_TOLERANCE:
        return f"{row.error:.0e}"
    return (
        f"{row.error:.0e} ({row.differs}, by design)"
        if row.differs
        else f"{row.error:.0e} MISMATCH"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=11, help="timed runs per variant, at least")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared machine more threads than free "
        "cores make timings erratic; 0 keeps torch's default)",
    )
    parser.add_argument("--only", nargs="*", help="method names to run")
    parser.add_argument(
        "--rounds",
        type=int,
        help="timed rounds for every variant (default: at least --repeat, more for short calls)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)

    def log(line: str) -> None:
        print(line, flush=True)

    for line in environment_lines():
        log(line)
    log("load average at start (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(args.batch, 3, 32, 32)
    baselines = torch.randn(8, 3, 32, 32) * 0.1
    rows, missing = [], []
    for method in methods(baselines):
        if args.only and method.name not in args.only:
            continue
        if method.tdlens_many is None:
            missing.append(method.name)
            continue
        for k in (1, 10):
            rows.append(measure(method, model, x, k, args.repeat, log, args.rounds))
    log("load average at end (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    if missing:
        log(f"not in tdlens yet (skipped): {', '.join(missing)}")
    log("")
    log(
        f"Batch {args.batch}x3x32x32, float32, {torch.get_num_threads()} threads; fastest of "
        f"the interleaved runs (column runs: at least {args.repeat}, more for short calls); "
        "peak = extra allocator memory of one call."
    )
    log(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
