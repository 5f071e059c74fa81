"""The cells of a patching sweep (path x head x position) and the result they fill.

Shared by exact patching and attribution patching, which report the same layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import _TrainingBuffers
from ..core.errors import InputError
from ..core.structure import InputBatch


@dataclass
class Cells:
    """Every variant of a sweep, in result order: path-major, then head, then position."""

    paths: list[str]
    positions: list[int] | None  # None: whole activations
    n_heads: int | None
    path: Tensor  # [V] index into paths
    position: Tensor | None  # [V]
    head: Tensor | None  # [V]

    @property
    def count(self) -> int:
        return int(self.path.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        dims = [len(self.paths)]
        if self.n_heads is not None:
            dims.append(self.n_heads)
        if self.positions is not None:
            dims.append(len(self.positions))
        return tuple(dims)

    def for_path(
        self, index: int, first: int, stop: int
    ) -> tuple[Tensor, Tensor | None, Tensor | None] | None:
        """The variants in ``first..stop-1`` that patch path ``index``, with their position
        and head, or ``None`` when there are none."""
        chosen = (self.path[first:stop] == index).nonzero().squeeze(1) + first
        if chosen.numel() == 0:
            return None
        position = None if self.position is None else self.position[chosen]
        head = None if self.head is None else self.head[chosen]
        return chosen, position, head


def make_cells(
    keys: list[str], activations: list[Tensor], positions: Any, n_heads: int | None
) -> Cells:
    """The cells of a sweep over the cached clean activations of ``keys``."""
    if not keys:
        raise InputError("paths= names no module")
    first = activations[0]
    if positions is None:
        chosen: list[int] | None = None
    else:
        for key, act in zip(keys, activations):
            if act.dim() < 3:
                raise InputError(
                    f"positions= patches sequence activations [B, T, ...], but {key!r} has "
                    f"shape {list(act.shape)}; use positions=None to patch it whole"
                )
            if act.shape[1] != first.shape[1]:
                raise InputError(
                    f"positions= needs every path to have the same number of positions: "
                    f"{keys[0]!r} has {first.shape[1]}, {key!r} has {act.shape[1]}"
                )
        t = int(first.shape[1])
        chosen = list(range(t)) if positions == "all" else _positions(positions, t)
    if n_heads is not None:
        for key, act in zip(keys, activations):
            if act.dim() < 3 or act.shape[-1] % n_heads:
                raise InputError(
                    f"heads: {key!r} has shape {list(act.shape)}, whose last dimension does not "
                    f"split into {n_heads} heads; name the per-head output (e.g. the input of "
                    "the attention's output projection, 'attn.c_proj:input')"
                )
    grids = [torch.arange(len(keys))]
    if n_heads is not None:
        grids.append(torch.arange(n_heads))
    if chosen is not None:
        grids.append(torch.tensor(chosen, dtype=torch.long))
    mesh = torch.meshgrid(*grids, indexing="ij")
    flat = [m.reshape(-1) for m in mesh]
    head = flat[1] if n_heads is not None else None
    position = flat[-1] if chosen is not None else None
    return Cells(list(keys), chosen, n_heads, flat[0], position, head)


def _positions(positions: Any, t: int) -> list[int]:
    if isinstance(positions, int) or not all(isinstance(p, int) for p in positions):
        raise InputError(f"positions= takes None, 'all' or a list of ints, got {positions!r}")
    bad = [p for p in positions if not -t <= p < t]
    if bad:
        raise InputError(
            f"positions {bad} do not exist: the activations have {t} positions, so valid "
            f"positions are 0..{t - 1} (or -{t}..-1)"
        )
    return [p % t for p in positions]


def n_heads_of(model: nn.Module, heads: Any) -> int | None:
    """H for ``heads=``: an int, or read from a Hugging Face style config with ``True``."""
    if heads is None or heads is False:
        return None
    if heads is True:
        config = getattr(model, "config", None)
        for name in ("num_attention_heads", "n_head", "n_heads"):
            value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
            if isinstance(value, int):
                return value
        raise InputError(
            "heads=True reads the number of heads from model.config (num_attention_heads or "
            "n_head) and this model has none; pass heads=<number of heads>"
        )
    if not isinstance(heads, int) or heads < 1:
        raise InputError(f"heads= takes True or a positive int, got {heads!r}")
    return heads


@contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Put back the buffers a train-mode forward pass updates (BatchNorm statistics), as the
    model adapter does for attribution, also after an exception."""
    saved = _TrainingBuffers(model)
    try:
        yield
    finally:
        saved.restore()


