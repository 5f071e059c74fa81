"""Where relevance goes: the relevance summed at each layer of one LRP pass.

LRP conserves relevance when every rule does: the relevance summed over a layer's output
equals the target's value at every depth. Biases, stabilisers (epsilon), softmax and the
normalisations absorb or add some; the per-layer sums show where.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks

from ...core.structure import InputBatch
from .attribution import LRP
from .canonizers import Canonizer
from .composites import Composite


@dataclass
class ConservationReport:
    """Relevance sums per example, ``[B]`` each: the target's value (``target``), the sum at
    the output of each layer in the order they ran (``layers``) and at the inputs
    (``input``). ``str(report)`` prints them as fractions of the target's value."""

    target: Tensor
    layers: dict[str, Tensor]
    input: Tensor

    def gap(self) -> Tensor:
        """``input - target`` per example: what the propagation absorbed (negative) or
        added."""
        return self.input - self.target

    def __str__(self) -> str:
        rows = [("target", self.target), *self.layers.items(), ("input", self.input)]
        width = max(len(name) for name, _ in rows)
        lines = [f"{'layer'.ljust(width)}  relevance sum (example 0)  / target"]
        scale = self.target[0].item() or 1.0
        for name, value in rows:
            v = value[0].item()
            lines.append(f"{name.ljust(width)}  {v:>24.6g}  {v / scale:>8.4f}")
        return "\n".join(lines)


def conservation(
    model: nn.Module,
    inputs: Any,
    target: Any = None,
    *,
    composite: Composite | str | None = None,
    canonizers: Sequence[Canonizer] = (),
    layers: Sequence[str] | None = None,
    keys: Any = None,
) -> ConservationReport:
    """Per-layer relevance sums of one LRP pass for one target.

    Args:
        model, inputs, target: as for :class:`~tdlens.attribution.lrp.attribution.LRP`.
        composite, canonizers: as for LRP.
        layers: module paths to report (default: every layer, a module without children,
            that runs once and returns a tensor).

    Example:
        >>> report = lrp.conservation(model, x, target=3, composite=comp)
        >>> print(report)           # one line per layer: sum of relevance, fraction of f(x)[3]
    """
    method = LRP(model, composite=composite, canonizers=canonizers)
    attr, delta = method.attribute(inputs, target=target, keys=keys, return_convergence_delta=True)
    parts = attr.values() if isinstance(attr, dict) else attr if isinstance(attr, tuple) else [attr]
    total = sum(a.reshape(a.shape[0], -1).sum(1) for a in parts)
    assert isinstance(total, Tensor)
    start = total - delta
    with method.canonized() as canonical:
        paths = list(layers) if layers is not None else _layers_that_run(canonical, inputs)
    per_layer: dict[str, Tensor] = {}
    if paths:
        by_layer = method.attribute(inputs, target=target, keys=keys, layer=paths)
        if isinstance(by_layer, Tensor):
            by_layer = {paths[0]: by_layer}
        for path in paths:
            value = by_layer[path]
            per_layer[path] = value.reshape(value.shape[0], -1).sum(1)
    return ConservationReport(start, per_layer, total)


def _layers_that_run(model: nn.Module, inputs: Any) -> list[str]:
    """Leaf modules that run exactly once with a floating-point tensor output, in run order."""
    names = {
        id(m): p for p, m in model.named_modules() if p and not any(True for _ in m.children())
    }
    order: list[str] = []
    counts: dict[str, int] = {}

    def record(module: nn.Module, _args: Any, output: Any) -> None:
        path = names.get(id(module))
        if path is not None and isinstance(output, Tensor) and output.is_floating_point():
            counts[path] = counts.get(path, 0) + 1
            if counts[path] == 1:
                order.append(path)

    handle = module_hooks.register_module_forward_hook(record)
    try:
        with torch.no_grad():
            batch = InputBatch.build(inputs, require_float=False, need_attributed=False)
            batch.call(model, batch.take_rows(None, run=(0, batch.batch_size)))
    finally:
        handle.remove()
    return [p for p in order if counts[p] == 1]
