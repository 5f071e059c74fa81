"""LRP rules: how relevance passes one operation, each a few lines.

A rule says which kinds of operation it handles (``handles``) and, for layers with a weight
(:class:`~tdlens.attribution.lrp.ops.LinearOp`: linear, convolution, GPT-2's ``Conv1D``), how
the relevance ``R`` of the output ``z`` goes back to the input ``x``. Rules receive the gradient
``g`` of the output (the relevance is ``z * g``) and return the gradient at the input (the
relevance is ``x * g_in``); see :mod:`tdlens.attribution.lrp.ops`. With ``W+`` and ``W-`` the
positive and negative parts of the weight, ``f(x, W)`` the layer without bias, ``vjp_W(s)`` the
transposed layer and ``stab(z) = z + eps * sign(z)``:

- :class:`Epsilon`: ``R_in = x * vjp_W(R / stab(z))``; the bias and ``eps`` absorb relevance;
- :class:`Gamma`: the same with ``W + gamma W+`` (and ``b + gamma b+``) in the denominator and
  the transposed layer: favours positive contributions;
- :class:`AlphaBeta`: positive and negative contributions apart, ``alpha R+ - beta R-``
  (:class:`ZPlus` = alpha 1, beta 0);
- :class:`Flat`, :class:`WSquare`: relevance by receptive field, or by ``W**2``, whatever the
  input (first layers);
- :class:`ZBox`: inputs bounded by ``low``/``high`` (pixel layers);
- :class:`Pass`: relevance goes through unchanged (activations, or a whole module);
- :class:`Gradient`: the ordinary gradient (softmax, as in AttnLRP);
- :class:`Product`: a product of two activations gives each factor half the relevance (the
  uniform rule); attention with ``hold_attention`` gives all of it to the values (the AH rule);
- :class:`LayerNorm`: normalisation as a linear map, its scale ``1/std`` held constant.

Writing a rule: subclass :class:`Rule`, set ``handles = frozenset({"linear"})`` and return the
input relevance from :meth:`Rule.relevance` (``docs/lrp.md`` has a worked example).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ...core.errors import InputError
from .ops import BackwardFn, LinearOp, divide, stabilise

# The kinds of operation a rule may handle (see mode.CATEGORIES for the functions of each).
KINDS = frozenset({"linear", "affine", "activation", "product", "softmax", "norm"})


class Rule:
    """Base of the rules. ``handles``: the kinds of operation this rule applies to; calls of
    other kinds inside a module with this rule get the composite's rule for their kind."""

    handles: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def linear(self, op: LinearOp, z: Tensor) -> BackwardFn:
        """The backward of a layer with a weight: output gradient -> input gradient. The
        default goes through :meth:`relevance` (and divides by the input)."""
        return lambda grad: divide(self.relevance(op, z, z * grad), op.x)

    def relevance(self, op: LinearOp, z: Tensor, relevance: Tensor) -> Tensor:
        """The relevance of the input ``op.x`` given the output's, ``z`` the output."""
        raise NotImplementedError(f"{type(self).__name__} defines no rule for layers")


class Gradient(Rule):
    """The ordinary gradient: relevance ``x * dz/dx * g`` (AttnLRP's rule for softmax)."""

    handles = KINDS

    def linear(self, op: LinearOp, z: Tensor) -> BackwardFn:
        return lambda grad: op.vjp(grad, op.weight)


class Epsilon(Rule):
    """``R_in = x * W^T (R / (z + eps sign z))``: the z-rule with a stabiliser; ``eps`` and the
    bias absorb relevance (larger ``eps``: sparser, less noisy). Also applies to pooling and
    batch norm, as the affine maps they are.

    Example:
        >>> lrp.Epsilon(1e-6)
    """

    handles = frozenset({"linear", "affine"})

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = epsilon

    def ratio(self, z: Tensor) -> Tensor:
        """``z / stab(z)``: the output gradient's factor (the rest is the ordinary gradient)."""
        return z / stabilise(z, self.epsilon)

    def linear(self, op: LinearOp, z: Tensor) -> BackwardFn:
        ratio = self.ratio(z)
        return lambda grad: op.vjp(grad * ratio, op.weight)


