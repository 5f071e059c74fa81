"""Attribution from attention patterns: rollout, flow, and gradient-weighted attention.

The attention probabilities ``[B, H, T, T]`` of each layer come from ``attentions=`` (module
paths or a glob whose value is a pattern, e.g. ``"blocks.*.attn:output[1]"``) or, by default,
from every 4-D softmax over the last dimension and every ``F.scaled_dot_product_attention``
call of the forward pass (decomposed there, so that its pattern exists). For a Hugging Face
model these are the tensors ``output_attentions=True`` returns, with the eager or the SDPA
attention alike; tdlens reads them without asking for them, because transformers installs
hooks on the model the first time it is asked (the model must be left unchanged).

- :class:`AttentionRollout` (Abnar & Zuidema 2020): heads fused, the residual added
  (``0.5 A + 0.5 I``), rows renormalised, and the layers multiplied: ``R = A_L ... A_1``;
- :class:`AttentionFlow` (same paper): the maximum flow from each output position to each
  input position through the layered graph whose capacities are those matrices (short
  sequences: one max-flow problem per pair);
- :class:`AttentionXGradient` (Chefer et al. 2021): ``R = I``, then per layer
  ``R += mean_h((dy/dA * A)+) @ R``, for each target.

Each returns ``[B, T, T]`` (``[B, K, T, T]`` with ``targets``): row ``i`` says how much each
input position contributes to position ``i`` at the top.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..core.adapter import ModelAdapter
from ..core.errors import InputError, InputTypeError
from ..core.hooks import HookSet
from ..core.paths import resolve_paths
from ..core.structure import InputBatch
from ..core.targets import normalize_targets
from .lrp.ops import attention_parts, masked

Node = tuple[int, int]  # (layer, position) in the flow graph
FUSIONS = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
_NOT_FOUND = (
    "found no attention pattern in {model}: it ran no 4-D softmax over the last dimension and "
    "no scaled_dot_product_attention; name the "
    "modules whose output holds the [B, H, T, T] pattern with attentions=, e.g. "
    "attentions='blocks.*.attn:output[1]'"
)


class _AttentionMethod:
    """What the three methods share: the model, where patterns come from, the forward call."""

    def __init__(self, model: nn.Module, *, attentions: Any = None) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(
                f"{type(self).__name__} needs an nn.Module, got {type(model).__name__}"
            )
        self.model = model
        self.paths = resolve_paths(model, attentions) if attentions is not None else None

    def _batch(self, inputs: Any, forward_kwargs: dict[str, Any]) -> InputBatch:
        extra = {k: v for k, v in forward_kwargs.items() if v is not None}
        if extra and isinstance(inputs, Tensor):  # model(input_ids, attention_mask=...)
            first = next(iter(inspect.signature(self.model.forward).parameters))
            inputs = {first: inputs, **extra}
        elif extra and isinstance(inputs, dict):
            inputs = {**inputs, **extra}
        elif extra:
            raise InputError("keyword arguments go with a tensor or dict input")
        return InputBatch.build(inputs, require_float=False, need_attributed=False)

    @contextmanager
    def _capture(self, grad: bool) -> Iterator[list[Tensor]]:
        """While entered, the patterns of the model's forward passes go into the list (in
        layer order). With ``grad`` (and no ``attentions=``) they are leaves of the graph
        above them, so that ``dy/dA`` exists whatever requires grad."""
        patterns: list[Tensor] = []
        if self.paths is None:
            with _PatternMode(patterns, grad):
                yield patterns
            return
        with HookSet() as hooks:
            for path in self.paths:
                hooks.on_site(self.model, path, lambda value: patterns.append(value))
            yield patterns

    def _patterns(self, batch: InputBatch) -> list[Tensor]:
        with torch.no_grad(), self._capture(grad=False) as patterns:
            batch.call(self.model, batch.take_rows(None, run=(0, batch.batch_size)))
        return _checked(patterns, type(self.model).__name__)


class AttentionRollout(_AttentionMethod):
    """Attention rollout (Abnar & Zuidema 2020).

    Args:
        model: the transformer.
        attentions: module path(s) or glob whose output holds each layer's pattern (default:
            every attention softmax; see the module docstring).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over the heads.
        discard_ratio: the fraction of each layer's smallest fused weights set to 0.
        residual: add the identity for the skip connection (``0.5 A + 0.5 I``).

    Example:
        >>> rollout = tdlens.AttentionRollout(model).attribute(input_ids, attention_mask=mask)
        >>> rollout.shape          # [B, T, T]; rollout[:, 0] for the first token's view
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        attentions: Any = None,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        residual: bool = True,
    ) -> None:
        super().__init__(model, attentions=attentions)
        if head_fusion not in FUSIONS:
            raise InputError(f"head_fusion is 'mean', 'max' or 'min', got {head_fusion!r}")
        if not 0 <= discard_ratio < 1:
            raise InputError(f"discard_ratio is in [0, 1), got {discard_ratio}")
        self.head_fusion, self.discard_ratio, self.residual = head_fusion, discard_ratio, residual

    def matrices(self, inputs: Any, **forward_kwargs: Any) -> list[Tensor]:
        """Each layer's fused, residual-augmented, row-normalised matrix ``[B, T, T]``."""
        patterns = self._patterns(self._batch(inputs, forward_kwargs))
        return [self._fuse(p) for p in patterns]

    def _fuse(self, pattern: Tensor) -> Tensor:
        a = FUSIONS[self.head_fusion](pattern)
        if self.discard_ratio > 0:
            flat = a.reshape(a.shape[0], -1)
            n = int(flat.shape[1] * self.discard_ratio)
            if n:
                lowest = flat.topk(n, dim=1, largest=False).indices
                flat = flat.scatter(1, lowest, 0.0)
            a = flat.reshape(a.shape)
        if self.residual:
            a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        return a / a.sum(-1, keepdim=True).clamp(min=torch.finfo(a.dtype).tiny)

    def attribute(self, inputs: Any, **forward_kwargs: Any) -> Tensor:
        """The rollout ``A_L @ ... @ A_1``, ``[B, T, T]``. ``forward_kwargs`` (such as
        ``attention_mask``) go to the model."""
        matrices = self.matrices(inputs, **forward_kwargs)
        result = matrices[0]
        for a in matrices[1:]:
            result = a @ result
        return result


