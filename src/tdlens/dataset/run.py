"""``attribute_dataset``: any attribution method over a whole dataset, into a memory-mapped
TensorDict on disk, resumable, on one process or many."""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..core.errors import InputError, InputTypeError, format_keys
from .fingerprint import digest, method_state
from .progress import Progress, Reporter
from .rows import BatchRunner
from .source import make_source
from .store import ResultStore, RunDirectory
from .world import RankError, World, shard


def attribute_dataset(
    method: Any,
    data: Any,
    *,
    out: str | os.PathLike[str],
    targets: Any = None,
    inputs: Any = None,
    batch_size: int | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[Progress], Any] | None = None,
    dtype: torch.dtype | None = None,
    metrics: Mapping[str, Any] | Sequence[str] | None = None,
    prediction: bool = True,
    seed: int | None = 0,
    device: torch.device | str | None = None,
    **attribute_kwargs: Any,
) -> Any:
    """Attribute every example of a dataset into a memory-mapped TensorDict under ``out``.

    Run it unchanged under ``torchrun`` (any launcher that initialises ``torch.distributed``):
    each rank attributes every ``world_size``-th batch and writes its rows into the shared
    result; rank 0 returns the whole result, the other ranks ``None``.

    Args:
        method: an attribution method (``tdlens.IntegratedGradients(model)``...).
        data: a ``Dataset``, a ``DataLoader`` (its dataset, collate_fn and workers are used;
            results are stored by dataset position), a tensor or TensorDict of rows, or a
            re-iterable of batches (tensors, tuples, dicts or TensorDicts).
        out: the run directory; ``TensorDict.load_memmap(out)`` reopens the result.
        targets: what each example explains: ``None`` (the prediction, or ``target=`` given
            as an option for all), a key of dict/TensorDict batches (``"label"``) or a
            position of tuple batches (``1`` for ``TensorDataset(x, y)``), removed from the
            model inputs; a callable ``batch -> Tensor[B]``; or a list of K targets for all
            examples (results ``[N, K, ...]``).
        inputs: what the model takes from a batch, when not the batch minus its target: a key
            or position, or a callable ``batch -> inputs``.
        batch_size: examples per batch (default: the DataLoader's, else 32); ignored for
            iterables of batches, which keep theirs.
        resume: continue a run of the same arguments in ``out`` (only unfinished batches run);
            ``False`` deletes such a run first. A run with other arguments is never mixed in.
        progress: a progress bar on rank 0 when stderr is a terminal and not under CI (needs
            ``tdlens[progress]``, i.e. tqdm).
        callback: called with a :class:`Progress` after every finished batch, on every rank.
        dtype: storage type of attributions, deltas and metrics (e.g. ``torch.float16``).
        metrics: per-example metrics computed on each batch and stored under ``"metric"``:
            names of ``tdlens.metrics`` functions called as ``f(model, inputs, attributions,
            target=...)``, or ``{name: f(inputs, attributions, target) -> Tensor[B]}``.
        prediction: also store ``"prediction"`` (predicted class, or the output for one value
            per example), from one extra gradient-free forward pass per batch.
        seed: each batch runs with torch's generators seeded from ``seed`` and its number, so
            random methods repeat exactly across resumes and process counts (``None``: leave
            the generators alone).
        device: where the batches go (default: the device of the model's parameters).
        **attribute_kwargs: options of ``method.attribute`` (``n_steps=32``,
            ``return_convergence_delta=True``, ``internal_batch_size=...``, ``target=3``).

    Returns:
        On rank 0 a memory-mapped ``TensorDict`` of batch size ``[N]``: ``"attribution"``
        (a tensor for tensor inputs, else one entry per input key or position), ``"index"``
        (dataset position), ``"target"`` and ``"prediction"`` where they are one value per
        example, ``"delta"`` and ``"metric"`` when asked for. ``None`` on other ranks.

    Example:
        >>> ig = tdlens.IntegratedGradients(model)
        >>> result = tdlens.attribute_dataset(ig, test_set, out="runs/ig", targets=1, n_steps=32)
        >>> result
        TensorDict(batch_size=[10000], device=cpu, fields={
            attribution: f32[1, 28, 28],
            index: i64[],
            prediction: i64[],
            target: i64[]})
    """
    runner = BatchRunner(
        method=method,
        targets=_check_targets(targets, attribute_kwargs),
        inputs=inputs,
        attribute_kwargs=_check_options(method, attribute_kwargs),
        metrics=_metrics(method, metrics),
        prediction=bool(prediction),
        dtype=_check_dtype(dtype),
        seed=seed,
        device=_device(method, device),
    )
    world = World.detect()
    source, size = make_source(data, batch_size)
    if not source.batches:
        raise InputError("the dataset is empty: there is nothing to attribute")
    arguments = {  # one digest each, so that a refusal names what changed
        "method": digest(method_state(method)),
        "model weights": digest(method.model),
        **{f"option {name}": digest(value) for name, value in attribute_kwargs.items()},
        "targets": digest(targets),
        "inputs": digest(inputs),
        "batch_size or dataset length": digest([b.size for b in source.batches]),
        "dtype": digest(dtype),
        "metrics": digest(metrics),
        "prediction": digest(runner.prediction),
        "seed": digest(seed),
    }
    _agree(world, source.length, arguments)

    def check_first_batch() -> None:  # targets= and inputs= fit the batches
        for batch, data in source.load(source.batches[:1]):
            runner.split(data, batch)

    _together(world, check_first_batch, "reading the first batch", True)
    directory = RunDirectory(out)
    info = {"length": source.length, "batch_size": size, "n_batches": len(source.batches)}
    # rank 0 prepares the directory; then every rank reads it, all before anyone writes
    prepare = lambda: directory.prepare(arguments, info, resume)  # noqa: E731
    _together(world, prepare, "preparing out", world.rank == 0)
    _together(world, lambda: directory.check(arguments), "reading out", world.rank != 0)
    finished, allocated = directory.finished(), directory.allocated
    mine = [source.batches[i] for i in shard(len(source.batches), world)]
    todo = [b for b in mine if b.number not in finished]
    _run(world, directory, source, todo, allocated, runner, progress, callback)
    if world.rank:
        return None
    from tensordict import TensorDict

    return TensorDict.load_memmap(directory.path)


