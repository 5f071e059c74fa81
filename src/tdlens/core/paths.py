"""Module paths: address any submodule, its input or its output, and a part of either.

A path is the module's name as ``model.named_modules()`` prints it, optionally followed by a
site and selectors::

    "encoder.layer.3.attention"            # the module's output (the default site)
    "encoder.layer.3.attention:input"      # its first positional input
    "encoder.layer.3:output[0]"            # element 0 of a tuple output
    "encoder:output[last_hidden_state]"    # a key of a dict or ModelOutput output
    "transformer.h.0[:, 3]"                # position 3 of a [B, T, D] output (a tensor index)
    "blocks.*.mlp"                         # glob: ``*`` is one name component, ``**`` any
    ""                                     # the model itself

A selector holding ``:``, ``,`` or ``...`` indexes a tensor the way Python does (``[:, 3]``,
``[..., 0:8]``); reading it gives that part, writing it replaces only that part.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import InputError, InputTypeError, KeyNotFoundError, closest, format_keys

_SELECTOR = re.compile(r"\[([^\[\]]+)\]")


@dataclass(frozen=True)
class TensorIndex:
    """A tensor index written in a path, ``[:, 3]`` or ``[..., 0:8]`` (hashable, unlike slices).

    ``parts`` holds ints, ``None`` for ``...`` and ``(start, stop, step)`` triples for slices.
    """

    parts: tuple[int | tuple[int | None, int | None, int | None] | None, ...]
    text: str

    @property
    def index(self) -> tuple[Any, ...]:
        return tuple(
            Ellipsis if p is None else slice(*p) if isinstance(p, tuple) else p for p in self.parts
        )

    def __str__(self) -> str:
        return self.text


Selector = tuple[int | str | TensorIndex, ...]


@dataclass(frozen=True)
class ModulePath:
    """A parsed module path: which module, which site (input/output), which part of it."""

    module: str
    site: str = "output"
    selector: Selector = ()

    def __str__(self) -> str:
        text = (
            self.module
            if self.site == "output" and not self.selector
            else (f"{self.module}:{self.site}")
        )
        return text + "".join(
            str(s) if isinstance(s, TensorIndex) else f"[{s}]" for s in self.selector
        )

    @property
    def is_glob(self) -> bool:
        return "*" in self.module


def parse_path(text: str | ModulePath) -> ModulePath:
    """Parse ``"module.name:site[sel][sel]"``; the site defaults to ``output``."""
    if isinstance(text, ModulePath):
        return text
    if not isinstance(text, str):
        raise InputTypeError(
            f"a module path is a string such as 'encoder.layer.0', got {type(text).__name__} "
            f"{text!r}"
        )
    head, _, rest = text.partition("[")
    selector_text = "[" + rest if rest else ""
    module, _, site = head.partition(":")
    site = site or "output"
    if site not in ("output", "input"):
        raise InputError(
            f"module path {text!r}: the site after ':' must be 'input' or 'output', got {site!r}"
        )
    parts = _SELECTOR.findall(selector_text)
    if "".join(f"[{p}]" for p in parts) != selector_text:
        raise InputError(
            f"module path {text!r}: selectors are written [0] or [key] after the path, "
            "e.g. 'layer:output[0]'"
        )
    selector = tuple(_selector_part(p, text) for p in parts)
    return ModulePath(module, site, selector)


def _selector_part(part: str, text: str) -> int | str | TensorIndex:
    if re.fullmatch(r"\s*-?\d+\s*", part):
        return int(part)
    if not any(c in part for c in ":,") and "..." not in part:
        return part.strip().strip("'\"")
    items: list[int | tuple[int | None, int | None, int | None] | None] = []
    for item in part.split(","):
        item = item.strip()
        try:
            if item == "...":
                items.append(None)
            elif ":" in item:
                bounds = [int(b) if b.strip() else None for b in item.split(":")]
                if len(bounds) > 3:
                    raise ValueError
                items.append(tuple(bounds + [None] * (3 - len(bounds))))  # type: ignore[arg-type]
            else:
                items.append(int(item))
        except ValueError:
            raise InputError(
                f"module path {text!r}: the tensor index [{part}] may hold ints, slices such as "
                "'1:4' and '...', separated by commas, e.g. 'layer[:, 3]'"
            ) from None
    return TensorIndex(tuple(items), "[" + ", ".join(_index_text(i) for i in items) + "]")


def _index_text(item: int | tuple[int | None, int | None, int | None] | None) -> str:
    if item is None:
        return "..."
    if isinstance(item, int):
        return str(item)
    start, stop, step = ("" if b is None else str(b) for b in item)
    return f"{start}:{stop}" + (f":{step}" if step else "")


def _glob_regex(pattern: str) -> re.Pattern[str]:
    escaped = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", r"[^.]*")
    return re.compile(escaped + r"\Z")


def resolve_paths(
    model: nn.Module,
    paths: str | ModulePath | nn.Module | Iterable[str | ModulePath | nn.Module],
    *,
    names: list[str] | None = None,
) -> list[ModulePath]:
    """Parse paths and expand globs against ``model.named_modules()``, in module order
    (``names``: those names, when the caller already listed them). A submodule object
    (``model.conv2``, as captum users write ``layer=``) stands for its path.

    Raises:
        KeyNotFoundError: a path or pattern matches no module; the message lists the closest.
    """
    if isinstance(paths, (str, ModulePath, nn.Module)):
        paths = [paths]
    elif not isinstance(paths, (list, tuple, set, frozenset)):
        raise InputTypeError(
            f"a module path is a string such as 'encoder.layer.0' (or a submodule object, or a "
            f"list of them), got {type(paths).__name__} {paths!r}"
        )
    if names is None:
        names = [name for name, _ in model.named_modules()]
    known = set(names)
    resolved: list[ModulePath] = []
    for raw in paths:
        path = module_path(model, raw) if isinstance(raw, nn.Module) else parse_path(raw)
        if path.is_glob:
            regex = _glob_regex(path.module)
            matches = [n for n in names[1:] if regex.match(n)]  # never the root itself
            if not matches:
                raise KeyNotFoundError(
                    f"module pattern {path.module!r} matches no module of "
                    f"{type(model).__name__}; some paths: {format_keys(names[1:], 12)}"
                )
            resolved += [ModulePath(n, path.site, path.selector) for n in matches]
        elif path.module not in known:
            near = closest(path.module, names[1:])
            hint = (
                f"did you mean {format_keys(near)}?"
                if near
                else (f"its modules are {format_keys(names[1:], 12)}")
            )
            raise KeyNotFoundError(
                f"{type(model).__name__} has no submodule {path.module!r}; {hint}"
            )
        else:
            resolved.append(path)
    return resolved


def module_path(model: nn.Module, module: nn.Module) -> ModulePath:
    """The path of the submodule object ``module`` inside ``model`` (its first name)."""
    for name, candidate in model.named_modules(remove_duplicate=False):
        if candidate is module:
            return ModulePath(name)
    raise KeyNotFoundError(
        f"the module object {type(module).__name__} is not a submodule of "
        f"{type(model).__name__}; pass one of its submodules or a path such as "
        f"{format_keys([n for n, _ in model.named_modules()][1:], 8)}"
    )


def is_path_like(value: Any) -> bool:
    """Whether ``value`` names one module: a path string, a ModulePath or a module object."""
    return isinstance(value, (str, ModulePath, nn.Module))


def get_module(model: nn.Module, path: ModulePath) -> nn.Module:
    """The submodule a (resolved) path names; the model itself for ``""``."""
    return model.get_submodule(path.module) if path.module else model


def get_in(value: Any, selector: Selector, where: str = "value") -> Any:
    """``value[s0][s1]...``, with an error that lists what exists."""
    for key in selector:
        if isinstance(key, TensorIndex):
            value = _tensor_part(value, key, where)
            continue
        try:
            if (
                isinstance(key, int)
                and isinstance(value, Mapping)
                and not hasattr(value, "to_tuple")
            ):
                value = list(value.values())[key]
            else:
                value = value[key]
        except (KeyError, IndexError, TypeError, AttributeError):
            raise KeyNotFoundError(
                f"{where} has no entry [{key!r}]; it is {describe(value)}"
            ) from None
    return value


def set_in(value: Any, selector: Selector, new: Any) -> Any:
    """A copy of ``value`` with ``value[s0][s1]...`` replaced by ``new``; containers are rebuilt."""
    if not selector:
        return new
    key, rest = selector[0], selector[1:]
    if hasattr(value, "shape") and hasattr(value, "clone") and not hasattr(value, "keys"):
        index = key.index if isinstance(key, TensorIndex) else key
        part = set_in(_tensor_part(value, key, "the value"), rest, new)
        # out of place, so autograd and the module's own tensor are left as they were
        copy = value.clone()
        copy[index] = part
        return copy
    if isinstance(value, (tuple, list)):
        items = list(value)
        items[key] = set_in(items[key], rest, new)  # type: ignore[index]
        return type(value)(items) if type(value) in (tuple, list) else type(value)(*items)
    if isinstance(value, Mapping) or hasattr(value, "keys"):
        copy = value.copy() if hasattr(value, "copy") else dict(value)
        if isinstance(key, int):
            key = list(value.keys())[key]
        copy[key] = set_in(value[key], rest, new)
        return copy
    raise InputError(f"cannot select [{key!r}] in {describe(value)}")


def _tensor_part(value: Any, key: int | str | TensorIndex, where: str) -> Any:
    index = key.index if isinstance(key, TensorIndex) else key
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        raise KeyNotFoundError(
            f"{where}: the tensor index {key} needs a tensor; it is {describe(value)}"
        )
    try:
        return value[index]
    except (IndexError, TypeError):
        raise KeyNotFoundError(
            f"{where} has no entry {key if isinstance(key, TensorIndex) else [key]}: it is "
            f"{describe(value)}"
        ) from None


def describe(value: Any) -> str:
    """A short description of a value for error messages: type, shape, keys."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"a tensor of shape {list(value.shape)} ({value.dtype})"
    if isinstance(value, (tuple, list)):
        return (
            f"a {type(value).__name__} of {len(value)}: [{', '.join(describe(v) for v in value)}]"
        )
    if hasattr(value, "keys"):
        return f"a {type(value).__name__} with keys {format_keys(value.keys())}"
    return f"a {type(value).__name__}"
