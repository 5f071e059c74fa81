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

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter
from ..core.errors import InputError
from ..core.paths import ModulePath
from ..core.structure import InputBatch, Key
from ..core.targets import Target

Site = Any  # an input key, or a ModulePath with layer=
PointsFn = Callable[[Tensor, Tensor], dict[Site, Tensor]]
TransformFn = Callable[[Site, Tensor, Tensor], Tensor]
ScopeFn = Callable[[Tensor, Tensor], AbstractContextManager[Any]]


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
        model: nn.Module | Callable[..., Any],
        batch: InputBatch,
        targets: list[Target],
        layers: list[ModulePath],
        internal_batch_size: int | None = None,
        memory_budget: int | None = None,
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
        self.memory_budget = memory_budget
        self.adapter = ModelAdapter(model, batch, targets, layers)
        self.sites: list[Site] = list(layers) if layers else list(batch.attributed)

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
        """Fix ``target=None`` to the predicted class, from outputs whose first B rows are the
        original inputs."""
        b = self.batch.batch_size
        self.adapter.learn_predictions([e[:b] for e in explained], torch.arange(b))

    def needs_predictions(self) -> bool:
        return any(t.index is None for t in self.targets)

    def scalars(
        self, explained: list[Tensor], examples: Tensor, rows_are_inputs: bool = False
    ) -> list[Tensor]:
        """The K scalars per row, ``[N]`` each, that the targets pick."""
        return self.adapter.pick(explained, examples, rows_are_inputs)

    # -- gradients -----------------------------------------------------------------------------
    def accumulate(
        self,
        *,
        n_samples: int = 1,
        points: PointsFn | None = None,
        weights: Tensor | None = None,
        transform: TransformFn | None = None,
        factors: PointsFn | None = None,
        forward_scope: ScopeFn | None = None,
    ) -> dict[Site, Tensor]:
        """``sum_s weights[s] * transform(grad at point (s, b)) * factors(s, b)`` per site, as
        ``[B, K, ...]``.

        Args:
            n_samples: S, the points per example.
            points: ``(samples[N], examples[N]) -> {site: [N, ...]}``; ``None`` uses the inputs
                (or the layer activations they produce) as the single point. With ``layer=``
                the points are either at the layers (keyed by path: the activations are
                replaced) or at the inputs (keyed by input key: gradients are still taken at
                the layers).
            weights: ``[S]`` weights of the samples (default 1).
            transform: ``(site, grad, point) -> contribution`` (default: the gradient).
            factors: ``(samples[N], examples[N]) -> {site: [N, ...]}``, per-row multipliers of
                the contribution that the point alone does not determine (gradient SHAP's
                ``input - baseline``); called once per chunk, after ``points``.
            forward_scope: see :meth:`gradients`.
        """
        b = self.batch.batch_size
        k = len(self.targets)
        # Per site and target, the running sum. The first chunk's contribution is kept as it
        # comes (no zero-filled buffer, no copy: with one sample it is the gradient itself);
        # a later chunk first replaces it by a sum it owns, then adds in place.
        sums: dict[Site, list[Tensor | None]] = {}
        owned: set[tuple[Site, int]] = set()
        chunk_factors: dict[Site, Tensor] = {}
        current: Tensor | None = None
        for rows, t, grads, at in self.gradients(
            n_samples=n_samples, points=points, forward_scope=forward_scope
        ):
            samples, examples = rows // b, rows % b
            whole = whole_samples(samples, examples, b)
            if factors is not None and rows is not current:
                current, chunk_factors = rows, factors(samples, examples)
            for site, grad in grads.items():
                part = transform(site, grad, at[site]) if transform else grad
                if factors is not None:
                    part = part * chunk_factors[site]
                folded = _fold(part, samples, examples, weights, whole, b)
                slots = sums.setdefault(site, [None] * k)
                previous = slots[t]
                if previous is None:
                    slots[t] = folded
                elif (site, t) in owned:
                    previous.add_(folded)
                else:
                    slots[t] = previous + folded
                    owned.add((site, t))
        result = {}
        for site, slots in sums.items():
            done = [slot for slot in slots if slot is not None]  # every target has a slot
            result[site] = done[0].unsqueeze(1) if k == 1 else torch.stack(done, dim=1)
        return result

    def gradients(
        self,
        *,
        n_samples: int = 1,
        points: PointsFn | None = None,
        forward_scope: ScopeFn | None = None,
    ) -> Iterator[tuple[Tensor, int, dict[Site, Tensor], dict[Site, Tensor]]]:
        """The gradients behind :meth:`accumulate`, one target of one chunk at a time.

        Rows are ``sample * B + example`` and come in increasing order. Yields ``(rows, t,
        grads, at)``: the chunk's rows (the same tensor object for every target of a chunk),
        the target index, and per site the gradient of target ``t`` and the (detached) point
        where it was taken, ``[N, ...]`` each. Methods that combine gradients across rows
        (conductance pairs each point with the next one) fold these themselves.

        ``forward_scope(samples[N], examples[N])``, if given, is a context manager entered
        around each chunk's forward pass only (not the target selection, not the backward
        passes): DeepLift runs its reference pass there and swaps the backward rules of
        non-linear functions while the graph is built.
        """
        b = self.batch.batch_size
        total = n_samples * b
        k = len(self.targets)
        chunks = ChunkPlan(total, b, self.internal_batch_size, self.memory_budget)
        for rows in chunks:
            examples = rows % b
            site_points = points(rows // b, examples) if points is not None else None
            for group in self._site_groups(site_points):
                scope = forward_scope(rows // b, examples) if forward_scope else nullcontext()
                with torch.enable_grad():
                    with scope, chunks.measure(rows.shape[0]):
                        wrt, explained = self._forward(examples, site_points, group)
                    scalars = self.scalars(explained, examples, rows_are_inputs=points is None)
                at = {site: point.detach() for site, point in wrt.items()}
                for t, y in enumerate(scalars):
                    grads = self._grad(y, list(wrt.values()), retain=t < k - 1)
                    yield rows, t, dict(zip(wrt, grads)), at
                del wrt, explained, scalars

    def _site_groups(self, site_points: dict[Site, Tensor] | None) -> list[list[ModulePath]]:
        """Which layers one forward pass replaces by points: all of them, except when several
        layers get points, where each gets its own pass (a layer downstream of another would
        otherwise cut it from the output, and each layer's path would depend on the others')."""
        if len(self.layers) > 1 and site_points is not None and _at_layers(site_points):
            return [[path] for path in self.layers]
        return [self.layers]

    def _forward(
        self,
        examples: Tensor,
        site_points: dict[Site, Tensor] | None,
        group: list[ModulePath] | None = None,
    ) -> tuple[dict[Site, Tensor], list[Tensor]]:
        if self.layers:
            at_inputs = site_points is not None and not _at_layers(site_points)
            values = self.batch.take_rows(examples, skip=(site_points or {}) if at_inputs else ())
            if site_points is None or at_inputs:
                values.update(site_points or {})  # points in input space, gradients at layers
                explained, layer_values = self.adapter.run(values, layer_mode="leaf")
                return dict(layer_values), explained
            replacements = {p: _leaf(site_points[p]) for p in (group or self.layers)}
            explained, _ = self.adapter.run(values, layer_mode="replace", replacements=replacements)
            return dict(replacements), explained
        values = self.batch.take_rows(examples, skip=site_points or ())  # points replace them
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
        # ``y.sum()`` rather than ``grad_outputs=ones``: the latter makes torch 2.13 import
        # sympy on first use (0.8 s); the sum's backward is a free broadcast.
        with torch.enable_grad():  # the caller may run under no_grad
            total = y.sum()
        grads = torch.autograd.grad(total, wrt, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]


def _at_layers(site_points: dict[Site, Tensor]) -> bool:
    """Whether points are keyed by layer path (replace activations) rather than input key."""
    return any(isinstance(site, ModulePath) for site in site_points)


# What one chunk's forward pass may save for backward when no internal_batch_size is given.
# On CPU, graphs much larger than this run slower, not faster: a 3200-row IG chunk of a small
# CNN (~380 MB of saved activations) took 2.5x longer than ten chunks of 320 rows, most of the
# difference in page faults. Accelerators prefer large chunks.
MEMORY_BUDGET = {"cpu": 48 * 2**20, "other": 2 * 2**30}
PROBE_ROWS = 256


class ChunkPlan:
    """The row ranges of the forward passes: ``internal_batch_size`` rows each when given;
    otherwise a first chunk of at most ``max(B, 256)`` rows whose saved activations are
    measured, then chunks sized to the memory budget (whole samples where they fit)."""

    def __init__(self, total: int, b: int, fixed: int | None, budget: int | None) -> None:
        self.total, self.b, self.fixed, self.budget = total, b, fixed, budget
        self.size = fixed or min(total, max(b, PROBE_ROWS))
        self._measuring = fixed is None and self.size < total
        self._saved = 0

    def __iter__(self) -> Iterator[Tensor]:
        start = 0
        while start < self.total:
            stop = min(self.total, start + self.size)
            yield torch.arange(start, stop)
            start = stop

    def measure(self, rows: int) -> AbstractContextManager[Any]:
        """Around the first forward pass: count the bytes it saves for backward, per row, and
        size the following chunks to the budget."""
        if not self._measuring:
            return nullcontext()
        self._measuring = False
        return _SavedBytes(self, rows)

    def resize(self, saved: int, rows: int, device: torch.device) -> None:
        budget = self.budget or MEMORY_BUDGET["cpu" if device.type == "cpu" else "other"]
        per_row = max(1, saved // max(1, rows))
        size = max(1, budget // per_row)
        if size >= self.b:
            size -= size % self.b  # whole samples: the cheap accumulation path
        self.size = size


class _SavedBytes:
    def __init__(self, plan: ChunkPlan, rows: int) -> None:
        self.plan, self.rows, self.saved = plan, rows, 0
        self.device = torch.device("cpu")
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: Tensor) -> Tensor:
        if tensor.dim() and tensor.shape[0] == self.rows:  # activations, not parameters
            self.saved += tensor.numel() * tensor.element_size()
            self.device = tensor.device
        return tensor

    def __enter__(self) -> _SavedBytes:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)
        self.plan.resize(self.saved, self.rows, self.device)


def whole_samples(samples: Tensor, examples: Tensor, b: int) -> tuple[int, int] | None:
    """``(s0, s1)`` when the rows are exactly samples ``s0..s1-1`` of every example (rows are
    contiguous and sample-major, so the first row and the count tell)."""
    n = samples.shape[0]
    if n % b or int(examples[0]) != 0:
        return None
    first = int(samples[0])
    return first, first + n // b


def _fold(
    part: Tensor,
    samples: Tensor,
    examples: Tensor,
    weights: Tensor | None,
    whole: tuple[int, int] | None,
    b: int,
) -> Tensor:
    """Sum the rows' contributions per example, ``[N, ...] -> [B, ...]``, weighting samples."""
    if whole is not None and whole[1] - whole[0] == 1 and weights is None:
        return part  # the rows are the examples
    if whole is not None:  # whole samples: one matrix-vector product instead of a scatter
        s0, s1 = whole
        w = weights.to(part)[s0:s1] if weights is not None else part.new_ones(s1 - s0)
        return (w @ part.reshape(s1 - s0, -1)).reshape(b, *part.shape[1:])
    if weights is not None:
        w = weights.to(part)[samples.to(part.device)]
        part = part * w.reshape(-1, *[1] * (part.dim() - 1))
    return part.new_zeros((b, *part.shape[1:])).index_add_(0, examples.to(part.device), part)


def _leaf(value: Tensor) -> Tensor:
    """A fresh autograd leaf with the same values (no copy unless the tensor is an
    inference-mode tensor, which autograd cannot record)."""
    if value.is_inference():
        value = value.clone()
    return value.detach().requires_grad_()
