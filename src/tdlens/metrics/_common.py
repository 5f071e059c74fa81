"""What the metrics share: inputs, targets and attributions lined up, and forward-only scoring.

A metric call builds one :class:`MetricCall`. It formats the inputs with the core's
:class:`~tdlens.core.structure.InputBatch`, reads the targets' explained outputs through the
:class:`~tdlens.core.adapter.ModelAdapter` and :func:`~tdlens.core.targets.select`, and scores
rows of perturbed inputs in forward passes of at most ``max_examples_per_batch`` rows, without
gradients. Perturbed rows are laid out in *blocks*: ``row = block * B + example``, one block
per step, percentage or random sample of a metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.adapter import ModelAdapter
from ..core.errors import InputError, InputTypeError
from ..core.lazy import is_tensordict
from ..core.structure import InputBatch, Key
from ..core.targets import normalize_targets

RowsBuilder = Callable[[Tensor], tuple[Tensor, dict[Key, Any]]]


@dataclass
class CurveResult:
    """A metric measured at several fractions of the features, and its summary per example.

    Attributes:
        fractions: ``[S]`` float64, the fractions of the features removed, kept or inserted.
        curve: ``[B, S]`` (``[B, K, S]`` with ``targets=``): the metric at each fraction.
        score: ``[B]`` (``[B, K]``): the summary: the area under the curve (deletion,
            insertion) or its mean over the fractions (AOPC for ERASER, ROAD).
    """

    fractions: Tensor
    curve: Tensor
    score: Tensor

    def _repr_png_(self) -> bytes:
        """A notebook shows the curve (mean over the batch) with its area; needs matplotlib."""
        from ..viz.curves import curve_plot

        return curve_plot(self, kind=None).png()


class MetricCall:
    """One metric call's inputs, targets and attributions, and the model scoring rows.

    Use as a context manager: hooks (for ``output=<module path>``) exist only inside it.

    Args:
        model: the user's model (never changed).
        inputs: a tensor, tuple, dict or TensorDict.
        attributions: shaped like the attributed inputs, ``[B, K, ...]`` with ``targets``.
        keys: which inputs the attributions explain; default: the keys of a dict or
            TensorDict of attributions, else every floating-point input.
        max_examples_per_batch: rows per forward pass (``None``: all rows at once).
        broadcast: accept attributions that broadcast to the input (``[B, 1, H, W]`` maps).
        additional_forward_args: captum's extra positional model arguments (passed through).
    """

    def __init__(
        self,
        model: Callable[..., Any],
        inputs: Any,
        attributions: Any,
        *,
        target: Any,
        targets: Any,
        output: Any,
        keys: Any,
        max_examples_per_batch: int | None,
        require_float: bool = False,
        broadcast: bool = True,
        additional_forward_args: Any = None,
    ) -> None:
        if not callable(model):
            raise InputTypeError(f"the model must be callable, got {type(model).__name__}")
        if keys is None:
            keys = _keys_of(attributions)
        self.batch = InputBatch.build(
            inputs,
            keys=keys,
            require_float=require_float,
            additional_forward_args=additional_forward_args,
        )
        self.batch.check_finite()
        self.targets, self.multi = normalize_targets(target, targets, output, self.batch.batch_size)
        self.budget = check_budget(max_examples_per_batch)
        self.attributions = align_attributions(
            self.batch, attributions, len(self.targets), self.multi, broadcast
        )
        self.adapter = ModelAdapter(model, self.batch, self.targets)

    def __enter__(self) -> MetricCall:
        self.adapter.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.adapter.__exit__(*exc)

    @property
    def k(self) -> int:
        return len(self.targets)

    # -- scoring -------------------------------------------------------------------------------
    @torch.no_grad()
    def original(self) -> Tensor:
        """The K target scores of the unperturbed inputs, ``[B, K]``; fixes ``target=None`` on a
        ``[B, C]`` output to the predicted class for every later row."""
        b = self.batch.batch_size
        parts = []
        for start in range(0, b, self.budget or b):
            examples = torch.arange(start, min(b, start + (self.budget or b)))
            explained, _ = self.adapter.run(self.batch.take_rows(examples))
            self.adapter.learn_predictions(explained, examples)
            parts.append(torch.stack(self.adapter.pick(explained, examples), dim=1))
        return torch.cat(parts)

    @torch.no_grad()
    def score(self, examples: Tensor, values: dict[Key, Any]) -> Tensor:
        """One forward pass on rows (``values``: every input leaf), ``[N, K]`` target scores."""
        explained, _ = self.adapter.run(values)
        return torch.stack(self.adapter.pick(explained, examples), 1)

    def score_rows(self, n_rows: int, build: RowsBuilder) -> Tensor:
        """``[n_rows, K]`` scores of rows made by ``build(rows) -> (examples, values)``, in
        forward passes of at most ``max_examples_per_batch`` rows."""
        chunk = self.budget or max(n_rows, 1)
        parts = [
            self.score(*build(torch.arange(start, min(n_rows, start + chunk))))
            for start in range(0, n_rows, chunk)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, self.k)

    def score_blocks(self, n_blocks: int, perturb: BlockPerturbation) -> Tensor:
        """``[n_blocks, B, K]`` scores of ``n_blocks`` perturbed copies of the batch.

        ``perturb(blocks, examples, values)`` returns the perturbed attributed leaves of rows
        ``block * B + example`` (``values``: those rows' original leaves).
        """
        b = self.batch.batch_size

        def build(rows: Tensor) -> tuple[Tensor, dict[Key, Any]]:
            blocks, examples = rows // b, rows % b
            values = self.batch.take_rows(examples)
            values.update(perturb(blocks, examples, values))
            return examples, values

        return self.score_rows(n_blocks * b, build).reshape(n_blocks, b, self.k)

    def finish(self, value: Tensor) -> Tensor:
        """Drop the K dimension (dim 1) of ``[B, K, ...]`` when one target was given."""
        return value if self.multi else value[:, 0]


BlockPerturbation = Callable[[Tensor, Tensor, dict[Key, Any]], dict[Key, Tensor]]


class PerBlock:
    """Values made once per block, in block order, so that random draws do not depend on how
    rows are chunked into forward passes. Chunks cover non-decreasing blocks, so a block below
    the ones a call asks for is never needed again and is dropped.
    """

    def __init__(self, make: Callable[[int], Any]) -> None:
        self._make = make
        self._cache: dict[int, Any] = {}

    def rows(self, blocks: Tensor, examples: Tensor, part: Callable[[Any], Tensor]) -> Tensor:
        """``part(value of the row's block)[example]`` for each row, stacked."""
        wanted = torch.unique_consecutive(blocks).tolist()
        self._cache = {j: v for j, v in self._cache.items() if j >= wanted[0]}
        pieces = []
        for block in wanted:
            if block not in self._cache:
                self._cache[block] = self._make(block)
            pieces.append(part(self._cache[block])[examples[blocks == block]])
        return torch.cat(pieces)


# -- argument checks ---------------------------------------------------------------------------
def check_budget(max_examples_per_batch: Any) -> int | None:
    if max_examples_per_batch is None:
        return None
    if not isinstance(max_examples_per_batch, int) or max_examples_per_batch < 1:
        raise InputError(
            f"max_examples_per_batch must be a positive int (rows per forward pass) or None, "
            f"got {max_examples_per_batch!r}"
        )
    return max_examples_per_batch


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_fractions(values: Any, name: str) -> Tensor:
    """Fractions of the features as a float64 tensor, each in (0, 1]."""
    single = isinstance(values, (int, float)) and not isinstance(values, bool)
    items = [values] if single else list(values) if isinstance(values, Sequence) else None
    if isinstance(values, Tensor):
        items = values.reshape(-1).tolist()
    if not items or not all(isinstance(v, (int, float)) for v in items):
        raise InputError(
            f"{name} must be a fraction or a list of fractions in (0, 1], got {values!r}"
        )
    bad = [v for v in items if not 0 < v <= 1]
    if bad:
        hint = " (give fractions, not percents: 20% is 0.2)" if any(v > 1 for v in bad) else ""
        raise InputError(
            f"{name} must lie in (0, 1]: each is the fraction of the features to use; got "
            f"{bad[0]!r}{hint}"
        )
    return torch.tensor(items, dtype=torch.float64)


def feature_counts(fractions: Tensor, n_features: Tensor) -> Tensor:
    """``ceil(fraction * n)`` features per fraction and example, ``[S, B]`` (float noise such as
    ``0.1 * 30 = 3.0000000000000004`` is not rounded up)."""
    exact = fractions.reshape(-1, 1) * n_features.to(torch.float64).reshape(1, -1)
    return torch.ceil(exact - 1e-9).clamp(min=0).to(torch.long)


def sample_chunks(n_samples: int, batch_size: int, max_examples_per_batch: int | None) -> list[int]:
    """Samples per chunk as captum's metrics split them: ``max_examples_per_batch // B`` (at
    least one) per chunk, the remainder last. Perturbation functions see the same shapes in the
    same order as in captum, so a shared seed gives the same perturbations."""
    per = n_samples
    if max_examples_per_batch is not None:
        per = min(max(max_examples_per_batch // batch_size, 1), n_samples)
    sizes = [per] * (n_samples // per)
    return [*sizes, n_samples % per] if n_samples % per else sizes


def repeat_rows(batch_size: int, n: int) -> Tensor:
    """Example index of each row when every example is repeated ``n`` times in place
    (``repeat_interleave``: rows ``b * n ... b * n + n - 1`` are example ``b``)."""
    return torch.arange(batch_size).repeat_interleave(n)


# -- attributions ------------------------------------------------------------------------------
def _keys_of(attributions: Any) -> Any:
    if is_tensordict(attributions):
        return list(attributions.keys(include_nested=True, leaves_only=True))
    if isinstance(attributions, Mapping):
        return list(attributions)
    return None


def align_attributions(
    batch: InputBatch, attributions: Any, k: int, multi: bool, broadcast: bool
) -> dict[Key, Tensor]:
    """Attributions per attributed input as ``[B, K, *input.shape[1:]]``.

    Without ``targets`` an attribution is shaped like its input (or, with ``broadcast``,
    broadcasts to it: ``[B, 1, H, W]`` for a ``[B, C, H, W]`` image); with ``targets`` of K
    entries it has a K dimension after the batch, as tdlens methods return.
    """
    result = {}
    for key, attr in batch.per_key(attributions, "attributions").items():
        x = batch.leaves[key]
        if not isinstance(attr, Tensor):
            raise InputTypeError(
                f"attributions for input {key!r} must be a tensor, got {type(attr).__name__}"
            )
        expected = [x.shape[0], k, *x.shape[1:]] if multi else list(x.shape)
        shaped = attr if multi else attr.unsqueeze(1)
        full = [x.shape[0], k, *x.shape[1:]]
        fits = list(attr.shape) == expected
        if not fits and broadcast and shaped.dim() == len(full):
            fits = shaped.shape[:2] == torch.Size(full[:2]) and all(
                a in (1, f) for a, f in zip(shaped.shape[2:], full[2:])
            )
        if not fits:
            how = (
                f"[B, K, *input.shape[1:]] = {expected} for the K={k} targets"
                if multi
                else f"the input's shape {expected}"
            )
            raise InputError(
                f"attributions for input {key!r} have shape {list(attr.shape)} but the input "
                f"has shape {list(x.shape)}; the attributions must have {how} (pass the "
                "attributions computed for these inputs"
                + (", with the same targets=)" if multi else ")")
            )
        if not attr.is_floating_point():
            shaped = shaped.to(torch.get_default_dtype())
        elif not bool(torch.isfinite(attr).all()):
            bad = ~torch.isfinite(attr)
            what = "NaN" if bool(torch.isnan(attr).any()) else "inf"
            raise InputError(
                f"attributions for input {key!r} contain {what} ({int(bad.sum())} entries); "
                f"every score of them would be {what}. Check the method that produced them "
                "(NaN baselines or inputs, a model that returns NaN)"
            )
        result[key] = shaped.expand(full)
    return result


def pearson(x: Tensor, y: Tensor, dim: int = 0) -> Tensor:
    """Pearson correlation along ``dim``; NaN where either side is constant."""
    x = x - x.mean(dim, keepdim=True)
    y = y - y.mean(dim, keepdim=True)
    denom = torch.sqrt((x * x).sum(dim) * (y * y).sum(dim))
    return (x * y).sum(dim) / torch.where(denom > 0, denom, torch.full_like(denom, math.nan))
