"""Scoped hooks and the get/set API over module paths.

Every hook tdlens registers lives in a :class:`HookSet` whose exit removes it, on success or
exception, so the user's model is never left changed. :class:`Scope` is the user-facing part::

    with tdlens.Scope(model) as scope:
        scope.get("encoder.layer.0")                 # cache an output
        scope.get("head:input", grad=True)           # and the gradient at an input
        scope.set("encoder.layer.1", lambda out: out * 0)   # ablate
        logits = scope.run(x)                        # or call model(x) yourself, many times
    scope.cache    # TensorDict {"encoder.layer.0": ..., "head:input": ..., "head:input:grad": ...}
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .errors import InputError, InputTypeError, KeyNotFoundError, format_keys
from .paths import (
    ModulePath,
    TensorIndex,
    get_in,
    get_module,
    module_path,
    parse_path,
    resolve_paths,
    set_in,
)

SiteFn = Callable[[Any], Any]  # value at a site -> replacement, or None to keep it


class HookSet:
    """Hooks registered together and removed together, whatever happens."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def add(self, handle: RemovableHandle) -> None:
        self._handles.append(handle)

    def close(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_site(self, model: nn.Module, path: ModulePath, fn: SiteFn) -> None:
        """Call ``fn`` on the value at ``path`` each time the module runs; a non-None return
        replaces that value (its output, or the input the module receives)."""
        module = get_module(model, path)
        if path.site == "output":

            def output_hook(_module: nn.Module, _args: Any, output: Any) -> Any:
                value = get_in(output, path.selector, f"the output of {path.module!r}")
                new = fn(value)
                return None if new is None else set_in(output, path.selector, new)

            self.add(module.register_forward_hook(output_hook))
            return

        def input_hook(_module: nn.Module, args: tuple, kwargs: dict) -> Any:
            where, selector = _input_slot(path, args, kwargs)
            container: Any = args if isinstance(where, int) else kwargs
            value = get_in(container[where], selector, f"the input of {path.module!r}")
            new = fn(value)
            if new is None:
                return None
            replaced = set_in(container[where], selector, new)
            if isinstance(where, int):
                return (*args[:where], replaced, *args[where + 1 :]), kwargs
            return args, {**kwargs, where: replaced}

        self.add(module.register_forward_pre_hook(input_hook, with_kwargs=True))


def _input_slot(path: ModulePath, args: tuple, kwargs: dict) -> tuple[int | str, tuple]:
    """Which argument a ``:input`` path reads: ``[i]`` positional, ``[name]`` keyword; default
    the first positional argument, else the first keyword argument."""
    if path.selector and not isinstance(path.selector[0], TensorIndex):
        head, rest = path.selector[0], path.selector[1:]
        if (isinstance(head, int) and head < len(args)) or (
            isinstance(head, str) and head in kwargs
        ):
            return head, rest
        raise InputError(
            f"{path}: module {path.module!r} got {len(args)} positional argument(s) and keyword "
            f"argument(s) {sorted(kwargs)}; there is no input [{head!r}]"
        )
    if args:
        return 0, path.selector
    if kwargs:
        return next(iter(kwargs)), path.selector
    raise InputError(f"{path}: module {path.module!r} was called without arguments")


class _Recorder:
    """What a scope's hooks write to: captured values, and which sites ran in the current run.

    The hooks hold this object, never the :class:`Scope`, so a scope the user drops is
    garbage-collected (and its hooks removed) even though the model still holds the hooks.
    """

    def __init__(self, strict: bool) -> None:
        self.values: dict[str, list[Tensor]] = {}
        self.accumulate: dict[str, bool] = {}
        self.runs = 0
        self.strict = strict
        self.sites: dict[str, str] = {}  # key -> what the user asked for, for the error
        self.ran: set[str] = set()

    def start_run(self, *_: Any) -> None:
        self.runs += 1
        self.ran = set()

    def end_run(self, *_: Any) -> None:
        missing = [key for key in self.sites if key not in self.ran]
        if self.strict and missing:
            raise InputError(
                f"Scope: {', '.join(repr(self.sites[k]) for k in missing)} did not run in the "
                "forward pass (a module the model skips, e.g. a dropout inside fused attention); "
                "pick a module that runs, or pass Scope(model, strict=False)"
            )

    def store(self, name: str, value: Any) -> None:
        if not isinstance(value, Tensor):
            raise InputTypeError(
                f"{name!r} holds {type(value).__name__}, not a tensor; select a tensor entry "
                f"with a selector, e.g. '{name}[0]'"
            )
        values = self.values.setdefault(name, [])
        if not self.accumulate[name]:
            values.clear()
        values.append(value.detach())


class Scope:
    """Read (``get``) and write (``set``) activations of any module path.

    Use it as a ``with`` block, or call :meth:`start` and :meth:`close` (notebooks); a scope
    that is dropped without ``close()`` removes its hooks when it is garbage-collected.
    Captured values are detached; gradients are captured when a backward pass runs through the
    site. A path that does not run in a forward pass of the model raises when that pass ends
    (``strict=False`` allows it). Everything is removed on exit: the model keeps no hook.

    Example:
        >>> with tdlens.Scope(model) as scope:
        ...     scope.get("0")
        ...     _ = scope.run(torch.randn(4, 3))
        >>> scope.cache["0"].shape
        torch.Size([4, 8])
    """

    def __init__(self, model: nn.Module, *, strict: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"Scope needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self._hooks = HookSet()
        self._open = False
        self._rec = _Recorder(strict)
        self._names: list[str] | None = None  # the model's module names, listed once
        # closes the hooks when the scope is collected; holds neither the scope nor the model
        self._finalizer = weakref.finalize(self, self._hooks.close)

    @property
    def runs(self) -> int:
        """Forward passes of the model since the scope opened."""
        return self._rec.runs

    def start(self) -> Scope:
        """Open the scope without a ``with`` block; :meth:`close` (or garbage collection)
        removes every hook."""
        if not self._open:
            self._open = True
            self._hooks.add(self.model.register_forward_pre_hook(self._rec.start_run))
            self._hooks.add(self.model.register_forward_hook(self._rec.end_run))
        return self

    def close(self) -> None:
        """Remove every hook; the cache stays readable."""
        self._open = False
        self._hooks.close()

    def __enter__(self) -> Scope:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self, what: str) -> None:
        if not self._open:
            raise InputError(
                f"Scope.{what} works inside `with tdlens.Scope(model) as scope:` or after "
                "scope.start()"
            )

    def _watch(self, path: ModulePath, key: str, label: str) -> None:
        """Note when ``path``'s module runs, for the check at the end of each run."""
        if path.module == "":
            return  # the model itself runs in every run
        rec = self._rec
        rec.sites[key] = label

        def ran(*_: Any, key: str = key) -> None:
            rec.ran.add(key)

        self._hooks.add(get_module(self.model, path).register_forward_pre_hook(ran))

    def _keys(self, paths: str | Iterable[str]) -> list[tuple[ModulePath, str]]:
        """Resolved paths with their keys as the user wrote them (globs: the module expanded)."""
        if isinstance(paths, (str, ModulePath, nn.Module)):
            raw: list[Any] = [paths]
        elif isinstance(paths, (list, tuple, set, frozenset)):
            raw = list(paths)
        else:
            raise InputTypeError(
                f"a module path is a string such as 'encoder.layer.0' (or a submodule object, "
                f"or a list of them), got {type(paths).__name__} {paths!r}"
            )
        pairs = []
        for text in raw:
            # a submodule object (scope.get(model.conv2)) stands for its path
            parsed = (
                module_path(self.model, text) if isinstance(text, nn.Module) else parse_path(text)
            )
            written = str(text).strip() if isinstance(text, str) else str(parsed)
            if self._names is None:
                self._names = [name for name, _ in self.model.named_modules()]
            for path in resolve_paths(self.model, parsed, names=self._names):
                key = written
                if parsed.is_glob:
                    key = path.module + written[len(parsed.module) :]
                pairs.append((path, key))
        return pairs

    def get(
        self,
        paths: str | Iterable[str],
        *,
        grad: bool = False,
        accumulate: bool = False,
        name: str | None = None,
    ) -> None:
        """Capture the value at each path (globs allowed) on every forward from now on.

        Args:
            paths: module path(s), e.g. ``"layers.*.mlp"``, ``"head:input"`` or
                ``"layers.0[:, 3]"`` (position 3 only).
            grad: also capture the gradient flowing back to the value, under ``"<key>:grad"``.
            accumulate: keep every run's value instead of the last one: stacked along a new
                first dimension when the runs agree in shape, else concatenated along the one
                dimension where they differ (the sequence, over ``generate()``'s steps).
            name: the cache key, for a single path (default: the path as written).
        """
        self._check_open("get")
        pairs = self._keys(paths)
        if name is not None and len(pairs) != 1:
            raise InputError("name= needs exactly one path")
        rec = self._rec
        for path, written in pairs:
            key = name or written
            rec.accumulate[key] = accumulate
            rec.accumulate[key + ":grad"] = accumulate

            def capture(value: Any, key: str = key) -> None:
                rec.store(key, value)
                if grad and isinstance(value, Tensor) and value.requires_grad:
                    value.register_hook(lambda g, key=key: rec.store(key + ":grad", g))

            self._watch(path, key, written)
            self._hooks.on_site(self.model, path, capture)

    def set(self, paths: str | Iterable[str], value: Tensor | Callable[[Any], Any]) -> None:
        """Replace the value at each path by a tensor, or by ``value(current)``, on every forward.

        Hooks run in the order they were added: a ``get`` before a ``set`` on the same path sees
        the original value, one after it sees the replacement. A function that returns
        ``None`` keeps the value. A tensor index in the path
        (``"layers.0[:, 3]"``) replaces only that part.
        """
        self._check_open("set")
        for path, written in self._keys(paths):

            def replace(current: Any, path: ModulePath = path) -> Any:
                new = value(current) if callable(value) else value
                if isinstance(current, Tensor) and not isinstance(new, (Tensor, type(None))):
                    new = _as_tensor(new, current, path)  # None keeps the value
                if isinstance(current, Tensor) and isinstance(new, Tensor):
                    try:
                        torch.broadcast_shapes(new.shape, current.shape)
                    except RuntimeError:
                        raise InputError(
                            f"set({str(path)!r}): the new value has shape {list(new.shape)} but "
                            f"the module produces {list(current.shape)}"
                        ) from None
                    new = new.to(dtype=current.dtype, device=current.device).expand_as(current)
                return new

            self._watch(path, "set " + written, written)
            self._hooks.on_site(self.model, path, replace)

    def run(self, inputs: Any, **kwargs: Any) -> Any:
        """Call the model on a tensor, tuple (positional), dict (keyword) or TensorDict."""
        self._check_open("run")
        if kwargs:
            return self.model(inputs, **kwargs)
        return _call(self.model, inputs)

    def values(self, key: str) -> list[Tensor]:
        """Every captured value of ``key`` (one per run with ``accumulate=True``), as a list."""
        if key not in self._rec.values:
            raise KeyNotFoundError(
                f"nothing captured under {key!r}; captured keys: {format_keys(self._rec.values)}"
            )
        return list(self._rec.values[key])

    @property
    def cache(self) -> Any:
        """A TensorDict of everything captured, keyed by path as written (``[R, ...]`` when
        accumulated over R runs of one shape)."""
        from tensordict import TensorDict

        return TensorDict(self.captured(), batch_size=[])

    def captured(self) -> dict[str, Tensor]:
        """What :attr:`cache` holds, as a plain dict (no TensorDict is built)."""
        return {
            key: _joined(key, values) if self._rec.accumulate.get(key) else values[-1]
            for key, values in self._rec.values.items()
            if values
        }

    def clear(self) -> None:
        """Forget what was captured so far."""
        self._rec.values.clear()


def _joined(key: str, values: list[Tensor]) -> Tensor:
    """Stack runs of one shape; concatenate runs that differ along one dimension (the steps of
    ``generate()`` with a KV cache: the prompt, then one position per step)."""
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) == 1:
        return torch.stack(values)
    ranks = {len(s) for s in shapes}
    if len(ranks) == 1:
        first = values[0].shape
        differ = {d for v in values for d in range(len(first)) if v.shape[d] != first[d]}
        if len(differ) == 1:
            return torch.cat(values, dim=differ.pop())
    raise InputError(
        f"the runs captured under {key!r} have shapes {sorted(shapes)[:4]} that neither stack nor "
        f"join along one dimension; read them one by one with scope.values({key!r})"
    )


def _as_tensor(new: Any, current: Tensor, path: ModulePath) -> Tensor:
    """A number or array-like set() value as a tensor like the activation it replaces."""
    if isinstance(new, (int, float)) or hasattr(new, "__array__"):
        return torch.as_tensor(new, dtype=current.dtype, device=current.device)
    raise InputTypeError(
        f"set({str(path)!r}): the new value is {type(new).__name__}; give a tensor, a number, or "
        "a function returning a tensor"
    )


def _call(model: nn.Module, inputs: Any) -> Any:
    from .lazy import is_tensordict, is_tensordict_module

    if isinstance(inputs, Tensor) or (is_tensordict(inputs) and is_tensordict_module(model)):
        return model(inputs)
    if is_tensordict(inputs):
        return model(**{k: inputs.get(k) for k in inputs.keys()})
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)