class AttentionFlow(AttentionRollout):
    """Attention flow (Abnar & Zuidema 2020): ``flow[b, i, j]`` is the maximum flow from
    position ``i`` after the last layer to input position ``j``, through the graph of the
    layers' residual-augmented attention matrices as capacities. It solves ``T**2`` max-flow
    problems per example: for short sequences. Options as for :class:`AttentionRollout`.

    Example:
        >>> flow = tdlens.AttentionFlow(model).attribute(input_ids)      # [B, T, T]
    """

    def attribute(self, inputs: Any, **forward_kwargs: Any) -> Tensor:
        matrices = self.matrices(inputs, **forward_kwargs)
        stacked = torch.stack(matrices, 1).double().cpu()  # [B, L, T, T]
        b, _, t, _ = stacked.shape
        result = torch.zeros(b, t, t, dtype=torch.float64)
        for example in range(b):
            layers = stacked[example].tolist()
            for i in range(t):
                for j in range(t):
                    result[example, i, j] = layered_max_flow(layers, i, j)
        return result.to(matrices[0])


def layered_max_flow(layers: list[list[list[float]]], source: int, sink: int) -> float:
    """The maximum flow from ``source`` at the top to ``sink`` at the bottom of a layered
    graph: node ``(l, i)`` feeds ``(l - 1, j)`` with capacity ``layers[l - 1][i][j]``
    (layers bottom first). Edmonds-Karp on the residual graph."""
    n_layers, t = len(layers), len(layers[0])
    capacity: dict[Node, dict[Node, float]] = {}
    for level in range(n_layers, 0, -1):
        for i in range(t):
            edges = capacity.setdefault((level, i), {})
            for j, c in enumerate(layers[level - 1][i]):
                if c > 0:
                    edges[(level - 1, j)] = c
                    capacity.setdefault((level - 1, j), {}).setdefault((level, i), 0.0)
    start, end, total = (n_layers, source), (0, sink), 0.0
    while True:
        parent: dict[Node, Node | None] = {start: None}
        queue = [start]
        while queue and end not in parent:
            node = queue.pop(0)
            for nxt, c in capacity.get(node, {}).items():
                if c > 1e-15 and nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        if end not in parent:
            return total
        path: list[tuple[Node, Node]] = []
        node = end
        while (previous := parent[node]) is not None:
            path.append((previous, node))
            node = previous
        push = min(capacity[u][v] for u, v in path)
        for u, v in path:
            capacity[u][v] -= push
            capacity[v][u] = capacity[v].get(u, 0.0) + push
        total += push


