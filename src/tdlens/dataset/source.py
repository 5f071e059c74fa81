"""Where the examples come from: a Dataset, a DataLoader, a tensor or TensorDict of rows, or an
iterable of batches; cut into numbered batches that do not depend on the number of processes.

Batch ``b`` of a map-style source holds the examples ``b * batch_size`` up to the next
batch's first; an iterable's batches are numbered as they come, their examples counted from 0.
Either way, an example's row in the result is its position in the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.data import default_collate as _default_collate

from ..core.errors import InputError, InputTypeError
from ..core.lazy import is_tensordict


@dataclass(frozen=True)
class Batch:
    """One batch: its number, the dataset position of its first example, and its size."""

    number: int
    start: int
    size: int

    def describe(self) -> str:
        return f"batch {self.number} (examples {self.start}..{self.start + self.size - 1})"


class Source:
    """Numbered batches of a dataset and a way to load any subset of them."""

    def __init__(self, batches: list[Batch], load: Callable[[list[Batch]], Iterator[Any]]):
        self.batches = batches
        self._load = load

    @property
    def length(self) -> int:
        return sum(b.size for b in self.batches)

    def load(self, batches: list[Batch]) -> Iterator[tuple[Batch, Any]]:
        """The data of ``batches``, in order."""
        return zip(batches, self._load(batches))


def make_source(data: Any, batch_size: int | None) -> tuple[Source, int | None]:
    """The batches of ``data`` and the batch size used (``None`` for an iterable of batches).

    Map-style data is batched here (``batch_size``, default a DataLoader's own); an iterable
    of batches is read once to count its examples, and read again (on every rank) to attribute
    them, so it must start over on each ``iter()``.
    """
    if isinstance(data, Tensor) or is_tensordict(data):
        size = _batch_size(batch_size, None)
        return _rows_source(data, size), size
    if isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset):
        if data.batch_size is None:  # a custom batch_sampler: its batches, as they come
            return _iterable_source(data), None
        if not isinstance(data.sampler, (SequentialSampler, RandomSampler)):
            raise InputError(
                f"the DataLoader's sampler is a {type(data.sampler).__name__}; "
                "attribute_dataset reads every example of loader.dataset in order (the result "
                "is indexed by dataset position), so a sampler that picks examples would be "
                "ignored. Pass torch.utils.data.Subset(dataset, indices) instead"
            )
        size = _batch_size(batch_size, data.batch_size)
        return _dataset_source(data.dataset, size, data), size
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        size = _batch_size(batch_size, None)
        return _dataset_source(data, size, None), size
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
        if iter(data) is data:
            raise InputTypeError(
                f"data is a one-pass iterator ({type(data).__name__}): attribute_dataset reads "
                "the batches once to count the examples and again to attribute them (and on "
                "every rank, and after a resume). Pass a Dataset, a DataLoader, a list of "
                "batches, or an object whose __iter__ starts over"
            )
        if batch_size is not None:
            raise InputError(
                "batch_size= applies to a Dataset, a tensor or a TensorDict of rows; this "
                "data is an iterable of batches, which keeps its own batches. Drop batch_size="
            )
        return _iterable_source(data), None
    raise InputTypeError(
        f"data must be a torch Dataset, a DataLoader, a tensor or TensorDict of rows, or an "
        f"iterable of batches; got {type(data).__name__}"
    )


def _batch_size(given: int | None, default: int | None) -> int:
    size = given if given is not None else default if default is not None else 32
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"batch_size must be a positive int, got {size!r}")
    return size


def _plan(length: int, size: int) -> list[Batch]:
    return [
        Batch(i, start, min(size, length - start)) for i, start in enumerate(range(0, length, size))
    ]


def _rows_source(data: Any, size: int) -> Source:
    shape = data.batch_size if is_tensordict(data) else data.shape
    if not len(shape):
        raise InputError(
            f"a {type(data).__name__} of rows needs a first (example) dimension, got shape []"
        )
    length = int(shape[0])
    return Source(
        _plan(length, size), lambda batches: (data[b.start : b.start + b.size] for b in batches)
    )


def _dataset_source(dataset: Any, size: int, loader: DataLoader | None) -> Source:
    try:
        length = len(dataset)
    except TypeError:
        raise InputTypeError(
            f"the dataset ({type(dataset).__name__}) has no len(); a map-style dataset needs "
            "__len__ so that the result can be allocated and split across processes"
        ) from None

    def load(batches: list[Batch]) -> Iterator[Any]:
        if not batches:
            return iter(())
        options: dict[str, Any] = {}
        if loader is not None:  # keep the user's loading: workers, collate, pinning
            options = {
                "collate_fn": loader.collate_fn,
                "num_workers": loader.num_workers,
                "pin_memory": loader.pin_memory,
                "worker_init_fn": loader.worker_init_fn,
                "multiprocessing_context": loader.multiprocessing_context,
                "persistent_workers": False,
            }
            if loader.num_workers:
                options["prefetch_factor"] = loader.prefetch_factor
        options.setdefault("collate_fn", _default_collate)
        # a DataLoader draws its workers' base seed from this generator: a private one leaves
        # the user's global generator untouched and gives workers the same seeds every run
        own = loader.generator if loader is not None else None
        options["generator"] = own if own is not None else torch.Generator().manual_seed(0)
        indices = [list(range(b.start, b.start + b.size)) for b in batches]
        return iter(DataLoader(dataset, batch_sampler=indices, **options))

    return Source(_plan(length, size), load)


def _iterable_source(data: Iterable[Any]) -> Source:
    batches, start = [], 0
    for number, batch in enumerate(data):
        size = rows_of(batch, number)
        batches.append(Batch(number, start, size))
        start += size

    def load(wanted: list[Batch]) -> Iterator[Any]:
        todo = {b.number: b for b in wanted}
        for number, batch in enumerate(data):
            if not todo:
                return
            expected = todo.pop(number, None)
            if expected is None:
                continue
            if rows_of(batch, number) != expected.size:
                raise InputError(
                    f"{expected.describe()} held {expected.size} examples when counted but "
                    f"{rows_of(batch, number)} now: the iterable must give the same batches on "
                    "every pass (and on every rank)"
                )
            yield batch
        if todo:
            raise InputError(
                f"the iterable ended before batch {min(todo)}: it must give the same batches on "
                "every pass (and on every rank)"
            )

    return Source(batches, load)


def rows_of(batch: Any, number: int) -> int:
    """The number of examples in a batch of any supported structure."""
    if is_tensordict(batch):
        if not batch.batch_dims:
            raise InputError(f"batch {number} is a TensorDict without a batch dimension")
        return int(batch.batch_size[0])
    leaves = list(batch.values()) if isinstance(batch, Mapping) else batch
    if isinstance(leaves, Tensor):
        leaves = [leaves]
    for leaf in leaves if isinstance(leaves, (list, tuple)) else ():
        if isinstance(leaf, Tensor) and leaf.dim():
            return int(leaf.shape[0])
        if is_tensordict(leaf) and leaf.batch_dims:
            return int(leaf.batch_size[0])
    raise InputTypeError(
        f"batch {number} is a {type(batch).__name__} with no tensor that has a batch "
        "dimension; batches must be tensors, tuples, dicts or TensorDicts of [B, ...] tensors"
    )
