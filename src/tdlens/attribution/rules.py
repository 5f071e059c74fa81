"""Backward rules for non-linear functions, swapped in at the level of autograd.

DeepLift, guided backpropagation and deconvolution change how gradients pass through the
non-linear functions of a network. Captum hooks ``nn.Module`` activations, so it misses
functional calls (``F.relu``, ``torch.sigmoid``, ``x.tanh()``) and fails on a module used
twice. Here a :class:`~torch.overrides.TorchFunctionMode`, active only while a forward pass
builds the graph, sees every call of a non-linear function whatever its call style (module,
functional, tensor method, in place) and returns the ordinary value through a custom autograd
Function whose backward is the rule. Nothing touches the model: the Functions exist only in
the graphs built inside the mode and are freed with them.

DeepLift rules (captum's), for an input and its reference (the same call in the pass over the
baselines, paired by call order):

- **rescale** for the elementwise ``relu``, ``elu``, ``leaky_relu``, ``sigmoid``, ``tanh``,
  ``softplus``: the multiplier ``(f(x) - f(x0)) / (x - x0)``, the gradient where
  ``|x - x0| < eps``;
- **softmax**: the incoming gradient times the rescale multiplier, minus its mean along the
  softmax dimension (softmax ignores a shift of its input). Captum subtracts the mean over the
  whole batch, which mixes examples; both agree for one example;
- **max pooling** (``max_pool1d/2d/3d``): the change of each window's maximum, split between
  the input's and the reference's winning positions, divided by ``x - x0`` there.

Other non-linear functions keep their gradient (:data:`GRADIENT_FALLBACK` lists those that are
detected, so that DeepLift can say so). Products of two input-dependent tensors (gating,
attention scores) are not detected and also keep their gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ..core.errors import InputError

RESCALE = frozenset({"relu", "elu", "leaky_relu", "sigmoid", "tanh", "softplus"})
MAX_POOL = {f"max_pool{d}d{suffix}": d for d in (1, 2, 3) for suffix in ("", "_with_indices")}
GRADIENT_FALLBACK = frozenset(
    {
        *("gelu", "silu", "mish", "selu", "celu", "rrelu", "prelu", "glu", "threshold"),
        *("hardtanh", "relu6", "hardswish", "hardsigmoid", "log_sigmoid", "softsign"),
        *("tanhshrink", "softshrink", "hardshrink", "log_softmax", "softmin", "logsumexp"),
        *("layer_norm", "group_norm", "rms_norm", "instance_norm", "local_response_norm"),
        *("normalize", "lp_pool1d", "lp_pool2d", "lp_pool3d"),
        *("fractional_max_pool2d", "fractional_max_pool3d"),
        *(f"adaptive_max_pool{d}d{s}" for d in (1, 2, 3) for s in ("", "_with_indices")),
        *("exp", "log", "sqrt", "rsqrt", "sin", "cos", "erf", "pow", "__pow__", "__rpow__"),
        *("square", "reciprocal", "abs", "__abs__", "clamp", "clamp_min", "clamp_max", "clip"),
        *("max", "min", "amax", "amin", "maximum", "minimum"),
    }
)
"""Non-linear functions without a DeepLift rule: their ordinary gradient is used, and DeepLift
warns when a backward pass goes through one."""

BackwardFn = Callable[[Tensor], Tensor]


class Reference(NamedTuple):
    """A non-linear call in the pass over the baselines: its input and output (copies), and
    for max pooling the argmax indices."""

    name: str
    x: Tensor
    y: Tensor
    indices: Tensor | None = None


@dataclass
class _Call:
    """One intercepted call: the function (by name), its arguments, whether it writes in place."""

    name: str
    func: Callable[..., Any]
    args: tuple
    kwargs: dict
    inplace: bool

    @property
    def input(self) -> Any:
        return self.args[0] if self.args else None

    def original(self) -> Any:
        return self.func(*self.args, **self.kwargs)

    def run(self, x: Tensor) -> Any:
        """The function at ``x`` instead of the call's input, never writing into ``x``."""
        return self.func(x.clone() if self.inplace else x, *self.args[1:], **self.kwargs)


def _name(func: Callable[..., Any]) -> tuple[str, bool]:
    """The function's name without the in-place ``_`` (``relu_`` -> ``relu``), and whether
    the name said in place."""
    name = getattr(func, "__name__", "")
    if name.endswith("_") and not name.endswith("__"):
        return name[:-1], True
    return name, False


class _Swapped(torch.autograd.Function):
    """Returns a precomputed value; its backward is a given rule. The rule is a closure over
    the tensors it needs, never over the output (that would be a reference cycle)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, swap: dict, inplace: bool) -> Tensor:  # type: ignore[override]
        ctx.rule = swap["backward"]
        value = swap.pop("value")
        if inplace:
            ctx.mark_dirty(x)
            return x.copy_(value)
        return value

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return ctx.rule(grad), None, None


def swap_backward(call: _Call, value: Tensor, backward: BackwardFn) -> Tensor:
    """``value`` as the call's result, with ``backward`` as the gradient rule of its input."""
    return _Swapped.apply(call.input, {"value": value, "backward": backward}, call.inplace)


