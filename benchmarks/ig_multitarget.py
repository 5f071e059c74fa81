"""Benchmark: Integrated Gradients for K targets of the same inputs, on CPU.

Compares four ways to get K per-target IG attributions (Gauss-Legendre rule, 50 steps, zero
baseline, attributions multiplied by ``inputs - baseline`` as captum does by default):

* **captum loop**: ``captum.attr.IntegratedGradients.attribute`` called once per target.
* **tdhook**: ``tdhook.attribution.IntegratedGradients`` (0.3.0). It takes one scalar target per
  row (picked by ``init_attr_targets``) and has no multi-target mode, so two ways are timed: a
  loop over the targets inside one prepared context, and one call on the inputs repeated K times
  (B*K rows, target k on the k-th copy). The faster one is tdhook's best.
* **raw torch**: one forward pass over all B*n_steps integration points, then K gradients over
  the shared graph, either with ``torch.autograd.grad(..., retain_graph=True)`` in a loop or with
  a single ``is_grads_batched=True`` call. The faster one is the reference ("raw").
* **tdlens**: ``tdlens.IntegratedGradients(model).attribute(x, targets=...)``, without and with
  ``internal_batch_size``.

Every timed call builds its attribution object and returns a ``[B, K, *x.shape[1:]]`` tensor.
All variants are checked against the captum loop before they are timed (float32 on the
benchmark inputs, float64 on a small batch). Each variant runs once untimed (that run is the
correctness check and the warm-up), then the variants run ``--repeat`` times in round-robin
order; the table reports the median (and the min) of those runs. Peak memory is measured in
separate runs, see ``_common.py``.

Run with ``make bench`` or ``python benchmarks/ig_multitarget.py``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from _common import (
    MB,
    Timing,
    allocator_peak_bytes,
    environment_lines,
    format_table,
    rss_peak_bytes,
    time_interleaved,
    validate_memory_probes,
)
from captum.attr import IntegratedGradients as CaptumIG
from tensordict import TensorDict
from tdhook.attribution import IntegratedGradients as TdhookIG
from tdhook.attribution.gradient_helpers.helpers import approximation_parameters
from torch import nn

try:
    import tdlens
except ImportError:  # the library core is still being written
    tdlens = None

METHOD = "gausslegendre"
TARGET_TIME_VS_RAW = 1.15
TARGET_SPEEDUP_VS_CAPTUM = 2.2
TARGET_MEMORY_VS_CAPTUM = 1.5
FLOAT32_TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-6

Attributor = Callable[[nn.Module, torch.Tensor, list[int], int], torch.Tensor]


@dataclass
class Case:
    """One benchmark setting: a model, its inputs and the IG parameters.

    Attributes:
        name: Short label used in the output.
        model: Model in eval mode, float32.
        inputs: Batch of inputs, float32.
        targets: Output indices to attribute.
        n_steps: Number of integration points per input row.
    """

    name: str
    model: nn.Module
    inputs: torch.Tensor
    targets: list[int]
    n_steps: int


def build_mlp(seed: int = 0) -> nn.Module:
    """Builds the seeded MLP 784-512-512-10 with ReLU, in eval mode.

    Args:
        seed: Seed for the weight initialisation.

    Returns:
        The model.
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(784, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    ).eval()