def _run(
    world: World,
    directory: RunDirectory,
    source: Any,
    todo: list[Any],
    allocated: bool,
    runner: BatchRunner,
    progress: bool,
    callback: Callable[[Progress], Any] | None,
) -> None:
    """Attribute this rank's unfinished batches; errors reach every rank."""
    length = source.length
    loaded = source.load(todo)
    store: ResultStore | None = None
    first = None
    error: BaseException | None = None
    if not allocated:  # a fresh run: rank 0 sizes the files from its first batch
        if world.rank == 0:
            try:
                batch, data = next(loaded)  # batch 0: nothing is finished in a fresh run
                first = (batch, runner(batch, data))
                ResultStore.allocate(directory.path, first[1], length)
            except BaseException as failure:
                error = failure
        world.sync(error, "while allocating the result")
        if error is not None:
            raise error
    reporter = Reporter(world.rank, sum(b.size for b in todo), progress, callback)
    log = _Log(directory.log(world.rank))
    try:
        store = ResultStore(directory.path)
        if store.length != length:
            raise InputError(
                f"out={str(directory.path)!r} holds {store.length} rows but the dataset has "
                f"{length} examples"
            )
        if first is not None:
            _save(store, log, reporter, *first)
        for batch, data in loaded:
            _save(store, log, reporter, batch, runner(batch, data))
    except BaseException as failure:
        error = failure
    finally:
        reporter.close()
        if store is not None:
            log.sync(store)  # what was written before a failure is kept too
            store.close()
        log.close()
    world.sync(error, "while attributing its batches")
    if error is not None:
        raise error


def _save(store: ResultStore, log: _Log, reporter: Reporter, batch: Any, rows: Any) -> None:
    store.write(batch.start, rows, batch.describe())
    log.finished(batch.number, store)
    reporter.update(batch.number, batch.size)


