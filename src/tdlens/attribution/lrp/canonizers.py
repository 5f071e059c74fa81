"""Canonizers: temporary rewrites of a model into an equivalent form the rules suit better.

A canonizer is a context manager over the model: it edits it on entry and restores it exactly
on exit, also after an exception (the original parameter tensors are put back, not copies).

:class:`MergeBatchNorm` folds each batch norm into the linear or convolution layer before it,
so that the rule of that layer sees one affine map (the LRP literature's canonical form: a
batch norm on its own would get a rule of its own, and absorb or amplify relevance there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ...core.errors import InputError

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Canonizer:
    """Base of the canonizers: :meth:`apply` is a context manager that edits and restores."""

    def apply(self, model: nn.Module) -> contextmanager[None]:  # type: ignore[valid-type]
        raise NotImplementedError


class MergeBatchNorm(Canonizer):
    """Fold batch norms (in eval mode) into the linear or convolution layer before them:
    ``W' = W * gamma / sigma``, ``b' = (b - mu) * gamma / sigma + beta``, and the batch norm
    replaced by an identity while the call runs.

    Args:
        pairs: ``[(layer path, batch norm path), ...]``; default: each batch norm that follows
            a linear or convolution layer in ``named_modules()`` order (the order modules are
            defined in, which is the order they run in for ``nn.Sequential`` and the usual
            ``conv1, bn1, conv2, bn2`` blocks) with as many outputs as it has features.

    Example:
        >>> tdlens.LRP(model, canonizers=[lrp.MergeBatchNorm()]).attribute(x, target=3)
    """

    def __init__(self, pairs: Sequence[tuple[str, str]] | None = None) -> None:
        self.pairs = list(pairs) if pairs is not None else None

    def find_pairs(self, model: nn.Module) -> list[tuple[str, str]]:
        if self.pairs is not None:
            names = dict(model.named_modules())
            for layer, norm in self.pairs:
                for path, kinds in ((layer, _LAYERS), (norm, _BATCH_NORMS)):
                    if not isinstance(names.get(path), kinds):
                        raise InputError(
                            f"MergeBatchNorm pair ({layer!r}, {norm!r}): {path!r} is not a "
                            f"{' or '.join(k.__name__ for k in kinds)} of {type(model).__name__}"
                        )
            return self.pairs
        pairs: list[tuple[str, str]] = []
        previous: tuple[str, nn.Module] | None = None
        for path, module in model.named_modules():
            if isinstance(module, _BATCH_NORMS):
                if previous is not None and _outputs(previous[1]) == module.num_features:
                    pairs.append((previous[0], path))
                previous = None
            elif isinstance(module, _LAYERS):
                previous = (path, module)
            elif not any(True for _ in module.children()):
                previous = None  # a layer in between (an activation): nothing to fold
        if not pairs:
            raise InputError(
                f"MergeBatchNorm found no linear or convolution layer followed by a batch norm in "
                f"{type(model).__name__}; leave it out, or name the pairs: "
                "MergeBatchNorm(pairs=[('conv1', 'bn1')])"
            )
        return pairs

    @contextmanager
    def apply(self, model: nn.Module) -> Iterator[None]:  # type: ignore[override]
        modules = dict(model.named_modules())
        pairs = self.find_pairs(model)
        for _layer, norm in pairs:
            if modules[norm].training:
                raise InputError(
                    f"MergeBatchNorm: batch norm {norm!r} is in training mode, where it uses the "
                    "batch's statistics and cannot be folded; call model.eval() first"
                )
        undo: list[Callable[[], None]] = []
        try:
            for layer_path, norm_path in pairs:
                undo.append(_merge(model, modules[layer_path], norm_path, modules[norm_path]))
            yield
        finally:
            for restore in reversed(undo):
                restore()


def _outputs(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels  # type: ignore[return-value]


def _merge(model: nn.Module, layer: nn.Module, norm_path: str, norm: Any) -> Callable[[], None]:
    """Fold ``norm`` into ``layer`` and put an identity in its place; returns the undo."""
    weight: Tensor = layer.weight  # type: ignore[assignment]
    old_weight, old_bias = weight.data, layer.bias
    with torch.no_grad():
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        shape = (-1, *[1] * (weight.dim() - 1))
        new_weight = weight * scale.reshape(shape).to(weight)
        bias = old_bias.data if old_bias is not None else torch.zeros_like(scale)
        new_bias = (bias * scale + shift).to(weight)
    parent_path, _, name = norm_path.rpartition(".")
    parent = model.get_submodule(parent_path)
    weight.data = new_weight
    if old_bias is not None:
        old_bias_data = old_bias.data
        old_bias.data = new_bias
    else:
        layer.bias = nn.Parameter(new_bias, requires_grad=False)
    parent._modules[name] = nn.Identity()

    def restore() -> None:
        parent._modules[name] = norm
        weight.data = old_weight
        if old_bias is not None:
            old_bias.data = old_bias_data
        else:
            layer.register_parameter("bias", None)

    return restore
