"""The multi-target gradient engine every gradient method runs on.

A gradient method is a set of *points* (the inputs themselves, integration points, noisy
copies...) with one weight each, and a *transform* of the gradient at a point (``abs``, times
the input...). The engine lays the points out as rows, ``row = sample * B + example``, runs them
through the model in chunks of ``internal_batch_size`` rows, and for the K targets takes K
gradients over the one graph of each chunk (``retain_graph``: on CPU this measured faster than
a vmapped ``is_grads_batched`` backward). Each gradient is folded into a ``[B, K, ...]``
accumulator as soon as it exists, so memory holds one graph and one gradient at a time.

Gradients are taken with respect to the attributed inputs, or with ``layer=`` with respect to
module activations: observed as they are (cut from the graph above them, so backward stops
there) or replaced by given points (layer integrated gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter, spec_name
from ..core.errors import InputError
from ..core.paths import ModulePath
from ..core.structure import InputBatch, Key
from ..core.targets import Target, predicted, select

Site = Any  # an input key, or a ModulePath with layer=
PointsFn = Callable[[Tensor, Tensor], dict[Site, Tensor]]
TransformFn = Callable[[Site, Tensor, Tensor], Tensor]


class GradientEngine:
    """One attribution call's model, inputs, targets and sites, with hooks held open.

    Args:
        model: the user's model (never changed).
        batch: the inputs.
        targets: the K targets.
        layers: module paths to attribute to instead of the inputs.
        internal_batch_size: rows per forward pass (``None``: all at once).
    """

    def __init__(
        self,
        model: nn.Module,
        batch: InputBatch,
        targets: list[Target],
        layers: list[ModulePath],
        internal_batch_size: int | None = None,
    ) -> None:
        if internal_batch_size is not None and (
            not isinstance(internal_batch_size, int) or internal_batch_size < 1
        ):
            raise InputError(
                f"internal_batch_size must be a positive int (rows per forward pass), got "
                f"{internal_batch_size!r}"
            )
        self.model = model
        self.batch = batch
        self.targets = targets
        self.layers = layers
        self.internal_batch_size = internal_batch_size
        self.adapter = ModelAdapter(model, batch, targets, layers)
        self.sites: list[Site] = list(layers) if layers else list(batch.attributed)
        self._predictions: dict[int, Tensor] = {}

    def __enter__(self) -> GradientEngine:
        self.adapter.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.adapter.__exit__(*exc)

    # -- forward-only evaluation ---------------------------------------------------------------
    def rows_values(self, examples: Tensor, inputs: dict[Key, Tensor] | None) -> dict[Key, Any]:
        """Model input leaves for rows of ``examples``, attributed leaves replaced by ``inputs``."""
        values = self.batch.take_rows(examples)
        if inputs:
            values.update(inputs)
        return values

    @torch.no_grad()
    def evaluate(
        self, examples: Tensor, inputs: dict[Key, Tensor] | None = None
    ) -> tuple[list[Tensor], dict[ModulePath, Tensor]]:
        """A forward pass without gradients: each target's explained output, layer values."""
        return self.adapter.run(self.rows_values(examples, inputs), layer_mode="observe")

    def resolve_predictions(self, explained: list[Tensor]) -> None:
        """Fix ``target=None`` to the predicted class, from outputs of the B original inputs."""
        for i, target in enumerate(self.targets):
            if target.index is None and i not in self._predictions:
                prediction = predicted(explained[i][: self.batch.batch_size])
                if prediction is not None:
                    self._predictions[i] = prediction

    def needs_predictions(self) -> bool:
        return any(t.index is None for t in self.targets)

    def scalars(
        self, explained: list[Tensor], examples: Tensor, rows_are_inputs: bool = False
    ) -> list[Tensor]:
        """The K scalars per row, ``[N]`` each, that the targets pick."""
        picked = []
        for i, (target, values) in enumerate(zip(self.targets, explained)):
            index = self._predictions.get(i, target.index)
            if index is None and values.dim() > 1 and values[0].numel() > 1:
                if not rows_are_inputs:
                    raise AssertionError("target=None must be resolved before the points run")
                row_pred = predicted(values)
                assert row_pred is not None
                picked.append(values[torch.arange(values.shape[0]), row_pred])
                continue
            picked.append(select(values, index, examples, spec_name(self.adapter.specs[i])))
        return picked

    # -- gradients -----------------------------------------------------------------------------
    def accumulate(
        self,
        *,
        n_samples: int = 1,
        points: PointsFn | None = None,
        weights: Tensor | None = None,
        transform: TransformFn | None = None,
    ) -> dict[Site, Tensor]:
        """``sum_s weights[s] * transform(grad at point (s, b))`` per site, as ``[B, K, ...]``.

        Args:
            n_samples: S, the points per example.
            points: ``(samples[N], examples[N]) -> {site: [N, ...]}``; ``None`` uses the inputs
                (or the layer activations they produce) as the single point.
            weights: ``[S]`` weights of the samples (default 1).
            transform: ``(site, grad, point) -> contribution`` (default: the gradient).
        """
        b = self.batch.batch_size
        total = n_samples * b
        chunk = self.internal_batch_size or total
        k = len(self.targets)
        acc: dict[Site, Tensor] = {}
        for start in range(0, total, chunk):
            rows = torch.arange(start, min(total, start + chunk))
            samples, examples = rows // b, rows % b
            site_points = points(samples, examples) if points is not None else None
            with torch.enable_grad():
                wrt, explained = self._forward(examples, site_points)
                scalars = self.scalars(explained, examples, rows_are_inputs=points is None)
                for t, y in enumerate(scalars):
                    grads = self._grad(y, list(wrt.values()), retain=t < k - 1)
                    for (site, point), grad in zip(wrt.items(), grads):
                        part = transform(site, grad, point.detach()) if transform else grad
                        if weights is not None:
                            w = weights.to(part)[samples.to(part.device)]
                            part = part * w.reshape(-1, *[1] * (part.dim() - 1))
                        if site not in acc:
                            acc[site] = part.new_zeros((b, k, *part.shape[1:]))
                        acc[site][:, t].index_add_(0, examples.to(part.device), part)
                del wrt, explained, scalars
        return acc

    def _forward(
        self, examples: Tensor, site_points: dict[Site, Tensor] | None
    ) -> tuple[dict[Site, Tensor], list[Tensor]]:
        if self.layers:
            values = self.batch.take_rows(examples)
            if site_points is None:
                explained, layer_values = self.adapter.run(values, layer_mode="leaf")
                return dict(layer_values), explained
            replacements = {p: _leaf(site_points[p]) for p in self.layers}
            explained, _ = self.adapter.run(values, layer_mode="replace", replacements=replacements)
            return dict(replacements), explained
        values = self.batch.take_rows(examples)
        wrt = {}
        for key in self.batch.attributed:
            wrt[key] = _leaf(site_points[key] if site_points is not None else values[key])
            values[key] = wrt[key]
        explained, _ = self.adapter.run(values)
        return wrt, explained

    @staticmethod
    def _grad(y: Tensor, wrt: list[Tensor], retain: bool) -> list[Tensor]:
        if not y.requires_grad:  # the target does not depend on what is attributed
            return [torch.zeros_like(w) for w in wrt]
        grads = torch.autograd.grad(
            y, wrt, grad_outputs=torch.ones_like(y), retain_graph=retain, allow_unused=True
        )
        return [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]


def _leaf(value: Tensor) -> Tensor:
    """A fresh autograd leaf with the same values (no copy unless the tensor is an
    inference-mode tensor, which autograd cannot record)."""
    if value.is_inference():
        value = value.clone()
    return value.detach().requires_grad_()
