"""The explorer's methods: which ``attribute()`` arguments the page may set, their types and
defaults, and the checks that turn a JSON request into keyword arguments (or a 400 error).

Only the public API is used: a method is ``getattr(tdlens, name)`` and its arguments are read
from the signature of its ``attribute``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ArgSpec", "ExplorerError", "MethodSpec", "build_methods"]

# Arguments the explorer sets itself, or that change the result's layout.
_RESERVED = frozenset(
    {"inputs", "target", "targets", "output", "layer", "keys", "return_convergence_delta"}
    | {"additional_forward_args"}
)
_LIMIT = 1_000_000  # larger integers are typing mistakes (n_steps=10**9 would hang the worker)


class ExplorerError(Exception):
    """A request the explorer refuses; ``status`` is the HTTP status (4xx) it answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _kind(value: Any) -> str | None:
    """The JSON type name of an editable default, None for a value the page cannot edit."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if (
        isinstance(value, (tuple, list))
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return "ints"
    return None


@dataclass(frozen=True)
class ArgSpec:
    """One argument the page may set: its name, JSON type and default."""

    name: str
    kind: str
    default: Any

    def check(self, value: Any, method: str) -> Any:
        """``value`` converted to this argument's type; :class:`ExplorerError` if it is not."""
        where = f"argument {self.name!r} of {method}"
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise ExplorerError(f"{where} must be true or false, got {value!r}")
        if self.kind == "str":
            if isinstance(value, str) and len(value) <= 200:
                return value
            raise ExplorerError(f"{where} must be a string, got {value!r}")
        if self.kind == "ints":
            if (
                isinstance(value, list)
                and value
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                and all(abs(v) <= _LIMIT for v in value)
            ):
                return tuple(value)
            raise ExplorerError(
                f"{where} must be a list of integers such as [1, 2, 2], got {value!r}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            expected = "an integer" if self.kind == "int" else "a number"
            raise ExplorerError(f"{where} must be {expected}, got {value!r}")
        if self.kind == "int":
            if not isinstance(value, int):
                raise ExplorerError(f"{where} must be an integer, got {value!r}")
            if abs(value) > _LIMIT:
                raise ExplorerError(f"{where} must be at most {_LIMIT} in size, got {value}")
            return value
        if not math.isfinite(value):
            raise ExplorerError(f"{where} must be a finite number, got {value!r}")
        return float(value)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind,
            "default": list(self.default) if self.kind == "ints" else self.default,
        }


@dataclass
class MethodSpec:
    """A configured method: the tdlens class, fixed options, and the arguments the page sets."""

    name: str
    method: Any
    args: dict[str, ArgSpec]
    fixed: dict[str, Any] = field(default_factory=dict)

    def resolve(self, given: Any) -> dict[str, Any]:
        """The full ``attribute()`` keyword arguments for a request's ``args`` (defaults filled
        in, so that leaving an argument out and giving its default hit the same cache entry)."""
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise ExplorerError(f"'args' must be a JSON object, got {type(given).__name__}")
        unknown = sorted(set(given) - set(self.args))
        if unknown:
            known = ", ".join(self.args) or "none"
            raise ExplorerError(
                f"{self.name} has no argument {', '.join(map(repr, unknown))}; "
                f"its arguments are: {known}"
            )
        values = {name: spec.default for name, spec in self.args.items()}
        values.update({name: self.args[name].check(v, self.name) for name, v in given.items()})
        return {**self.fixed, **values}

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "args": [spec.as_json() for spec in self.args.values()]}


def _default_window(name: str, sample_shape: Sequence[int]) -> tuple[int, ...]:
    """Occlusion's window (and stride) when none is configured: a quarter of each spatial
    side, all channels at once, for images; one feature for vectors."""
    if name == "strides" or len(sample_shape) < 2:
        return tuple(1 for _ in sample_shape)
    if len(sample_shape) == 2:  # a grey [H, W] image
        return tuple(max(1, size // 4) for size in sample_shape)
    spatial = tuple(max(1, size // 4) for size in sample_shape[1:])
    return (int(sample_shape[0]), *spatial)


def build_methods(model: Any, methods: Any, sample_shape: Sequence[int]) -> dict[str, MethodSpec]:
    """Builds the method specs from ``methods``: names, or a mapping from a name to default
    ``attribute()`` arguments (editable when they are a bool, number, string or list of ints;
    passed unchanged otherwise, e.g. ``layer=`` of GradCam)."""
    import tdlens

    if isinstance(methods, str):
        raise ExplorerError("methods must be a list of method names, not one string", 500)
    configured = dict(methods) if isinstance(methods, Mapping) else {m: {} for m in methods}
    if not configured:
        raise ValueError("Explorer needs at least one method, e.g. methods=['Saliency']")
    specs = {}
    for name, options in configured.items():
        cls: Any = getattr(tdlens, str(name), None)
        if not _is_method(cls):
            available = ", ".join(n for n in tdlens.__all__ if _is_method(getattr(tdlens, n)))
            raise ValueError(f"unknown method {name!r}; tdlens has: {available}")
        options = dict(options or {})
        args: dict[str, ArgSpec] = {}
        fixed: dict[str, Any] = {}
        for param in inspect.signature(cls.attribute).parameters.values():
            if (
                param.name == "self"
                or param.name in _RESERVED
                or param.kind
                in (
                    param.VAR_KEYWORD,
                    param.VAR_POSITIONAL,
                )
            ):
                continue
            value = options.pop(param.name, param.default)
            if value is inspect.Parameter.empty:
                if param.name not in ("sliding_window_shapes", "strides"):
                    raise ValueError(
                        f"{name} needs argument {param.name!r}; give it as "
                        f"methods={{{name!r}: {{{param.name!r}: ...}}}}"
                    )
                value = _default_window(param.name, sample_shape)
            kind = _kind(value)
            if kind is not None:
                args[param.name] = ArgSpec(param.name, kind, value)
            elif param.name in options or value is not param.default:
                fixed[param.name] = value
        fixed.update(options)  # e.g. layer=, accepted by every method
        specs[str(name)] = MethodSpec(str(name), cls(model), args, fixed)
    return specs


def _is_method(value: Any) -> bool:
    import tdlens

    return (
        inspect.isclass(value)
        and issubclass(value, tdlens.Attribution)
        and (value is not tdlens.Attribution)
    )
