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

import functools
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter
from ..core.errors import InputError
from ..core.hooks import HookSet
from ..core.paths import ModulePath
from ..core.structure import InputBatch, Key
from ..core.targets import Target

Site = Any  # an input key, or a ModulePath with layer=
PointsFn = Callable[[Tensor, Tensor], dict[Site, Tensor]]
TransformFn = Callable[[Site, Tensor, Tensor], Tensor]
ScopeFn = Callable[[Tensor, Tensor], AbstractContextManager[Any]]
ThroughFn = Callable[[Tensor], Tensor]  # a layer's activation [N, ...] -> one entry per row [N]


class GradientEngine:
    """One attribution call's model, inputs, targets and sites, with hooks held open.

    Args:
        model: the user's model (never changed).
        batch: the inputs.
        targets: the K targets.
        layers: module paths to attribute to instead of the inputs.
        internal_batch_size: rows per forward pass (``None``: chunks sized to
            ``MEMORY_BUDGET``, see :class:`ChunkPlan`).
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
        self,
        explained: list[Tensor],
        examples: Tensor | Callable[[], Tensor],
        rows_are_inputs: bool = False,
    ) -> list[Tensor]:
        """The K scalars per row, ``[N]`` each, that the targets pick (``examples``: of the
        rows, or a function making them when a per-example target needs them)."""
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
        through: ThroughFn | None = None,
        k_dim: bool = True,
        row_sums: Tensor | None = None,
    ) -> dict[Site, Tensor]:
        """``sum_s weights[s] * transform(grad at point (s, b)) * factors(s, b)`` per site, as
        ``[B, K, ...]`` (``[B, ...]`` for one target with ``k_dim=False``).

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
            through: see :meth:`gradients` (the sites are then the input keys).
            row_sums: ``[S * B, K]``; if given, each row's contribution summed over its
                entries and the sites (unweighted) is added to it: the per-sample totals that
                a per-sample convergence delta needs.
        """
        b = self.batch.batch_size
        k = len(self.targets)
        # Per site and target, the running sum. The first chunk's contribution is kept as it
        # comes (no zero-filled buffer, no copy: with one sample it is the gradient itself);
        # a later chunk first replaces it by a sum it owns, then adds in place.
        sums: dict[Site, list[Tensor | None]] = {}
        owned: set[tuple[Site, int]] = set()
        chunk_factors: dict[Site, Tensor] = {}
        current: Chunk | None = None
        for chunk, t, grads, at in self.gradients(
            n_samples=n_samples,
            points=points,
            forward_scope=forward_scope,
            by_example=True,
            through=through,
        ):
            if chunk is not current:  # a new chunk: its layout, once for the K targets
                current = chunk
                span = chunk.one_sample if chunk.whole is None else None
                if factors is not None:
                    chunk_factors = factors(chunk.samples, chunk.examples)
            for site, grad in grads.items():
                part = transform(site, grad, at[site]) if transform else grad
                if factors is not None:
                    part = part * chunk_factors[site]
                if row_sums is not None:
                    totals = part.reshape(part.shape[0], -1).sum(1).to(row_sums)
                    row_sums[:, t].index_add_(0, chunk.rows.to(row_sums.device), totals)
                slots = sums.setdefault(site, [None] * k)
                previous = slots[t]
                if span is not None:  # some examples of one sample: add into their rows
                    if (site, t) not in owned:
                        total = part.new_zeros((b, *part.shape[1:]))
                        slots[t] = total if previous is None else total.add_(previous)
                        owned.add((site, t))
                    s, first, stop = span
                    scale = 1.0 if weights is None else float(weights[s])
                    slots[t][first:stop].add_(part, alpha=scale)  # type: ignore[index]
                    continue
                folded = _fold(part, chunk, weights)
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
            if k > 1:
                result[site] = torch.stack(done, dim=1)
            else:
                result[site] = done[0].unsqueeze(1) if k_dim else done[0]
        return result

    def gradients(
        self,
        *,
        n_samples: int = 1,
        points: PointsFn | None = None,
        forward_scope: ScopeFn | None = None,
        by_example: bool = False,
        through: ThroughFn | None = None,
    ) -> Iterator[tuple[Chunk, int, dict[Site, Tensor], dict[Site, Tensor]]]:
        """The gradients behind :meth:`accumulate`, one target of one chunk at a time.

        Rows are ``sample * B + example`` and come in increasing order; with ``by_example``,
        a chunk of whole samples is run example by example instead (the samples of example 0,
        then of example 1...: :func:`by_example`), which the folding code must then accept.
        Consecutive points of one example are alike, and CPU kernels with data-dependent
        branches (max pooling, ReLU's backward) run up to 20% faster on alike neighbours.

        Yields ``(chunk, t, grads, at)``: the :class:`Chunk` (the same object for every target
        of a chunk; its ``rows`` are the rows of the gradients), the target index, and per site
        the gradient of target ``t`` and the (detached) point where it was taken, ``[N, ...]``
        each. Methods that combine gradients across rows (conductance pairs each point with
        the next one) fold these themselves.

        ``forward_scope(samples[N], examples[N])``, if given, is a context manager entered
        around each chunk's forward pass only (not the target selection, not the backward
        passes): DeepLift runs its reference pass there and swaps the backward rules of
        non-linear functions while the graph is built.

        ``through(activation[N, ...]) -> [N]``, if given, selects one entry per row (one
        neuron) of the activation of the one layer; the gradients are then taken at the
        attributed inputs (or their points), along the paths through that entry only:
        ``through(grad of target t at the layer) * d through(activation) / d inputs``, the
        chain rule at the neuron (captum's NeuronConductance). ``through`` must select, not
        combine (a sum of entries would weigh each entry's path by the sum of the gradients).
        Each chunk takes one backward pass from the entry to the inputs, shared by the K
        targets, whose backward passes stop at the layer. The sites are the input keys.
        """
        b = self.batch.batch_size
        total = n_samples * b
        k = len(self.targets)
        chunks = ChunkPlan(
            total,
            b,
            self.internal_batch_size,
            self.memory_budget,
            self.model,
            lambda: self._layout(points, forward_scope, through),
            targets=k,
        )
        for start, stop in chunks:
            chunk = Chunk(start, stop, b, by_example)
            site_points = points(chunk.samples, chunk.examples) if points is not None else None
            for group in self._site_groups(site_points):
                scope = (
                    forward_scope(chunk.samples, chunk.examples) if forward_scope else nullcontext()
                )
                below = None
                with _grad_enabled():
                    with scope, chunks.measure(stop - start):
                        if through is None:
                            wrt, explained = self._forward(chunk, site_points, group)
                        else:
                            wrt, explained, below = self._forward_through(
                                chunk.examples, site_points
                            )
                    # the examples of the rows, made only if a per-example target needs them
                    scalars = self.scalars(
                        explained, chunk.make_examples, rows_are_inputs=points is None
                    )
                if through is not None:
                    yield from self._through(chunk, through, wrt, below, scalars)
                    del wrt, explained, scalars, below
                    continue
                at = {site: point.detach() for site, point in wrt.items()}
                for t, y in enumerate(scalars):
                    grads = self._grad(y, list(wrt.values()), retain=t < k - 1)
                    yield chunk, t, dict(zip(wrt, grads)), at
                del wrt, explained, scalars

    def _layout(
        self,
        points: PointsFn | None,
        forward_scope: ScopeFn | None,
        through: ThroughFn | None = None,
    ) -> Any:
        """What, besides the model, decides the bytes one row saves for backward: the rows'
        shapes and dtypes, the layers, where the points go, the method's forward scope, whether
        the graph below the layer is kept (``through``)."""
        leaves = tuple(
            (key, tuple(v.shape[1:]), v.dtype, v.device)
            if isinstance(v, Tensor)
            else (key, type(v).__name__)
            for key, v in self.batch.leaves.items()
        )
        where = [getattr(fn, "__qualname__", type(fn).__name__) for fn in (points, forward_scope)]
        training = getattr(self.model, "training", None)
        return (leaves, tuple(self.layers), *where, through is not None, training)

    def _site_groups(self, site_points: dict[Site, Tensor] | None) -> list[list[ModulePath]]:
        """Which layers one forward pass replaces by points: all of them, except when several
        layers get points, where each gets its own pass (a layer downstream of another would
        otherwise cut it from the output, and each layer's path would depend on the others')."""
        if len(self.layers) > 1 and site_points is not None and _at_layers(site_points):
            return [[path] for path in self.layers]
        return [self.layers]

    def _forward(
        self,
        chunk: Chunk,
        site_points: dict[Site, Tensor] | None,
        group: list[ModulePath] | None = None,
    ) -> tuple[dict[Site, Tensor], list[Tensor]]:
        # a run of consecutive examples is sliced; other rows are gathered
        examples = chunk.examples if chunk.run is None else None
        if self.layers:
            at_inputs = site_points is not None and not _at_layers(site_points)
            skip = (site_points or {}) if at_inputs else ()
            values = self.batch.take_rows(examples, skip=skip, run=chunk.run)
            if site_points is None or at_inputs:
                values.update(site_points or {})  # points in input space, gradients at layers
                explained, layer_values = self.adapter.run(values, layer_mode="leaf")
                return dict(layer_values), explained
            replacements = {p: _leaf(site_points[p]) for p in (group or self.layers)}
            explained, _ = self.adapter.run(values, layer_mode="replace", replacements=replacements)
            return dict(replacements), explained
        values = self.batch.take_rows(examples, skip=site_points or (), run=chunk.run)
        wrt = {}
        for key in self.batch.attributed:
            wrt[key] = _leaf(site_points[key] if site_points is not None else values[key])
            values[key] = wrt[key]
        explained, _ = self.adapter.run(values)
        return wrt, explained

    def _forward_through(
        self, examples: Tensor, site_points: dict[Site, Tensor] | None
    ) -> tuple[dict[Site, Tensor], list[Tensor], tuple[Tensor, Tensor] | None]:
        """The forward pass for ``through``: the attributed inputs (or their points) are
        leaves, and the layer's activation is cut from the graph above it (as in ``"leaf"``
        mode) but keeps the graph below it. Returns the input leaves, the explained outputs and
        ``(activation, cut)``: the activation in the graph from the inputs, and the leaf that
        replaced it above; ``None`` when the pass stopped at the layer before the cut (every
        target reads a module activation at or before the layer)."""
        if len(self.layers) != 1 or (site_points is not None and _at_layers(site_points)):
            raise InputError("through= takes exactly one layer and points at the inputs")
        values = self.batch.take_rows(examples, skip=site_points or ())
        values.update(site_points or {})
        inputs = {key: _leaf(values[key]) for key in self.batch.attributed}
        values.update(inputs)
        below: list[tuple[Tensor, Tensor]] = []

        def cut(value: Tensor) -> Tensor:
            below.append((value, _leaf(value)))
            return below[-1][1]

        # Registered after the adapter's hook, which checks the layer (a tensor, run once) and
        # observes it without replacing it.
        with HookSet() as hooks:
            hooks.on_site(cast(nn.Module, self.model), self.layers[0], cut)
            explained, _ = self.adapter.run(values, layer_mode="observe")
        return cast(dict[Site, Tensor], inputs), explained, below[0] if below else None

    def _through(
        self,
        chunk: Chunk,
        through: ThroughFn,
        inputs: dict[Site, Tensor],
        below: tuple[Tensor, Tensor] | None,
        scalars: list[Tensor],
    ) -> Iterator[tuple[Chunk, int, dict[Site, Tensor], dict[Site, Tensor]]]:
        """Per target, ``through(grad at the layer) * d through(activation) / d inputs``."""
        k = len(scalars)
        at = {key: leaf.detach() for key, leaf in inputs.items()}
        if below is None:  # nothing the targets read depends on the layer
            for t in range(k):
                yield chunk, t, {key: torch.zeros_like(v) for key, v in at.items()}, at
            return
        activation, cut = below
        with _grad_enabled():  # the caller may run under no_grad
            entry = through(activation)
        down = dict(zip(inputs, self._grad(entry, list(inputs.values()), retain=False)))
        for t, y in enumerate(scalars):
            (grad,) = self._grad(y, [cut], retain=t < k - 1)
            scale = through(grad)
            yield (
                chunk,
                t,
                {key: scale.reshape(-1, *[1] * (g.dim() - 1)) * g for key, g in down.items()},
                at,
            )

    @staticmethod
    def _grad(y: Tensor, wrt: list[Tensor], retain: bool) -> list[Tensor]:
        if not y.requires_grad:  # the target does not depend on what is attributed
            return [torch.zeros_like(w) for w in wrt]
        # ``y.sum()`` rather than ``grad_outputs=ones``: the latter makes torch 2.13 import
        # sympy on first use (0.8 s); the sum's backward is a free broadcast.
        with _grad_enabled():  # the caller may run under no_grad
            total = y.sum()
        grads = torch.autograd.grad(total, wrt, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]


def _grad_enabled() -> AbstractContextManager[Any]:
    """Gradients on inside (the caller may run under ``no_grad``), at no cost when they are."""
    return nullcontext() if torch.is_grad_enabled() else torch.enable_grad()


def _at_layers(site_points: dict[Site, Tensor]) -> bool:
    """Whether points are keyed by layer path (replace activations) rather than input key."""
    return any(isinstance(site, ModulePath) for site in site_points)


# What one chunk's forward pass may save for backward when no internal_batch_size is given.
# On CPU, graphs much larger than this run slower, not faster: a 3200-row IG chunk of a small
# CNN (~380 MB of saved activations) took 2.5x longer than ten chunks of 320 rows, most of the
# difference in page faults. glibc hands freed blocks above its mmap threshold (at most 32 MiB)
# back to the system, and trims the top of its heap once more than twice that is free, so a
# chunk whose graph and backward temporaries pass about 64 MiB may fault its memory in afresh
# on every call; whether it does depends on what the process allocated before, and smaller
# chunks cost emptier kernel calls. With K > 1 targets the graph is kept while each backward
# pass builds its temporaries (about the saved bytes again), so a chunk may save half the
# budget. Measured in benchmarks/gradient_family.py (full runs, speed-up over captum, 48 MiB
# and halving against 32 MiB and halving): IG 2.39-3.01 against 2.21-2.33 at K = 10,
# LayerConductance 5.3-6.2 against 4.8-5.0, GradientShap 1.02-1.03 against 1.00 at K = 1;
# halving itself took IG at K = 10 from 90,000 page faults a call to 7,600 and ran it 1.29x
# faster with half the peak memory. Isolated A/B runs of budgets in one process moved either
# way by 10-30% with the allocator's state. Accelerators prefer large chunks. The first chunk
# has at most PROBE_ROWS rows: the bytes per row are measured there (and remembered per model
# and row layout, so later calls skip the probe).
MEMORY_BUDGET = {"cpu": 48 * 2**20, "other": 2 * 2**30}
PROBE_ROWS = 32


class Chunk:
    """The rows ``start..stop-1`` of one forward pass (``row = sample * B + example``), in
    increasing order or, with ``by_example`` and whole samples, example by example; what the
    folding code needs to know about them, from integers. The index tensors (``rows``,
    ``examples``, ``samples``) are made on first use: the common single chunk of a call with
    integer targets never needs them.
    """

    def __init__(self, start: int, stop: int, b: int, by_example: bool) -> None:
        n = stop - start
        self.start, self.stop, self.b = start, stop, b
        self.whole = (start // b, stop // b) if start % b == 0 and n % b == 0 else None
        self.example_major = by_example and self.whole is not None and n > b and b > 1
        same = start // b == (stop - 1) // b  # all rows in one sample: a run of examples
        self.one_sample = (start // b, start % b, (stop - 1) % b + 1) if same else None
        self.run = self.one_sample[1:] if self.one_sample else None

    @functools.cached_property
    def rows(self) -> Tensor:
        rows = torch.arange(self.start, self.stop)
        if self.example_major:
            rows = rows.view(-1, self.b).t().reshape(-1)  # [S, B] -> [B, S]
        return rows

    @functools.cached_property
    def examples(self) -> Tensor:
        return self.rows if self.stop <= self.b else self.rows % self.b

    @functools.cached_property
    def samples(self) -> Tensor:
        return self.rows // self.b

    def make_examples(self) -> Tensor:
        """``examples``, as a function to hand to code that needs them only sometimes."""
        return self.examples


class ChunkPlan:
    """The row ranges of the forward passes: ``internal_batch_size`` rows each when given;
    otherwise chunks sized to the memory budget from the bytes one row saves for backward.
    Those bytes are measured on a first chunk of at most ``PROBE_ROWS`` rows and remembered
    per model and row layout (``key``), so later calls plan all their chunks up front.

    Args:
        total: rows in all.
        b: rows per sample (chunks are whole samples when one fits).
        fixed: ``internal_batch_size``.
        budget: bytes a chunk may save (``None``: ``MEMORY_BUDGET`` of the device).
        model: the model whose weights are not counted as activations (and the memo's key).
        key: a function giving what else determines the bytes per row (the inputs' shapes,
            layers, method); called only when the rows do not fit one probe chunk.
        targets: K, the backward passes over each chunk's graph (K > 1 halves the budget).
    """

    def __init__(
        self,
        total: int,
        b: int,
        fixed: int | None,
        budget: int | None,
        model: Any = None,
        key: Callable[[], Any] | None = None,
        targets: int = 1,
    ) -> None:
        self.total, self.b, self.budget, self.model = total, b, budget, model
        self.targets = targets
        self.key: Any = None
        self._stops: list[int] | None = None
        self._measuring = False
        if fixed is not None:
            self._stops = [*range(fixed, total, fixed), total]
            return
        probe = PROBE_ROWS - PROBE_ROWS % b if b <= PROBE_ROWS else PROBE_ROWS  # whole samples
        if total <= probe:  # one chunk, whatever a row costs
            self._stops = [total]
            return
        self.key = key() if key is not None else None
        known = _memo(model).get(self.key) if self.key is not None else None
        if known is not None:
            self._stops = self._plan(0, *known)
            return
        self._stops = [probe]
        self._measuring = True

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of each chunk's rows."""
        start, done = 0, 0
        while self._stops is not None and done < len(self._stops):
            stop = self._stops[done]  # the plan may grow once the first chunk is measured
            yield start, stop
            start, done = stop, done + 1

    def measure(self, rows: int) -> AbstractContextManager[Any]:
        """Around the first forward pass: count the bytes it saves for backward, per row, and
        size the following chunks to the budget."""
        if not self._measuring:
            return nullcontext()
        self._measuring = False
        return _SavedBytes(self, rows, _weights_storage(self.model))

    def measured(self, saved: int, rows: int, device: torch.device) -> None:
        per_row = max(1, saved // max(1, rows))
        if self.key is not None:
            _memo(self.model)[self.key] = (per_row, device)
        assert self._stops is not None
        self._stops += self._plan(rows, per_row, device)

    def _plan(self, start: int, per_row: int, device: torch.device) -> list[int]:
        """Stops of the chunks of rows ``start..total``: each saves at most the budget, they
        are as even as possible (a small last chunk costs a pass for few rows), and of whole
        samples when one fits (the cheap accumulation path)."""
        budget = self.budget or MEMORY_BUDGET["cpu" if device.type == "cpu" else "other"]
        if self.targets > 1:  # the kept graph plus one backward pass's temporaries
            budget //= 2
        size, unit = max(1, budget // per_row), 1
        stops: list[int] = []
        if size >= self.b:
            unit, size = self.b, size // self.b
            if start % self.b and start < self.total:  # finish the sample: the rest are whole
                start = min(self.total, start + self.b - start % self.b)
                stops.append(start)
        units = -(-(self.total - start) // unit)
        if units > 0:
            step = -(-units // -(-units // size))  # ceil(units / number of chunks)
            stops += [start + i * unit for i in range(step, units, step)]
            stops.append(self.total)
        return stops


# Bytes per row measured by earlier calls: model -> {layout key: (bytes, device)}. Weak keys:
# the model is not kept alive, and nothing is stored on it.
_MEMO: weakref.WeakKeyDictionary[Any, dict[Any, tuple[int, torch.device]]] = (
    weakref.WeakKeyDictionary()
)


def _memo(model: Any) -> dict[Any, tuple[int, torch.device]]:
    try:
        return _MEMO.setdefault(model, {})
    except TypeError:  # not weakly referenceable: measure every call
        return {}


class _SavedBytes:
    def __init__(self, plan: ChunkPlan, rows: int, weights: set[int]) -> None:
        self.plan, self.rows, self.saved, self.weights = plan, rows, 0, weights
        self.device = torch.device("cpu")
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: Tensor) -> Tensor:
        if not tensor.dim() or tensor.shape[0] != self.rows:
            return tensor  # not one entry per row: not an activation
        if isinstance(tensor, nn.Parameter) or isinstance(tensor._base, nn.Parameter):
            return tensor
        if tensor.untyped_storage().data_ptr() in self.weights:
            return tensor
        self.saved += tensor.numel() * tensor.element_size()
        self.device = tensor.device
        return tensor

    def __enter__(self) -> _SavedBytes:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)
        if exc[0] is None:
            self.plan.measured(self.saved, self.rows, self.device)


def _weights_storage(model: Any) -> set[int]:
    """Where the model's parameters and buffers live (a weight whose first dimension happens to
    equal the rows is not an activation)."""
    if not isinstance(model, nn.Module):
        return set()
    tensors = [*model.parameters(), *model.buffers()]
    return {t.untyped_storage().data_ptr() for t in tensors if t.device.type != "meta"}


def whole_samples(samples: Tensor, examples: Tensor, b: int) -> tuple[int, int] | None:
    """``(s0, s1)`` when the rows are exactly samples ``s0..s1-1`` of every example, either
    sample by sample (``row = (s - s0) * B + e``) or, when :func:`by_example` says so, example
    by example (``row = e * (s1 - s0) + s - s0``). Rows come from the engine, contiguous in
    one of these two orders, so a few entries tell."""
    n = samples.shape[0]
    if n % b or int(examples[0]) != 0:
        return None
    first = int(samples[0])
    if int(samples[-1]) != first + n // b - 1:
        return None
    return first, first + n // b


def by_example(samples: Tensor, examples: Tensor, b: int) -> bool:
    """Whether rows of whole samples (:func:`whole_samples`) run example by example."""
    return b > 1 and samples.shape[0] > b and int(examples[1]) == 0


def along_path(
    start: Tensor, diff: Tensor, alphas: Tensor, samples: Tensor, examples: Tensor
) -> Tensor:
    """Points ``start[e] + alphas[s] * diff[e]`` of rows ``(samples, examples)``, ``[N, ...]``
    (a broadcast, no gather, for whole samples in either order)."""
    b = diff.shape[0]
    alphas = alphas.to(diff)
    whole = whole_samples(samples, examples, b)
    if whole is None:
        a = alphas[samples.to(diff.device)].reshape(-1, *[1] * (diff.dim() - 1))
        return start[examples] + a * diff[examples]
    a = alphas[whole[0] : whole[1]]
    if by_example(samples, examples, b):  # [B, S, ...]
        a = a.reshape(1, -1, *[1] * (diff.dim() - 1))
        return (start.unsqueeze(1) + a * diff.unsqueeze(1)).reshape(-1, *diff.shape[1:])
    a = a.reshape(-1, *[1] * diff.dim())  # [S, B, ...]
    return (start + a * diff).reshape(-1, *diff.shape[1:])


def _fold(part: Tensor, chunk: Chunk, weights: Tensor | None) -> Tensor:
    """Sum the rows' contributions per example, ``[N, ...] -> [B, ...]``, weighting samples."""
    whole, b = chunk.whole, chunk.b
    if whole is not None and whole[1] - whole[0] == 1 and weights is None:
        return part  # the rows are the examples
    if whole is not None:  # whole samples: one matrix-vector product instead of a scatter
        s0, s1 = whole
        w = weights.to(part)[s0:s1] if weights is not None else part.new_ones(s1 - s0)
        if chunk.example_major:  # [B, S, D] -> [B, D]
            return torch.matmul(w, part.reshape(b, s1 - s0, -1)).reshape(b, *part.shape[1:])
        return (w @ part.reshape(s1 - s0, -1)).reshape(b, *part.shape[1:])
    if weights is not None:
        w = weights.to(part)[chunk.samples.to(part.device)]
        part = part * w.reshape(-1, *[1] * (part.dim() - 1))
    examples = chunk.examples.to(part.device)
    return part.new_zeros((b, *part.shape[1:])).index_add_(0, examples, part)


def _leaf(value: Tensor) -> Tensor:
    """A fresh autograd leaf with the same values (no copy unless the tensor is an
    inference-mode tensor, which autograd cannot record)."""
    if value.is_inference():
        value = value.clone()
    return value.detach().requires_grad_()
