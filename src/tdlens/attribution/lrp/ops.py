"""The operations relevance passes through, as the rules see them.

Relevance is carried the way gradient times input carries it: a tensor ``a`` that receives the
"gradient" ``g`` holds the relevance ``a * g``. Operations that are linear and homogeneous
(reshapes, indexing, concatenation, sums, scaling by a constant, additions of two activations)
then conserve relevance with their ordinary backward, so only the operations below need rules:

- :class:`LinearOp`: a call with a constant weight (``F.linear``, ``F.conv1d/2d/3d``,
  ``torch.addmm`` as in GPT-2's ``Conv1D``), ``z = f(x, W) + b``;
- element-wise non-linear functions, products of two activations, softmax, normalisation,
  attention (see :mod:`tdlens.attribution.lrp.mode`).

A rule's backward gets the gradient ``g`` of the output ``z`` (so the relevance ``z * g``) and
returns the gradient at the input ``x`` (the relevance divided by ``x``, or a form that needs
no division).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BackwardFn = Callable[[Tensor], Tensor]

_CONV = {"conv1d": (1, F.conv1d), "conv2d": (2, F.conv2d), "conv3d": (3, F.conv3d)}
_CONV_OPTIONS = ("stride", "padding", "dilation", "groups")


def stabilise(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)``, with ``sign(0) = 1`` (no division by zero)."""
    if epsilon == 0:
        return torch.where(z == 0, torch.ones_like(z), z)
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z)


def divide(relevance: Tensor, x: Tensor) -> Tensor:
    """The gradient that carries ``relevance`` at ``x``: ``relevance / x``, 0 where ``x == 0``
    (relevance a rule gives to a zero input has nowhere to go in this representation)."""
    zero = x == 0
    return torch.where(zero, torch.zeros_like(relevance), relevance / torch.where(zero, 1.0, x))


def is_variable(value: Any) -> bool:
    """Whether ``value`` is an activation the backward pass goes through (not a parameter, a
    view of one, or a constant)."""
    if not isinstance(value, Tensor) or not value.requires_grad:
        return False
    return not isinstance(value, nn.Parameter) and not isinstance(value._base, nn.Parameter)


class _Relay(torch.autograd.Function):
    """Returns a precomputed value; the backward is given, one gradient per input."""

    @staticmethod
    def forward(ctx: Any, backward: Callable[..., Any], holder: dict, *inputs: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rule = backward
        return holder.pop("value")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        grads = ctx.rule(grad)
        return (None, None, *(grads if isinstance(grads, tuple) else (grads,)))


def relay(inputs: tuple[Tensor, ...], value: Tensor, backward: Callable[[Tensor], Any]) -> Tensor:
    """``value`` (computed without a graph) as a function of ``inputs`` whose backward is
    ``backward(grad) -> gradient of each input`` (a tuple, or one tensor for one input)."""
    return _Relay.apply(backward, {"value": value.detach()}, *inputs)


class LinearOp:
    """One call ``z = f(x, W) + b`` with a constant weight: ``forward`` at other inputs or
    weights, and ``vjp``, the gradient at ``x`` of ``<grad, f(x, W)>`` for a weight ``W``.

    Args:
        kind: ``"linear"`` or ``"conv1d/2d/3d"``.
        x: the input (detached); weight and bias as ``F.linear`` / ``F.convNd`` take them.
        options: the convolution's stride, padding, dilation and groups.
    """

    def __init__(
        self, kind: str, x: Tensor, weight: Tensor, bias: Tensor | None, options: dict[str, Any]
    ) -> None:
        self.kind, self.x, self.weight, self.bias, self.options = kind, x, weight, bias, options

    @classmethod
    def parse(cls, name: str, args: tuple, kwargs: dict) -> tuple[LinearOp, Tensor] | None:
        """The op of an intercepted call and the input tensor the graph continues through, or
        ``None`` when the call is not one with a constant weight and a variable input."""
        if name == "linear":
            bound = dict(zip(("input", "weight", "bias"), args), **kwargs)
            x, w, b = bound.get("input"), bound.get("weight"), bound.get("bias")
            kind, options = "linear", {}
        elif name in _CONV:
            bound = dict(zip(("input", "weight", "bias", *_CONV_OPTIONS), args), **kwargs)
            x, w, b = bound.get("input"), bound.get("weight"), bound.get("bias")
            kind = name
            options = {k: bound[k] for k in _CONV_OPTIONS if k in bound}
        elif name == "addmm":  # torch.addmm(bias, x, W): GPT-2's Conv1D
            bound = dict(zip(("input", "mat1", "mat2"), args), **kwargs)
            if bound.get("beta", 1) != 1 or bound.get("alpha", 1) != 1:
                return None
            x, w, b = bound.get("mat1"), bound.get("mat2"), bound.get("input")
            if not isinstance(w, Tensor) or w.dim() != 2:
                return None
            w, kind, options = w.t(), "linear", {}
        else:
            return None
        if not is_variable(x) or not isinstance(w, Tensor) or is_variable(w) or is_variable(b):
            return None
        assert isinstance(x, Tensor)
        bias = b.detach() if isinstance(b, Tensor) else None
        return cls(kind, x.detach(), w.detach(), bias, options), x

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        return _CONV[self.kind][1](x, weight, bias, **self.options)

    def vjp(self, grad: Tensor, weight: Tensor, x: Tensor | None = None) -> Tensor:
        """``d <grad, f(x, weight)> / dx`` (the gradient of the layer with that weight)."""
        x = self.x if x is None else x
        if self.kind == "linear":
            return grad.matmul(weight.to(grad.dtype)).reshape(x.shape)
        options = self.options
        if not isinstance(options.get("padding", 0), str):
            dims = _CONV[self.kind][0]
            expand = lambda v: (v,) * dims if isinstance(v, int) else tuple(v)  # noqa: E731
            result = torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                None,
                expand(options.get("stride", 1)),
                expand(options.get("padding", 0)),
                expand(options.get("dilation", 1)),
                False,
                (0,) * dims,
                options.get("groups", 1),
                (True, False, False),
            )
            return result[0]
        with torch.enable_grad():  # 'same' / 'valid' padding: let autograd work it out
            leaf = x.detach().requires_grad_()
            (dx,) = torch.autograd.grad(self.forward(leaf, weight), leaf, grad)
        return dx

    def output(self) -> Tensor:
        return self.forward(self.x, self.weight, self.bias)


_SDPA = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def attention_parts(args: tuple, kwargs: dict) -> tuple[Tensor, Tensor, Tensor, Any, float, float]:
    """``F.scaled_dot_product_attention``'s arguments as ``q, k, v, mask, scale, dropout_p``:
    grouped key/value heads repeated, ``is_causal`` made a boolean mask."""
    bound = dict(zip(_SDPA, args), **kwargs)
    q, k, v = bound["query"], bound["key"], bound["value"]
    if bound.get("enable_gqa") and q.shape[-3] != k.shape[-3]:
        repeat = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(repeat, -3), v.repeat_interleave(repeat, -3)
    mask = bound.get("attn_mask")
    if bound.get("is_causal"):
        ones = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device)
        mask = ones.tril()
    scale = bound.get("scale") or 1 / math.sqrt(q.shape[-1])
    return q, k, v, mask, scale, float(bound.get("dropout_p") or 0.0)


def masked(scores: Tensor, mask: Any) -> Tensor:
    """Attention scores with a boolean (keep where true) or additive mask applied."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask
