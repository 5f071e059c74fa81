"""Swap a module's output for a user module's output inside a ``with`` block: sparse
autoencoders, transcoders, adapters. Only a hook is added, and it is removed on exit.

    with weights.replace(model, "encoder.layer.3.output", sae, keep_error=True):
        logits = model(x)          # unchanged: sae(x) + (x - sae(x))
        with tdlens.Scope(sae) as s:
            s.set("encoder", lambda f: f * keep)   # edit a latent: only the edit propagates
            edited = model(x)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from ..core.errors import InputError, InputTypeError
from ..core.hooks import HookSet
from ..core.paths import ModulePath, resolve_paths


@contextmanager
def replace(
    model: nn.Module,
    path: str,
    replacement: nn.Module | Callable[[Tensor], Tensor],
    *,
    keep_error: bool = False,
    read: str | None = None,
) -> Iterator[nn.Module]:
    """Inside the block, the value at ``path`` becomes ``replacement(value)``.

    Args:
        model: the model (only a hook is added; it is removed on exit).
        path: the module path whose output (or ``:input``) is replaced.
        replacement: a module or callable ``[..., D] -> [..., D]`` (SAE, adapter).
        keep_error: add back the reconstruction error, ``x - clean(x)``, where ``clean`` is
            the replacement run with its own hooks switched off: without edits the rest of the
            model sees the original activation; edits made by hooks on the replacement (for
            instance ``tdlens.Scope(sae).set(...)`` on a latent) change it by exactly the edit.
        read: a different path whose value feeds the replacement (a transcoder reads an MLP's
            input and replaces its output); default ``path`` itself.

    Raises:
        InputError: the replacement's output shape differs from the activation's (both shown).

    Example:
        >>> with weights.replace(model, "blocks.2.mlp", sae, keep_error=True):
        ...     logits = model(tokens)
    """
    if not callable(replacement):
        raise InputTypeError(
            f"replacement must be a module or a callable, got {type(replacement).__name__}"
        )
    (site,) = _one(model, path)
    source = _one(model, read)[0] if read is not None else None
    seen: dict[str, Tensor] = {}

    def remember(value: Any) -> None:
        seen["input"] = value

    def swap(value: Any) -> Any:
        if not isinstance(value, Tensor):
            raise InputTypeError(
                f"{path!r} holds {type(value).__name__}, not a tensor; select one with a "
                f"selector, e.g. '{site.module}:{site.site}[0]'"
            )
        x = seen.pop("input", None) if source is not None else value
        if x is None:
            raise InputError(f"read={read!r} did not run before {path!r} in the forward pass")
        new = replacement(x)
        if not isinstance(new, Tensor) or new.shape != value.shape:
            got = list(new.shape) if isinstance(new, Tensor) else type(new).__name__
            raise InputError(
                f"replace({path!r}): the replacement returns {got} but the activation it "
                f"replaces has shape {list(value.shape)}"
            )
        if keep_error:
            clean = _without_hooks(replacement, x) if _has_hooks(replacement) else new
            new = new + (value - clean)
        return new

    with HookSet() as hooks:
        if source is not None:
            hooks.on_site(model, source, remember)
        hooks.on_site(model, site, swap)
        yield model


def _one(model: nn.Module, path: str) -> list[ModulePath]:
    if not isinstance(path, str):
        raise InputTypeError(f"a module path is a string, got {type(path).__name__}")
    resolved = resolve_paths(model, path)
    if len(resolved) != 1:
        raise InputError(f"{path!r} matches {len(resolved)} modules; name one")
    return resolved


def _has_hooks(fn: Any) -> bool:
    if not isinstance(fn, nn.Module):
        return False
    return any(m._forward_hooks or m._forward_pre_hooks for m in fn.modules())


def _without_hooks(module: Any, x: Tensor) -> Tensor:
    """``module(x)`` with the forward hooks of it and its submodules set aside (and put back)."""
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in module.modules()]
    try:
        for m, _, _ in saved:
            m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
        return module(x)
    finally:
        for m, hooks, pre_hooks in saved:
            m._forward_hooks, m._forward_pre_hooks = hooks, pre_hooks