def build_cnn(seed: int = 0) -> nn.Module:
    """Builds the seeded small CNN for 1x28x28 inputs, in eval mode.

    Args:
        seed: Seed for the weight initialisation.

    Returns:
        The model: two conv-ReLU-maxpool blocks (16 and 32 channels) and a linear head.
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    ).eval()


def build_cases(mlp_batch: int, cnn_batch: int, n_steps: int, n_targets: int) -> list[Case]:
    """Builds the MLP and CNN benchmark cases with seeded inputs in [0, 1).

    Args:
        mlp_batch: Rows of the MLP batch.
        cnn_batch: Images in the CNN batch.
        n_steps: Integration points per row.
        n_targets: Number of targets K (the first K output indices).

    Returns:
        The two cases.
    """
    generator = torch.Generator().manual_seed(1234)
    targets = list(range(n_targets))
    return [
        Case("MLP", build_mlp(), torch.rand(mlp_batch, 784, generator=generator), targets, n_steps),
        Case(
            "CNN",
            build_cnn(),
            torch.rand(cnn_batch, 1, 28, 28, generator=generator),
            targets,
            n_steps,
        ),
    ]


# --------------------------------------------------------------------------------------------
# Variants. Each takes (model, inputs, targets, n_steps) and returns [B, K, *inputs.shape[1:]].
# --------------------------------------------------------------------------------------------


def captum_loop(
    model: nn.Module, inputs: torch.Tensor, targets: list[int], n_steps: int
) -> torch.Tensor:
    """IG with captum, one ``attribute`` call per target."""
    explainer = CaptumIG(model)
    per_target = [
        explainer.attribute(inputs, target=target, n_steps=n_steps, method=METHOD)
        for target in targets
    ]
    return torch.stack(per_target, dim=1)


def _tdhook_label_target(outputs: TensorDict, extra: TensorDict) -> TensorDict:
    """tdhook target selector: the logit indexed by the row's ``label``."""
    logits = outputs["output"]  # [rows, n_steps, classes]
    labels = extra["label"]  # [rows]
    index = labels.view(-1, 1, 1).expand(*logits.shape[:-1], 1)
    return TensorDict(score=logits.gather(-1, index).squeeze(-1), batch_size=outputs.batch_size)


def _tdhook_explainer(n_steps: int) -> TdhookIG:
    return TdhookIG(
        init_attr_targets=_tdhook_label_target,
        additional_init_keys=["label"],
        multiply_by_inputs=True,
        method=METHOD,
        n_steps=n_steps,
    )


def _tdhook_data(inputs: torch.Tensor, labels: torch.Tensor) -> TensorDict:
    return TensorDict(
        {"input": inputs, ("baseline", "input"): torch.zeros_like(inputs), "label": labels},
        batch_size=[inputs.shape[0]],
    )


def tdhook_loop(
    model: nn.Module, inputs: torch.Tensor, targets: list[int], n_steps: int
) -> torch.Tensor:
    """IG with tdhook, one call per target inside a single prepared context."""
    rows = inputs.shape[0]
    per_target = []
    with _tdhook_explainer(n_steps).prepare(model) as hooked:
        for target in targets:
            labels = torch.full((rows,), target, dtype=torch.long)
            per_target.append(hooked(_tdhook_data(inputs, labels))["attr", "input"])
    return torch.stack(per_target, dim=1)


def tdhook_repeated_rows(
    model: nn.Module, inputs: torch.Tensor, targets: list[int], n_steps: int
) -> torch.Tensor:
    """IG with tdhook, one call on the inputs repeated K times (B*K rows, one target each)."""
    rows, n_targets = inputs.shape[0], len(targets)
    repeated = inputs.unsqueeze(1).expand(rows, n_targets, *inputs.shape[1:])
    repeated = repeated.reshape(rows * n_targets, *inputs.shape[1:])
    labels = torch.tensor(targets, dtype=torch.long).repeat(rows)
    with _tdhook_explainer(n_steps).prepare(model) as hooked:
        attributions = hooked(_tdhook_data(repeated, labels))["attr", "input"]
    return attributions.view(rows, n_targets, *inputs.shape[1:])


