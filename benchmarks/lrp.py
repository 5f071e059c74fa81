"""Benchmark: LRP with the epsilon rule (captum's defaults), tdlens against captum, on CPU.

Two seeded float32 models: an MLP 784-512-512-10 (64 rows) and a CNN on 1x28x28 images
(conv 32, ReLU, max pool, conv 64, ReLU, max pool, linear 10; 32 images). For K = 1 and
K = 10 targets of the same inputs:

* **captum**: ``captum.attr.LRP(model).attribute(x, target=k)``, once per target (captum has
  no multi-target mode; each call runs two forward passes and one backward pass);
* **tdlens**: ``tdlens.LRP(model).attribute(x, target=0)`` or ``targets=range(K)``: one
  forward pass and K backward passes over its graph.

Both are checked to agree (float64, 4 rows, to 1e-6) before timing. Variants are timed in
interleaved rounds (``_common.time_interleaved``); the speed-up is the median over rounds of
captum's time over tdlens's in the same round, with a 95% bootstrap interval. The goals
(tdlens no slower than captum at K = 1, at least 1.6x faster at K = 10) are checked last.

Run with ``python benchmarks/lrp.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import warnings

import torch
from _common import (
    environment_lines,
    format_table,
    load_line,
    paired_ratio,
    paired_ratio_interval,
    rounds_for,
    time_interleaved,
)
from captum.attr import LRP as CaptumLRP
from torch import nn

import tdlens

GOALS = {1: 1.0, 10: 1.6}
warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(64 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(x.reshape(x.shape[0], -1))


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )


def captum_loop(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    method = CaptumLRP(model)
    return torch.stack([method.attribute(x, target=t).detach() for t in range(k)], 1)


def tdlens_call(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    method = tdlens.LRP(model)
    if k == 1:
        return method.attribute(x, target=0).unsqueeze(1)
    return method.attribute(x, targets=list(range(k)))


def check(model: nn.Module, x: torch.Tensor) -> float:
    model64, x64 = model.double(), x[:4].double()
    try:
        gap = (tdlens_call(model64, x64, 10) - captum_loop(model64, x64, 10)).abs().max()
    finally:
        model.float()
    if gap > 1e-6:
        raise SystemExit(f"tdlens and captum disagree by {gap:.3g} in float64")
    return float(gap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per variant")
    parser.add_argument("--rounds", type=int, default=60, help="most timed rounds")
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = {
        "MLP 784-512-512-10, 64 rows": (mlp().eval(), torch.randn(64, 784)),
        "CNN 1x28x28, 32 images": (CNN().eval(), torch.randn(32, 1, 28, 28)),
    }
    print("\n".join(environment_lines()))
    print(load_line())
    rows, verdicts = [], []
    for name, (model, x) in cases.items():
        gap = check(model, x)
        for k in (1, 10):
            fns = {
                "captum": lambda m=model, x=x, k=k: captum_loop(m, x, k),
                "tdlens": lambda m=model, x=x, k=k: tdlens_call(m, x, k),
            }
            once = time_interleaved(fns, warmup=1, repeat=1)
            rounds = rounds_for(once["captum"].min, 7, args.seconds, args.rounds)
            timings = time_interleaved(fns, warmup=0, repeat=rounds)
            ratio = paired_ratio(timings, "captum", "tdlens")
            low, high = paired_ratio_interval(timings, "captum", "tdlens")
            rows.append(
                [
                    name,
                    str(k),
                    f"{timings['captum'].median * 1e3:.1f}",
                    f"{timings['tdlens'].median * 1e3:.1f}",
                    f"{ratio:.2f}x [{low:.2f}, {high:.2f}]",
                    f"{gap:.1e}",
                    str(rounds),
                ]
            )
            goal = GOALS[k]
            verdict = "met" if ratio >= goal else "within noise" if high >= goal else "MISSED"
            verdicts.append(f"{name}, K={k}: {ratio:.2f}x (goal {goal}x): {verdict}")
    print(load_line())
    headers = ["case", "K", "captum ms", "tdlens ms", "speed-up [95%]", "f64 gap", "rounds"]
    print(format_table(headers, rows))
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
