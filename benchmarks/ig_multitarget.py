"""Benchmark: Integrated Gradients for K targets of the same inputs, on CPU.

Compares ways to get K per-target IG attributions (Gauss-Legendre rule, 50 steps, zero
baseline, attributions multiplied by ``inputs - baseline`` as captum does by default) on a
seeded MLP 784-512-512-10 (64 rows) and a small seeded CNN on 1x28x28 images (32 images):

* **captum loop**: ``captum.attr.IntegratedGradients.attribute`` called once per target.
* **tdhook**: ``tdhook.attribution.IntegratedGradients`` (0.3.0). It takes one scalar target per
  row (picked by ``init_attr_targets``) and has no multi-target mode, so two ways are timed: a
  loop over the targets inside one prepared context, and one call on the inputs repeated K times
  (B*K rows, target k on the k-th copy; MLP only). Its quadrature rule is checked to be
  captum's.
* **raw torch**: one forward pass over all B*n_steps integration points, then K gradients over
  the shared graph, either with ``torch.autograd.grad(..., retain_graph=True)`` in a loop or with
  a single ``is_grads_batched=True`` call. The faster one is the reference ("raw").
* **tdlens**: ``tdlens.IntegratedGradients(model).attribute(x, targets=...)``, without
  ``internal_batch_size`` and with the largest one (B times 25, 10, 5, 2 or 1 steps) whose
  peak memory is at most 1.5x the captum loop's. The raw retain_graph loop run in chunks of the
  same size is timed next to it.

Every timed call builds its attribution object and returns a ``[B, K, *x.shape[1:]]`` tensor.
All variants are checked against the captum loop before they are timed (float32 on the
benchmark inputs, float64 on 4 rows). Each variant runs once untimed (that run is the
correctness check and the warm-up), then the variants run ``--repeat`` times in round-robin
order. Ratios use the fastest run of each variant (the median is shown too): on a shared
machine, other processes only ever add time, so the min is the least noisy estimate. The
kernel time and page faults of each call are shown because on CPU, re-faulting freed memory
can cost as much as the arithmetic (see ``docs/benchmarks.md``). Peak memory is measured in
separate runs, see ``_common.py``.

Run with ``make bench`` or ``python benchmarks/ig_multitarget.py`` (``--help`` for sizes)."""

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
    environment_lines,
    format_table,
    load_line,
    peak_memory,
    time_interleaved,
    validate_memory_probes,
)
from captum.attr import IntegratedGradients as CaptumIG
from tdhook.attribution import IntegratedGradients as TdhookIG
from tdhook.attribution.gradient_helpers.helpers import approximation_parameters
from tensordict import TensorDict
from torch import nn

import tdlens

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
        repeat: Timed runs per variant.
        tdhook_repeated_rows: Whether to also time tdhook on the inputs repeated K times (it
            needs K times the memory of the other variants).
    """

    name: str
    model: nn.Module
    inputs: torch.Tensor
    targets: list[int]
    n_steps: int
    repeat: int
    tdhook_repeated_rows: bool = True


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


def build_cases(
    mlp_batch: int, cnn_batch: int, n_steps: int, n_targets: int, repeat: int | None = None
) -> list[Case]:
    """Builds the MLP and CNN benchmark cases with seeded inputs in [0, 1).

    Args:
        mlp_batch: Rows of the MLP batch.
        cnn_batch: Images in the CNN batch.
        n_steps: Integration points per row.
        n_targets: Number of targets K (the first K output indices).
        repeat: Timed runs per variant; None uses 7 for the MLP (its calls take well under a
            second) and 3 for the CNN.

    Returns:
        The two cases.
    """
    generator = torch.Generator().manual_seed(1234)
    targets = list(range(n_targets))
    mlp_inputs = torch.rand(mlp_batch, 784, generator=generator)
    cnn_inputs = torch.rand(cnn_batch, 1, 28, 28, generator=generator)
    return [
        Case("MLP", build_mlp(), mlp_inputs, targets, n_steps, repeat or 7),
        # On the CNN, the repeated-rows tdhook call holds K graphs at once (about 2.5 GiB and
        # almost 3x the tdhook loop's time in a trial run), so only the tdhook loop is timed there.
        Case(
            "CNN",
            build_cnn(),
            cnn_inputs,
            targets,
            n_steps,
            repeat or 3,
            tdhook_repeated_rows=False,
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
    model: nn.Module, inputs: torch.Tensor, alphas: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs the model once on the integration points of ``alphas`` (step-major rows).

    The baseline is zero, so the point of step ``s`` for row ``b`` is ``alphas[s] * x[b]``.

    Returns:
        ``(points, outputs, row_weights)``: the ``[len(alphas) * B, ...]`` points that require
        grad, the model outputs on them, and the quadrature weight of each row.
    """
    alpha_shape = (len(alphas),) + (1,) * inputs.dim()
    points = (alphas.view(alpha_shape) * inputs).reshape(-1, *inputs.shape[1:])
    points.requires_grad_(True)
    outputs = model(points)
    return points, outputs, weights.repeat_interleave(inputs.shape[0])


