"""The perturbation framework: a sampler, one batched forward for all targets, an estimator.

A perturbation method is three small parts:

* a **sampler** produces :class:`Perturbations`: S perturbed versions of each of the B
  examples, as a function ``build(samples, examples) -> {key: inputs}`` for any set of rows
  (usually from a coalition matrix and a :class:`~.features.FeatureLayout`);
* the **forward** (:meth:`PerturbationRun.evaluate`) runs the B original rows and the S * B
  perturbed rows through the model in chunks under a row budget, and reads the K targets from
  the same forward passes: ``scores[b, s, k]``;
* an **estimator** turns ``(f(x) [B, K], scores [B, S, K])`` into attributions, per feature
  (``[B, K, M]``, spread back over the input positions) or per input position.

The model is only called; no hook, no flag, no parameter is touched (``torch.no_grad``).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...core.adapter import ModelAdapter
from ...core.errors import InputError, InputTypeError
from ...core.paths import ModulePath
from ...core.structure import InputBatch, Key
from ...core.targets import Target
from ..base import Attribution, random_generator
from .features import FeatureLayout

Build = Callable[[Tensor, Tensor], dict[Key, Tensor]]
"""``(samples [N], examples [N]) -> {key: [N, *shape]}``: the perturbed attributed inputs."""

ROW_BUDGET_ELEMENTS = {"cpu": 2**18, "other": 2**22}
"""Default budget: rows per forward pass such that the attributed inputs of one chunk hold at
most this many elements, at most 8192 rows and at least the batch (one whole sample). On CPU
2**18 (1 MiB of float32): the activations of larger chunks pass glibc's mmap threshold, are
handed back to the system when freed and fault in again on the next chunk. On the benchmark's
Occlusion (a CNN on 3x32x32 images, 400 rows) chunks of 80-200 rows ran 1.5-1.8x faster than
one chunk of 400 rows with two threads, 1.5-1.7x with one (0 page faults against 4,000-29,000
per call). A former floor of 64 rows overrode the budget for large inputs: on 8 images of
1x112x112 (784 windows) its chunks held 51 MB of activations, faulted in 4.9 million pages a
call and ran at 0.6-0.75x captum (issue 12); the budget alone gives 16 rows there.
Accelerators prefer large chunks: 2**22 (16 MiB of float32)."""

PROGRESS_MIN_PASSES = 20
"""With ``show_progress=None`` a bar appears only on an interactive terminal for runs of at
least this many forward passes."""


@dataclass
class LayerSite:
    """With ``layer=``: the layer's activation is what is perturbed. ``inputs`` are the model
    inputs (the run's ``batch`` then holds the activation as its one attributed leaf)."""

    path: ModulePath
    inputs: InputBatch


@dataclass
class Perturbations:
    """What a sampler produces: ``n_samples`` perturbed rows per example, built on demand."""

    n_samples: int
    build: Build
    shared: bool = False
    """Whether sample ``s`` perturbs every example the same way (one mask or window for the
    whole batch): only such samples can be scored by a model that returns one value for the
    whole batch (captum's aggregated output)."""


def masked(
    layout: FeatureLayout, coalitions: Tensor, run: PerturbationRun, per_example: bool = False
) -> Perturbations:
    """Perturbations from a coalition matrix: present features keep the input, absent ones
    take the baseline.

    Args:
        coalitions: ``[S, M]`` shared by all examples, or ``[B, S, M]`` with
            ``per_example=True`` (bool, or float in [0, 1]).
    """
    n_samples = coalitions.shape[1] if per_example else coalitions.shape[0]
    inputs = {k: run.batch.leaves[k] for k in run.batch.attributed}

    def build(samples: Tensor, examples: Tensor) -> dict[Key, Tensor]:
        s = samples.to(coalitions.device)
        rows = coalitions[examples.to(coalitions.device), s] if per_example else coalitions[s]
        return layout.apply(rows, examples, inputs, run.baselines)

    return Perturbations(n_samples, build, shared=not per_example and layout.shared)


class PerturbationRun:
    """One ``attribute()`` call: inputs, targets, baselines, sampling and the batched forward.

    Attributes:
        batch: the inputs. targets: the K targets. multi: whether the result has a K dim.
        baselines: ``{key: [B, *shape]}``. generator: the random source of the samplers.
    """

    def __init__(
        self,
        model: Any,
        batch: InputBatch,
        targets: list[Target],
        multi: bool,
        baselines: dict[Key, Tensor],
        *,
        rows_per_forward: int | None,
        generator: torch.Generator | None,
        show_progress: bool | None,
        name: str,
        layer: LayerSite | None = None,
    ) -> None:
        self.model = model
        self.batch = batch
        self.layer = layer
        self.targets = targets
        self.multi = multi
        self.baselines = baselines
        self.generator = generator
        self.rows_per_forward = rows_per_forward or _default_rows(batch)
        self.show_progress = show_progress
        self.name = name
        self.forward_passes = 0
        self.chunk_rows_given = rows_per_forward is not None
        self.aggregated = False  # the model returns one value per forward call (captum's agg)

    @property
    def device(self) -> torch.device:
        return self.batch.leaves[self.batch.attributed[0]].device

    # -- the batched forward -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, perturbations: Perturbations) -> tuple[Tensor, Tensor]:
        """``f(x)`` as ``[B, K]`` and the perturbed scores as ``[B, S, K]``.

        Rows are the B inputs, then ``s * B + b`` for the perturbations, run in chunks of
        ``rows_per_forward``; every target is read from the same forward passes.
        """
        b, s_count = self.batch.batch_size, perturbations.n_samples
        total = b * (1 + s_count)
        chunk = max(1, self.rows_per_forward)
        scores: Tensor | None = None
        starts = range(0, total, chunk)
        with self._adapter() as adapter:
            for start in self._progress(starts, len(starts)):
                rows = torch.arange(start, min(total, start + chunk))
                examples = rows % b
                explained = self._forward(adapter, rows, examples, perturbations)
                if any(e.dim() == 0 or e.shape[0] != rows.shape[0] for e in explained):
                    # one value for the whole forward call: score each sample by its own call
                    return self._evaluate_aggregated(adapter, perturbations, explained)
                originals = int((rows < b).sum())
                if originals:  # rows come in order: the B original inputs run first
                    adapter.learn_predictions([e[:originals] for e in explained], rows[:originals])
                part = torch.stack(adapter.pick(explained, examples), dim=1).detach()
                if scores is None:
                    scores = part.new_empty((total, len(self.targets)))
                scores[rows.to(scores.device)] = part
        assert scores is not None
        k = scores.shape[1]
        return scores[:b], scores[b:].reshape(s_count, b, k).transpose(0, 1)

    def _evaluate_aggregated(
        self, adapter: ModelAdapter, perturbations: Perturbations, first: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """captum's semantics for a model whose output is aggregated over the batch (a scalar
        or ``[1]`` per call, e.g. a loss): one forward call per sample, all B examples
        perturbed alike, and the sample's score is the call's value for every example. The
        result is then one attribution for the batch (``[1, ...]``, :meth:`finish`)."""
        b, s_count = self.batch.batch_size, perturbations.n_samples
        shapes = [list(e.shape) for e in first]
        if any(e.numel() != 1 for e in first):
            raise InputError(
                f"the model returned output(s) of shape {shapes} for a forward call on "
                f"{min(b * (1 + s_count), self.rows_per_forward)} rows: neither one value per "
                "row nor one value for the whole call. Return [N, ...] for N rows, or one "
                "scalar for the batch"
            )
        if self.chunk_rows_given:
            raise InputError(
                f"the model returns one value for the whole batch (shape {shapes[0]}), so every "
                "perturbation needs its own forward call: leave perturbations_per_eval=1 and "
                "internal_batch_size unset"
            )
        if not perturbations.shared and b > 1:  # one example: its perturbations are shared
            raise InputError(
                f"the model returns one value for the whole batch (shape {shapes[0]}), but "
                f"{self.name} perturbs each example differently here (per-example feature "
                "masks or random coalitions), so no forward call scores one perturbation: "
                "use a feature_mask with first dimension 1 with FeatureAblation, Occlusion, "
                "FeaturePermutation or ShapleyValues(Sampling), or return one value per example"
            )
        if any(t.index is not None for t in self.targets) or self.multi:
            raise InputError(
                f"the model returns one value for the whole batch (shape {shapes[0]}): there is "
                "nothing for target= / targets= to pick; leave them unset"
            )
        self.aggregated = True
        scores = torch.empty(1 + s_count, len(self.targets), dtype=first[0].dtype)
        examples = torch.arange(b)
        for sample in range(-1, s_count):
            rows = examples + (sample + 1) * b
            explained = self._forward(adapter, rows, examples, perturbations)
            scores[sample + 1] = torch.stack([e.detach().reshape(()) for e in explained]).cpu()
        full = scores[0].expand(b, -1)
        return full, scores[1:].unsqueeze(0).expand(b, -1, -1)

    def _adapter(self) -> ModelAdapter:
        if self.layer is None:
            return ModelAdapter(self.model, self.batch, self.targets)
        return ModelAdapter(self.model, self.layer.inputs, self.targets, [self.layer.path])

    def _forward(
        self, adapter: ModelAdapter, rows: Tensor, examples: Tensor, perturbations: Perturbations
    ) -> list[Tensor]:
        """One forward pass of ``rows``: perturbed inputs, or with ``layer=`` the model inputs
        of the examples with the layer's activation replaced by its perturbed rows."""
        values = self._values(rows, examples, perturbations)
        self.forward_passes += 1
        if self.layer is None:
            return adapter.run(values)[0]
        inputs = self.layer.inputs.take_rows(examples)
        replaced = {self.layer.path: values[self.batch.attributed[0]]}
        return adapter.run(inputs, layer_mode="replace", replacements=replaced)[0]

    def _values(self, rows: Tensor, examples: Tensor, perturbations: Perturbations) -> dict:
        """Model inputs of a chunk of rows (increasing): the original examples among them
        (a run ``first..b-1``), then the perturbed rows."""
        b = self.batch.batch_size
        first, stop = int(rows[0]), int(rows[-1]) + 1
        if stop <= b:
            return self.batch.take_rows(examples, run=(first, stop))
        n_orig = max(0, b - first)
        new = perturbations.build((rows[n_orig:] - b) // b, examples[n_orig:])
        # the replaced inputs are not gathered: their original rows are a slice
        values = self.batch.take_rows(examples, skip=new)
        for key, value in new.items():
            value = value.to(self.batch.leaves[key].dtype)
            if n_orig:
                value = torch.cat([self.batch.leaves[key][first:b], value])
            values[key] = value
        return values

    def _progress(self, items: range, count: int) -> Iterator[int]:
        show = self.show_progress
        if show is None:
            show = count >= PROGRESS_MIN_PASSES and sys.stderr.isatty()
        if not show:
            yield from items
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            yield from tqdm(items, total=count, desc=f"{self.name} attribution")
            return
        for done, item in enumerate(items, 1):  # a plain counter when tqdm is not installed
            yield item
            print(
                f"\r{self.name} attribution: {done}/{count} forward passes", end="", file=sys.stderr
            )
        print(file=sys.stderr)

    # -- helpers for samplers ------------------------------------------------------------------
    def rand(self, *shape: int) -> Tensor:
        """Uniform [0, 1) samples from the run's generator (float64, on the generator's device)."""
        return torch.rand(
            *shape, generator=self.generator, dtype=torch.float64, device=self._gen_device
        )

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(
            *shape, generator=self.generator, dtype=torch.float64, device=self._gen_device
        )

    def randint(self, high: int, shape: tuple[int, ...]) -> Tensor:
        return torch.randint(high, shape, generator=self.generator, device=self._gen_device)

    @property
    def _gen_device(self) -> torch.device:
        return self.generator.device if self.generator is not None else torch.device("cpu")

    def finish(self, per_key: dict[Key, Tensor]) -> Any:
        """``{key: [B, K, *shape]}`` in the user's input structure (K dropped for one target)."""
        if not self.multi:
            per_key = {key: value[:, 0] for key, value in per_key.items()}
        if self.aggregated:  # one attribution for the whole batch, as captum returns it
            per_key = {key: value[:1] for key, value in per_key.items()}
        return self.batch.pack(per_key, extra_dims=int(self.multi))


class PerturbationAttribution(Attribution):
    """Base of the perturbation methods: forward passes only, so any callable model works."""

    _MULTIPLIES_BY_INPUTS = True  # as captum reports: an ablation's drop is a global effect

    def attribute_future(self, *args: Any, **kwargs: Any) -> torch.futures.Future:
        """``attribute`` for a model that returns ``torch.futures.Future``: each forward
        pass's future is waited for, and the attributions come back as a completed future
        (captum's ``attribute_future``; same arguments as ``attribute``).

        Example:
            >>> future = tdlens.FeatureAblation(async_model).attribute_future(x, target=0)
            >>> attr = future.wait()
        """
        resolved = copy.copy(self)
        resolved.model = _WaitFor(self.model)
        future: torch.futures.Future = torch.futures.Future()
        future.set_result(resolved.attribute(*args, **kwargs))
        return future

    perturbs_layers = False
    """Whether ``layer=`` works (captum's LayerFeatureAblation and LayerFeaturePermutation):
    the layer's activation is perturbed instead of the inputs."""

    def __init__(self, model: Any, *, layer: Any = None, output: Any = None, **defaults: Any):
        if layer is not None and type(self).perturbs_layers:
            super().__init__(model, layer=layer, output=output, **defaults)
            return
        if layer is not None:
            # accepted and ignored, it would return input attributions under a layer's name
            raise InputError(
                f"{type(self).__name__} perturbs the model inputs and takes no layer=; to "
                "attribute a layer's activation use a gradient method with layer= (e.g. "
                "tdlens.IntegratedGradients(model, layer=...)), or put the layer's input "
                "through the model as an input"
            )
        super().__init__(model, output=output, **defaults)

    def _start(
        self,
        inputs: Any,
        *,
        target: Any,
        targets: Any,
        output: Any,
        keys: Any,
        additional_forward_args: Any,
        baselines: Any = None,
        perturbations_per_eval: int = 1,
        internal_batch_size: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        show_progress: bool | None = None,
    ) -> PerturbationRun:
        """Check the call and set up its run: inputs, targets, baselines, budget, randomness."""
        batch, target_list, multi, layers = self._prepare(
            inputs,
            target,
            targets,
            output,
            self.layer,
            keys,
            additional_forward_args,
            require_float=False,
        )
        if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
            raise InputError(
                f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}"
            )
        if internal_batch_size is not None and (
            not isinstance(internal_batch_size, int) or internal_batch_size < 1
        ):
            raise InputError(
                f"internal_batch_size must be a positive int (rows per forward pass), got "
                f"{internal_batch_size!r}"
            )
        site = None
        if layers:
            site = LayerSite(self._layer_path(layers), batch)
            batch = _activation_batch(self.model, site, target_list)
        rows = internal_batch_size
        if rows is None and perturbations_per_eval > 1:
            rows = perturbations_per_eval * batch.batch_size
        return PerturbationRun(
            self.model,
            batch,
            target_list,
            multi,
            self._baselines(batch, baselines),
            rows_per_forward=rows,
            generator=random_generator(generator, seed),
            show_progress=show_progress,
            name=self.get_name(),
            layer=site,
        )

    def _layer_path(self, layers: list[ModulePath]) -> ModulePath:
        if len(layers) != 1:
            raise InputError(
                f"{type(self).__name__} perturbs one layer at a time; layer= names "
                f"{len(layers)}: {[str(p) for p in layers]}"
            )
        return layers[0]


@torch.no_grad()
def _activation_batch(model: Any, site: LayerSite, targets: list[Target]) -> InputBatch:
    """The layer's activation on the inputs, ``[B, *shape]``, as a batch whose one attributed
    leaf it is: feature masks, baselines and results then refer to the activation."""
    with ModelAdapter(model, site.inputs, targets, [site.path]) as adapter:
        b = site.inputs.batch_size
        _, values = adapter.run(site.inputs.take_rows(None, run=(0, b)), layer_mode="observe")
    activation = values[site.path]
    if activation.dim() == 0 or activation.shape[0] != b:
        raise InputError(
            f"layer {str(site.path)!r} has an activation of shape {list(activation.shape)}, "
            f"without the batch of {b} examples first; pick a layer whose output is per example"
        )
    batch = InputBatch("tensor", {0: activation}, (0,), b)
    batch._single = True  # type: ignore[attr-defined]  # results come back as one tensor
    return batch


class _WaitFor:
    """A model returning futures, called as one returning their values."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*args, **kwargs)
        if not isinstance(out, torch.futures.Future):
            raise InputTypeError(
                f"attribute_future needs a model that returns a torch.futures.Future; this one "
                f"returned {type(out).__name__}: call attribute() instead"
            )
        return out.wait()


def _default_rows(batch: InputBatch) -> int:
    per_row = sum(int(batch.leaves[k][0].numel()) for k in batch.attributed) or 1
    device = batch.leaves[batch.attributed[0]].device.type if batch.attributed else "cpu"
    budget = ROW_BUDGET_ELEMENTS["cpu" if device == "cpu" else "other"]
    b = batch.batch_size
    rows = int(min(8192, max(1, budget // per_row, b)))
    # whole samples per chunk (rows are sample * B + example): samplers build them by
    # broadcasting over the examples instead of gathering rows
    return max(b, rows - rows % b) if b else rows


def check_samples(n_samples: Any, name: str = "n_samples", minimum: int = 1) -> int:
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < minimum:
        raise InputError(f"{name} must be an int >= {minimum}, got {n_samples!r}")
    return n_samples
