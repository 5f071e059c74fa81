"""Which inputs captum attributes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.errors import TdlensError


def every_input(inputs: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """captum attributes every tensor of the inputs (integer ones too, for perturbation
    methods); tdlens's default is the floating-point ones."""
    if kwargs.get("keys") is None and isinstance(inputs, (Tensor, tuple)):
        count = 1 if isinstance(inputs, Tensor) else len(inputs)
        kwargs = {**kwargs, "keys": list(range(count))}
    return kwargs


def broadcast_baselines(inputs: Any, baselines: Any) -> Any:
    """captum's perturbation methods take any baseline that broadcasts to its input (``[3]``
    for ``[1, 3]``, ``[B, 1]`` for ``[B, 3]``); tdlens takes captum's documented forms only.
    Here such baselines are expanded to the input's shape; others are left for the checks."""
    if baselines is None or not isinstance(inputs, (Tensor, tuple)):
        return baselines
    single = isinstance(inputs, Tensor)
    xs = (inputs,) if single else inputs
    bases = (baselines,) if single or not isinstance(baselines, tuple) else baselines
    if len(bases) != len(xs):
        return baselines
    out = []
    for x, base in zip(xs, bases):
        if isinstance(x, Tensor) and isinstance(base, Tensor) and base.dim():
            try:
                if torch.broadcast_shapes(base.shape, x.shape) == x.shape:
                    base = base.expand(x.shape)
            except RuntimeError:
                pass
        out.append(base)
    return out[0] if single or not isinstance(baselines, tuple) else tuple(out)


_ASSERTION_TYPES: dict[type, type] = {}


def as_assertion(error: TdlensError) -> TdlensError:
    """``error`` as an instance of a subclass of its own type and of ``AssertionError``:
    captum checks arguments with ``assert``, so captum users catch ``AssertionError``; the
    message and the tdlens type (a ``ValueError`` or ``TypeError``) stay."""
    cls = type(error)
    if cls not in _ASSERTION_TYPES:
        _ASSERTION_TYPES[cls] = type(
            cls.__name__, (cls, AssertionError), {"__module__": cls.__module__}
        )
    new = _ASSERTION_TYPES[cls](*error.args)
    return new.with_traceback(error.__traceback__)


def captum_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Raise tdlens's bad-input errors of ``method`` as :func:`as_assertion` does."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except TdlensError as error:
            raise as_assertion(error) from None

    return wrapper


NO_FUTURE = ("Occlusion", "KernelShap", "Lime", "LimeBase")
"""captum has no ``attribute_future`` for these; tdlens's main classes have one."""


def no_future(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError(
        f"attribute_future is not implemented for {type(self).__name__} in captum; "
        f"tdlens.{type(self).__name__} has one"
    )


def every_output(model: Any, inputs: Any, additional_forward_args: Any) -> list[Any] | None:
    """captum's ``target=None`` for perturbation methods whose model returns several values
    per example (``[B, C, ...]``): every output is explained, and the attributions get the
    output's dimensions after the batch. The targets for that (``None`` when the output has
    one value per example, or one for the whole batch), from one forward pass."""
    from ..core.outputs import read_output
    from ..core.structure import InputBatch

    batch = InputBatch.build(
        inputs,
        additional_forward_args=additional_forward_args,
        require_float=False,
        need_attributed=False,
    )
    with torch.no_grad():
        out = batch.call(model, batch.leaves)
        if isinstance(out, torch.futures.Future):
            out = out.wait()
    if isinstance(out, (int, float)):
        return None
    values = read_output(out, None, model)
    if values.dim() < 2 or values.shape[0] != batch.batch_size or values[0].numel() == 1:
        return None
    shape = tuple(values.shape[1:])
    return [
        tuple(int(i) for i in torch.unravel_index(torch.tensor(k), shape))
        for k in range(values[0].numel())
    ]