def raw_retain_graph(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: list[int],
    n_steps: int,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Hand-written IG: one forward, then one ``autograd.grad`` per target on the kept graph.

    The quadrature weights are folded into the output seed, so each gradient is already
    weighted and only needs summing over the steps.

    Args:
        model: The model.
        inputs: ``[B, ...]`` inputs (zero baseline).
        targets: The K output indices.
        n_steps: Integration points per row.
        chunk_rows: Rows of integration points per forward pass (``chunk_rows // B`` steps,
            captum's ``internal_batch_size``); None runs all ``B * n_steps`` rows at once.

    Returns:
        ``[B, K, ...]`` attributions.
    """
    alphas, weights = gauss_legendre(n_steps, inputs.dtype)
    rows = inputs.shape[0]
    steps_per_chunk = n_steps if chunk_rows is None else max(1, chunk_rows // rows)
    total = inputs.new_zeros(rows, len(targets), *inputs.shape[1:])
    for first in range(0, n_steps, steps_per_chunk):
        chunk = slice(first, first + steps_per_chunk)
        points, outputs, row_weights = _raw_forward(model, inputs, alphas[chunk], weights[chunk])
        for i, target in enumerate(targets):
            seed = torch.zeros_like(outputs)
            seed[:, target] = row_weights
            (grads,) = torch.autograd.grad(outputs, points, seed, retain_graph=i < len(targets) - 1)
            total[:, i] += grads.view(-1, *inputs.shape).sum(dim=0)
    return total * inputs.unsqueeze(1)


def raw_chunked(chunk_rows: int) -> Attributor:
    """Returns :func:`raw_retain_graph` running ``chunk_rows`` rows per forward pass."""

    def run(
        model: nn.Module, inputs: torch.Tensor, targets: list[int], n_steps: int
    ) -> torch.Tensor:
        return raw_retain_graph(model, inputs, targets, n_steps, chunk_rows=chunk_rows)

    return run


def tdlens_default_chunk(case: Case) -> int:
    """The rows per forward pass tdlens picks without ``internal_batch_size`` (its memory
    budget, sized from the activations its first chunk saves): the largest chunk of one call,
    read by watching it."""
    from tdlens.attribution import engine

    sizes: list[int] = []
    original = engine.Chunk.__init__

    def spy(chunk: engine.Chunk, start: int, stop: int, b: int, by_example: bool) -> None:
        original(chunk, start, stop, b, by_example)
        sizes.append(stop - start)

    engine.Chunk.__init__ = spy  # type: ignore[method-assign]
    try:
        tdlens_ig()(case.model, case.inputs, case.targets, case.n_steps)
    finally:
        engine.Chunk.__init__ = original  # type: ignore[method-assign]
    return max(sizes)


def raw_batched(
    model: nn.Module, inputs: torch.Tensor, targets: list[int], n_steps: int
) -> torch.Tensor:
    """Hand-written IG: one forward, then one ``is_grads_batched=True`` backward for all K."""
    alphas, weights = gauss_legendre(n_steps, inputs.dtype)
    points, outputs, row_weights = _raw_forward(model, inputs, alphas, weights)
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
        return explainer.attribute(
            inputs, targets=targets, n_steps=n_steps, method=METHOD, **kwargs
        )

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
) -> tuple[int, tuple[int, int]] | None:
    """Finds the largest ``internal_batch_size`` keeping tdlens within the memory target.

    Candidates are B times 25, 10, 5, 2 and 1 steps per chunk, tried from the largest; the
    allocator peak decides.

    Returns:
        ``(internal_batch_size, (allocator_peak, rss_peak))`` of the chosen value, or None if
        no candidate meets the target.
    """
    rows = case.inputs.shape[0]
    limit = TARGET_MEMORY_VS_CAPTUM * captum_peak
    for steps_per_chunk in (25, 10, 5, 2, 1):
        if steps_per_chunk >= case.n_steps:
            continue
        candidate = rows * steps_per_chunk
        variant = tdlens_ig(candidate)
        peaks = peak_memory(
            lambda v=variant: v(case.model, case.inputs, case.targets, case.n_steps)
        )
        log(
            f"  tdlens internal_batch_size={candidate}: peak {peaks[0] / MB:.1f} MiB allocated "
            f"({peaks[0] / captum_peak:.2f}x captum), {peaks[1] / MB:.1f} MiB RSS"
        )
        if peaks[0] <= limit:
            return candidate, peaks
    return None


@dataclass
class Row:
    """Measured numbers of one variant on one case."""

    case: str
    variant: str
    timing: Timing
    error32: float
    peak_alloc: int
    peak_rss: int


def run_case(case: Case, log: Callable[[str], None]) -> tuple[list[Row], list[str]]:
    """Checks, measures memory and times all variants on one case.

    Returns:
        The table rows and the lines reporting the targets.
    """
    rows, k = case.inputs.shape[0], len(case.targets)
    log(
        f"== {case.name}: inputs {tuple(case.inputs.shape)}, K={k}, n_steps={case.n_steps}, "
        f"{rows * case.n_steps} integration points per target"
    )
    variants: dict[str, Attributor] = {"captum loop": captum_loop, "tdhook loop": tdhook_loop}
    if case.tdhook_repeated_rows:
        variants["tdhook B*K rows"] = tdhook_repeated_rows
    variants["raw retain_graph loop"] = raw_retain_graph
    variants["raw is_grads_batched"] = raw_batched
    default_rows = tdlens_default_chunk(case)
    if default_rows < rows * case.n_steps:
        log(f"  tdlens's memory budget chunks this case by {default_rows} rows per forward pass")
        variants[RAW_DEFAULT_CHUNKS] = raw_chunked(default_rows)
    variants["tdlens"] = tdlens_ig()

    def call(variant: Attributor) -> Callable[[], torch.Tensor]:
        return lambda: variant(case.model, case.inputs, case.targets, case.n_steps)

    log("  correctness (float32, this run is also the warm-up)")
    expected = call(captum_loop)()
    errors = {"captum loop": 0.0}

    def check(names: list[str]) -> None:
        for name in names:
            errors[name] = relative_error(call(variants[name])(), expected)
            log(f"    {name}: max |diff| / max |captum| = {errors[name]:.1e}")
            if errors[name] > FLOAT32_TOLERANCE:
                raise AssertionError(f"{case.name}: {name} differs from captum: {errors[name]}")
        errors64 = check_float64(case, {name: variants[name] for name in names})
        log("    float64, 4 rows: " + ", ".join(f"{n} {e:.0e}" for n, e in errors64.items()))

    check([name for name in variants if name != "captum loop"])

    log("  peak memory (allocator events; RSS sampler)")
    peaks = {}
    for name, variant in variants.items():
        allocated, resident = peaks[name] = peak_memory(call(variant))
        log(f"    {name}: {allocated / MB:.1f} MiB allocated, {resident / MB:.1f} MiB RSS")

    report = []
    chosen = choose_internal_batch_size(case, peaks["captum loop"][0], log)
    if chosen is None:
        report.append(f"{case.name}: no internal_batch_size keeps tdlens within 1.5x captum")
    else:
        ibs, peaks[f"tdlens ibs={ibs}"] = chosen
        raw_name = f"raw loop, chunks of {ibs}"
        variants[f"tdlens ibs={ibs}"] = tdlens_ig(ibs)
        variants[raw_name] = raw_chunked(ibs)
        check([f"tdlens ibs={ibs}", raw_name])
        peaks[raw_name] = peak_memory(call(variants[raw_name]))
        log(f"    {raw_name}: {peaks[raw_name][0] / MB:.1f} MiB allocated")

    log(f"  timing: {case.repeat} interleaved runs per variant")
    timings = time_interleaved(
        {name: call(variant) for name, variant in variants.items()},
        warmup=0,
        repeat=case.repeat,
        progress=log,
    )
    table = [Row(case.name, name, timings[name], errors[name], *peaks[name]) for name in variants]
    report.extend(targets_report(case.name, timings, peaks))
    return table, report


RAW_DEFAULT_CHUNKS = "raw loop, tdlens's default chunks"
# The raw reference is the fastest hand-written way without a user-chosen chunk size: one
# graph for all points, or the same chunks as tdlens's default memory budget picks (on CPU
# that is faster for the CNN, so it is the formulation to beat).
UNCHUNKED_RAW = ("raw retain_graph loop", "raw is_grads_batched", RAW_DEFAULT_CHUNKS)
TDHOOK = ("tdhook loop", "tdhook B*K rows")


def fastest(timings: dict[str, Timing], names: tuple[str, ...]) -> str:
    """Name of the fastest (by min wall time) of ``names`` that were timed."""
    return min((n for n in names if n in timings), key=lambda n: timings[n].min)


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _ratio(numerator: Timing, denominator: Timing) -> str:
    return (
        f"{numerator.min / denominator.min:.2f} "
        f"(CPU time {numerator.cpu_min / denominator.cpu_min:.2f})"
    )


def targets_report(
    case: str, timings: dict[str, Timing], peaks: dict[str, tuple[int, int]]
) -> list[str]:
    """Lines stating the measured ratios against the requirements (wall min; CPU in brackets)."""
    raw = fastest(timings, UNCHUNKED_RAW)
    mine, captum = timings["tdlens"], timings["captum loop"]
    vs_raw = mine.min / timings[raw].min
    vs_captum = captum.min / mine.min
    lines = [
        f"{case}: raw = {raw}; tdhook's best = {fastest(timings, TDHOOK)}",
        f"{case}: tdlens / raw time = {_ratio(mine, timings[raw])}; "
        f"target <= {TARGET_TIME_VS_RAW}: {_verdict(vs_raw <= TARGET_TIME_VS_RAW)}",
        f"{case}: captum loop / tdlens time = {_ratio(captum, mine)}; "
        f"target >= {TARGET_SPEEDUP_VS_CAPTUM}: {_verdict(vs_captum >= TARGET_SPEEDUP_VS_CAPTUM)}",
        f"{case}: for reference, captum loop / raw time = {_ratio(captum, timings[raw])}",
    ]
    for name in (n for n in timings if n.startswith("tdlens ibs=")):
        chunked = next(n for n in timings if n.startswith("raw loop, chunks of"))
        lines.append(f"{case}: {name} / {chunked} time = {_ratio(timings[name], timings[chunked])}")
        lines.append(f"{case}: captum loop / {name} time = {_ratio(captum, timings[name])}")
    captum_peak = peaks["captum loop"][0]
    lines.append(
        f"{case}: tdlens (no ibs) peak / captum loop peak = {peaks['tdlens'][0] / captum_peak:.2f}"
    )
    for name in (n for n in peaks if n.startswith("tdlens ibs=")):
        ratio = peaks[name][0] / captum_peak
        lines.append(
            f"{case}: {name} peak / captum loop peak = {ratio:.2f}; "
            f"target <= {TARGET_MEMORY_VS_CAPTUM}: {_verdict(ratio <= TARGET_MEMORY_VS_CAPTUM)}"
        )
    return lines


def render_table(rows: list[Row]) -> str:
    """Formats the final table: times, ratios to tdlens, page faults, peak memory, error."""
    reference = {r.case: r.timing for r in rows if r.variant == "tdlens"}
    headers = [
        "model",
        "variant",
        "min s",
        "median s",
        "x tdlens",
        "min CPU s",
        "x tdlens CPU",
        "kernel s",
        "page faults",
        "peak alloc MiB",
        "peak RSS MiB",
        "rel. err",
    ]
    cells = []
    for r in rows:
        ref = reference[r.case]
        cells.append(
            [
                r.case,
                r.variant,
                f"{r.timing.min:.3f}",
                f"{r.timing.median:.3f}",
                f"{r.timing.min / ref.min:.2f}",
                f"{r.timing.cpu_min:.3f}",
                f"{r.timing.cpu_min / ref.cpu_min:.2f}",
                f"{r.timing.system_median:.2f}",
                f"{r.timing.page_faults_median / 1000:.0f}k",
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
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed runs per variant (default: 7 MLP, 3 CNN)"
    )
    parser.add_argument("--mlp-batch", type=int, default=64)
    parser.add_argument("--cnn-batch", type=int, default=32)
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--targets", type=int, default=10, help="number of targets K")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    for line in environment_lines():
        log(line)
    log(load_line())
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
    cases = build_cases(args.mlp_batch, args.cnn_batch, args.n_steps, args.targets, args.repeat)
    for case in cases:
        case_rows, case_report = run_case(case, log)
        rows.extend(case_rows)
        report.extend(case_report)

    log(load_line())
    log("")
    log("Targets:")
    for line in report:
        log("  " + line)
    log("")
    log(
        "Times: min (and median) of "
        + ", ".join(f"{case.repeat} runs ({case.name})" for case in cases)
        + " after one untimed run, seconds; "
        "x tdlens = min / tdlens min; CPU = process CPU time (all threads); kernel s and page "
        "faults: medians per call. Peak: extra memory of one call (allocator events; RSS "
        "sampler). rel. err = max |attr - captum| / max |captum|, float32."
    )
    log(render_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
