"""Where a probe's features come from, pass after pass: streamed from the model, kept in memory
after one pass, memory-mapped on disk after one pass, or given by the user as cached
activations. Each pass yields ``({path: [b, D]}, rows)``, ``rows`` being the examples' indices
in data order, so labels and the validation split are looked up by row."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import InputError, KeyNotFoundError, format_keys
from ..core.lazy import is_tensordict
from .streaming import ActivationStream, iter_batches, reduce_activation, split_labels

Batch = tuple[dict[str, Tensor], Tensor]


class Features:
    """The features of every path, and the labels met on the first pass.

    After :meth:`first_pass`, ``n`` is the number of examples and ``labels`` their labels.
    """

    def __init__(
        self,
        stream: ActivationStream | None,
        data: Any,
        *,
        labels: Any,
        batch_size: int,
        cache: bool | str | Path,
        paths: Any = None,
        reduce: Any = "mean",
    ) -> None:
        self.stream = stream
        self.data = data
        self.label_spec = labels
        self.batch_size = batch_size
        self.cache = cache
        self.full: dict[str, Tensor] | None = None
        self.chunks: list[tuple[Any, int]] = []
        self.n = 0
        self.labels: Tensor | None = None
        self._given_labels: Tensor | None = None
        if stream is None:
            self.full, self._given_labels = _given_activations(data, labels, paths, reduce)
            self.names = list(self.full)
        else:
            self.names = stream.names

    @property
    def forward_passes(self) -> int:
        return 0 if self.stream is None else self.stream.forward_passes

    # -- the first pass: count, labels, and the cache --------------------------------------------
    def first_pass(self) -> Iterator[dict[str, Tensor]]:
        """Yield each batch's features once; records ``n``, ``labels`` and the cache."""
        if self.full is not None:  # given activations: the labels come with them
            self.n = len(next(iter(self.full.values())))
            self.labels = self._given_labels
            if self.labels is None:
                self.labels = self._aligned_labels(None, 0, self.n, final=True)
            elif len(self.labels) != self.n:
                raise InputError(
                    f"labels={self.label_spec!r} has {len(self.labels)} entries but the "
                    f"activations have {self.n} rows"
                )
            for start in range(0, self.n, self.batch_size):
                yield {k: v[start : start + self.batch_size] for k, v in self.full.items()}
            return
        assert self.stream is not None
        found: list[Tensor] = []
        kept: dict[str, list[Tensor]] = {name: [] for name in self.names}
        for i, batch in enumerate(iter_batches(self.data, self.batch_size)):
            inputs, batch_labels = split_labels(batch, self.label_spec)
            feats = self.stream.run(inputs)
            b = len(next(iter(feats.values())))
            found.append(self._aligned_labels(batch_labels, self.n, b))
            if self.cache is True:
                for name, value in feats.items():
                    kept[name].append(value)
            elif isinstance(self.cache, (str, Path)):
                self.chunks.append((_memmap(feats, Path(self.cache) / f"{i:06d}"), self.n))
            self.n += b
            yield feats
        if not self.n:
            raise InputError("the data gave no batches")
        self.labels = torch.cat(found)
        self._aligned_labels(None, self.n, 0, final=True)
        if self.cache is True:
            self.full = {name: torch.cat(values) for name, values in kept.items()}

    def _aligned_labels(self, batch_labels: Any, start: int, b: int, *, final: bool = False) -> Any:
        spec = self.label_spec
        if isinstance(spec, Tensor):
            if final and len(spec) != self.n:
                raise InputError(
                    f"labels has {len(spec)} entries but the data has {self.n} examples; pass "
                    "one label per example, in data order"
                )
            if final:
                return spec
            if start + b > len(spec):
                raise InputError(
                    f"labels has {len(spec)} entries but the data has at least {start + b} "
                    "examples; pass one label per example, in data order"
                )
            return spec[start : start + b]
        if final:
            return self.labels
        if batch_labels is None or not isinstance(batch_labels, Tensor):
            raise InputError(f"labels={spec!r} gave no tensor for a batch")
        if len(batch_labels) != b:
            raise InputError(
                f"a batch has {b} examples but {len(batch_labels)} labels under {spec!r}"
            )
        return batch_labels

    # -- later passes ----------------------------------------------------------------------------
    def passes(self, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """One pass over every example; shuffled (rows and chunk order) when a generator is
        given and the features are cached."""
        if self.full is not None:
            order = (
                torch.randperm(self.n, generator=generator)
                if generator is not None
                else torch.arange(self.n)
            )
            for start in range(0, self.n, self.batch_size):
                rows = order[start : start + self.batch_size]
                if generator is None:  # contiguous slices read memory-mapped data in order
                    stop = start + len(rows)
                    yield {k: v[start:stop] for k, v in self.full.items()}, rows
                else:
                    yield {k: v[rows] for k, v in self.full.items()}, rows
        elif self.chunks:
            chunk_order = (
                torch.randperm(len(self.chunks), generator=generator).tolist()
                if generator is not None
                else range(len(self.chunks))
            )
            for i in chunk_order:
                chunk, start = self.chunks[i]
                feats = {name: chunk.get(name).as_subclass(Tensor) for name in self.names}
                yield feats, torch.arange(start, start + chunk.batch_size[0])
        else:
            assert self.stream is not None
            start = 0
            for batch in iter_batches(self.data, self.batch_size):
                inputs, _ = split_labels(batch, self.label_spec)
                feats = self.stream.run(inputs)
                b = len(next(iter(feats.values())))
                if start + b > self.n:
                    break
                yield feats, torch.arange(start, start + b)
                start += b
            if start != self.n:
                raise InputError(
                    f"the data gave {start} examples on a later pass but {self.n} on the first; "
                    "pass a loader that can be iterated again (not a generator), in a fixed "
                    "order, or use cache=True"
                )

    def tensors(self) -> dict[str, Tensor]:
        """Every path's ``[N, D]`` features at once (for scikit-learn estimators)."""
        if self.full is not None:
            return self.full
        parts: dict[str, list[Tensor]] = {name: [] for name in self.names}
        for feats, _ in self.passes():
            for name, value in feats.items():
                parts[name].append(value)
        return {name: torch.cat(values) for name, values in parts.items()}


def _memmap(feats: dict[str, Tensor], prefix: Path) -> Any:
    from tensordict import TensorDict

    b = len(next(iter(feats.values())))
    return TensorDict(dict(feats), batch_size=[b]).memmap_(prefix)


def _given_activations(
    data: Any, labels: Any, paths: Any, reduce: Any
) -> tuple[dict[str, Tensor], Tensor | None]:
    """``{path: [N, D]}`` from cached activations (a dict or TensorDict keyed by path), and
    the labels when ``labels`` is one of its keys."""
    if not (is_tensordict(data) or isinstance(data, Mapping)):
        raise InputError(
            "with model=None, data must be cached activations: a dict or TensorDict "
            f"{{path: [N, ...]}}, got {type(data).__name__}"
        )
    keys = [k for k in data.keys() if k != labels]
    wanted = keys if paths is None else ([paths] if isinstance(paths, str) else list(paths))
    missing = [p for p in wanted if p not in keys]
    if missing:
        raise KeyNotFoundError(
            f"paths {missing} are not in the cached activations; they hold {format_keys(keys)}"
        )
    out = {}
    for name in wanted:
        value = data.get(name) if is_tensordict(data) else data[name]
        if value.ndim > 2:
            value = reduce_activation(value, reduce, None, name)
        out[name] = value
    sizes = {k: len(v) for k, v in out.items()}
    if len(set(sizes.values())) != 1:
        raise InputError(f"the cached activations have different numbers of rows: {sizes}")
    if isinstance(labels, Tensor):
        return out, None
    if labels not in data.keys():
        raise KeyNotFoundError(
            f"labels={labels!r} is not a key of the cached activations; they hold "
            f"{format_keys(keys)} (or pass labels as a tensor)"
        )
    return out, data.get(labels) if is_tensordict(data) else data[labels]
