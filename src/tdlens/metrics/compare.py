"""Run several attribution methods on the same inputs and tabulate their metrics and times.

Example:
    >>> table = tdlens.metrics.compare(
    ...     model, x,
    ...     methods={"saliency": tdlens.Saliency(model), "ig": tdlens.IntegratedGradients(model)},
    ...     metrics=["deletion", "insertion", "infidelity"], target=3)
    >>> print(table)
    | method   | attribute s | deletion ↓ | insertion ↑ | infidelity ↓ | metrics s |
    |----------|-------------|------------|-------------|--------------|-----------|
    | saliency | 0.001       | 2.583      | -0.3984     | 1.409        | 0.008     |
    | ig       | 0.012       | -8.772     | 9.812       | 1.804        | 0.013     |
    >>> table[1]["deletion"], table.values["ig"]["deletion"].shape    # the mean; [B] values
    (-8.772..., torch.Size([8]))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.errors import InputError, InputTypeError
from .curves import deletion, insertion
from .eraser import comprehensiveness, sufficiency
from .fidelity import mu_fidelity
from .infidelity import infidelity
from .perturbations import gaussian_noise
from .road import road
from .sensitivity import explanation_function, sensitivity_max

# name -> (whether higher is better); see _run_metric for how each is called.
METRICS = {
    "deletion": False,
    "insertion": True,
    "infidelity": False,
    "sensitivity_max": False,
    "mu_fidelity": True,
    "comprehensiveness": True,
    "sufficiency": False,
    "road": False,
}


_CURVES: dict[str, Callable[..., Any]] = {
    "deletion": deletion,
    "insertion": insertion,
    "mu_fidelity": mu_fidelity,
    "comprehensiveness": comprehensiveness,
    "sufficiency": sufficiency,
    "road": road,
}


class Comparison:
    """Rows of ``{"method", "attribute_s", <metric>: mean over examples, "metrics_s"}``; prints
    as a Markdown table. ``values[method][metric]`` holds the per-example values (``[B]``, or
    ``[B, K]`` with ``targets``), ``attributions[method]`` each method's attributions."""

    def __init__(self, metrics: Sequence[str]) -> None:
        self.metrics = list(metrics)
        self.rows: list[dict[str, Any]] = []
        self.values: dict[str, dict[str, Tensor]] = {}
        self.attributions: dict[str, Any] = {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def __str__(self) -> str:
        arrows = {True: "↑", False: "↓"}
        headers = ["method", "attribute s", *(f"{m} {arrows[METRICS[m]]}" for m in self.metrics)]
        headers.append("metrics s")
        cells = [
            [
                str(row["method"]),
                f"{row['attribute_s']:.3f}",
                *(f"{row[m]:.4g}" for m in self.metrics),
                f"{row['metrics_s']:.3f}",
            ]
            for row in self.rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

        def line(items: Sequence[str]) -> str:
            return "| " + " | ".join(s.ljust(w) for s, w in zip(items, widths)) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(headers), rule, *(line(c) for c in cells)])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        """The table as HTML for notebooks (method names escaped)."""
        import html

        arrows = {True: "&uarr;", False: "&darr;"}
        head = [
            "method",
            "attribute s",
            *(f"{html.escape(m)} {arrows[METRICS[m]]}" for m in self.metrics),
        ]
        head.append("metrics s")
        rows = [
            [
                html.escape(str(row["method"])),
                f"{row['attribute_s']:.3f}",
                *(f"{row[m]:.4g}" for m in self.metrics),
                f"{row['metrics_s']:.3f}",
            ]
            for row in self.rows
        ]
        cells = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        header = "".join(f"<th>{h}</th>" for h in head)
        return f"<table><thead><tr>{header}</tr></thead><tbody>{cells}</tbody></table>"