# -- rules ------------------------------------------------------------------------------------
def _gradient(call: _Call, x: Tensor) -> Tensor:
    """The elementwise derivative ``f'(x)`` (for the ``|x - x0| < eps`` fallback)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_()
        out = call.run(leaf)
        (grad,) = torch.autograd.grad(out, leaf, torch.ones_like(out))
    return grad


def _ratio(dy: Tensor, dx: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``dy / dx`` where ``|dx| >= eps``, and the mask of the other positions (where the
    ratio is meaningless and the caller puts the gradient instead)."""
    near = dx.abs() < eps
    return dy / torch.where(near, torch.ones_like(dx), dx), near


def rescale(call: _Call, x: Tensor, ref: Reference, eps: float) -> tuple[Tensor, BackwardFn]:
    """Elementwise ``f``: multiplier ``(f(x) - f(x0)) / (x - x0)``, ``f'(x)`` where close."""
    y = call.run(x)
    multiplier, near = _ratio(y - ref.y, x - ref.x, eps)
    if near.any():
        multiplier = torch.where(near, _gradient(call, x), multiplier)
    return y, lambda grad: grad * multiplier


def softmax(call: _Call, x: Tensor, ref: Reference, eps: float) -> tuple[Tensor, BackwardFn]:
    """Rescale times the incoming gradient, made shift-invariant along the softmax dimension."""
    dim = call.kwargs.get("dim", call.args[1] if len(call.args) > 1 else None)
    if dim is None:  # F.softmax's legacy implicit dimension
        dim = 0 if x.dim() in (0, 1, 3) else 1
    y = call.run(x)
    ratio, near = _ratio(y - ref.y, x - ref.x, eps)
    y_near = y.clone() if near.any() else None  # a copy, not the output: no reference cycle
    dtype = x.dtype

    def backward(grad: Tensor) -> Tensor:
        contribution = grad * ratio
        if y_near is not None:
            exact = y_near * (grad - (grad * y_near).sum(dim, keepdim=True))
            contribution = torch.where(near, exact, contribution)
        return (contribution - contribution.mean(dim, keepdim=True)).to(dtype)

    return y, backward


_POOL_OPTIONS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def pool_with_indices(call: _Call, x: Tensor) -> tuple[Tensor, Tensor, bool]:
    """A max pooling call's output and argmax indices at ``x``, and whether the call itself
    returns the indices."""
    options = dict(zip(_POOL_OPTIONS, call.args[1:]), **call.kwargs)
    returns_indices = call.name.endswith("_with_indices") or bool(options.get("return_indices"))
    options["return_indices"] = True
    y, indices = _POOLS[MAX_POOL[call.name]](x, **options)
    return y, indices, returns_indices


def max_pool(
    call: _Call, x: Tensor, ref: Reference, eps: float
) -> tuple[Tensor, BackwardFn, Tensor | None]:
    """Each window's change ``y - y0`` goes back through both winners: ``max(y, y0) - y0`` to
    the input's argmax, ``y - max(y, y0)`` to the reference's; divided by ``x - x0``. Also
    returns the indices if the call returns them."""
    dims = MAX_POOL[call.name]
    y, where, returns_indices = pool_with_indices(call, x)
    top = torch.maximum(y, ref.y)
    to_input, to_reference = top - ref.y, y - top
    dx = x - ref.x
    near = dx.abs() < eps
    safe_dx = torch.where(near, torch.ones_like(dx), dx)
    where0 = ref.indices
    assert where0 is not None  # recorded with every max pooling call
    shape = x.shape

    def backward(grad: Tensor) -> Tensor:
        exact = _unpool(grad, where, shape, dims)
        split = _unpool(grad * to_input, where, shape, dims)
        split = split + _unpool(grad * to_reference, where0, shape, dims)
        return torch.where(near, exact, split / safe_dx)

    return y, backward, where if returns_indices else None


def _unpool(values: Tensor, indices: Tensor, shape: torch.Size, dims: int) -> Tensor:
    """Sum each pooled value into its argmax (overlapping windows add up)."""
    flat = values.new_zeros((*shape[:-dims], math.prod(shape[-dims:])))
    flat.scatter_add_(-1, indices.flatten(-dims), values.flatten(-dims))
    return flat.view(shape)


# -- modes ------------------------------------------------------------------------------------
class _RuleMode(TorchFunctionMode):
    """Sees every torch function call and hands those named in ``names`` to :meth:`handle`."""

    names: frozenset[str] = frozenset()

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        name, inplace_name = _name(func)
        if name not in self.names:
            return func(*args, **kwargs)
        if not args and "input" in kwargs:  # torch.relu(input=x)
            kwargs = dict(kwargs)
            args = (kwargs.pop("input"),)
        if not args or not isinstance(args[0], Tensor):
            return func(*args, **kwargs)
        inplace = inplace_name or bool(kwargs.get("inplace"))
        return self.handle(_Call(name, func, tuple(args), kwargs, inplace))

    def handle(self, call: _Call) -> Any:
        raise NotImplementedError


