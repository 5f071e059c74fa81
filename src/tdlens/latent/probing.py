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

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import InputError, InputTypeError
from ..core.lazy import require
from ._features import Features
from ._heads import Moments, RidgeStats, Score
from ._logistic import fit_adam, fit_lbfgs, head_groups, threads_for
from ._probe import Probe, Probes
from .streaming import ActivationStream, Reduce, check_reduce

KINDS = ("logistic", "linear")


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
        l2: the weight penalty: logistic ``mean CE + l2/2 ||W||^2``, ridge
            ``mean ||y - zW - b||^2 + l2 ||W||^2`` (the bias is not penalised).
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
    if isinstance(labels, list) or (
        hasattr(labels, "__array__") and not isinstance(labels, Tensor)
    ):
        labels = torch.as_tensor(labels)
    options = _Options(kind, reduce, epochs, l2, val, rank, lr, batch_size, solver, max_iter,
                       cache, standardize, seed)  # fmt: skip
    if model is None:
        return _fit(None, data, paths, labels, options)
    if paths is None:
        raise InputError("fit_probes needs paths=, e.g. paths='encoder.layer.*'")
    with ActivationStream(model, paths, reduce=reduce) as stream:
        return _fit(stream, data, paths, labels, options)


@dataclass(frozen=True)
class _Options:
    """fit_probes's options, checked on construction."""

    kind: Any
    reduce: Reduce
    epochs: int
    l2: float
    val: float
    rank: int | None
    lr: float
    batch_size: int
    solver: str
    max_iter: int
    cache: bool | str | Path
    standardize: bool
    seed: int

    def __post_init__(self) -> None:
        if not self.sklearn and self.kind not in KINDS:
            raise InputError(
                f"kind must be one of {KINDS} or a scikit-learn estimator (with fit and "
                f"predict), got {self.kind!r}"
            )
        check_reduce(self.reduce)
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise InputError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not (0 <= self.val < 1):
            raise InputError(f"val is the held-out share of examples, in [0, 1), got {self.val!r}")
        if self.l2 < 0 or self.lr <= 0 or self.batch_size < 1 or self.max_iter < 1:
            raise InputError(
                "need l2 >= 0, lr > 0, batch_size >= 1, max_iter >= 1; got "
                f"{self.l2}, {self.lr}, {self.batch_size}, {self.max_iter}"
            )
        if self.rank is not None and not (isinstance(self.rank, int) and self.rank >= 1):
            raise InputError(f"rank must be a positive integer or None, got {self.rank!r}")
        if self.solver not in ("auto", "lbfgs", "adam"):
            raise InputError(f"solver must be 'auto', 'lbfgs' or 'adam', got {self.solver!r}")

    @property
    def sklearn(self) -> bool:
        return hasattr(self.kind, "fit") and hasattr(self.kind, "predict")


def _fit(
    stream: ActivationStream | None, data: Any, paths: Any, labels: Any, options: _Options
) -> Probes:
    # scikit-learn needs every row at once
    cache = True if options.sklearn and options.cache is False else options.cache
    features = Features(stream, data, labels=labels, batch_size=options.batch_size, cache=cache,
                        paths=paths, reduce=options.reduce)  # fmt: skip
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
    if options.kind == "logistic" and not classification:
        raise InputError(
            f"kind='logistic' needs integer class labels, got {y.dtype}; use kind='linear' to "
            "regress floating-point labels"
        )
    if classification and options.kind == "linear":
        classification, y = False, y.double()
    if classification:
        y = y.long().reshape(-1)
    generator = torch.Generator().manual_seed(options.seed)
    train = torch.ones(features.n, dtype=torch.bool)
    train[torch.randperm(features.n, generator=generator)[: round(options.val * features.n)]] = 0
    outputs = _outputs(y, classification, int(train.sum()))
    standard = {
        name: moments[name].standardizer(dtypes[name], options.standardize)
        for name in features.names
    }
    # on cached features every step is small: one thread (see threads_for); streamed passes
    # run the model, which keeps the user's thread setting
    size = sum(v.numel() for v in features.full.values()) if features.full is not None else 0
    with threads_for(size) if features.full is not None else contextlib.nullcontext():
        if options.sklearn:
            probes = _fit_sklearn(features, options.kind, y, train, standard)
        else:
            probes = _fit_linear(features, y, train, standard, classification, outputs, options,
                                 generator)  # fmt: skip
    return Probes(probes, features.forward_passes, train)


def _fit_linear(
    features: Features,
    y: Tensor,
    train: Tensor,
    standard: dict[str, tuple[Tensor, Tensor]],
    classification: bool,
    outputs: int,
    options: _Options,
    generator: torch.Generator,
) -> dict[str, Probe]:
    """Logistic or ridge probes, then their scores."""
    if options.kind == "linear":
        weights = _fit_ridge(features, y, train, standard, options.l2, options.rank)
    else:
        solver = options.solver
        if solver == "auto":
            solver = "lbfgs" if features.full is not None and options.rank is None else "adam"
        if solver == "lbfgs" and features.full is None:
            raise InputError(
                "solver='lbfgs' fits on every row at once: use cache=True (features in "
                "memory), or solver='adam' for streamed or memory-mapped features"
            )
        groups = head_groups(features.names, standard, outputs, options.rank, options.seed)
        if solver == "lbfgs":
            fit_lbfgs(groups, features, y, train, standard, options.l2, options.max_iter)
        else:
            fit_adam(groups, features, y, train, standard, options.l2, options.lr,
                     options.epochs, generator)  # fmt: skip
        weights = {name: w for group in groups for name, w in group.weights().items()}
    probes = {}
    for name in features.names:
        mean, scale = standard[name]
        weight, bias = weights[name]
        probes[name] = Probe(name, options.kind, weight, bias, mean, scale, classification)
    _score(features, probes, y, train, classification)
    return probes


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
) -> dict[str, Probe]:
    base = require("sklearn.base", "probing")
    clone, is_classifier = base.clone, base.is_classifier

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