def compare(
    model: Callable[..., Any],
    inputs: Any,
    methods: Mapping[str, Any],
    metrics: Sequence[str] = ("deletion", "insertion", "infidelity"),
    target: Any = None,
    *,
    targets: Any = None,
    attribute_options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    max_examples_per_batch: int | None = None,
    warmup: bool = True,
) -> Comparison:
    """Attribute with every method, score every attribution with every metric.

    Args:
        model: the model the methods explain.
        inputs: a tensor, tuple, dict or TensorDict.
        methods: name -> a method object with ``attribute`` (tdlens or captum), or a callable
            ``(inputs, target=..., **attribute_options) -> attributions``.
        metrics: names among ``deletion, insertion, infidelity, sensitivity_max, mu_fidelity,
            comprehensiveness, sufficiency, road``.
        target, targets: what to explain, passed to the methods and the metrics.
        attribute_options: per method name, options of its ``attribute`` (e.g. ``{"ig":
            {"n_steps": 16}}``); tdlens methods also take them in their constructor.
        metric_options: per metric, options of its function (e.g. ``{"deletion":
            {"n_steps": 10}, "infidelity": {"perturb_func": f}}``). Infidelity perturbs with
            :func:`~tdlens.metrics.perturbations.gaussian_noise` (std 0.1) unless given one.
        max_examples_per_batch: rows per forward pass of every metric.
        warmup: run each method once untimed first, so that one-time costs (first calls into
            a library, memory allocation) do not land on whichever method runs first.

    Returns:
        :class:`Comparison`, one row per method: the mean of each metric over the examples
        (NaN-aware), the attribution time and the total metric time in seconds.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; the metrics are {list(METRICS)}")
    if not isinstance(methods, Mapping):
        raise InputTypeError(
            f"methods= takes a dict of name -> method, e.g. {{'ig': IntegratedGradients(model)}}"
            f", got {type(methods).__name__}"
        )
    if not methods:
        raise InputError(
            "methods= is empty: give {name: method}, e.g. {'ig': IntegratedGradients(m)}"
        )
    options = dict(metric_options or {})
    stray = [name for name in options if name not in metrics]
    if stray:
        raise InputError(f"metric_options names {stray}, which are not in metrics={list(metrics)}")
    per_method = dict(attribute_options or {})
    stray = [name for name in per_method if name not in methods]
    if stray:
        raise InputError(
            f"attribute_options names {stray}, which are not methods; the methods are "
            f"{list(methods)} (give options per method: {{'ig': {{'n_steps': 16}}}})"
        )
    chosen = {"target": target} if targets is None else {"targets": targets}
    table = Comparison(metrics)
    for name, method in methods.items():
        explain = explanation_function(method, f"method {name!r}")
        if not callable(explain):
            raise InputTypeError(f"method {name!r} is neither callable nor has .attribute")
        explain_options = {**chosen, **per_method.get(name, {})}
        if warmup:
            explain(inputs, **explain_options)
        start = time.perf_counter()
        attributions = explain(inputs, **explain_options)
        attribute_s = time.perf_counter() - start
        row: dict[str, Any] = {"method": name, "attribute_s": attribute_s}
        table.values[name] = {}
        table.attributions[name] = attributions
        start = time.perf_counter()
        for metric in metrics:
            kwargs = {"max_examples_per_batch": max_examples_per_batch, **options.get(metric, {})}
            value = _run_metric(
                metric, model, inputs, attributions, explain, explain_options, kwargs
            )
            table.values[name][metric] = value
            row[metric] = float(torch.nanmean(value.to(torch.float64)))
        row["metrics_s"] = time.perf_counter() - start
        table.rows.append(row)
    return table


def _run_metric(
    metric: str,
    model: Callable[..., Any],
    inputs: Any,
    attributions: Any,
    explain: Callable[..., Any],
    explain_options: dict[str, Any],
    kwargs: dict[str, Any],
) -> Tensor:
    """One metric's per-example values for one method's attributions."""
    if metric == "sensitivity_max":
        return sensitivity_max(explain, inputs, **kwargs, **explain_options)
    targeting = {k: v for k, v in explain_options.items() if k in ("target", "targets")}
    if metric == "infidelity":
        perturb = kwargs.pop("perturb_func", None) or gaussian_noise()
        return infidelity(model, perturb, inputs, attributions, **targeting, **kwargs)
    function: Callable[..., Any] = _CURVES[metric]
    result = function(model, inputs, attributions, **targeting, **kwargs)
    return result if isinstance(result, Tensor) else result.score
