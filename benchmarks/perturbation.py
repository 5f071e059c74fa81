"""Benchmark: tdlens perturbation methods against captum 0.9, in one process, on CPU.

Cases (float32 models in eval mode, seeded inputs):

* **KernelShap** and **Lime**: an MLP 64-256-10 on a batch of 32 examples, 16 features
  (groups of 4 inputs), 200 samples per example. captum fits one scikit-learn model per
  example; it runs at its fastest ``perturbations_per_eval`` (all 200 samples of an example
  in one forward pass). tdlens evaluates the 32 * 200 rows in one batched forward and solves
  the 32 linear systems at once. Same estimates: both are compared with the exact Shapley
  values (KernelShap) or with a 20,000-sample fit (Lime) and their errors reported.
* **Occlusion** on a small CNN (8 images 3x32x32, window 3x8x8, stride 3x4x4: 49 windows),
  captum at ``perturbations_per_eval=49``; results must agree to 1e-5.
* **FeatureAblation with 10 targets**: the MLP, 32 examples, 16 features; captum is called
  once per target (``perturbations_per_eval=16``), tdlens once with ``targets=range(10)``.
* **Occlusion by image size** (issue 12): a small CNN on 8 images of 1xSxS for S in
  ``--sizes`` (default 28, 56, 112; add 224 if time allows: captum then takes about a minute
  a call), a 1x4x4 window with stride 4 (S*S/16 windows), both libraries as shipped (captum's
  default ``perturbations_per_eval=1``, tdlens's default chunking); tdlens must be at least
  1.0x captum at every size. ``--cases sizes`` runs only these.

Each variant runs once untimed (warm-up and correctness check), then in round-robin order
(alternating which goes first) at least ``--repeat`` rounds, more for short calls (two seconds
of captum time, at most 41 rounds). The speed-up is the median over rounds of captum's time
over tdlens's in the same round (the paired ratio: adjacent runs share the machine's slow and
fast spells); the table also shows each library's median time. Run with
``python benchmarks/perturbation.py``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
from _common import environment_lines, format_table, paired_ratio, rounds_for, time_interleaved
from captum.attr import FeatureAblation as CaptumFA
from captum.attr import KernelShap as CaptumKS
from captum.attr import Lime as CaptumLime
from captum.attr import Occlusion as CaptumOcc
from torch import nn

import tdlens

TARGET_SURROGATE = 10.0
TARGET_ABLATION = 5.0
MIN_SECONDS = 2.0  # timed seconds of captum per case at least (short calls get more rounds)
MAX_REPEAT = 41


def build_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


def build_cnn(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 16, 10),
    ).eval()


def captum_per_example(method: object, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """captum's Lime/KernelShap on each example (what it does internally for a batch)."""
    return torch.cat([method.attribute(x[i : i + 1], **kwargs) for i in range(x.shape[0])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds, at least")
    parser.add_argument("--sizes", default="28,56,112", help="Occlusion image sizes, e.g. 28,224")
    parser.add_argument("--cases", choices=("all", "sizes"), default="all")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    for line in environment_lines():
        print(line)

    mlp = build_mlp()
    x = torch.rand(32, 64, generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(64) // 4).unsqueeze(0)  # 16 features
    n = 200
    rows: list[list[str]] = []
    summary: list[tuple[str, float, float]] = []

    def compare(name: str, fns: dict[str, Callable[[], torch.Tensor]], target: float) -> None:
        fns["tdlens"]()  # warm-up
        start = time.perf_counter()
        fns["captum"]()
        runs = rounds_for(time.perf_counter() - start, args.repeat, MIN_SECONDS, MAX_REPEAT)
        timings = time_interleaved(fns, warmup=0, repeat=runs)
        ours, theirs = timings["tdlens"].median, timings["captum"].median
        ratio = paired_ratio(timings, "captum", "tdlens")
        summary.append((name, ratio, target))
        digits = 2 if ratio < 3 else 1
        rows.append(
            [
                name,
                f"{theirs * 1e3:.1f}",
                f"{ours * 1e3:.1f}",
                f"{ratio:.{digits}f}x",
                f">= {target:.0f}x",
                str(runs),
            ]
        )
        print(
            f"{name}: captum {theirs * 1e3:.1f} ms, tdlens {ours * 1e3:.1f} ms (medians), "
            f"speed-up {ratio:.{digits}f}x over {runs} rounds",
            flush=True,
        )

    if args.cases == "sizes":
        occlusion_sizes(compare, [int(size) for size in args.sizes.split(",")])
        return report(summary, rows)

    # -- KernelShap ----------------------------------------------------------------------------
    exact = tdlens.ShapleyValues(mlp).attribute(x, target=3, feature_mask=mask)
    ks, cks = tdlens.KernelShap(mlp), CaptumKS(mlp)
    ours = ks.attribute(x, target=3, feature_mask=mask, n_samples=n, seed=0)
    torch.manual_seed(0)
    theirs = captum_per_example(
        cks, x, target=3, feature_mask=mask, n_samples=n, perturbations_per_eval=n
    )
    scale = float(exact.abs().mean())
    print(
        f"KernelShap mean abs error vs exact Shapley (mean |value| {scale:.4f}): "
        f"tdlens {float((ours - exact).abs().mean()):.5f}, "
        f"captum {float((theirs - exact).abs().mean()):.5f}"
    )
    compare(
        "KernelShap, 32 x 200 samples",
        {
            "captum": lambda: cks.attribute(
                x, target=3, feature_mask=mask, n_samples=n, perturbations_per_eval=n
            ),
            "tdlens": lambda: ks.attribute(x, target=3, feature_mask=mask, n_samples=n, seed=0),
        },
        TARGET_SURROGATE,
    )

    # -- Lime ------------------------------------------------------------------------------------
    lime, clime = tdlens.Lime(mlp), CaptumLime(mlp)
    reference = lime.attribute(x, target=3, feature_mask=mask, n_samples=20000, seed=1)
    ours = lime.attribute(x, target=3, feature_mask=mask, n_samples=n, seed=0)
    torch.manual_seed(0)
    theirs = captum_per_example(
        clime, x, target=3, feature_mask=mask, n_samples=n, perturbations_per_eval=n
    )
    print(
        f"Lime mean abs error vs a 20,000-sample fit (mean |coef| "
        f"{float(reference.abs().mean()):.4f}): tdlens {float((ours - reference).abs().mean()):.5f}"
        f", captum {float((theirs - reference).abs().mean()):.5f}"
    )
    compare(
        "Lime, 32 x 200 samples",
        {
            "captum": lambda: clime.attribute(
                x, target=3, feature_mask=mask, n_samples=n, perturbations_per_eval=n
            ),
            "tdlens": lambda: lime.attribute(x, target=3, feature_mask=mask, n_samples=n, seed=0),
        },
        TARGET_SURROGATE,
    )

    # -- Occlusion -------------------------------------------------------------------------------
    cnn = build_cnn()
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    window, strides = (3, 8, 8), (3, 4, 4)
    occ, cocc = tdlens.Occlusion(cnn), CaptumOcc(cnn)
    ours = occ.attribute(images, window, strides, target=1)
    theirs = cocc.attribute(images, window, strides, target=1, perturbations_per_eval=49)
    assert float((ours - theirs).abs().max()) < 1e-5, "Occlusion differs from captum"
    compare(
        "Occlusion, CNN 8 x 3x32x32",
        {
            "captum": lambda: cocc.attribute(
                images, window, strides, target=1, perturbations_per_eval=49
            ),
            "tdlens": lambda: occ.attribute(images, window, strides, target=1),
        },
        1.0,
    )

    # -- FeatureAblation, 10 targets ---------------------------------------------------------
    fa, cfa = tdlens.FeatureAblation(mlp), CaptumFA(mlp)
    targets = list(range(10))

    def captum_loop() -> torch.Tensor:
        return torch.stack(
            [
                cfa.attribute(x, target=t, feature_mask=mask, perturbations_per_eval=16)
                for t in targets
            ],
            dim=1,
        )

    assert (
        float((fa.attribute(x, targets=targets, feature_mask=mask) - captum_loop()).abs().max())
        < 1e-5
    )
    compare(
        "FeatureAblation, 10 targets",
        {
            "captum": captum_loop,
            "tdlens": lambda: fa.attribute(x, targets=targets, feature_mask=mask),
        },
        TARGET_ABLATION,
    )

    occlusion_sizes(compare, [int(size) for size in args.sizes.split(",")])
    return report(summary, rows)


def occlusion_sizes(compare: Callable[..., None], sizes: list[int]) -> None:
    """Occlusion on 8 images of 1xSxS per size, both libraries at their defaults."""
    cnn = build_cnn(channels=1)
    window = strides = (1, 4, 4)
    occ, cocc = tdlens.Occlusion(cnn), CaptumOcc(cnn)
    for size in sizes:
        images = torch.rand(8, 1, size, size, generator=torch.Generator().manual_seed(3))
        ours = occ.attribute(images, window, strides, target=1)
        theirs = cocc.attribute(images, window, strides, target=1)
        assert float((ours - theirs).abs().max()) < 1e-5, f"Occlusion differs at {size}"
        compare(
            f"Occlusion, CNN 8 x 1x{size}x{size}, {(size // 4) ** 2} windows",
            {
                "captum": lambda x=images: cocc.attribute(x, window, strides, target=1),
                "tdlens": lambda x=images: occ.attribute(x, window, strides, target=1),
            },
            1.0,
        )


def report(summary: list[tuple[str, float, float]], rows: list[list[str]]) -> int:
    print()
    for name, ratio, target in summary:
        verdict = "met" if ratio >= target else "MISSED"
        print(f"target {name}: {ratio:.2f}x vs >= {target:.0f}x: {verdict}")
    print()
    headers = ["case", "captum ms (median)", "tdlens ms (median)", "speed-up", "target", "rounds"]
    print(format_table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