class _Log:
    """Logs finished batches after syncing their rows, spacing syncs so that they cost at most
    1/50 of the time between them (every batch on a fast disk, fewer on a slow one; a killed
    run loses nothing it wrote, only the unlogged batches are done again)."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.pending: list[int] = []
        self.last, self.cost = time.perf_counter(), 0.0

    def finished(self, batch: int, store: ResultStore) -> None:
        self.pending.append(batch)
        if time.perf_counter() - self.last >= 50 * self.cost:
            self.sync(store)

    def sync(self, store: ResultStore) -> None:
        if not self.pending:
            return
        start = time.perf_counter()
        store.sync()
        self.log.add(self.pending)  # only after their rows are on disk
        self.pending = []
        self.last = time.perf_counter()
        self.cost = self.last - start

    def close(self) -> None:
        self.log.close()


def _together(world: World, step: Callable[[], None], what: str, here: bool) -> None:
    """Run ``step`` if ``here``, then let every rank learn whether it failed on any rank."""
    error = None
    if here:
        try:
            step()
        except BaseException as failure:
            error = failure
    world.sync(error, f"while {what}")
    if error is not None:
        raise error


def _agree(world: World, length: int, arguments: dict[str, str]) -> None:
    """Every rank must see the same dataset and arguments (checked before any work)."""
    views = world.gather((length, arguments))
    lengths = [v[0] for v in views]
    if len(set(lengths)) > 1:
        shown = ", ".join(f"rank {r}: {n}" for r, n in enumerate(lengths))
        raise RankError(
            f"the ranks disagree on the dataset length ({shown} examples); every rank must "
            "pass the whole, same dataset: attribute_dataset shards it itself"
        )
    differ = sorted({k for _, args in views for k in args if args[k] != arguments[k]})
    if differ:
        raise RankError(
            f"the ranks disagree on {', '.join(differ)}; every rank must run the same method, "
            "model weights (seed them, or load the same checkpoint) and options"
        )


def _check_options(method: Any, options: dict[str, Any]) -> dict[str, Any]:
    attribute = getattr(method, "attribute", None)
    if not callable(attribute) or not hasattr(method, "model"):
        raise InputTypeError(
            f"method must be a tdlens attribution method (e.g. tdlens.IntegratedGradients"
            f"(model)), got {type(method).__name__}"
        )
    parameters = inspect.signature(attribute).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = [k for k in options if k not in parameters or k == "inputs"]
        if unknown:
            names = [k for k in parameters if k not in ("inputs", "self")]
            raise InputError(
                f"{type(method).__name__}.attribute() takes no option(s) "
                f"{format_keys(unknown)}; its options are {format_keys(names)}, and "
                "attribute_dataset's own are out, targets, inputs, batch_size, resume, "
                "progress, callback, dtype, metrics, prediction, seed, device"
            )
    return options


def _check_targets(targets: Any, options: dict[str, Any]) -> Any:
    if targets is not None and "target" in options:
        raise InputError(
            "pass either targets= (per-example targets from the data, or a list of K targets) "
            "or target= (one target for every example), not both"
        )
    if isinstance(targets, (Sequence, torch.Tensor)) and not isinstance(targets, (str, tuple)):
        return list(targets.tolist() if isinstance(targets, torch.Tensor) else targets)
    if targets is None or isinstance(targets, (str, tuple, int)) or callable(targets):
        return targets
    raise InputTypeError(
        f"targets= takes None, a batch key, a tuple position, a callable or a list of targets; "
        f"got {type(targets).__name__}"
    )


def _check_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputTypeError(f"dtype= takes a floating-point torch.dtype, got {dtype!r}")
    return dtype


def _metrics(method: Any, metrics: Any) -> dict[str, Callable[..., Any]]:
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        named = dict(metrics)
    elif isinstance(metrics, Sequence) and not isinstance(metrics, str):
        named = {name: name for name in metrics}
    else:
        raise InputTypeError("metrics= takes a list of names or a {name: function} dict")
    result = {}
    for name, metric in named.items():
        if isinstance(metric, str):
            import tdlens.metrics

            fn = getattr(tdlens.metrics, metric, None)
            if not callable(fn) or metric.startswith("_") or metric[0].isupper():
                raise InputError(
                    f"metrics= names {metric!r}, which is not a tdlens.metrics function; "
                    f"some are {format_keys(['deletion', 'insertion', 'comprehensiveness'])}"
                )
            result[name] = _library_metric(fn, method.model)
        elif callable(metric):
            result[name] = metric
        else:
            raise InputTypeError(f"metric {name!r} must be a name or a callable")
    return result


def _library_metric(fn: Callable[..., Any], model: Any) -> Callable[..., Any]:
    def metric(inputs: Any, attributions: Any, target: Any) -> Any:
        if isinstance(target, list):
            return fn(model, inputs, attributions, targets=target)
        return fn(model, inputs, attributions, target=target)

    return metric


def _device(method: Any, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    model = getattr(method, "model", None)
    if isinstance(model, nn.Module):
        for tensor in model.parameters():
            return tensor.device
    return torch.device("cpu")
