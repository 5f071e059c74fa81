"""The dataset as the explorer reads it: inputs and labels from the forms users pass, the
predictions of every sample, and the hashable form of arguments for the answer cache."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

__all__ = ["freeze", "predict_all", "split_dataset"]


def predict_all(
    model: Any, sample: Callable[[int], Tensor], n: int, batch_size: int
) -> tuple[Tensor, Tensor]:
    """Predicted class ``[N]`` and class probabilities ``[N, C]`` of samples ``0..n-1``, in
    forward passes of ``batch_size`` rows without gradients."""
    probs = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = torch.stack([sample(i) for i in range(start, min(start + batch_size, n))])
            out = model(batch)
            if not isinstance(out, Tensor) or out.ndim != 2:
                got = f"shape {list(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"the explorer needs a classifier returning scores [B, C]; got {got}"
                )
            probs.append(out.float().softmax(-1))
    table = torch.cat(probs)
    return table.argmax(-1), table


def freeze(options: dict[str, Any]) -> Hashable:
    """A hashable form of the arguments, for the cache key (unhashable values by repr)."""

    def item(value: Any) -> Hashable:
        try:
            hash(value)
        except TypeError:
            return repr(value)
        return value

    return tuple(sorted((k, item(v)) for k, v in options.items()))


def split_dataset(dataset: Any) -> tuple[Any, Any]:
    """``(inputs, labels)`` from ``(x, y)`` tensors or a sequence of samples or pairs."""
    if (
        isinstance(dataset, (tuple, list))
        and len(dataset) == 2
        and all(isinstance(part, Tensor) for part in dataset)
        and len(dataset[0]) == len(dataset[1])
    ):
        return dataset[0], dataset[1].reshape(-1).long()
    if isinstance(dataset, Tensor):
        return dataset, None
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(
            "dataset must be (inputs, labels) tensors or a sequence of (input, label) pairs; "
            f"got {type(dataset).__name__}"
        ) from None
    if n and isinstance(dataset[0], (tuple, list)):
        labels = torch.tensor([int(dataset[i][1]) for i in range(n)], dtype=torch.long)
        return _Inputs(dataset), labels
    return dataset, None


class _Inputs:
    """The inputs of a sequence of ``(input, label)`` pairs, read on demand (no copy)."""

    def __init__(self, data: Any) -> None:
        self._data = data

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> Any:
        return self._data[index][0]
