"""IG with 10 targets over a composed ``tensordict.nn`` pipeline: tdlens against tdhook 0.3
and the captum loop, in one process.

The pipeline is a ``TensorDictSequential`` of two networks: a small CNN encoder
(``image -> features``) and an MLP head (``features -> logits``, 10 classes). Each variant
computes Integrated Gradients (Gauss-Legendre, 50 steps, zero baseline, multiplied by the
input) of all 10 logits for a batch of 32 images:

* **tdlens**: one call, ``targets=range(10)``, on the TensorDict and the pipeline as they are.
* **tdhook**: ``tdhook.attribution.IntegratedGradients`` 0.3 on the pipeline through its own
  composed-model API (``prepare(pipeline, in_keys, out_keys)``), one call per target in one
  prepared context (a target is chosen by a label key, one scalar per row).
* **captum loop**: ``captum.attr.IntegratedGradients`` on a function that wraps the inputs in
  a TensorDict and returns the logits, one ``attribute`` call per target.

All three are checked against each other before timing. Timings interleave the variants;
ratios are medians over rounds of paired runs (see ``_common.paired_ratio``), printed last.

    python benchmarks/composed.py [--rounds 7]
"""

from __future__ import annotations

import argparse

import torch
from _common import paired_ratio, paired_ratio_interval, time_interleaved
from captum.attr import IntegratedGradients as CaptumIG
from tdhook.attribution import IntegratedGradients as TdhookIG
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn

import tdlens

N_STEPS, N_TARGETS, BATCH = 50, 10, 32


def build_pipeline(seed: int = 0) -> TensorDictSequential:
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 64),
        nn.Tanh(),
    )
    head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, N_TARGETS))
    return TensorDictSequential(
        TensorDictModule(encoder, in_keys=["image"], out_keys=["features"]),
        TensorDictModule(head, in_keys=["features"], out_keys=["logits"]),
    ).eval()


def run_tdlens(pipeline: nn.Module, images: torch.Tensor) -> torch.Tensor:
    td = TensorDict({"image": images}, batch_size=[images.shape[0]])
    attr = tdlens.IntegratedGradients(pipeline).attribute(
        td, targets=list(range(N_TARGETS)), output="logits", n_steps=N_STEPS
    )
    return attr["image"]


def _label_target(outputs: TensorDict, extra: TensorDict) -> TensorDict:
    logits = outputs["logits"]  # [rows, n_steps, classes]
    index = extra["label"].view(-1, 1, 1).expand(*logits.shape[:-1], 1)
    return TensorDict(score=logits.gather(-1, index).squeeze(-1), batch_size=outputs.batch_size)


def run_tdhook(pipeline: nn.Module, images: torch.Tensor) -> torch.Tensor:
    explainer = TdhookIG(
        init_attr_targets=_label_target,
        additional_init_keys=["label"],
        multiply_by_inputs=True,
        n_steps=N_STEPS,
    )
    rows, per_target = images.shape[0], []
    with explainer.prepare(pipeline, in_keys=["image"], out_keys=["logits"]) as hooked:
        for target in range(N_TARGETS):
            data = TensorDict(
                {
                    "image": images,
                    ("baseline", "image"): torch.zeros_like(images),
                    "label": torch.full((rows,), target),
                },
                batch_size=[rows],
            )
            per_target.append(hooked(data)["attr", "image"])
    return torch.stack(per_target, 1)


def run_captum(pipeline: nn.Module, images: torch.Tensor) -> torch.Tensor:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return pipeline(TensorDict({"image": x}, batch_size=[x.shape[0]]))["logits"]

    ig = CaptumIG(forward)
    return torch.stack(
        [ig.attribute(images, target=t, n_steps=N_STEPS) for t in range(N_TARGETS)], 1
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipeline = build_pipeline()
    images = torch.randn(BATCH, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    reference = run_captum(pipeline, images)
    scale = reference.abs().max()
    for name, fn in (("tdlens", run_tdlens), ("tdhook", run_tdhook)):
        error = float((fn(pipeline, images) - reference).abs().max() / scale)
        print(f"{name}: max relative difference to the captum loop {error:.2e}")
        assert error < 1e-4, name
    timings = time_interleaved(
        {
            "tdlens": lambda: run_tdlens(pipeline, images),
            "tdhook": lambda: run_tdhook(pipeline, images),
            "captum loop": lambda: run_captum(pipeline, images),
        },
        repeat=args.rounds,
    )
    print(f"\nIG, {N_TARGETS} targets, {N_STEPS} steps, batch {BATCH}, 1 thread (median s)")
    for name, timing in timings.items():
        print(f"  {name:12s} {timing.median:.3f} s  (min {timing.min:.3f})")
    print()
    for rival in ("captum loop", "tdhook"):
        ratio = paired_ratio(timings, rival, "tdlens")
        low, high = paired_ratio_interval(timings, rival, "tdlens")
        print(f"tdlens vs {rival}: {ratio:.2f}x faster (95% interval {low:.2f}-{high:.2f})")


if __name__ == "__main__":
    main()