class _ModifiedWeight(Rule):
    """``R_in = x * W'^T (R / stab(W' x + b'))``: a z-rule on modified parameters."""

    handles = frozenset({"linear"})
    epsilon: float

    def modify(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def linear(self, op: LinearOp, z: Tensor) -> BackwardFn:
        weight, bias = self.modify(op.weight, op.bias)
        ratio = z / stabilise(op.forward(op.x, weight, bias), self.epsilon)
        return lambda grad: op.vjp(grad * ratio, weight)


class Gamma(_ModifiedWeight):
    """The gamma rule: ``W + gamma W+`` (biases ``b + gamma b+``), favouring positive
    contributions; gamma 0 is the epsilon rule. ``bias="keep"`` leaves the bias as it is,
    ``"zero"`` drops it (captum's ``GammaRule`` keeps it).

    Example:
        >>> lrp.Gamma(0.25)
    """

    def __init__(self, gamma: float = 0.25, *, epsilon: float = 1e-6, bias: str = "gamma") -> None:
        if bias not in ("gamma", "keep", "zero"):
            raise InputError(f"Gamma(bias=...) is 'gamma', 'keep' or 'zero', got {bias!r}")
        self.gamma, self.epsilon, self.bias = gamma, epsilon, bias

    def modify(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        weight = weight + self.gamma * weight.clamp(min=0)
        if bias is not None and self.bias != "keep":
            bias = bias + self.gamma * bias.clamp(min=0) if self.bias == "gamma" else None
        return weight, bias


class PositiveWeights(_ModifiedWeight):
    """``W+`` only, the input as it is (captum's ``Alpha1_Beta0_Rule``; for non-negative
    inputs it is :class:`ZPlus` with the bias ``bias``: "keep" or "zero")."""

    def __init__(self, *, epsilon: float = 1e-9, bias: str = "keep") -> None:
        self.epsilon, self.bias = epsilon, bias

    def modify(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return weight.clamp(min=0), bias if self.bias == "keep" else None


class AlphaBeta(Rule):
    """Positive and negative contributions apart: ``R_in = alpha R+ - beta R-`` where ``R+``
    spreads ``R`` over the positive contributions ``x_i w_ij > 0`` (with ``b+``) and ``R-``
    over the negative ones (with ``b-``). Conserves relevance when ``alpha - beta = 1``.

    Example:
        >>> lrp.AlphaBeta(2, 1)
    """

    handles = frozenset({"linear"})

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, *, epsilon: float = 1e-6) -> None:
        if alpha - beta != 1:
            raise InputError(
                f"AlphaBeta needs alpha - beta = 1 to conserve relevance, got alpha={alpha}, "
                f"beta={beta}; e.g. AlphaBeta(2, 1) or AlphaBeta(1, 0)"
            )
        self.alpha, self.beta, self.epsilon = alpha, beta, epsilon

    def linear(self, op: LinearOp, z: Tensor) -> BackwardFn:
        x, w, b = op.x, op.weight, op.bias
        pos_x, neg_x, pos_w, neg_w = x.clamp(min=0), x.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
        pos_b = b.clamp(min=0) if b is not None else None
        neg_b = b.clamp(max=0) if b is not None else None
        z_pos = op.forward(pos_x, pos_w, pos_b) + op.forward(neg_x, neg_w)
        z_neg = op.forward(pos_x, neg_w, neg_b) + op.forward(neg_x, pos_w)
        z_pos, z_neg = z_pos + self.epsilon, z_neg - self.epsilon
        up, down = (x > 0).to(x), (x < 0).to(x)

        def backward(grad: Tensor) -> Tensor:
            r = z * grad
            s_pos, s_neg = self.alpha * r / z_pos, self.beta * r / z_neg
            through_pos = op.vjp(s_pos, pos_w) - op.vjp(s_neg, neg_w)
            through_neg = op.vjp(s_pos, neg_w) - op.vjp(s_neg, pos_w)
            return up * through_pos + down * through_neg

        return backward


class ZPlus(AlphaBeta):
    """The z+ rule: only positive contributions, ``AlphaBeta(1, 0)``."""

    def __init__(self, *, epsilon: float = 1e-6) -> None:
        super().__init__(1.0, 0.0, epsilon=epsilon)


class Flat(Rule):
    """Relevance spread evenly over each output's receptive field, whatever the input and
    weights (``x -> 1``, ``W -> 1``, no bias)."""

    handles = frozenset({"linear"})

    def __init__(self, *, epsilon: float = 1e-6) -> None:
        self.epsilon = epsilon

    def weight(self, op: LinearOp) -> Tensor:
        return torch.ones_like(op.weight)

    def relevance(self, op: LinearOp, z: Tensor, relevance: Tensor) -> Tensor:
        ones, weight = torch.ones_like(op.x), self.weight(op)
        denominator = stabilise(op.forward(ones, weight), self.epsilon)
        return op.vjp(relevance / denominator, weight, ones)


class WSquare(Flat):
    """Relevance spread by the squared weights ``w_ij**2``, whatever the input."""

    def weight(self, op: LinearOp) -> Tensor:
        return op.weight**2


class ZBox(Rule):
    """For inputs known to lie in ``[low, high]`` (pixels): ``z = W x - W+ low - W- high``,
    ``R_in = (x W - low W+ - high W-)^T R / z``. ``low``/``high``: numbers or tensors that
    broadcast to the input (per channel: shape ``[C, 1, 1]``).

    Example:
        >>> lrp.ZBox(low=-3.0, high=3.0)
    """

    handles = frozenset({"linear"})

    def __init__(self, low: Any = 0.0, high: Any = 1.0, *, epsilon: float = 1e-6) -> None:
        self.low, self.high, self.epsilon = low, high, epsilon

    def relevance(self, op: LinearOp, z: Tensor, relevance: Tensor) -> Tensor:
        x, w = op.x, op.weight
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand_as(x)
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand_as(x)
        pos_w, neg_w = w.clamp(min=0), w.clamp(max=0)
        denominator = op.forward(x, w) - op.forward(low, pos_w) - op.forward(high, neg_w)
        s = relevance / stabilise(denominator, self.epsilon)
        return x * op.vjp(s, w) - low * op.vjp(s, pos_w) - high * op.vjp(s, neg_w)


class Pass(Rule):
    """Relevance goes through unchanged: ``R_in = R_out`` element by element. The rule of
    activations (ReLU, GELU, tanh...) and of any module given it as a whole (input and output
    of the same shape), such as a custom activation or normalisation module."""

    handles = frozenset({"linear", "affine", "activation"})

    def linear(self, op: LinearOp, z: Tensor) -> BackwardFn:
        if z.shape != op.x.shape:
            raise InputError(
                f"Pass gives each input the relevance of the output at the same position, but "
                f"this layer maps {list(op.x.shape)} to {list(z.shape)}; give it Epsilon()"
            )
        return pass_through(op.x, z)


def pass_through(x: Tensor, y: Tensor) -> BackwardFn:
    """The backward of ``R_in = R_out`` element-wise: ``g * y / x`` (0 where ``x == 0``)."""
    ratio = divide(y, x)
    return lambda grad: grad * ratio


class Product(Rule):
    """A product of two activations (gating, ``q @ k^T``, attention times values): each
    factor gets ``share`` of the relevance, the other factor ``1 - share`` (the uniform rule:
    half each). With ``hold_attention``, a product with an attention pattern (a softmax
    output) gives all of it to the other factor, the pattern held constant (the AH rule)."""

    handles = frozenset({"product"})

    def __init__(self, share: float = 0.5, *, hold_attention: bool = False) -> None:
        if not 0 <= share <= 1:
            raise InputError(f"Product(share=...) is between 0 and 1, got {share}")
        self.share, self.hold_attention = share, hold_attention


class LayerNorm(Rule):
    """Layer and RMS normalisation as linear maps: the scale ``1 / std`` is held constant, so
    relevance passes the centring (and the weight) in proportion to the contributions; the
    bias absorbs its share (AttnLRP's rule)."""

    handles = frozenset({"norm"})