def check_pair(clean: Any, corrupted: Any) -> tuple[InputBatch, InputBatch]:
    """Clean and corrupted inputs as batches, checked to agree in structure and shapes."""
    a = InputBatch.build(clean, keys=[], require_float=False, need_attributed=False)
    b = InputBatch.build(corrupted, keys=[], require_float=False, need_attributed=False)
    if a.kind != b.kind or set(a.leaves) != set(b.leaves):
        raise InputError(
            f"clean and corrupted inputs differ in structure: {a.kind} with keys "
            f"{sorted(map(str, a.leaves))} against {b.kind} with keys {sorted(map(str, b.leaves))}"
        )
    for key, value in a.leaves.items():
        other = b.leaves[key]
        if isinstance(value, Tensor) and isinstance(other, Tensor) and value.shape != other.shape:
            where = "" if a.kind == "tensor" else f" (input {key!r})"
            raise InputError(
                f"clean and corrupted inputs must have the same shape{where}: clean "
                f"{list(value.shape)}, corrupted {list(other.shape)}; pad them to one length"
            )
    return a, b


@dataclass
class PatchResult:
    """What a patching sweep (exact or approximate) measured.

    Attributes:
        scores: ``[n_paths, (n_heads,) (n_positions)]``: metric change when the cell is
            patched, averaged over the batch (divided by clean - corrupted with normalize).
        per_example: ``[B, *scores.shape]``.
        paths, positions, n_heads: the cells' layout.
        clean_metric, corrupted_metric: ``[B]``, the unpatched runs.
        forward_passes: forward calls of the model the sweep made.
    """

    scores: Tensor
    per_example: Tensor
    paths: list[str]
    positions: list[int] | None
    n_heads: int | None
    clean_metric: Tensor
    corrupted_metric: Tensor
    forward_passes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        cells: Cells,
        change: Tensor,
        clean: Tensor,
        corrupted: Tensor,
        normalize: bool,
        passes: int,
    ) -> PatchResult:
        """From the metric change per variant and example, ``[V, B]``."""
        per_example = change.T.reshape(change.shape[1], *cells.shape)
        scores = per_example.mean(0)
        if normalize:
            gap = clean - corrupted
            scores = scores / gap.mean()
            per_example = per_example / gap.reshape(-1, *[1] * len(cells.shape))
        return cls(
            scores,
            per_example,
            cells.paths,
            cells.positions,
            cells.n_heads,
            clean,
            corrupted,
            passes,
        )

    def correlation(self, exact: PatchResult | Tensor) -> dict[str, float]:
        """Pearson and Spearman correlation of these scores with ``exact``'s (same layout)."""
        other = exact.scores if isinstance(exact, PatchResult) else exact
        if other.shape != self.scores.shape:
            raise InputError(
                f"correlation needs scores of the same layout: {list(self.scores.shape)} "
                f"against {list(other.shape)}"
            )
        x = self.scores.reshape(-1).double()
        y = other.reshape(-1).double()
        return {"pearson": _pearson(x, y), "spearman": _pearson(_ranks(x), _ranks(y))}


def _pearson(x: Tensor, y: Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-300))


def _ranks(x: Tensor) -> Tensor:
    """Ranks with ties averaged."""
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=x.dtype)
    for value in x.unique():
        tied = x == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks
