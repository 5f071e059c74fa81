"""Stream activations of several module paths from a model over a dataset, batch by batch.

One forward pass per batch feeds every path: the hooks of all paths are registered together
(:class:`tdlens.core.hooks.HookSet`), and when the model's own output is not needed the pass
stops as soon as every path has run. Each activation is reduced to one vector per example
(``reduce=``) right in the hook, so only ``[B, D]`` per path is ever kept.

Data is a loader (any iterable of batches) or one big tensor / tuple / dict / TensorDict that
is cut into batches of ``batch_size`` rows. Labels are a key of dict / TensorDict batches (the
key is not passed to the model), an index of tuple batches, or a tensor aligned with the data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import _TrainingBuffers
from ..core.errors import InputError, InputTypeError, KeyNotFoundError, format_keys
from ..core.hooks import HookSet, _call
from ..core.lazy import is_tensordict
from ..core.paths import ModulePath, resolve_paths

Reduce = str | Callable[[Tensor], Tensor] | None
REDUCTIONS = ("mean", "first", "last", "flatten", "none")
_MASK_KEYS = ("attention_mask", "mask")


class _StopForward(Exception):
    """Raised inside a hook once every path has run; never leaves :func:`stream`."""


def iter_batches(data: Any, batch_size: int) -> Iterable[Any]:
    """``data`` itself when it is a loader, else ``data`` cut into batches of rows."""
    if isinstance(data, Tensor) or is_tensordict(data):
        return [data[i : i + batch_size] for i in range(0, len(data), batch_size)]
    if isinstance(data, Mapping):
        n = _rows(data)
        return [
            {k: _slice(v, i, batch_size) for k, v in data.items()} for i in range(0, n, batch_size)
        ]
    if isinstance(data, tuple):
        n = _rows(dict(enumerate(data)))
        return [tuple(_slice(v, i, batch_size) for v in data) for i in range(0, n, batch_size)]
    if isinstance(data, Iterable):
        return data
    raise InputTypeError(
        f"data must be a loader (an iterable of batches), a tensor, a tuple, a dict or a "
        f"TensorDict, got {type(data).__name__}"
    )


def _rows(leaves: Mapping) -> int:
    sizes = {k: v.shape[0] for k, v in leaves.items() if isinstance(v, Tensor) and v.ndim}
    if not sizes or len(set(sizes.values())) != 1:
        raise InputError(f"the data's tensors must share their first dimension, got {sizes}")
    return next(iter(sizes.values()))


def _slice(value: Any, start: int, size: int) -> Any:
    return value[start : start + size] if isinstance(value, Tensor) and value.ndim else value


def split_labels(batch: Any, labels: Any) -> tuple[Any, Tensor | None]:
    """The model inputs of ``batch`` and its labels when ``labels`` names an entry of it."""
    if not isinstance(labels, (str, int, tuple)):
        return batch, None
    if is_tensordict(batch) or isinstance(batch, Mapping):
        keys = list(batch.keys())
        if labels not in keys:
            raise KeyNotFoundError(
                f"labels={labels!r} is not a key of the batch; its keys are {format_keys(keys)}"
            )
        if is_tensordict(batch):
            return batch.exclude(labels), batch.get(labels)
        return {k: v for k, v in batch.items() if k != labels}, batch[labels]
    if isinstance(batch, (tuple, list)) and isinstance(labels, int):
        if not -len(batch) <= labels < len(batch):
            raise InputError(f"labels={labels} but the batches are tuples of {len(batch)}")
        rest = [v for i, v in enumerate(batch) if i != labels % len(batch)]
        return (rest[0] if len(rest) == 1 else tuple(rest)), batch[labels]
    raise InputTypeError(
        f"labels={labels!r} names an entry of the batch, but the batches are "
        f"{type(batch).__name__}; pass labels as a tensor aligned with the data instead"
    )


def batch_mask(inputs: Any) -> Tensor | None:
    """The padding mask of a text batch (``attention_mask``), if it has one."""
    if is_tensordict(inputs) or isinstance(inputs, Mapping):
        for key in _MASK_KEYS:
            if key in inputs.keys():
                return inputs[key]
    return None


def reduce_activation(value: Tensor, reduce: Reduce, mask: Tensor | None, name: str) -> Tensor:
    """One vector per example, ``[B, D]``: ``mean`` / ``first`` / ``last`` over the positions
    of a ``[B, T, D]`` activation (padding excluded when the batch has an attention mask),
    ``flatten``, ``none`` (already ``[B, D]``), or a callable ``[B, ...] -> [B, D]``."""
    if callable(reduce):
        out = reduce(value)
    elif value.ndim == 2 or reduce == "none" or reduce is None:
        out = value
    elif reduce == "flatten":
        out = value.flatten(1)
    elif value.ndim != 3:
        raise InputError(
            f"{name}: reduce={reduce!r} works on [B, T, D] activations, this one has shape "
            f"{list(value.shape)}; use reduce='flatten' or a callable"
        )
    else:
        # the same position reductions as latent.cache (left or right padding alike)
        from .cache import last_position, mean_over_positions

        if mask is not None and mask.shape != value.shape[:2]:
            mask = None  # a mask of other positions (e.g. a pooled input) says nothing here
        if reduce == "mean":
            out = mean_over_positions(value, mask)
        elif reduce == "first":
            out = value[:, 0]
        elif reduce == "last":
            out = last_position(value, mask)
        else:
            raise InputError(f"reduce must be one of {REDUCTIONS} or a callable, got {reduce!r}")
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != value.shape[0]:
        got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(
            f"{name}: reduce={reduce!r} must give one vector per example [B, D], got {got} "
            f"from an activation of shape {list(value.shape)}"
        )
    return out


def check_reduce(reduce: Reduce) -> None:
    if not (callable(reduce) or reduce is None or reduce in REDUCTIONS):
        raise InputError(f"reduce must be one of {REDUCTIONS} or a callable, got {reduce!r}")


class ActivationStream:
    """Hooks on ``paths`` that hand back each batch's reduced activations, ``{path: [B, D]}``.

    A context manager: the hooks and any buffer updates (BatchNorm in training mode) are gone
    on exit, whatever happened inside.
    """

    def __init__(self, model: nn.Module, paths: Any, *, reduce: Reduce = "mean") -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"the model must be an nn.Module, got {type(model).__name__}")
        check_reduce(reduce)
        self.model = model
        self.paths: list[ModulePath] = resolve_paths(model, paths)
        self.names = [str(p) for p in self.paths]
        if len(set(self.names)) != len(self.names):
            raise InputError(f"paths name the same site twice: {self.names}")
        self.reduce = reduce
        self.forward_passes = 0
        self._hooks = HookSet()
        self._buffers = _TrainingBuffers(None)
        self._values: dict[str, Tensor] = {}
        self._mask: Tensor | None = None

    def __enter__(self) -> ActivationStream:
        self._buffers = _TrainingBuffers(self.model)
        for path, name in zip(self.paths, self.names):
            self._hooks.on_site(self.model, path, functools.partial(self._capture, name))
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._hooks.close()
        finally:
            self._buffers.restore()

    def _capture(self, name: str, value: Any) -> None:
        if not isinstance(value, Tensor):
            raise InputTypeError(
                f"{name!r} holds {type(value).__name__}, not a tensor; select a tensor entry, "
                f"e.g. '{name}:output[0]'"
            )
        self._values[name] = reduce_activation(value.detach(), self.reduce, self._mask, name)
        if len(self._values) == len(self.names):
            raise _StopForward  # nothing after the last path is needed

    def run(self, inputs: Any) -> dict[str, Tensor]:
        """One forward pass on ``inputs``: ``{path: [B, D]}`` for every path."""
        self._values = {}
        self._mask = batch_mask(inputs)
        self.forward_passes += 1
        try:
            with torch.no_grad():
                _call(self.model, inputs)
        except _StopForward:
            pass
        missing = [n for n in self.names if n not in self._values]
        if missing:
            raise InputError(f"module path(s) {missing} did not run in the forward pass")
        return self._values
