"""The model adapter's input side: any input structure as keyed leaves, and the way back.

Users pass a tensor, a tuple (positional arguments), a dict (keyword arguments) or a
``TensorDict``. :class:`InputBatch` flattens them to ``{key: leaf}`` (keys are positions,
names, or tuples for nested TensorDict entries), knows which leaves are attributed, calls the
model on replacement leaves, and packs per-key results back into the user's structure.
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from .errors import InputError, InputTypeError, KeyNotFoundError, format_keys
from .lazy import is_tensordict, is_tensordict_module

Key = Any  # int (position), str (keyword) or tuple[str, ...] (nested TensorDict key)


class InputBatch:
    """User inputs as keyed leaves: which are attributed, the batch size, and how to call.

    Attributes:
        kind: ``"tensor"``, ``"tuple"``, ``"dict"`` or ``"tensordict"``.
        leaves: every entry of the inputs, attributed or passed through.
        attributed: the keys attributed, in input order.
        batch_size: B, the size of the first dimension of every attributed leaf.
    """

    def __init__(
        self,
        kind: str,
        leaves: dict[Key, Any],
        attributed: Sequence[Key],
        batch_size: int,
        td_batch_shape: torch.Size | None = None,
        n_positional: int = 0,
    ) -> None:
        self.kind = kind
        self.leaves = leaves
        self.attributed = tuple(attributed)
        self.batch_size = batch_size
        self._td_batch_shape = td_batch_shape
        self._n_positional = n_positional

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        inputs: Any,
        *,
        keys: Any = None,
        additional_forward_args: Any = None,
        require_float: bool = True,
        need_attributed: bool = True,
    ) -> InputBatch:
        """Flatten ``inputs`` and check the attributed leaves.

        Args:
            inputs: a tensor, tuple, dict or TensorDict.
            keys: the keys to attribute; by default every floating-point tensor leaf.
            additional_forward_args: captum's extra positional arguments, passed through.
            require_float: gradient methods need floating-point attributed leaves.
            need_attributed: whether at least one input must be attributed (not with
                ``layer=``, where token ids may be all the model takes).
        """
        if isinstance(inputs, Tensor):
            kind, leaves = "tensor", {0: inputs}
        elif is_tensordict(inputs):
            kind = "tensordict"
            leaves = _tensordict_leaves(inputs)
        elif isinstance(inputs, Mapping):
            kind, leaves = "dict", dict(inputs)
        elif isinstance(inputs, (tuple, list)):
            kind, leaves = "tuple", dict(enumerate(inputs))
        else:
            raise InputTypeError(
                f"inputs must be a tensor, a tuple of tensors (positional arguments), a dict "
                f"(keyword arguments) or a TensorDict; got {type(inputs).__name__}"
            )
        if not leaves:
            raise InputError("inputs are empty: pass at least one tensor to attribute")
        n_positional = len(leaves) if kind in ("tensor", "tuple") else 0
        if additional_forward_args is not None:
            if kind not in ("tensor", "tuple"):
                raise InputError(
                    "additional_forward_args goes with tensor or tuple inputs; with dict or "
                    "TensorDict inputs put the extra arguments in the dict: non-float entries "
                    "and entries not named in keys= are passed to the model unchanged"
                )
            extra = (
                additional_forward_args
                if isinstance(additional_forward_args, tuple)
                else (additional_forward_args,)
            )
            kind = "tuple" if kind == "tuple" or extra else kind
            start = len(leaves)
            leaves.update({start + i: v for i, v in enumerate(extra)})
            if keys is None:
                keys = [k for k in range(start) if _is_float(leaves[k])]
        if not need_attributed and keys is None and not any(map(_is_float, leaves.values())):
            keys = []
        attributed = cls._attributed_keys(kind, leaves, keys, require_float)
        batch_size = cls._batch_size(inputs, kind, leaves, attributed)
        if batch_size == 0:
            # decided once for every entry point: an error, not an empty result, since an
            # empty batch is almost always a bug upstream (an exhausted or filtered loader)
            raise InputError(
                "inputs hold an empty batch (first dimension 0): there is nothing to attribute. "
                "Skip empty batches before the call (e.g. `if x.shape[0]: ...`)"
            )
        td_shape = inputs.batch_size if kind == "tensordict" else None
        batch = cls(kind, leaves, attributed, batch_size, td_shape, n_positional)
        batch._single = kind == "tensor" or (  # type: ignore[attr-defined]
            isinstance(inputs, Tensor) and additional_forward_args is not None
        )
        return batch

    @staticmethod
    def _attributed_keys(
        kind: str, leaves: dict[Key, Any], keys: Any, require_float: bool
    ) -> list[Key]:
        if keys is None:
            chosen = [k for k, v in leaves.items() if _is_float(v)]
            if not chosen and not require_float:
                # perturbation methods need no gradient: integer or boolean inputs (categorical
                # features) are attributed by replacing or permuting their values
                chosen = [
                    k
                    for k, v in leaves.items()
                    if isinstance(v, Tensor) and v.dim() and not v.is_complex()
                ]
            if not chosen:
                raise InputError(
                    f"no floating-point input to attribute: the inputs are "
                    f"{_describe_leaves(leaves)}; name the keys to attribute with keys=[...] "
                    "(integer inputs such as token ids take a layer= on their embedding instead)"
                )
            return chosen
        if isinstance(keys, (str, int)) or (kind == "tensordict" and isinstance(keys, tuple)):
            keys = [keys]
        chosen = []
        for key in keys:
            if key not in leaves:
                raise KeyNotFoundError(
                    f"keys= names {key!r}, which is not an input; the inputs are "
                    f"{format_keys(leaves)}"
                )
            value = leaves[key]
            if not isinstance(value, Tensor):
                raise InputTypeError(f"input {key!r} is a {type(value).__name__}, not a tensor")
            if require_float and not value.is_floating_point():
                raise InputTypeError(
                    f"input {key!r} has dtype {value.dtype}: gradients need a floating-point "
                    "input. Cast it to float if it is continuous, or attribute to the output of "
                    "the layer that embeds it with layer='<embedding module path>'"
                )
            chosen.append(key)
        return chosen

    @staticmethod
    def _batch_size(inputs: Any, kind: str, leaves: dict[Key, Any], attributed: list[Key]) -> int:
        if kind == "tensordict":
            if inputs.batch_dims == 0:
                raise InputError(
                    "a TensorDict input needs a batch dimension: build it with "
                    "batch_size=[B] (got batch_size=[])"
                )
            return int(inputs.batch_size[0])
        if not attributed:  # layer attribution of integer-only inputs
            tensors = [v for v in leaves.values() if isinstance(v, Tensor) and v.dim()]
            if not tensors:
                raise InputError("inputs hold no tensor with a batch dimension")
            return int(tensors[0].shape[0])
        sizes = {k: leaves[k].shape[0] if leaves[k].dim() else None for k in attributed}
        if None in sizes.values():
            scalar = [k for k, s in sizes.items() if s is None]
            raise InputError(
                f"input {scalar[0]!r} is a 0-dim tensor; attributed inputs need a batch "
                "dimension first (use x.unsqueeze(0) for a single example)"
            )
        if len(set(sizes.values())) > 1:
            shapes = ", ".join(f"{k!r}: {list(leaves[k].shape)}" for k in attributed)
            raise InputError(
                f"attributed inputs disagree on the batch size (first dimension): {shapes}"
            )
        return int(next(iter(sizes.values())) or 0)

    # -- checks --------------------------------------------------------------------------------
    def check_finite(self) -> None:
        """Raise if an attributed input holds NaN (or inf): attributions would be NaN."""
        for key in self.attributed:
            value = self.leaves[key]
            if value.is_floating_point() or value.is_complex():
                # one reduction (NaN and inf propagate into the sum), read as a Python number:
                # cheaper than a tensor isfinite on the sum, which is several kernels
                total = value.sum().item() if value.numel() else math.nan
                if cmath.isfinite(total):
                    continue
                bad = ~torch.isfinite(value)
                if not bad.any():
                    continue  # the sum overflowed; every entry is finite
                what = "NaN" if torch.isnan(value).any() else "inf"
                rows = sorted({int(i) for i in bad.reshape(bad.shape[0], -1).any(1).nonzero()})
                raise InputError(
                    f"input {key!r} contains {what} ({int(bad.sum())} entries, in examples "
                    f"{rows[:10]}); attributions of such inputs are {what} too. Clean or mask "
                    "them before attributing"
                )

    def check_dtypes(self, model: Any) -> None:
        """Raise if a floating-point attributed input has another dtype than the model's
        parameters (torch's own error names neither the input nor the fix)."""
        expected = _parameter_dtype(model)
        if expected is None:
            return
        for key in self.attributed:
            value = self.leaves[key]
            if value.is_floating_point() and value.dtype != expected:
                raise InputTypeError(
                    f"input {key!r} has dtype {value.dtype} but the model's parameters are "
                    f"{expected}; tdlens does not cast inputs silently. Cast the input "
                    f"(x.to({expected})) or the model (model.to({value.dtype}))"
                )

    # -- per-key values ------------------------------------------------------------------------
    def per_key(self, value: Any, name: str) -> dict[Key, Any]:
        """Spread a per-input option (``baselines``...) over the attributed keys.

        A scalar or single tensor applies to every attributed input; a tuple follows the
        attributed inputs (or all positional inputs); a dict or TensorDict is looked up by key.
        """
        if value is None or isinstance(value, (int, float)):
            return dict.fromkeys(self.attributed, value)
        if isinstance(value, Tensor) and (len(self.attributed) == 1 or value.dim() == 0):
            return dict.fromkeys(self.attributed, value)
        if isinstance(value, Tensor):
            raise InputError(
                f"{name} is one tensor but {len(self.attributed)} inputs are attributed "
                f"({format_keys(self.attributed)}); pass a tuple or dict with one {name} entry each"
            )
        if is_tensordict(value) or isinstance(value, Mapping):
            missing = (
                [k for k in self.attributed if k not in value.keys(include_nested=True)]
                if (is_tensordict(value))
                else [k for k in self.attributed if k not in value]
            )
            if missing:
                raise KeyNotFoundError(
                    f"{name} has no entry for input(s) {format_keys(missing)}; it has "
                    f"{format_keys(value.keys())}"
                )
            return {k: value[k] for k in self.attributed}
        if isinstance(value, (tuple, list)):
            if len(value) == len(self.attributed):
                return dict(zip(self.attributed, value))
            if self._n_positional and len(value) == self._n_positional:
                return {k: value[k] for k in self.attributed}
            raise InputError(
                f"{name} has {len(value)} entries but {len(self.attributed)} inputs are "
                f"attributed ({format_keys(self.attributed)})"
            )
        raise InputTypeError(f"{name} must be a number, tensor, tuple or dict, got {type(value)}")

    # -- calling -------------------------------------------------------------------------------
    def take_rows(
        self,
        rows: Tensor | None,
        skip: Collection[Key] = (),
        run: tuple[int, int] | None = None,
    ) -> dict[Key, Any]:
        """Every leaf at the given example indices (pass-through leaves included), except the
        leaves in ``skip`` (those the caller replaces anyway). ``run=(first, stop)``: the
        caller knows the rows are ``first..stop-1`` (``rows`` may then be ``None``)."""
        if rows is None and run is None:
            raise ValueError("take_rows needs rows or run")
        span = run if run is not None else _span(cast(Tensor, rows))
        identity = span == (0, self.batch_size)
        out = {}
        for key, value in self.leaves.items():
            if key in skip:
                continue
            if identity or not self._has_batch_dim(key, value):
                out[key] = value  # the rows are the examples in order: no copy
            elif span is not None:  # a run of consecutive examples: a view, no copy
                out[key] = value[span[0] : span[1]]
            else:
                out[key] = value.index_select(0, cast(Tensor, rows).to(value.device))
        return out

    def _has_batch_dim(self, key: Key, value: Any) -> bool:
        if not isinstance(value, Tensor) or value.dim() == 0:
            return False
        return self.kind == "tensordict" or value.shape[0] == self.batch_size

    def call(self, model: Callable[..., Any], values: dict[Key, Any]) -> Any:
        """Call ``model`` on ``values`` laid out as the user's inputs were."""
        if self.kind in ("tensor", "tuple"):
            return model(*(values[k] for k in sorted(values)))
        if self.kind == "dict":
            return model(**values)
        td = self.make_tensordict(values)
        if is_tensordict_module(model):
            return model(td)
        return model(**{k: td.get(k) for k in td.keys()})

    def rebuild(self, values: dict[Key, Any]) -> tuple[Any, Any]:
        """``values`` (one per leaf, e.g. rows of :meth:`take_rows` with some replaced) laid out
        as the user passed them: ``(inputs, additional_forward_args)``, the second ``None``
        unless the user gave captum-style extra arguments."""
        if self.kind == "dict":
            return dict(values), None
        if self.kind == "tensordict":
            return self.make_tensordict(values), None
        ordered = [values[k] for k in sorted(values)]
        n = self._n_positional or len(ordered)
        extra = tuple(ordered[n:]) or None
        if getattr(self, "_single", False):
            return ordered[0], extra
        return tuple(ordered[:n]), extra

    def make_tensordict(self, values: dict[Key, Any]) -> Any:
        from tensordict import TensorDict

        rows = next(v.shape[0] for v in values.values() if isinstance(v, Tensor) and v.dim())
        shape = torch.Size([rows, *(self._td_batch_shape or ())[1:]])
        td = TensorDict({}, batch_size=shape)
        for key, value in values.items():
            if isinstance(value, Tensor):
                td.set(key, value)
            else:
                td.set_non_tensor(key, getattr(value, "data", value))
        return td

    # -- results -------------------------------------------------------------------------------
    def pack(self, per_key: dict[Key, Tensor], extra_dims: int = 0) -> Any:
        """Per-key results (``[B, *extra, *leaf_shape[1:]]``) in the user's input structure."""
        if getattr(self, "_single", False):
            return per_key[self.attributed[0]]
        if self.kind == "tuple":
            return tuple(per_key[k] for k in self.attributed)
        if self.kind == "dict":
            return {k: per_key[k] for k in self.attributed}
        from tensordict import TensorDict

        first = per_key[self.attributed[0]]
        td = TensorDict({}, batch_size=first.shape[: 1 + extra_dims])
        for key in self.attributed:
            td.set(key, per_key[key])
        return td


def _tensordict_leaves(td: Any) -> dict[Key, Any]:
    """Every leaf of a TensorDict, non-tensor data (strings, flags) included as plain values."""
    import tensordict.base

    is_leaf = getattr(tensordict.base, "_is_leaf_nontensor", None)
    keys = td.keys(include_nested=True, leaves_only=True, is_leaf=is_leaf)
    leaves = {}
    for key in keys:
        value = td.get(key)
        leaves[key] = value if isinstance(value, Tensor) else td.get_non_tensor(key)
    return leaves


def _parameter_dtype(model: Any) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (None: no such parameter)."""
    parameters = getattr(model, "parameters", None)
    if not isinstance(model, torch.nn.Module) or parameters is None:
        return None
    return next((p.dtype for p in parameters() if p.is_floating_point()), None)


def _is_float(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point()


def _describe_leaves(leaves: dict[Key, Any]) -> str:
    parts = []
    for key, value in leaves.items():
        if isinstance(value, Tensor):
            parts.append(f"{key!r}: {value.dtype} {list(value.shape)}")
        else:
            parts.append(f"{key!r}: {type(value).__name__}")
    return "{" + ", ".join(parts) + "}"


def _span(rows: Tensor) -> tuple[int, int] | None:
    """``(first, stop)`` when ``rows`` is ``first, first + 1, ..., stop - 1``."""
    n = rows.shape[0]
    if n == 0 or rows.dim() != 1:
        return None
    first = int(rows[0])
    if int(rows[-1]) != first + n - 1:
        return None
    if n > 2 and not bool((rows == torch.arange(first, first + n, device=rows.device)).all()):
        return None
    return first, first + n
