"""One batch in, result rows out: pick the model inputs and targets from a batch, attribute,
and lay every result out as flat keys of the result TensorDict.

The rows of a batch are ``("attribution", ...)`` (the method's result, in the structure of the
inputs: one entry for a tensor, one per position, key or nested key otherwise), ``("delta",
...)`` when the method returns a convergence delta, ``("metric", name)``, ``("index",)``,
``("target",)`` and ``("prediction",)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.adapter import ModelAdapter
from ..core.errors import InputError, InputTypeError, KeyNotFoundError, TargetError, format_keys
from ..core.lazy import is_tensordict
from ..core.structure import InputBatch
from ..core.targets import Target, predicted
from .source import Batch
from .store import FlatKey

_STORED_AS = ("attribution", "delta", "metric")  # the entries dtype= applies to


@dataclass
class BatchRunner:
    """Everything that turns one batch into result rows (fixed for a run)."""

    method: Any
    targets: Any
    inputs: Any
    attribute_kwargs: dict[str, Any]
    metrics: dict[str, Callable[..., Any]] = field(default_factory=dict)
    prediction: bool = True
    dtype: torch.dtype | None = None
    seed: int | None = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __call__(self, batch: Batch, data: Any) -> dict[FlatKey, Tensor]:
        inputs, target = self.split(data, batch)
        inputs = to_device(inputs, self.device)
        kwargs = dict(self.attribute_kwargs)
        if target is not None:
            target = torch.as_tensor(target).to(self.device)
            kwargs["target"] = target
        elif isinstance(self.targets, list):
            kwargs["targets"] = self.targets
        guess = self.predict(inputs, kwargs) if self.prediction else None
        with _seeded(self.seed, batch.number, self.device):
            result = self.method.attribute(inputs, **kwargs)
        delta = None
        if kwargs.get("return_convergence_delta"):
            result, delta = result
        rows = flatten("attribution", result)
        if delta is not None:
            rows.update(flatten("delta", delta))
        explained = kwargs.get("target", kwargs.get("targets"))
        for name, metric in self.metrics.items():
            value = metric(inputs, result, explained)
            rows[("metric", name)] = getattr(value, "score", value)  # CurveResult: its score
        rows[("index",)] = torch.arange(batch.start, batch.start + batch.size)
        explained_rows: Any = explained
        if explained is None and guess is not None and not guess.is_floating_point():
            explained_rows = guess  # target=None explained the predicted class
        stored_target = _target_rows(explained_rows, batch.size)
        if stored_target is not None:
            rows[("target",)] = stored_target
        if guess is not None:
            rows[("prediction",)] = guess
        return self._finish(rows, batch)

    def split(self, data: Any, batch: Batch) -> tuple[Any, Any]:
        """``(model inputs, per-example target or None)`` of one batch."""
        if isinstance(data, list):
            data = tuple(data)  # default_collate turns a dataset's tuples into lists
        target, rest = None, data
        spec = self.targets
        if isinstance(spec, str) or (isinstance(spec, tuple) and spec):
            if not (isinstance(data, Mapping) or is_tensordict(data)):
                raise InputTypeError(
                    f"targets={spec!r} names a key, but {batch.describe()} is a "
                    f"{type(data).__name__}; name a key only for dict or TensorDict batches "
                    "(targets=<int> picks a position of a tuple batch)"
                )
            keys = list(data.keys(include_nested=True) if is_tensordict(data) else data.keys())
            if spec not in keys:
                raise KeyNotFoundError(
                    f"targets={spec!r} is not a key of the batches; they hold {format_keys(keys)}"
                )
            target = data[spec]
            rest = (
                data.exclude(spec)
                if is_tensordict(data)
                else {k: v for k, v in data.items() if k != spec}
            )
        elif isinstance(spec, int) and not isinstance(spec, bool):
            if not isinstance(data, tuple) or not -len(data) <= spec < len(data):
                shown = (
                    f"a tuple of {len(data)}" if isinstance(data, tuple) else type(data).__name__
                )
                raise InputError(
                    f"targets={spec} picks a position of tuple batches, but {batch.describe()} "
                    f"is {shown}"
                )
            target = data[spec]
            rest = tuple(v for i, v in enumerate(data) if i != spec % len(data))
            rest = rest[0] if len(rest) == 1 else rest
        elif callable(spec):
            target = spec(data)
        if self.inputs is not None:
            rest = self.inputs(data) if callable(self.inputs) else data[self.inputs]
        return rest, target

    def predict(self, inputs: Any, kwargs: dict[str, Any]) -> Tensor | None:
        """The predicted class per example (or the output, for one value per example), from a
        gradient-free forward pass through the core's adapter (hooks and buffers restored)."""
        batch = InputBatch.build(
            inputs,
            keys=kwargs.get("keys"),
            additional_forward_args=kwargs.get("additional_forward_args"),
            require_float=False,
            need_attributed=False,
        )
        output = kwargs.get("output", getattr(self.method, "output", None))
        with torch.no_grad(), ModelAdapter(self.method.model, batch, [Target(None, output)]) as m:
            (explained,), _ = m.run(batch.take_rows(None, run=(0, batch.batch_size)))
        try:
            guess = predicted(explained)
        except TargetError:
            return None  # no class per example (e.g. per-token outputs): nothing to store
        return guess if guess is not None else explained.reshape(batch.batch_size)

    def _finish(self, rows: dict[FlatKey, Tensor], batch: Batch) -> dict[FlatKey, Tensor]:
        done = {}
        for key, value in rows.items():
            if not isinstance(value, Tensor) or not value.dim() or value.shape[0] != batch.size:
                shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise InputError(
                    f"{'/'.join(key)!r} of {batch.describe()} is {shape}, not one row per "
                    f"example ([{batch.size}, ...])"
                )
            value = value.detach()
            if self.dtype is not None and key[0] in _STORED_AS and value.is_floating_point():
                value = value.to(self.dtype)
            done[key] = value.cpu()
        return done


