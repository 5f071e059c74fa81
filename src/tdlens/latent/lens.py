"""The logit lens: read each layer's hidden state through the model's final norm and
unembedding, as if the network stopped there.

For Hugging Face causal language models the unembedding (``get_output_embeddings()``), the
final norm (the last norm module of the base model outside its layer stack) and the layers
(the base model's longest ``ModuleList``) are found from the model; any other model names the
unembedding and the norm as module paths, modules or callables.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import _TrainingBuffers
from ..core.errors import InputError, InputTypeError
from ..core.hooks import HookSet, _call
from ..core.paths import ModulePath, get_module, resolve_paths

Readout = str | nn.Module | Callable[[Tensor], Tensor]


def logit_lens(
    model: nn.Module,
    inputs: Any,
    *,
    paths: str | list[str] | None = None,
    unembed: Readout | None = None,
    norm: Readout | bool | None = None,
    top_k: int | None = None,
) -> Any:
    """Logits read from the hidden state after each path, from one forward pass.

    Args:
        model: the model (a Hugging Face causal LM, or any module with ``unembed=``).
        inputs: what the model takes: token ids, a dict (``input_ids``, ``attention_mask``),
            a tuple or a TensorDict.
        paths: the layers to read (globs allowed), e.g. ``"transformer.h.*"``; by default
            every layer of a Hugging Face model. A module returning a tuple is read at [0].
        unembed: the unembedding (path, module or callable ``[..., D] -> [..., V]``); by
            default the Hugging Face model's output embeddings.
        norm: the final norm applied before the unembedding (path, module or callable);
            found in Hugging Face models by default; ``False`` for none.
        top_k: return ``(values, indices)`` of the top-k logits ``[P, B, T, k]`` instead of
            the full logits (computed one path at a time, so ``[P, B, T, V]`` is never held).

    Returns:
        ``[P, B, T, V]`` logits (P paths, in module order), or ``torch.return_types.topk``.

    Example:
        >>> lens = latent.logit_lens(gpt2, input_ids)                # [n_layer, B, T, V]
        >>> lens[-1]                                                 # = gpt2(input_ids).logits
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"the model must be an nn.Module, got {type(model).__name__}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
    resolved = resolve_paths(model, paths if paths is not None else _default_layers(model))
    readout_unembed = _readout(model, unembed if unembed is not None else _hf_unembed(model))
    if norm is False:
        readout_norm: Callable[[Tensor], Tensor] = _identity
    elif norm is None:
        found = _hf_norm(model)
        readout_norm = _identity if found is None else _readout(model, found)
    else:
        readout_norm = _readout(model, norm)

    hidden: dict[ModulePath, Tensor] = {}

    def capture(path: ModulePath, value: Any) -> None:
        if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
            value = value[0]
        if not isinstance(value, Tensor):
            raise InputTypeError(
                f"{str(path)!r} holds {type(value).__name__}, not a tensor; select the hidden "
                f"state with a selector, e.g. '{path.module}:output[0]'"
            )
        hidden[path] = value.detach()

    buffers = _TrainingBuffers(model)  # a training-mode BatchNorm would move its statistics
    with torch.no_grad():
        with HookSet() as hooks:
            for path in resolved:
                hooks.on_site(model, path, functools.partial(capture, path))
            try:
                _call(model, inputs)
            finally:
                buffers.restore()
        missing = [str(p) for p in resolved if p not in hidden]
        if missing:
            raise InputError(f"path(s) {missing} did not run in the forward pass")
        if top_k is None:
            return torch.stack([readout_unembed(readout_norm(hidden[p])) for p in resolved])
        tops = [readout_unembed(readout_norm(hidden[p])).topk(top_k, dim=-1) for p in resolved]
        return torch.return_types.topk(
            (torch.stack([t.values for t in tops]), torch.stack([t.indices for t in tops]))
        )


def _identity(x: Tensor) -> Tensor:
    return x


def _readout(model: nn.Module, spec: Any) -> Callable[[Tensor], Tensor]:
    if isinstance(spec, str):
        path = resolve_paths(model, spec)
        if len(path) != 1:
            raise InputError(f"{spec!r} names {len(path)} modules; name one")
        return get_module(model, path[0])
    if callable(spec):
        return spec
    raise InputTypeError(
        f"unembed= and norm= take a module path, a module or a callable, got {type(spec).__name__}"
    )


def _hf_unembed(model: nn.Module) -> nn.Module:
    getter = getattr(model, "get_output_embeddings", None)
    found = getter() if callable(getter) else None
    if not isinstance(found, nn.Module):
        raise InputError(
            f"{type(model).__name__} has no output embeddings that tdlens can find; name the "
            "unembedding, e.g. unembed='lm_head' (and the final norm, e.g. norm='ln_f')"
        )
    return found


def _base(model: nn.Module) -> tuple[str, nn.Module]:
    base = getattr(model, "base_model", None)
    if not isinstance(base, nn.Module) or base is model:
        return "", model
    prefix = next((name for name, m in model.named_modules() if m is base), "")
    return prefix, base


def _hf_norm(model: nn.Module) -> str | None:
    """The final norm: the last norm module of the base model that is not inside a layer."""
    if not hasattr(model, "config"):
        return None
    prefix, base = _base(model)
    found = None
    for name, module in base.named_modules():
        inside_layer = any(part.isdigit() for part in name.split("."))
        if name and not inside_layer and "norm" in type(module).__name__.lower():
            found = f"{prefix}.{name}" if prefix else name
    return found


def _default_layers(model: nn.Module) -> str:
    prefix, base = _base(model)
    lists = [
        (len(m), name) for name, m in base.named_modules() if isinstance(m, nn.ModuleList) and name
    ]
    if not hasattr(model, "config") or not lists:
        raise InputError(
            f"name the layers to read for {type(model).__name__}, e.g. paths='blocks.*'"
        )
    _, name = max(lists)
    return f"{prefix}.{name}.*" if prefix else f"{name}.*"
