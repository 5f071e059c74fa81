"""The propagation mechanism: a TorchFunctionMode active while the forward pass builds the
graph, like DeepLift's (:mod:`tdlens.attribution.rules`), that gives every call needing a rule
its backward: the rule of the innermost module (of the composite) that handles that kind of
call, or else the composite's default for the kind. Nothing is hooked on the model; the
module context comes from global module hooks that exist only while the mode is entered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks

from ...core.errors import InputError
from ..rules import _Call, _RuleMode, swap_backward
from .composites import Composite
from .ops import LinearOp, attention_parts, divide, is_variable, masked, relay
from .rules import Epsilon, Gradient, LayerNorm, Pass, Product, Rule, pass_through

_POOLS = {f"{kind}_pool{d}d" for kind in ("max", "avg", "adaptive_avg") for d in (1, 2, 3)}
ACTIVATIONS = frozenset(
    {
        *("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "elu", "selu", "celu"),
        *("softplus", "mish", "hardtanh", "relu6", "hardswish", "hardsigmoid", "softsign"),
    }
)
HOMOGENEOUS = frozenset({"relu", "leaky_relu"})  # f(x) = f'(x) x: Pass is the gradient
PRODUCTS = frozenset({"mul", "multiply", "__mul__", "__rmul__", "__imul__", "matmul"})
CATEGORIES: dict[str, str] = {
    **dict.fromkeys(("linear", "conv1d", "conv2d", "conv3d", "addmm"), "linear"),
    **dict.fromkeys(
        (*_POOLS, *(f"max_pool{d}d_with_indices" for d in (1, 2, 3)), "batch_norm"), "affine"
    ),
    **dict.fromkeys(ACTIVATIONS, "activation"),
    **dict.fromkeys((*PRODUCTS, "__matmul__", "__rmatmul__", "bmm"), "product"),
    "softmax": "softmax",
    **dict.fromkeys(("layer_norm", "rms_norm"), "norm"),
    "scaled_dot_product_attention": "attention",
    **dict.fromkeys(
        (
            *("multi_head_attention_forward", "group_norm", "instance_norm", "normalize"),
            *("local_response_norm", "log_softmax", "softmin", "glu"),
        ),
        "unhandled",
    ),
}
# nodes between a softmax and its use in a product that keep it an attention pattern
_PATTERN_STEPS = ("ToCopyBackward", "CloneBackward", "ViewBackward", "UnsafeViewBackward")


class LRPMode(_RuleMode):
    """Gives each intercepted call the backward of its rule (see the module docstring).

    Args:
        model: the model (for the module context of the composite's rules).
        composite: which rule for which module or kind of call.
    """

    names = frozenset(CATEGORIES)

    def __init__(self, model: Any, composite: Composite) -> None:
        super().__init__()
        self.composite = composite
        self.assigned = composite.resolve(model) if isinstance(model, nn.Module) else {}
        self.stack: list[tuple[nn.Module, Rule, Tensor | None]] = []
        self.suspended = 0
        self.at_zeros: dict[tuple[int, torch.Size], Tensor] = {}
        self.unhandled: set[str] = set()

    @contextmanager
    def active(self) -> Iterator[LRPMode]:
        """The mode, with the module context tracked if any module has its own rule."""
        self.stack, self.suspended = [], 0
        if not self.assigned:
            with self:
                yield self
            return
        pre = module_hooks.register_module_forward_pre_hook(self._enter_module)
        post = module_hooks.register_module_forward_hook(self._leave_module)
        try:
            with self:
                yield self
        finally:
            pre.remove()
            post.remove()

    # -- module context ----------------------------------------------------------------------
    def _enter_module(self, module: nn.Module, args: tuple) -> None:
        entry = self.assigned.get(id(module))
        if entry is None:
            return
        _path, rule = entry
        x = args[0] if args and isinstance(rule, Pass) and is_variable(args[0]) else None
        self.stack.append((module, rule, x))
        if x is not None:  # Pass on a whole module: its insides need no rules
            self.suspended += 1

    def _leave_module(self, module: nn.Module, args: tuple, output: Any) -> Any:
        entry = self.assigned.get(id(module))
        if entry is None or not self.stack or self.stack[-1][0] is not module:
            return None
        _module, _rule, x = self.stack.pop()
        if x is None:
            return None
        self.suspended -= 1
        if not isinstance(output, Tensor) or output.shape != x.shape:
            raise InputError(
                f"Pass on module {entry[0]!r} ({type(module).__name__}) gives each input the "
                f"relevance of the output at the same position, but it maps {list(x.shape)} to "
                f"{_shape(output)}; give it a rule for its layers instead, e.g. Epsilon()"
            )
        return relay((x,), output, pass_through(x.detach(), output.detach()))

    def rule_for(self, kind: str) -> Rule:
        """The innermost module's rule that handles ``kind``, else the composite's default."""
        for _module, rule, _x in reversed(self.stack):
            if kind in rule.handles:
                return rule
        return self.composite.default(kind)

    # -- calls -------------------------------------------------------------------------------
    def handle(self, call: _Call) -> Any:
        if self.suspended or not torch.is_grad_enabled():
            return call.original()
        kind = CATEGORIES[call.name]
        if kind == "unhandled":  # runs as it is: relevance there is gradient times input
            out = call.original()
            if any(isinstance(v, Tensor) and v.requires_grad for v in _flat(out)):
                self.unhandled.add(call.name)
            return out
        if kind == "attention":
            return self._attention(call)
        if kind == "product":
            a, b = _operands(call)
            if not (is_variable(a) and is_variable(b)):
                return call.original()
            return self.product(call.func, a, b, call.args[2:], call.kwargs)
        if not is_variable(call.input) and kind != "linear":
            return call.original()
        rule = self.rule_for(kind)
        if kind == "linear":
            return self._linear(call, rule)
        if kind == "affine":
            return _scaled(call.original(), rule) if isinstance(rule, Epsilon) else call.original()
        if kind == "activation":
            if isinstance(rule, Gradient) or call.name in HOMOGENEOUS:
                return call.original()
            with torch.no_grad():
                x = call.input.detach()
                y = call.run(x)
            return swap_backward(call, y, pass_through(x, y))
        if kind == "norm" and isinstance(rule, LayerNorm):
            return _layer_norm(call)
        return call.original()  # softmax, and the gradient rule

    def _linear(self, call: _Call, rule: Rule) -> Any:
        parsed = LinearOp.parse(call.name, call.args, call.kwargs)
        if parsed is None or isinstance(rule, Gradient):
            return call.original()
        op, x = parsed
        if isinstance(rule, Epsilon):  # the ordinary backward of a scaled output gradient
            return _scaled(call.original(), rule)
        with torch.no_grad():
            z = call.original()
        if x.is_leaf and type(rule).relevance is not Rule.relevance:
            return relay((x,), z, self._with_zeros(op, z.detach(), rule))
        return relay((x,), z, rule.linear(op, z.detach()))

    def _with_zeros(self, op: LinearOp, z: Tensor, rule: Rule) -> Callable[[Tensor], Tensor]:
        """The backward of a rule whose input relevance need not vanish where the input is 0
        (flat, w-square, z-box), on an attributed input: relevance a gradient cannot carry
        there is kept aside for :meth:`relevance_at`."""
        key = (op.x.data_ptr(), op.x.shape)

        def backward(grad: Tensor) -> Tensor:
            relevance = rule.relevance(op, z, z * grad)
            zero = op.x == 0
            if zero.any():
                kept = torch.where(zero, relevance, torch.zeros_like(relevance))
                self.at_zeros[key] = self.at_zeros[key] + kept if key in self.at_zeros else kept
            return divide(relevance, op.x)

        return backward

    def relevance_at(self, point: Tensor, grad: Tensor) -> Tensor:
        """The relevance of an attributed input: ``point * grad``, plus what rules gave to its
        zero entries in the last backward pass."""
        relevance = grad * point
        kept = self.at_zeros.pop((point.data_ptr(), point.shape), None) if self.at_zeros else None
        return relevance if kept is None else relevance + kept

    def product(
        self, func: Callable[..., Any], a: Tensor, b: Tensor, rest: tuple = (), kwargs: Any = None
    ) -> Tensor:
        """``func(a, b)`` of two activations, with the product rule."""
        kwargs = kwargs or {}
        rule = self.rule_for("product")
        if not isinstance(rule, Product):
            return func(a, b, *rest, **kwargs)
        if rule.hold_attention and (_is_pattern(a) or _is_pattern(b)):
            held = (a.detach(), b) if _is_pattern(a) else (a, b.detach())
            return func(*held, *rest, **kwargs)
        if rule.share == 0.5:  # each factor's ordinary backward carries all of R: halve it
            out = func(a, b, *rest, **kwargs)
            out.register_hook(_half)
            return out
        with torch.enable_grad():
            leaves = a.detach().requires_grad_(), b.detach().requires_grad_()
            inner = func(*leaves, *rest, **kwargs)
        shares = rule.share, 1 - rule.share

        def backward(grad: Tensor) -> tuple[Tensor, Tensor]:
            grads = torch.autograd.grad(inner, leaves, grad, retain_graph=True)
            return grads[0] * shares[0], grads[1] * shares[1]

        return relay((a, b), inner, backward)

    def _attention(self, call: _Call) -> Tensor:
        """``F.scaled_dot_product_attention`` as its parts, each with its rule."""
        q, k, v, mask, scale, dropout_p = attention_parts(call.args, call.kwargs)
        scores = masked(self._maybe_product(torch.matmul, q, k.transpose(-2, -1)) * scale, mask)
        pattern = torch.softmax(scores, dim=-1)
        if dropout_p:
            pattern = F.dropout(pattern, dropout_p)
        return self._maybe_product(torch.matmul, pattern, v)

    def _maybe_product(self, func: Callable[..., Any], a: Tensor, b: Tensor) -> Tensor:
        if is_variable(a) and is_variable(b):
            return self.product(func, a, b)
        return func(a, b)


def _flat(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _operands(call: _Call) -> tuple[Any, Any]:
    args = call.args
    if call.name == "__rmatmul__" and len(args) > 1:
        return args[1], args[0]
    return (args[0] if args else None), (args[1] if len(args) > 1 else call.kwargs.get("other"))


def _half(grad: Tensor) -> Tensor:
    return grad * 0.5


def _scaled(out: Any, rule: Epsilon) -> Any:
    """``out`` whose gradient is scaled by ``z / stab(z)`` (the epsilon rule's factor)."""
    z = out[0] if isinstance(out, tuple) else out
    if isinstance(z, Tensor) and z.requires_grad:
        ratio = rule.ratio(z.detach())
        z.register_hook(lambda grad: grad * ratio)
    return out


def _layer_norm(call: _Call) -> Tensor:
    """Layer / RMS norm with ``1 / std`` held constant in the backward pass."""
    names: tuple[str, ...] = ("input", "normalized_shape", "weight", "bias", "eps")
    if call.name == "rms_norm":
        names = ("input", "normalized_shape", "weight", "eps")
    bound = dict(zip(names, call.args), **call.kwargs)
    x = call.input.detach()
    dims = tuple(range(-len(tuple(bound["normalized_shape"])), 0))
    eps = bound.get("eps")
    if eps is None:
        eps = torch.finfo(x.dtype).eps if call.name == "rms_norm" else 1e-5
    weight = bound.get("weight")
    with torch.no_grad():
        y = call.original()
        if call.name == "rms_norm":
            scale = torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
        else:
            scale = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
        if weight is not None:
            scale = scale * weight.detach()
    centre = call.name != "rms_norm"

    def backward(grad: Tensor) -> Tensor:
        g = grad * scale
        return g - g.mean(dims, keepdim=True) if centre else g

    return relay((call.input,), y, backward)


def _is_pattern(t: Tensor) -> bool:
    """Whether ``t`` is a softmax output (through copies, casts and views)."""
    node = t.grad_fn
    for _ in range(4):
        if node is None:
            return False
        name = type(node).__name__
        if name.startswith("SoftmaxBackward"):
            return True
        if not name.startswith(_PATTERN_STEPS) or not node.next_functions:
            return False
        node = node.next_functions[0][0]
    return False


def _shape(value: Any) -> str:
    return str(list(value.shape)) if isinstance(value, Tensor) else type(value).__name__
