"""The model adapter's output side: find the output to explain in whatever the model returns.

Models return a tensor, a tuple, a dict, a Hugging Face ``ModelOutput`` or a TensorDict.
``output=`` picks one entry (a tuple index, a dict key, a ModelOutput field, a possibly nested
TensorDict key); by default: the tensor itself, element 0 of a tuple, ``logits`` (else the
first entry) of a dict or ModelOutput, the last ``out_key`` of a ``tensordict.nn`` module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .errors import InputError, InputTypeError, KeyNotFoundError, format_keys
from .lazy import is_tensordict
from .paths import describe


def read_output(output: Any, key: Any, model: Any = None) -> Tensor:
    """The tensor ``output[key]`` (or the default entry when ``key`` is None)."""
    if key is None:
        value = _default_entry(output, model)
    else:
        value = _entry(output, key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # a model that returns a Python number (``net(x).sum().item()``): one value for the
        # whole forward call, as captum accepts for perturbation methods
        return torch.tensor(value, dtype=torch.float64 if isinstance(value, float) else None)
    if isinstance(value, torch.futures.Future):
        raise InputTypeError(
            "the model returned a torch.futures.Future: call attribute_future() (perturbation "
            "methods), or make the model return its tensor"
        )
    if not isinstance(value, Tensor):
        where = "the model's output" if key is None else f"output {key!r}"
        raise InputTypeError(
            f"{where} is {describe(value)}, not a tensor: tdlens explains tensor outputs. "
            "Pick a tensor entry with output=<index or key>, or wrap the model so that it "
            "returns one"
        )
    return value


def output_keys(output: Any) -> list[Any]:
    """The keys ``output=`` can take for this model output."""
    if is_tensordict(output):
        return list(output.keys(include_nested=True, leaves_only=True))
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        return list(output.keys())
    if isinstance(output, (tuple, list)):
        return list(range(len(output)))
    return []


def _default_entry(output: Any, model: Any) -> Any:
    if isinstance(output, Tensor):
        return output
    if is_tensordict(output):
        out_keys = list(getattr(model, "out_keys", []) or [])
        if not out_keys:
            raise InputTypeError(
                "the model returned a TensorDict and declares no out_keys; name the entry to "
                f"explain with output=, one of {format_keys(output_keys(output))}"
            )
        return output.get(out_keys[-1])
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        keys = list(output.keys())
        if not keys:
            raise InputTypeError("the model returned an empty mapping: nothing to explain")
        return output["logits"] if "logits" in keys else output[keys[0]]
    if isinstance(output, (tuple, list)):
        if not output:
            raise InputTypeError("the model returned an empty sequence: nothing to explain")
        first = output[0]
        if len(output) > 1 and isinstance(first, Tensor) and first.dim() == 0:
            # (loss, logits): entry 0 is one number for the batch, never what a user means
            raise InputError(
                f"the model returns a {type(output).__name__} of {len(output)} entries "
                f"({', '.join(describe(v) for v in output)}) and entry 0, explained by "
                "default, is a single number (a loss?); pick the entry to explain with "
                "output=<index>, e.g. output=1"
            )
        return first
    return output


def _entry(output: Any, key: Any) -> Any:
    if isinstance(output, Tensor):
        raise KeyNotFoundError(
            f"output={key!r} selects an entry, but the model returns a single tensor of shape "
            f"{list(output.shape)}; drop output= (or give a module path to explain an "
            "internal activation)"
        )
    try:
        if is_tensordict(output):
            if key in output.keys(include_nested=True):
                return output.get(key)
            raise KeyError(key)
        if isinstance(key, int) and isinstance(output, Mapping) and not hasattr(output, "to_tuple"):
            return list(output.values())[key]
        return output[key]
    except (KeyError, IndexError, TypeError):
        raise KeyNotFoundError(
            f"the model's output has no entry {key!r}; its entries are "
            f"{format_keys(output_keys(output))}"
        ) from None
