"""Sliding windows for Occlusion: the grid of window positions over one input.

Window ``w`` covers, along every dimension ``d`` after the batch, ``[start_d, start_d +
window_d)`` cut at the input's edge, with starts ``0, stride, 2 * stride, ...`` and one more
window when the last stride does not land on the edge (captum's shift counts). A window mask
is the outer product of one 1-D indicator per dimension, so the masks of a chunk of windows
and the sum of scores over the windows covering each position are built from those indicators
alone, never from a ``[windows, *shape]`` table.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ...core.errors import InputError, InputTypeError
from ...core.structure import InputBatch, Key


class WindowGrid:
    """Window positions over an input of shape ``shape`` (without the batch dimension)."""

    def __init__(
        self, key: Key, shape: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...]
    ):
        self.shape, self.window, self.stride = shape, window, stride
        self.counts = tuple(
            math.ceil((size - w) / s) + 1 for size, w, s in zip(shape, window, stride)
        )
        self.n_windows = math.prod(self.counts)
        # indicators[d]: [counts[d], shape[d]], window position along d covers position p
        self.indicators = []
        for size, w, s, count in zip(shape, window, stride, self.counts):
            starts = torch.arange(count).unsqueeze(1) * s
            positions = torch.arange(size).unsqueeze(0)
            self.indicators.append((positions >= starts) & (positions < starts + w))

    @classmethod
    def for_inputs(cls, batch: InputBatch, windows: Any, strides: Any) -> dict[Key, WindowGrid]:
        """One grid per attributed input from captum's ``sliding_window_shapes``/``strides``."""
        window_per_key = _per_key(batch, windows, "sliding_window_shapes", allow_none=False)
        stride_per_key = _per_key(batch, strides, "strides", allow_none=True)
        grids = {}
        for key in batch.attributed:
            shape = tuple(batch.leaves[key].shape[1:])
            window = _as_dims(window_per_key[key], shape, key, "sliding_window_shapes")
            given = stride_per_key[key]
            stride = _as_dims(1 if given is None else given, shape, key, "strides")
            if any(w > size for w, size in zip(window, shape)):
                raise InputError(
                    f"the sliding window {window} is larger than input {key!r}, whose shape "
                    f"without the batch dimension is {shape}; use a window no larger than the "
                    "input along every dimension"
                )
            if any(w < 1 for w in window) or any(s < 1 for s in stride):
                raise InputError(
                    f"sliding_window_shapes {window} and strides {stride} of input {key!r} must "
                    "be positive"
                )
            gaps = [s > w and size > w for s, w, size in zip(stride, window, shape)]
            if any(gaps):
                raise InputError(
                    f"strides {stride} are larger than the sliding window {window} of input "
                    f"{key!r}: some positions would never be occluded; use strides no larger "
                    "than the window"
                )
            grids[key] = cls(key, shape, window, stride)
        return grids

    def masks(self, windows: Tensor) -> Tensor:
        """``[N, *shape]`` bool: the positions each of the N windows covers."""
        coords = []
        rest = windows.cpu()
        for count in reversed(self.counts):  # C order: the last dimension varies fastest
            coords.append(rest % count)
            rest = rest // count
        coords.reverse()
        if not coords:  # 0-d values per example: the one window covers the one position
            return torch.ones(windows.shape[0], dtype=torch.bool)
        mask = None
        for d, coord in enumerate(coords):
            along = self.indicators[d][coord]  # [N, shape[d]]
            along = along.reshape(
                along.shape[0], *[1] * d, along.shape[1], *[1] * (len(coords) - d - 1)
            )
            mask = along if mask is None else mask & along
        assert mask is not None
        return mask

    def mean_over_windows(self, scores: Tensor) -> Tensor:
        """``[B, K, n_windows]`` scores to ``[B, K, *shape]``: the mean over covering windows."""
        b, k = scores.shape[:2]
        total = scores.reshape(b * k, *self.counts)
        count = torch.ones(self.counts, dtype=scores.dtype, device=scores.device)
        for d, indicator in enumerate(self.indicators):
            ind = indicator.to(device=scores.device, dtype=scores.dtype)
            total = torch.tensordot(total, ind, dims=([1 + d], [0])).movedim(-1, 1 + d)
            count = torch.tensordot(count, ind, dims=([d], [0])).movedim(-1, d)
        return (total / count).reshape(b, k, *self.shape)


def _per_key(batch: InputBatch, value: Any, name: str, allow_none: bool) -> dict[Key, Any]:
    if value is None:
        if not allow_none:
            raise InputError(f"{name} is required")
        return dict.fromkeys(batch.attributed)
    n = len(batch.attributed)
    if (
        isinstance(value, (tuple, list))
        and len(value) == n
        and (n > 1 or isinstance(value[0], (tuple, list)))
    ):
        # captum's form for a tuple of inputs: one entry (an int or a tuple) per input; one
        # input may take it too (``((3, 3),)``)
        return dict(zip(batch.attributed, value))
    if isinstance(value, int) or (
        isinstance(value, tuple) and all(isinstance(v, int) for v in value)
    ):
        return dict.fromkeys(batch.attributed, value)
    if isinstance(value, dict):
        missing = [k for k in batch.attributed if k not in value]
        if missing:
            raise InputError(f"{name} has no entry for input(s) {missing}")
        return {k: value[k] for k in batch.attributed}
    raise InputTypeError(
        f"{name} must be a tuple of ints (one input) or one entry per attributed input "
        f"({len(batch.attributed)}), got {value!r}"
    )


def _as_dims(value: Any, shape: tuple[int, ...], key: Key, name: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * len(shape)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise InputTypeError(
            f"{name} for input {key!r} must be an int or a tuple of ints (one per dimension "
            f"after the batch, shape {shape}), got {value!r}"
        )
    value = tuple(value)
    if len(value) != len(shape):
        raise InputError(
            f"{name} {value} has {len(value)} dimensions but input {key!r} has "
            f"{len(shape)} after the batch dimension (shape {shape}); give one size per dimension"
        )
    return value
