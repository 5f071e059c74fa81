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

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .errors import InputError, InputTypeError
from .paths import ModulePath, get_in, get_module, resolve_paths, set_in

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
    if path.selector:
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
        return 0, ()
    if kwargs:
        return next(iter(kwargs)), ()
    raise InputError(f"{path}: module {path.module!r} was called without arguments")


class Scope:
    """Read (``get``) and write (``set``) activations of any module path inside a ``with`` block.

    Captured values are detached; gradients are captured when a backward pass runs through the
    site. Everything is removed on exit: the model keeps no hook.

    Example:
        >>> with tdlens.Scope(model) as scope:
        ...     scope.get("0")
        ...     _ = scope.run(torch.randn(4, 3))
        >>> scope.cache["0"].shape
        torch.Size([4, 8])
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"Scope needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self._hooks = HookSet()
        self._open = False
        self._values: dict[str, list[Tensor]] = {}
        self._accumulate: dict[str, bool] = {}
        self.runs = 0

    def __enter__(self) -> Scope:
        self._open = True
        self._hooks.add(self.model.register_forward_pre_hook(self._count_run))
        return self

    def __exit__(self, *exc: object) -> None:
        self._open = False
        self._hooks.close()

    def _count_run(self, *_: Any) -> None:
        self.runs += 1

    def _check_open(self, what: str) -> None:
        if not self._open:
            raise InputError(f"Scope.{what} works inside `with tdlens.Scope(model) as scope:`")

    def _store(self, name: str, value: Any) -> None:
        if not isinstance(value, Tensor):
            raise InputTypeError(
                f"{name!r} holds {type(value).__name__}, not a tensor; select a tensor entry "
                f"with a selector, e.g. '{name}[0]'"
            )
        values = self._values.setdefault(name, [])
        if not self._accumulate[name]:
            values.clear()
        values.append(value.detach())

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
            paths: module path(s), e.g. ``"layers.*.mlp"`` or ``"head:input"``.
            grad: also capture the gradient flowing back to the value, under ``"<key>:grad"``.
            accumulate: keep every run's value (stacked along a new first dimension) instead of
                the last one.
            name: the cache key, for a single path (default: the path).
        """
        self._check_open("get")
        resolved = resolve_paths(self.model, paths)
        if name is not None and len(resolved) != 1:
            raise InputError("name= needs exactly one path")
        for path in resolved:
            key = name or str(path)
            self._accumulate[key] = accumulate
            self._accumulate[key + ":grad"] = accumulate

            def capture(value: Any, key: str = key) -> None:
                self._store(key, value)
                if grad and isinstance(value, Tensor) and value.requires_grad:
                    value.register_hook(lambda g, key=key: self._store(key + ":grad", g))

            self._hooks.on_site(self.model, path, capture)

    def set(self, paths: str | Iterable[str], value: Tensor | Callable[[Tensor], Tensor]) -> None:
        """Replace the value at each path by a tensor, or by ``value(current)``, on every forward.

        Hooks run in the order they were added: a ``get`` before a ``set`` on the same path sees
        the original value, one after it sees the replacement.
        """
        self._check_open("set")
        for path in resolve_paths(self.model, paths):

            def replace(current: Any, path: ModulePath = path) -> Any:
                new = value(current) if callable(value) else value
                if isinstance(current, Tensor) and not isinstance(new, Tensor):
                    new = _as_tensor(new, current, path)
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

            self._hooks.on_site(self.model, path, replace)

    def run(self, inputs: Any, **kwargs: Any) -> Any:
        """Call the model on a tensor, tuple (positional), dict (keyword) or TensorDict."""
        self._check_open("run")
        if kwargs:
            return self.model(inputs, **kwargs)
        return _call(self.model, inputs)

    @property
    def cache(self) -> Any:
        """A TensorDict of everything captured, keyed by path (``[R, ...]`` when accumulated)."""
        from tensordict import TensorDict

        td = TensorDict({}, batch_size=[])
        for key, values in self._values.items():
            if not values:
                continue
            if self._accumulate.get(key):
                shapes = {tuple(v.shape) for v in values}
                if len(shapes) > 1:
                    raise InputError(
                        f"get({key!r}, accumulate=True) stacks the runs along a new first "
                        f"dimension, but they have different shapes {sorted(map(list, shapes))} "
                        "(different batch sizes?); run batches of one size, or call "
                        "scope.clear() between batches and read scope.cache after each"
                    )
                td.set(key, torch.stack(values))
            else:
                td.set(key, values[-1])
        return td

    def clear(self) -> None:
        """Forget what was captured so far."""
        self._values.clear()


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
