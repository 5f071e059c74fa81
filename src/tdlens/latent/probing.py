"""Linear probes on the activations of many module paths, fitted from the same forward passes.

One forward pass per batch feeds the probes of every path. With ``cache=True`` (the default)
the reduced activations are kept after the first pass and the model runs once over the data
in total; ``cache="dir"`` writes them to memory-mapped files instead (activations larger than
memory); ``cache=False`` streams them from the model on every pass (statistics, each epoch,
scoring). Probes are fitted in torch on standardised features: logistic probes by mini-batch
Adam with a cosine learning-rate decay, linear (ridge) probes exactly from streamed sufficient
statistics, in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import InputError, InputTypeError
from ._features import Features
from ._heads import Head, Moments, RidgeStats, Score
from .streaming import ActivationStream, Reduce, check_reduce

KINDS = ("logistic", "linear")


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
        lines = [f"{'path':<{width}}  train {self.metric:<8}  val {self.metric}"]
        lines += [f"{p:<{width}}  {t:>14.4f}  {v:>12.4f}" for p, t, v in self.rows]
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


def fit_probes(
    model: nn.Module | None,
    data: Any,
    *,
    paths: str | list[str] | None = None,
    labels: Any,
    kind: Any = "logistic",
    reduce: Reduce = "mean",
    epochs: int = 5,
    l2: float = 1e-3,
    val: float = 0.2,
    rank: int | None = None,
    lr: float = 2e-2,
    batch_size: int = 256,
    solver: str = "auto",
    max_iter: int = 200,
    cache: bool | str | Path = True,
    standardize: bool = True,
    seed: int = 0,
) -> Probes:
    """Fit one linear probe per module path from the same forward passes.

    Args:
        model: the model, or ``None`` when ``data`` already holds cached activations
            (a dict or TensorDict ``{path: [N, D]}``, possibly memory-mapped).
        data: a loader (any re-iterable of batches: tensors, tuples, dicts, TensorDicts), or
            one tensor / tuple / dict / TensorDict cut into batches of ``batch_size`` rows.
        paths: module paths (globs allowed), e.g. ``"encoder.layer.*"``.
        labels: a key of dict / TensorDict batches (not passed to the model), an index of
            tuple batches, or a tensor with one label per example in data order. Integer
            labels are classes; floating-point labels ``[N]`` or ``[N, K]`` are regressed.
        kind: ``"logistic"`` (classification), ``"linear"`` (ridge regression), or a
            scikit-learn estimator, cloned and fitted per path on the standardised features.
        reduce: how a ``[B, T, D]`` activation becomes ``[B, D]``: ``"mean"`` over positions
            (padding excluded when the batch has an ``attention_mask``), ``"first"``,
            ``"last"``, ``"flatten"``, ``"none"`` or a callable.
        epochs: passes of mini-batch Adam over the training rows (``solver="adam"``).
        l2: the weight penalty (see :mod:`tdlens.latent._heads` for the objectives).
        val: the share of examples held out for validation (seeded split; 0 for none).
        rank: fit a low-rank weight ``[D, rank] @ [rank, C]`` instead of a full one.
        lr: Adam's initial learning rate; it decays to zero along a cosine.
        batch_size: rows per batch when ``data`` is not a loader, and per Adam step on cached
            features.
        solver: for logistic probes, ``"lbfgs"`` (full batch, to convergence; needs the
            features in memory), ``"adam"`` (mini-batches, ``epochs`` passes; works streamed),
            or ``"auto"``: L-BFGS for full-rank probes on in-memory features, else Adam.
        max_iter: the L-BFGS iteration limit.
        cache: ``True`` keeps reduced activations in memory after one forward pass per batch;
            a directory writes them there memory-mapped; ``False`` runs the model on every pass.
        standardize: centre and scale each feature with the mean and standard deviation over
            all examples (labels are not used).
        seed: seeds the validation split, the shuffling and low-rank initialisation.

    Returns:
        :class:`Probes`, a mapping path -> :class:`Probe`, with ``.table()``.

    Example:
        >>> probes = latent.fit_probes(model, loader, paths="encoder.layer.*", labels="label")
        >>> probes["encoder.layer.3"].metrics
        {'train': 0.97, 'val': 0.94}
    """
    sklearn_estimator = _check_options(kind, epochs, l2, val, rank, lr, batch_size)
    if solver not in ("auto", "lbfgs", "adam"):
        raise InputError(f"solver must be 'auto', 'lbfgs' or 'adam', got {solver!r}")
    check_reduce(reduce)
    if model is None:
        return _fit(None, data, paths, labels, kind, reduce, epochs, l2, val, rank, lr,
                    batch_size, cache, standardize, seed, sklearn_estimator,
                    solver, max_iter)  # fmt: skip
    if paths is None:
        raise InputError("fit_probes needs paths=, e.g. paths='encoder.layer.*'")
    with ActivationStream(model, paths, reduce=reduce) as stream:
        return _fit(stream, data, paths, labels, kind, reduce, epochs, l2, val, rank, lr,
                    batch_size, cache, standardize, seed, sklearn_estimator,
                    solver, max_iter)  # fmt: skip


def _check_options(
    kind: Any, epochs: int, l2: float, val: float, rank: int | None, lr: float, batch_size: int
) -> bool:
    sklearn_estimator = hasattr(kind, "fit") and hasattr(kind, "predict")
    if not sklearn_estimator and kind not in KINDS:
        raise InputError(
            f"kind must be one of {KINDS} or a scikit-learn estimator (with fit and predict), "
            f"got {kind!r}"
        )
    if not (isinstance(epochs, int) and epochs >= 1):
        raise InputError(f"epochs must be a positive integer, got {epochs!r}")
    if not (0 <= val < 1):
        raise InputError(f"val is the held-out share of examples, in [0, 1), got {val!r}")
    if l2 < 0 or lr <= 0 or batch_size < 1:
        raise InputError(f"need l2 >= 0, lr > 0, batch_size >= 1; got {l2}, {lr}, {batch_size}")
    if rank is not None and not (isinstance(rank, int) and rank >= 1):
        raise InputError(f"rank must be a positive integer or None, got {rank!r}")
    return sklearn_estimator


def _fit(
    stream: ActivationStream | None,
    data: Any,
    paths: Any,
    labels: Any,
    kind: Any,
    reduce: Reduce,
    epochs: int,
    l2: float,
    val: float,
    rank: int | None,
    lr: float,
    batch_size: int,
    cache: bool | str | Path,
    standardize: bool,
    seed: int,
    sklearn_estimator: bool,
    solver: str,
    max_iter: int,
) -> Probes:
    if sklearn_estimator and cache is False:
        cache = True  # scikit-learn needs every row at once
    features = Features(
        stream, data, labels=labels, batch_size=batch_size, cache=cache, paths=paths, reduce=reduce
    )
    moments = {name: Moments() for name in features.names}
    dtypes: dict[str, torch.dtype] = {}
    for feats in features.first_pass():
        for name, value in feats.items():
            moments[name].add(value)
            dtypes[name] = torch.promote_types(value.dtype, torch.float32)
    y = features.labels
    if not isinstance(y, Tensor):
        raise InputTypeError(f"labels must give a tensor, got {type(y).__name__}")
    classification = not (y.is_floating_point() or y.is_complex())
    if kind == "logistic" and not classification:
        raise InputError(
            f"kind='logistic' needs integer class labels, got {y.dtype}; use kind='linear' to "
            "regress floating-point labels"
        )
    if classification and kind == "linear":
        classification, y = False, y.double()
    if classification:
        y = y.long().reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    n_val = round(val * features.n)
    train = torch.ones(features.n, dtype=torch.bool)
    train[torch.randperm(features.n, generator=generator)[:n_val]] = False
    n_train = int(train.sum())
    outputs = _outputs(y, classification, n_train)
    standard = {n: moments[n].standardizer(dtypes[n], standardize) for n in features.names}

    probes: dict[str, Probe] = {}
    if sklearn_estimator:
        probes = _fit_sklearn(features, kind, y, train, standard, classification)
    else:
        if kind == "linear":
            weights = _fit_ridge(features, y, train, standard, l2, rank)
        else:
            if solver == "auto":
                solver = "lbfgs" if features.full is not None and rank is None else "adam"
            if solver == "lbfgs" and features.full is None:
                raise InputError(
                    "solver='lbfgs' fits on every row at once: use cache=True (features in "
                    "memory), or solver='adam' for streamed or memory-mapped features"
                )
            heads = {
                name: Head(len(standard[name][0]), outputs, rank, standard[name][0].dtype, seed)
                for name in features.names
            }
            if solver == "lbfgs":
                _fit_lbfgs(heads, features, y, train, standard, l2, max_iter)
            else:
                _fit_adam(heads, features, y, train, standard, l2, lr, epochs, generator)
            weights = {n: (h.matrix().detach(), h.bias.detach()) for n, h in heads.items()}
        for name in features.names:
            mean, scale = standard[name]
            weight, bias = weights[name]
            probes[name] = Probe(name, kind, weight, bias, mean, scale, classification)
        _score(features, probes, y, train, classification)
    return Probes(probes, features.forward_passes, train)


def _outputs(y: Tensor, classification: bool, n_train: int) -> int:
    if not classification:
        return 1 if y.ndim == 1 else int(y[0].numel())
    if len(y) and int(y.min()) < 0:
        raise InputError(f"class labels must be 0..C-1, got a label {int(y.min())}")
    classes = int(y.max()) + 1 if len(y) else 0
    if n_train < max(classes, 2):
        raise InputError(
            f"a probe needs at least as many training examples as classes: {n_train} training "
            f"example(s) for {classes} classes; give more data or a smaller val="
        )
    return classes


def _fit_adam(
    heads: dict[str, Head],
    features: Features,
    y: Tensor,
    train: Tensor,
    standard: dict[str, tuple[Tensor, Tensor]],
    l2: float,
    lr: float,
    epochs: int,
    generator: torch.Generator,
) -> None:
    params = [p for head in heads.values() for p in head.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    total, step = epochs * _steps_per_epoch(features), 0
    shuffle = generator if (features.full is not None or features.chunks) else None
    with torch.enable_grad():
        for _ in range(epochs):
            for feats, rows in features.passes(shuffle):
                keep = train[rows]
                if not keep.any():
                    continue
                target = y[rows[keep]]
                loss = sum(
                    _objective(head, _standard(feats[name][keep], standard[name]), target, l2)
                    for name, head in heads.items()
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[union-attr]
                optimizer.step()
                step += 1


def _fit_lbfgs(
    heads: dict[str, Head],
    features: Features,
    y: Tensor,
    train: Tensor,
    standard: dict[str, tuple[Tensor, Tensor]],
    l2: float,
    max_iter: int,
) -> None:
    """Full-batch L-BFGS on the in-memory training rows; the paths' objectives are summed
    (they share no parameter, so the joint optimum is each path's optimum)."""
    assert features.full is not None
    target = y[train]
    inputs = {name: _standard(features.full[name][train], standard[name]) for name in heads}
    params = [p for head in heads.values() for p in head.parameters()]
    double = all(p.dtype == torch.float64 for p in params)
    optimizer = torch.optim.LBFGS(
        params,
        lr=1,
        max_iter=max_iter,
        history_size=20,
        # float32 losses stop moving near 1e-7 relative: tighter tolerances only burn max_iter
        tolerance_grad=1e-9 if double else 1e-6,
        tolerance_change=1e-12 if double else 1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = sum(_objective(h, inputs[n], target, l2) for n, h in heads.items())
        loss.backward()  # type: ignore[union-attr]
        return loss  # type: ignore[return-value]

    with torch.enable_grad():
        optimizer.step(closure)


def _standard(value: Tensor, standard: tuple[Tensor, Tensor]) -> Tensor:
    mean, scale = standard
    return (value.to(mean.dtype) - mean) / scale


def _objective(head: Head, z: Tensor, target: Tensor, l2: float) -> Tensor:
    return nn.functional.cross_entropy(head(z), target) + 0.5 * l2 * head.penalty()


def _steps_per_epoch(features: Features) -> int:
    if features.full is not None:
        return max(1, math.ceil(features.n / features.batch_size))
    if features.chunks:
        return len(features.chunks)
    return max(1, math.ceil(features.n / max(1, features.batch_size)))


def _fit_ridge(
    features: Features,
    y: Tensor,
    train: Tensor,
    standard: dict[str, tuple[Tensor, Tensor]],
    l2: float,
    rank: int | None,
) -> dict[str, tuple[Tensor, Tensor]]:
    stats = {name: RidgeStats() for name in features.names}
    for feats, rows in features.passes():
        keep = train[rows]
        for name, value in feats.items():
            mean, scale = standard[name]
            stats[name].add((value[keep].to(mean.dtype) - mean) / scale, y[rows[keep]])
    out = {}
    for name, stat in stats.items():
        weight, bias = stat.solve(l2, rank)
        dtype = standard[name][0].dtype
        out[name] = (weight.to(dtype), bias.to(dtype))
    return out


def _score(
    features: Features,
    probes: dict[str, Probe],
    y: Tensor,
    train: Tensor,
    classification: bool,
) -> None:
    scores = {name: (Score(classification), Score(classification)) for name in features.names}
    with torch.no_grad():
        for feats, rows in features.passes():
            keep = train[rows]
            for name, value in feats.items():
                prediction = probes[name](value)
                scores[name][0].add(prediction[keep], y[rows[keep]])
                scores[name][1].add(prediction[~keep], y[rows[~keep]])
    for name, (on_train, on_val) in scores.items():
        probes[name].metrics = {
            "train": on_train.value(y[train]),
            "val": on_val.value(y[~train]),
        }


def _fit_sklearn(
    features: Features,
    estimator: Any,
    y: Tensor,
    train: Tensor,
    standard: dict[str, tuple[Tensor, Tensor]],
    classification: bool,
) -> dict[str, Probe]:
    from sklearn.base import clone, is_classifier

    classification = bool(is_classifier(estimator))
    probes = {}
    y_np = y.numpy()
    for name, value in features.tensors().items():
        mean, scale = standard[name]
        z = ((value.to(mean.dtype) - mean) / scale).numpy()
        fitted = clone(estimator).fit(z[train.numpy()], y_np[train.numpy()])
        probe = Probe(name, "sklearn", None, None, mean, scale, classification, estimator=fitted)
        metrics = {}
        for split, rows in (("train", train), ("val", ~train)):
            metrics[split] = (
                math.nan if not rows.any() else float(fitted.score(z[rows.numpy()], y_np[rows]))
            )
        probe.metrics = metrics
        probes[name] = probe
    return probes
