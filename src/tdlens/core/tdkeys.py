"""TensorDict keys as layers, and the keys a model reads, checked before any forward pass.

A ``tensordict.nn`` pipeline names its intermediate values by key: the encoder of a
``TensorDictSequential`` writes ``("enc", "features")``, the decoder reads it. ``layer=`` and
``output=`` accept such a key: it is resolved to the output of the network that writes it (the
plain ``nn.Module`` a ``TensorDictModule`` wraps), so layer attribution, baselines at the
layer and interventions work on it exactly as on a module path.

Input keys are checked against what the model reads: the ``in_keys`` of a ``tensordict.nn``
module, or the signature of a plain ``forward`` called with keyword arguments. A wrong key is
then reported with the valid ones instead of failing inside the forward pass.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .errors import InputError, KeyNotFoundError, format_keys
from .lazy import is_tensordict_module
from .paths import ModulePath, get_module


def _norm(key: Any) -> Any:
    """A TensorDict key in one form: ``("a",)`` is ``"a"``."""
    if isinstance(key, tuple) and len(key) == 1:
        return key[0]
    return key


def _writers(model: nn.Module) -> list[tuple[str, nn.Module, list[Any]]]:
    """The leaf ``tensordict.nn`` modules inside ``model``: (path, module, out_keys)."""
    found = []
    for name, module in model.named_modules():
        if not is_tensordict_module(module) or _is_container(module):
            continue
        found.append((name, module, [_norm(k) for k in getattr(module, "out_keys", [])]))
    return found


def _is_container(module: nn.Module) -> bool:
    return any(is_tensordict_module(m) for m in module.modules() if m is not module)


def key_layer(model: nn.Module, key: Any) -> ModulePath | None:
    """The module path of the value ``key`` holds inside a ``tensordict.nn`` pipeline, or
    ``None`` when no network of ``model`` writes ``key``.

    The path is the output of the ``nn.Module`` that the writing ``TensorDictModule`` wraps
    (element i of a tuple output for its i-th out key).

    Raises:
        InputError: several networks write ``key``, or the writer wraps no ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        return None
    key = _norm(key)
    hits = [(name, m, keys) for name, m, keys in _writers(model) if key in keys]
    if not hits:
        return None
    if len(hits) > 1:
        raise InputError(
            f"key {key!r} is written by several modules ({format_keys(h[0] for h in hits)}); "
            "name the one you mean with its module path, e.g. "
            f"'{hits[0][0]}:output[{_show(key)}]'"
        )
    name, module, keys = hits[0]
    inner = getattr(module, "module", None)
    if not isinstance(inner, nn.Module):
        raise InputError(
            f"key {key!r} is written by {type(module).__name__} {name!r}, which wraps no "
            "nn.Module (a function or a distribution sampler): tdlens cannot hook it. Attribute "
            "to a key that a network writes, or wrap the function in an nn.Module"
        )
    prefix = f"{name}.module" if name else "module"
    selector = (keys.index(key),) if len(keys) > 1 else ()
    return ModulePath(prefix, "output", selector)


def redirect(model: nn.Module, path: ModulePath) -> ModulePath:
    """``path`` with a key selected from a ``tensordict.nn`` module's output turned into the
    output of the network that writes it (``"0:output[features]"`` -> ``"0.module"``).

    The output of a ``TensorDictModule`` is a whole TensorDict, inputs included: a selection
    must name an entry the module writes, never one it merely passes on.
    """
    module = get_module(model, path)
    if path.site != "output" or not is_tensordict_module(module) or not path.selector:
        return path
    writes = [_norm(k) for k in getattr(module, "out_keys", [])]
    head = path.selector[0] if len(path.selector) == 1 else tuple(path.selector)
    head = _norm(head)
    if head not in writes:
        reads = [_norm(k) for k in getattr(module, "in_keys", [])]
        what = (
            "an input the module reads, not a value it produces"
            if head in reads
            else ("a position; select a TensorDict entry by key" if isinstance(head, int) else "")
        )
        raise KeyNotFoundError(
            f"{str(path)!r} selects [{head!r}]{', ' + what if what else ''}; module "
            f"{path.module!r} writes {format_keys(writes)}: pick one, e.g. "
            f"'{path.module}:output[{_show(writes[0]) if writes else 0}]'"
        )
    inner = key_layer(module, head)
    if inner is None:  # a container that writes the key through a child
        return path
    prefix = f"{path.module}.{inner.module}" if path.module else inner.module
    return ModulePath(prefix, "output", inner.selector)


def tensordict_hint(model: nn.Module, path: ModulePath) -> str:
    """An example selection for a ``tensordict.nn`` module's output, with its real keys."""
    module = get_module(model, path)
    writes = [_norm(k) for k in getattr(module, "out_keys", [])]
    if not writes:
        return "pick an entry of its output by key"
    examples = ", ".join(f"layer={w!r}" for w in writes[:3])
    return (
        f"its output is a TensorDict; pick an entry it writes by key ({examples}) or "
        f"'{path.module}:output[{_show(writes[0])}]'"
    )


def _show(key: Any) -> str:
    return "][".join(key) if isinstance(key, tuple) else str(key)


def check_input_keys(model: Any, kind: str, leaves: dict[Any, Any]) -> None:
    """Raise before any forward pass when dict or TensorDict inputs miss a key the model reads
    or name one its ``forward`` does not take. The message lists the valid keys."""
    if kind not in ("dict", "tensordict"):
        return
    if is_tensordict_module(model):
        if kind != "tensordict":
            return
        given = {_norm(k) for k in leaves}
        given |= {k[: i + 1] for k in given if isinstance(k, tuple) for i in range(len(k))}
        given = {_norm(k) for k in given}
        reads = [_norm(k) for k in getattr(model, "in_keys", [])]
        missing = [k for k in reads if k not in given]
        if missing:
            raise KeyNotFoundError(
                f"the TensorDict input has no entry {format_keys(missing)}, which "
                f"{type(model).__name__} reads; it reads {format_keys(reads)} and the input "
                f"holds {format_keys(_norm(k) for k in leaves)}"
            )
        return
    forward = getattr(model, "forward", model)
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    named = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    top = {k[0] if isinstance(k, tuple) else k for k in leaves}
    unknown = [k for k in top if k not in named]
    if unknown:
        raise KeyNotFoundError(
            f"input key {format_keys(unknown)} is not an argument of "
            f"{type(model).__name__}.forward; it takes {format_keys(named)}"
        )
    required = [
        n
        for n, p in params.items()
        if n in named and p.default is inspect.Parameter.empty and n not in top
    ]
    if required:
        raise KeyNotFoundError(
            f"the inputs miss {format_keys(required)}, which {type(model).__name__}.forward "
            f"requires; it takes {format_keys(named)} and the inputs hold {format_keys(top)}"
        )