def _needs_rule(x: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def _clamp_negative(grad: Tensor) -> Tensor:
    return grad.clamp(min=0)


class ReluMode(_RuleMode):
    """ReLU backward passes only positive gradients: ``relu(grad) * (x > 0)`` (guided
    backpropagation) or ``relu(grad)`` (deconvolution, which ignores the forward mask)."""

    names = frozenset({"relu"})

    def __init__(self, deconvolution: bool = False) -> None:
        super().__init__()
        self.deconvolution = deconvolution

    def handle(self, call: _Call) -> Any:
        if not _needs_rule(call.input):
            return call.original()
        if not self.deconvolution and not call.inplace:
            # Guided backprop is relu's own backward (mask x > 0) of a clamped gradient: a
            # hook on the output clamps it, no second forward and no custom Function needed.
            y = call.original()
            y.register_hook(_clamp_negative)
            return y
        with torch.no_grad():
            y = call.run(call.input.detach())
        if self.deconvolution:
            return swap_backward(call, y, lambda grad: grad.clamp(min=0))
        # relu's own backward kernel masks by y > 0 (the same as x > 0): two cheap ops in the
        # backward pass and no mask tensor kept from the forward one
        return swap_backward(
            call, y, lambda grad: torch.ops.aten.threshold_backward(grad.clamp(min=0), y, 0)
        )


class DeepLiftMode(_RuleMode):
    """Records the inputs of non-linear calls in a pass over the references, then, in the pass
    over the inputs, gives the k-th call the DeepLift rule against the k-th recorded one.

    Use ``with mode.recording(): ...`` then ``with mode.replaying(): ...``. Pairing by call
    order holds whatever the layout of the tensors (batch first or not), as long as the model
    runs the same non-linear calls on inputs and references.
    """

    names = RESCALE | set(MAX_POOL) | {"softmax"} | GRADIENT_FALLBACK

    def __init__(self, eps: float = 1e-10) -> None:
        super().__init__()
        self.eps = eps
        self.references: list[Reference] = []
        self.position = 0
        self.is_recording = True
        self.fallbacks: set[str] = set()

    def recording(self) -> DeepLiftMode:
        self.references, self.is_recording = [], True
        return self

    def replaying(self) -> DeepLiftMode:
        self.position, self.is_recording = 0, False
        return self

    def handle(self, call: _Call) -> Any:
        x = call.input
        if call.name in GRADIENT_FALLBACK:
            out = call.original()
            if not self.is_recording:
                self._watch(call.name, out)
            return out
        pool = call.name in MAX_POOL
        if self.is_recording:
            x0 = x.detach().clone()  # before the call: it may write in place
            if pool:
                y0, where0, returns_indices = pool_with_indices(call, x)
                self.references.append(Reference(call.name, x0, y0.clone(), where0))
                return (y0, where0) if returns_indices else y0
            y0 = call.original()
            self.references.append(Reference(call.name, x0, y0.detach().clone()))
            return y0
        ref = self._reference(call)
        if not _needs_rule(x):
            return call.original()
        indices: Tensor | None = None
        with torch.no_grad():
            if pool:
                y, backward, indices = max_pool(call, x.detach(), ref, self.eps)
            else:
                rule = softmax if call.name == "softmax" else rescale
                y, backward = rule(call, x.detach(), ref, self.eps)
        out = swap_backward(call, y, backward)
        return out if indices is None else (out, indices)

    def _watch(self, name: str, out: Any) -> None:
        """Note ``name`` if a backward pass goes through this call (only those matter)."""
        for value in out if isinstance(out, tuple) else (out,):
            if isinstance(value, Tensor) and value.requires_grad:
                value.register_hook(lambda grad: self.fallbacks.add(name))

    def _reference(self, call: _Call) -> Reference:
        x = call.input
        if self.position < len(self.references):
            ref = self.references[self.position]
            if ref.name == call.name and ref.x.shape == x.shape:
                self.position += 1
                return ref
            seen = f"{ref.name}{list(ref.x.shape)}"
        else:
            seen = "no call"
        raise InputError(
            f"DeepLift pairs each non-linear call on the inputs with the same call on the "
            f"baselines, but call {self.position + 1} is {call.name}{list(x.shape)} on the "
            f"inputs and {seen} on the baselines: the model must run the same operations on "
            "both (no control flow that depends on the input values)"
        )

    def check_replayed(self) -> None:
        """Raise if the pass over the inputs made fewer non-linear calls than the references;
        then forget the references (the rules keep what their backward needs)."""
        references, self.references = self.references, []
        if self.position != len(references):
            ref = references[self.position]
            raise InputError(
                f"DeepLift: the baselines ran {len(references)} non-linear calls but the "
                f"inputs only {self.position} (the next was {ref.name}{list(ref.x.shape)}): "
                "the model must run the same operations on both"
            )