def gauss_legendre(n_steps: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre alphas and weights on [0, 1], as captum 0.9 computes them.

    The nodes and weights of numpy's ``leggauss`` are mapped from [-1, 1] to [0, 1]; like
    captum, the weights are rounded to float32 before use.

    Args:
        n_steps: Number of integration points.
        dtype: dtype of the returned tensors.

    Returns:
        ``(alphas, weights)``, each of shape ``[n_steps]``.
    """
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    alphas = torch.tensor(0.5 * (1.0 + nodes), dtype=dtype)
    step_weights = torch.tensor(0.5 * weights, dtype=torch.float32).to(dtype)
    return alphas, step_weights


def _raw_forward(
    model: nn.Module, inputs: torch.Tensor, n_steps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs the model once on all integration points (step-major rows, zero baseline).

    Returns:
        ``(points, outputs, row_weights)``: the ``[n_steps * B, ...]`` points that require
        grad, the model outputs on them, and the quadrature weight of each row.
    """
    alphas, weights = gauss_legendre(n_steps, inputs.dtype)
    alpha_shape = (n_steps,) + (1,) * inputs.dim()
    points = (alphas.view(alpha_shape) * inputs).reshape(-1, *inputs.shape[1:])
    points.requires_grad_(True)
    outputs = model(points)
    return points, outputs, weights.repeat_interleave(inputs.shape[0])


def raw_retain_graph(
    model: nn.Module, inputs: torch.Tensor, targets: list[int], n_steps: int
) -> torch.Tensor:
    """Hand-written IG: one forward, then one ``autograd.grad`` per target on the kept graph.

    The quadrature weights are folded into the output seed, so each gradient is already
    weighted and only needs summing over the steps.
    """
    points, outputs, row_weights = _raw_forward(model, inputs, n_steps)
    per_target = []
    for i, target in enumerate(targets):
        seed = torch.zeros_like(outputs)
        seed[:, target] = row_weights
        (grads,) = torch.autograd.grad(
            outputs, points, seed, retain_graph=i < len(targets) - 1
        )
        per_target.append(grads.view(n_steps, *inputs.shape).sum(dim=0))
    return torch.stack(per_target, dim=1) * inputs.unsqueeze(1)


def raw_batched(
    model: nn.Module, inputs: torch.Tensor, targets: list[int], n_steps: int
) -> torch.Tensor:
    """Hand-written IG: one forward, then one ``is_grads_batched=True`` backward for all K."""
    points, outputs, row_weights = _raw_forward(model, inputs, n_steps)
    seeds = outputs.new_zeros(len(targets), *outputs.shape)
    for i, target in enumerate(targets):
        seeds[i, :, target] = row_weights
    (grads,) = torch.autograd.grad(outputs, points, seeds, is_grads_batched=True)
    summed = grads.view(len(targets), n_steps, *inputs.shape).sum(dim=1)
    return summed.transpose(0, 1) * inputs.unsqueeze(1)


def tdlens_ig(internal_batch_size: int | None = None) -> Attributor:
    """Returns the tdlens variant, optionally with ``internal_batch_size``.

    Args:
        internal_batch_size: Rows of integration points per forward pass (captum's meaning);
            None runs all points in one pass.

    Returns:
        A variant function with the common signature.
    """

    def run(
        model: nn.Module, inputs: torch.Tensor, targets: list[int], n_steps: int
    ) -> torch.Tensor:
        explainer = tdlens.IntegratedGradients(model)
        kwargs = {} if internal_batch_size is None else {"internal_batch_size": internal_batch_size}
        return explainer.attribute(inputs, targets=targets, n_steps=n_steps, method=METHOD, **kwargs)

    return run


# --------------------------------------------------------------------------------------------
# Checks and measurements.
# --------------------------------------------------------------------------------------------


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference divided by the largest absolute expected value."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def check_quadrature_rule(n_steps: int) -> None:
    """Asserts that tdhook's Gauss-Legendre alphas and weights equal captum's."""
    sizes_fn, alphas_fn = approximation_parameters(METHOD)
    alphas, weights = gauss_legendre(n_steps, torch.float64)
    tdhook_weights = torch.tensor(sizes_fn(n_steps)).float().double()
    if not (
        torch.equal(torch.tensor(alphas_fn(n_steps), dtype=torch.float64), alphas)
        and torch.equal(tdhook_weights, weights)
    ):
        raise AssertionError("tdhook's Gauss-Legendre rule differs from captum's")


def check_float64(case: Case, variants: dict[str, Attributor], rows: int = 4) -> dict[str, float]:
    """Compares every variant with the captum loop in float64 on the first ``rows`` inputs.

    Returns:
        Mapping from variant name to its relative error against captum.
    """
    model = copy.deepcopy(case.model).double()
    inputs = case.inputs[:rows].double()
    expected = captum_loop(model, inputs, case.targets, case.n_steps)
    errors = {}
    for name, variant in variants.items():
        errors[name] = relative_error(variant(model, inputs, case.targets, case.n_steps), expected)
        if errors[name] > FLOAT64_TOLERANCE:
            raise AssertionError(f"{case.name} float64: {name} differs from captum: {errors[name]}")
    return errors


def choose_internal_batch_size(
    case: Case, captum_peak: int, log: Callable[[str], None]
) -> tuple[int | None, int | None]:
    """Finds the largest ``internal_batch_size`` keeping tdlens within the memory target.

    Candidates are B times 25, 10, 5, 2 and 1 steps per chunk, tried from the largest.

    Returns:
        ``(internal_batch_size, peak_bytes)`` of the chosen value, or ``(None, None)`` if no
        candidate meets the target.
    """
    rows = case.inputs.shape[0]
    limit = TARGET_MEMORY_VS_CAPTUM * captum_peak
    for steps_per_chunk in (25, 10, 5, 2, 1):
        if steps_per_chunk >= case.n_steps:
            continue
        candidate = rows * steps_per_chunk
        variant = tdlens_ig(candidate)
        peak = allocator_peak_bytes(
            lambda v=variant: v(case.model, case.inputs, case.targets, case.n_steps)
        )
        log(
            f"  tdlens internal_batch_size={candidate}: peak {peak / MB:.1f} MiB "
            f"({peak / captum_peak:.2f}x captum)"
        )
        if peak <= limit:
            return candidate, peak
    return None, None


@dataclass
class Row:
    """Measured numbers of one variant on one case."""

    case: str
    variant: str
    timing: Timing
    error32: float
    peak_alloc: int
    peak_rss: int


def run_case(case: Case, repeat: int, log: Callable[[str], None]) -> tuple[list[Row], list[str]]:
    """Checks, measures memory and times all variants on one case.

    Returns:
        The table rows and the lines reporting the targets.
    """
    rows, k = case.inputs.shape[0], len(case.targets)
    log(
        f"== {case.name}: inputs {tuple(case.inputs.shape)}, K={k}, n_steps={case.n_steps}, "
        f"{rows * case.n_steps} integration points per target"
    )
    variants: dict[str, Attributor] = {
        "captum loop": captum_loop,
        "tdhook loop": tdhook_loop,
        "tdhook B*K rows": tdhook_repeated_rows,
        "raw retain_graph loop": raw_retain_graph,
        "raw is_grads_batched": raw_batched,
    }
    if tdlens is not None:
        variants["tdlens"] = tdlens_ig()

    def call(variant: Attributor) -> Callable[[], torch.Tensor]:
        return lambda: variant(case.model, case.inputs, case.targets, case.n_steps)

    log("  correctness (float32, this run is also the warm-up)")
    expected = call(captum_loop)()
    errors = {"captum loop": 0.0}
    for name, variant in variants.items():
        if name == "captum loop":
            continue
        errors[name] = relative_error(call(variant)(), expected)
        log(f"    {name}: max |diff| / max |captum| = {errors[name]:.1e}")
        if errors[name] > FLOAT32_TOLERANCE:
            raise AssertionError(f"{case.name}: {name} differs from captum: {errors[name]:.2e}")
    errors64 = check_float64(case, {n: v for n, v in variants.items() if n != "captum loop"})
    log("  float64 check on 4 rows: " + ", ".join(f"{n} {e:.0e}" for n, e in errors64.items()))

    log("  peak memory (allocator events; RSS sampler)")
    peaks = {}
    for name, variant in variants.items():
        peaks[name] = (allocator_peak_bytes(call(variant)), rss_peak_bytes(call(variant)))
        log(f"    {name}: {peaks[name][0] / MB:.1f} MiB allocated, {peaks[name][1] / MB:.1f} MiB RSS")

    report = []
    if tdlens is not None:
        ibs, ibs_peak = choose_internal_batch_size(case, peaks["captum loop"][0], log)
        if ibs is None:
            report.append(f"{case.name}: no internal_batch_size keeps tdlens within 1.5x captum")
        else:
            name = f"tdlens ibs={ibs}"
            variants[name] = tdlens_ig(ibs)
            errors[name] = relative_error(call(variants[name])(), expected)
            peaks[name] = (ibs_peak, rss_peak_bytes(call(variants[name])))

    log(f"  timing: {repeat} interleaved runs per variant")
    timings = time_interleaved(
        {name: call(variant) for name, variant in variants.items()},
        warmup=0,
        repeat=repeat,
        progress=log,
    )
    table = [
        Row(case.name, name, timings[name], errors[name], *peaks[name]) for name in variants
    ]
    report.extend(targets_report(case.name, timings, peaks))
    return table, report


def best_of(timings: dict[str, Timing], prefix: str) -> str:
    """Name of the fastest (by median) variant whose name starts with ``prefix``."""
    return min((n for n in timings if n.startswith(prefix)), key=lambda n: timings[n].median)


def targets_report(
    case: str, timings: dict[str, Timing], peaks: dict[str, tuple[int, int]]
) -> list[str]:
    """Lines stating the measured ratios against the requirements."""
    raw = best_of(timings, "raw")
    tdhook = best_of(timings, "tdhook")
    lines = [f"{case}: fastest raw = {raw}; fastest tdhook = {tdhook}"]
    if "tdlens" not in timings:
        return [*lines, f"{case}: tdlens not importable yet, no targets checked"]
    tdlens_time = timings["tdlens"].median
    vs_raw = tdlens_time / timings[raw].median
    vs_captum = timings["captum loop"].median / tdlens_time
    lines.append(
        f"{case}: tdlens / raw time = {vs_raw:.2f} "
        f"(target <= {TARGET_TIME_VS_RAW}: {'met' if vs_raw <= TARGET_TIME_VS_RAW else 'MISSED'})"
    )
    lines.append(
        f"{case}: captum loop / tdlens time = {vs_captum:.2f} "
        f"(target >= {TARGET_SPEEDUP_VS_CAPTUM}: "
        f"{'met' if vs_captum >= TARGET_SPEEDUP_VS_CAPTUM else 'MISSED'})"
    )
    ibs_names = [n for n in peaks if n.startswith("tdlens ibs=")]
    captum_peak = peaks["captum loop"][0]
    for name in ibs_names:
        ratio = peaks[name][0] / captum_peak
        lines.append(
            f"{case}: {name} peak / captum loop peak = {ratio:.2f} "
            f"(target <= {TARGET_MEMORY_VS_CAPTUM}: met)"
        )
    lines.append(
        f"{case}: tdlens (no ibs) peak / captum loop peak = "
        f"{peaks['tdlens'][0] / captum_peak:.2f}"
    )
    return lines


def render_table(rows: list[Row]) -> str:
    """Formats the final table: times, ratio to tdlens, peak memory and error vs captum."""
    reference = {r.case: r.timing.median for r in rows if r.variant == "tdlens"}
    headers = [
        "model",
        "variant",
        "median s",
        "min s",
        "x tdlens",
        "peak alloc MiB",
        "peak RSS MiB",
        "rel. err vs captum",
    ]
    cells = []
    for r in rows:
        ratio = r.timing.median / reference[r.case] if r.case in reference else float("nan")
        cells.append(
            [
                r.case,
                r.variant,
                f"{r.timing.median:.3f}",
                f"{r.timing.min:.3f}",
                f"{ratio:.2f}",
                f"{r.peak_alloc / MB:.1f}",
                f"{r.peak_rss / MB:.1f}",
                f"{r.error32:.0e}",
            ]
        )
    return format_table(headers, cells)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints progress, the target report and the table (last).

    Args:
        argv: Command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per variant")
    parser.add_argument("--mlp-batch", type=int, default=64)
    parser.add_argument("--cnn-batch", type=int, default=32)
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--targets", type=int, default=10, help="number of targets K")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    for line in environment_lines():
        log(line)
    if tdlens is None:
        log("tdlens not importable yet: timing the other variants only")
    probes = validate_memory_probes()
    log(
        "memory probes on a 100 MiB tensor: "
        + ", ".join(f"{name} {value:.1f} MiB" for name, value in probes.items())
    )
    check_quadrature_rule(args.n_steps)
    log("tdhook uses the same Gauss-Legendre alphas and weights as captum (checked)")

    torch.manual_seed(0)
    rows: list[Row] = []
    report: list[str] = []
    for case in build_cases(args.mlp_batch, args.cnn_batch, args.n_steps, args.targets):
        case_rows, case_report = run_case(case, args.repeat, log)
        rows.extend(case_rows)
        report.extend(case_report)

    log("")
    log("Targets:")
    for line in report:
        log("  " + line)
    log("")
    log(
        f"Times: median (and min) of {args.repeat} runs after one untimed run, seconds; "
        "x tdlens = median / tdlens median. Peak: extra CPU memory of one call."
    )
    log(render_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
