"""A stable digest of a run's arguments, so that a directory is never resumed by another run.

Each argument gets its own digest (stored in the manifest), so a refusal can name the
arguments that changed. Values are digested by content: tensors and model weights by their
bytes, callables by their qualified name (their code is not compared), other objects by
``repr`` unless the repr holds a memory address (then only the type counts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..core.lazy import is_tensordict

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def digest(value: Any) -> str:
    """Hex digest of ``value``'s content."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, value)
    return h.hexdigest()


def method_state(method: Any) -> dict[str, Any]:
    """What configures an attribution method: its class and options (the model apart)."""
    options = {k: v for k, v in vars(method).items() if k != "model" and not k.startswith("_")}
    return {"class": f"{type(method).__module__}.{type(method).__qualname__}", **options}


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, Tensor):
        data = value.detach().cpu().contiguous()
        h.update(f"T{data.dtype}{tuple(data.shape)}".encode())
        h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif is_tensordict(value):
        h.update(b"TD")
        _feed(h, {str(k): value.get(k) for k in value.keys(include_nested=True, leaves_only=True)})
    elif hasattr(value, "attribute") and hasattr(value, "model"):  # a wrapped method
        _feed(h, method_state(value))
    elif isinstance(value, nn.Module):
        h.update(f"M{type(value).__qualname__}".encode())
        _feed(h, dict(value.state_dict()))
    elif isinstance(value, Mapping):
        h.update(b"{")
        for key in sorted(value, key=repr):
            _feed(h, key)
            _feed(h, value[key])
        h.update(b"}")
    elif isinstance(value, (tuple, list)):
        h.update(b"(" if isinstance(value, tuple) else b"[")
        for item in value:
            _feed(h, item)
        h.update(b")")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(type(value).__qualname__.encode())
        _feed(h, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    elif isinstance(value, torch.Generator):
        h.update(b"G")
        _feed(h, value.get_state())
    elif isinstance(value, (str, int, float, bool, bytes, type(None), torch.dtype, torch.device)):
        h.update(f"{type(value).__name__}:{value!r}".encode())
    elif callable(value):
        h.update(f"F{_qualified_name(value)}".encode())
    else:
        text = repr(value)
        h.update((type(value).__qualname__ if _ADDRESS.search(text) else text).encode())


def _qualified_name(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial: the function and its arguments
    name = f"{getattr(inner, '__module__', '')}.{getattr(inner, '__qualname__', type(inner))}"
    if inner is not fn:
        name += repr((getattr(fn, "args", ()), sorted(getattr(fn, "keywords", {}).items())))
    return _ADDRESS.sub("", name)
