"""Fitted probes: one :class:`Probe` per path, gathered in :class:`Probes` with a table of
their scores."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.errors import InputError


@dataclass
class Probe:
    """A fitted probe on one path's activations.

    Attributes:
        path: the module path probed.
        kind: ``"logistic"``, ``"linear"`` or ``"sklearn"``.
        weight: ``[D, C]`` on standardised features (``None`` for scikit-learn estimators).
        bias: ``[C]``.
        mean, scale: the standardisation ``z = (x - mean) / scale``, ``[D]`` each.
        metrics: ``{"train": ..., "val": ...}``: accuracy (classification) or R^2.
        estimator: the fitted scikit-learn estimator, for ``kind=<estimator>``.
    """

    path: str
    kind: str
    weight: Tensor | None
    bias: Tensor | None
    mean: Tensor
    scale: Tensor
    classification: bool
    metrics: dict[str, float] = field(default_factory=dict)
    estimator: Any = None

    def __call__(self, activations: Tensor) -> Tensor:
        """Scores ``[N, C]`` (class logits, or predicted values) for reduced activations
        ``[N, D]``."""
        z = (activations.to(self.mean.dtype) - self.mean) / self.scale
        if self.estimator is not None:
            est = self.estimator
            scores = est.decision_function(z) if hasattr(est, "decision_function") else None
            values = torch.as_tensor(scores if scores is not None else est.predict(z))
            return values.reshape(len(z), -1)
        assert self.weight is not None and self.bias is not None
        return z @ self.weight + self.bias

    def predict(self, activations: Tensor) -> Tensor:
        """Class indices ``[N]`` (classification) or values ``[N, C]`` (regression)."""
        if self.estimator is not None:
            z = (activations.to(self.mean.dtype) - self.mean) / self.scale
            return torch.as_tensor(self.estimator.predict(z))
        scores = self(activations)
        return scores.argmax(-1) if self.classification else scores

    @property
    def direction(self) -> Tensor:
        """``[D, C]``: the probe's weights in the raw activation space (for steering)."""
        if self.weight is None:
            raise InputError("a scikit-learn probe has no weight matrix; read .estimator")
        return self.weight / self.scale.unsqueeze(-1)


class ProbeTable:
    """One row per path: its train and validation score. Prints as an aligned table."""

    def __init__(self, rows: list[tuple[str, float, float]], metric: str) -> None:
        self.rows = rows
        self.metric = metric

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {path: {"train": train, "val": val} for path, train, val in self.rows}

    def __str__(self) -> str:
        width = max([len("path"), *(len(p) for p, _, _ in self.rows)])
        lines = [f"{'path':<{width}}  {'train ' + self.metric:>10}  {'val ' + self.metric:>10}"]
        lines += [f"{p:<{width}}  {t:>10.4f}  {v:>10.4f}" for p, t, v in self.rows]
        return "\n".join(lines)

    __repr__ = __str__


class Probes(Mapping[str, Probe]):
    """The fitted probes, keyed by path, in the order the paths were given.

    Attributes:
        forward_passes: how many forward passes of the model the fit made.
        train_rows, val_rows: the indices (in data order) of the training and validation
            examples.
    """

    def __init__(self, probes: dict[str, Probe], forward_passes: int, train: Tensor) -> None:
        self._probes = probes
        self.forward_passes = forward_passes
        self.train_rows = train.nonzero().squeeze(1)
        self.val_rows = (~train).nonzero().squeeze(1)

    def __getitem__(self, path: str) -> Probe:
        return self._probes[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._probes)

    def __len__(self) -> int:
        return len(self._probes)

    def table(self) -> ProbeTable:
        """Train and validation accuracy (classification) or R^2 (regression) per path."""
        metric = "acc" if all(p.classification for p in self._probes.values()) else "score"
        rows = [(path, p.metrics["train"], p.metrics["val"]) for path, p in self._probes.items()]
        return ProbeTable(rows, metric)

    def __repr__(self) -> str:
        return f"Probes({len(self)} paths)\n{self.table()}"