def flatten(prefix: str, value: Any) -> dict[FlatKey, Tensor]:
    """``value`` (tensor, tuple, dict, TensorDict, nested) as ``{(prefix, *path): tensor}``."""
    if isinstance(value, Tensor):
        return {(prefix,): value}
    rows: dict[FlatKey, Tensor] = {}
    if is_tensordict(value):
        for key in value.keys(include_nested=True, leaves_only=True):
            path = (key,) if isinstance(key, str) else tuple(key)
            rows[(prefix, *path)] = value.get(key)
        return rows
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        raise InputTypeError(f"the method returned a {type(value).__name__}, not tensors")
    for name, item in items:
        for path, leaf in flatten(name, item).items():
            rows[(prefix, *path)] = leaf
    return rows


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors of any structure moved to ``device`` (nothing copied when already there)."""
    if isinstance(value, Tensor) or is_tensordict(value):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def _target_rows(target: Any, size: int) -> Tensor | None:
    """The explained target per example as a tensor, where it is one (else ``None``)."""
    if isinstance(target, Tensor) and target.dim() and target.shape[0] == size:
        return target
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.full((size,), target)
    if isinstance(target, list) and target and all(type(t) is int for t in target):
        return torch.tensor(target).expand(size, len(target))
    return None


class _seeded:
    """Seed torch's generators per batch (restored after), so that a random method gives the
    same result for a batch however many processes run and however often it is resumed."""

    def __init__(self, seed: int | None, number: int, device: torch.device) -> None:
        self.seed, self.number = seed, number
        self.cuda = device if device.type == "cuda" else None
        self._saved: tuple[Tensor, Tensor | None] | None = None

    def __enter__(self) -> None:
        if self.seed is None:
            return
        seed = self.seed * 1_000_003 + self.number
        cuda_state = None
        if self.cuda is not None:
            cuda_state = torch.cuda.get_rng_state(self.cuda)
            with torch.cuda.device(self.cuda):
                torch.cuda.manual_seed(seed)
        self._saved = (torch.get_rng_state(), cuda_state)
        # torch.manual_seed would seed every backend's generators too: 4 ms a batch on CPU
        torch.default_generator.manual_seed(seed)

    def __exit__(self, *exc: Any) -> None:
        if self._saved is None:
            return
        torch.set_rng_state(self._saved[0])
        if self._saved[1] is not None and self.cuda is not None:
            torch.cuda.set_rng_state(self._saved[1], self.cuda)