class AttentionXGradient(_AttentionMethod):
    """Gradient-weighted attention (Chefer et al. 2021): per layer ``mean over heads of
    (dy/dA * A)+``, accumulated as ``R = R + A_bar @ R`` from ``R = I``.

    Args:
        model: the transformer.
        attentions: as for :class:`AttentionRollout`; the patterns must be the tensors the
            model goes on to use (by default every attention softmax is).

    Example:
        >>> rel = tdlens.AttentionXGradient(model).attribute(input_ids, targets=[0, 1])
        >>> rel.shape              # [B, 2, T, T]
    """

    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        *,
        targets: Any = None,
        output: Any = None,
        **forward_kwargs: Any,
    ) -> Tensor:
        """``R`` per example, ``[B, T, T]`` (``[B, K, T, T]`` with ``targets``);
        ``target``/``targets``/``output`` as for every attribution method."""
        batch = self._batch(inputs, forward_kwargs)
        target_list, multi = normalize_targets(target, targets, output, batch.batch_size)
        examples = torch.arange(batch.batch_size)
        with torch.enable_grad(), ModelAdapter(self.model, batch, target_list) as adapter:
            with self._capture(grad=True) as patterns:
                explained, _ = adapter.run(batch.take_rows(None, run=(0, batch.batch_size)))
            patterns = _checked(patterns, type(self.model).__name__)
            adapter.learn_predictions(explained, examples)
            scalars = adapter.pick(explained, examples, rows_are_inputs=True)
            results = []
            for k, y in enumerate(scalars):
                grads = torch.autograd.grad(
                    y.sum(), patterns, retain_graph=k < len(scalars) - 1, allow_unused=True
                )
                results.append(_chefer(patterns, grads))
        result = torch.stack(results, 1)
        return result if multi else result[:, 0]


def _chefer(patterns: list[Tensor], grads: tuple[Tensor | None, ...]) -> Tensor:
    a0 = patterns[0]
    eye = torch.eye(a0.shape[-1], dtype=a0.dtype, device=a0.device)
    r = eye.expand(a0.shape[0], -1, -1)
    for pattern, grad in zip(patterns, grads):
        if grad is None:
            raise InputError(
                "AttentionXGradient: the target does not depend on an attention pattern found "
                "(a module output that is not the tensor the model uses?); name the patterns "
                "with attentions= or leave it out to capture the attention softmax itself"
            )
        weighted = (grad * pattern.detach()).clamp(min=0).mean(1)
        r = r + weighted @ r
    return r.detach()


def _checked(patterns: list[Tensor], model: str) -> list[Tensor]:
    if not patterns:
        raise InputError(_NOT_FOUND.format(model=model))
    for p in patterns:
        if not isinstance(p, Tensor) or p.dim() != 4 or p.shape[-1] != p.shape[-2]:
            raise InputError(
                f"an attention pattern is [B, H, T, T]; got "
                f"{list(p.shape) if isinstance(p, Tensor) else type(p).__name__}: name the "
                "tensor with a selector, e.g. attentions='blocks.*.attn:output[1]'"
            )
    return patterns


class _PatternMode(TorchFunctionMode):
    """Collects the output of every 4-D softmax over the last dimension and the pattern of
    every ``scaled_dot_product_attention`` (computed by parts). With ``grad``, each pattern is
    replaced by a leaf that requires grad, so that ``dy/dA`` exists whatever requires grad."""

    def __init__(self, patterns: list[Tensor], grad: bool) -> None:
        super().__init__()
        self.patterns, self.grad = patterns, grad

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "scaled_dot_product_attention":
            return self._attention(*args, **kwargs)
        out = func(*args, **kwargs)
        if name == "softmax" and isinstance(out, Tensor) and out.dim() == 4:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim in (-1, 3):
                return self._keep(out)
        return out

    def _keep(self, pattern: Tensor) -> Tensor:
        if self.grad:
            pattern = pattern.detach().requires_grad_()
        self.patterns.append(pattern)
        return pattern

    def _attention(self, *args: Any, **kwargs: Any) -> Tensor:
        q, k, v, mask, scale, dropout_p = attention_parts(args, kwargs)
        pattern = self._keep(torch.softmax(masked(q @ k.transpose(-2, -1) * scale, mask), dim=-1))
        if dropout_p:
            pattern = torch.nn.functional.dropout(pattern, dropout_p)
        return pattern @ v


__all__ = ["AttentionFlow", "AttentionRollout", "AttentionXGradient", "layered_max_flow"]
