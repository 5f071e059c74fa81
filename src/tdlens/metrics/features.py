"""Features: the groups of input elements a metric removes, keeps or inserts together.

``feature_mask`` follows captum's FeatureAblation: an integer tensor per attributed input, of
the input's number of dimensions, each dimension of the input's size or 1 (``[1, ...]`` shares
one grouping across the batch, ``[B, ...]`` gives each example its own). Elements with the same
id form one feature, also across inputs. Negative ids mark elements that are never perturbed
(padding, special tokens), so a text explainer can pass word ids per token and ``-1`` for the
rest. ``None`` makes every element a feature; ``"pixels"`` makes every spatial position of an
image (``[B, C, ...]``) one feature across its channels.

A feature's score is the sum of its elements' attributions. Baselines (what replaces a removed
feature) are a number, a tensor broadcasting to the input, ``"blur"`` (a Gaussian blur of the
image), or a callable ``input -> baseline``; one for all inputs, or a tuple or dict per input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.errors import InputError, InputTypeError
from ..core.structure import InputBatch, Key


class FeatureGroups:
    """The features of every example: which feature each element belongs to.

    Attributes:
        group: ``[1 or B, E]`` long, the feature of each of the E elements (the attributed
            inputs' elements after the batch dimension, in key order); ``-1``: never perturbed.
        n_groups: G, the number of features (ids are renumbered ``0..G-1``).
        count: ``[B]`` long, the features present in each example.
    """

    def __init__(self, batch: InputBatch, group: Tensor, n_groups: int, per_element: bool):
        self.batch = batch
        self.group = group
        self.n_groups = n_groups
        self._per_element = per_element
        self._sizes = [batch.leaves[k][0].numel() for k in batch.attributed]
        b = batch.batch_size
        if per_element:
            self.present = torch.ones(1, n_groups, dtype=torch.bool, device=group.device)
            self.present = self.present.expand(b, -1)
        else:
            hits = torch.zeros(group.shape[0], n_groups + 1, dtype=torch.bool, device=group.device)
            hits.scatter_(1, self._slot(group), True)
            self.present = hits[:, :n_groups].expand(b, -1)
        self.count = self.present.sum(1)

    def _slot(self, group: Tensor) -> Tensor:
        """Ids with ``-1`` moved to the spare slot G."""
        return torch.where(group < 0, self.n_groups, group)

    @classmethod
    def build(cls, batch: InputBatch, feature_mask: Any) -> FeatureGroups:
        device = batch.leaves[batch.attributed[0]].device
        if feature_mask is None:
            total = sum(batch.leaves[k][0].numel() for k in batch.attributed)
            ids = torch.arange(total, device=device).unsqueeze(0)
            return cls(batch, ids, total, per_element=True)
        if isinstance(feature_mask, str):
            if feature_mask != "pixels":
                raise InputError(
                    f"feature_mask={feature_mask!r} is not a grouping; use None (every element), "
                    "'pixels' (every position of an image across its channels) or an integer "
                    "tensor of feature ids"
                )
            masks, offset = {}, 0
            for key in batch.attributed:
                x = batch.leaves[key]
                if x.dim() < 3:
                    raise InputError(
                        f"feature_mask='pixels' needs image inputs [B, C, H, W]; input {key!r} has "
                        f"shape {list(x.shape)}: use feature_mask=None for tabular inputs"
                    )
                ids = torch.arange(x[0, 0].numel(), device=device).reshape(1, 1, *x.shape[2:])
                masks[key] = ids + offset
                offset += x[0, 0].numel()
        else:
            masks = batch.per_key(feature_mask, "feature_mask")
        flat = [_flat_mask(batch, key, mask) for key, mask in masks.items()]
        rows = max(f.shape[0] for f in flat)
        ids = torch.cat([f.to(device).expand(rows, -1) for f in flat], dim=1)
        valid = ids >= 0
        unique, inverse = torch.unique(ids[valid], return_inverse=True)
        group = torch.full_like(ids, -1)
        group[valid] = inverse
        return cls(batch, group, int(unique.numel()), per_element=False)

    # -- scores and order ----------------------------------------------------------------------
    def scores(self, attributions: dict[Key, Tensor]) -> Tensor:
        """``[B, K, G]``: the sum of the attributions (``[B, K, *input.shape[1:]]`` per
        attributed input) of each feature."""
        b, k = self.batch.batch_size, next(iter(attributions.values())).shape[1]
        flat_attr = torch.cat(
            [attributions[key].reshape(b, k, -1) for key in self.batch.attributed], -1
        )
        if self._per_element:
            return flat_attr
        index = self._slot(self.group).unsqueeze(1).expand(b, k, -1)
        out = flat_attr.new_zeros(b, k, self.n_groups + 1)
        return out.scatter_add_(2, index, flat_attr)[..., : self.n_groups]

    def ranks(self, scores: Tensor, descending: bool = True) -> Tensor:
        """``[B, K, G]``: each feature's place in the order (0 first); absent features last."""
        fill = -math.inf if descending else math.inf
        present = self.present.unsqueeze(1)
        key = torch.where(present, scores, torch.full_like(scores, fill))
        order = torch.argsort(key, dim=-1, descending=descending, stable=True)
        places = torch.arange(self.n_groups, device=order.device).expand_as(order)
        return torch.empty_like(order).scatter_(-1, order, places)

    # -- element masks -------------------------------------------------------------------------
    def masks(self, chosen: Tensor, examples: Tensor) -> dict[Key, Tensor]:
        """Boolean masks per attributed input, ``[N, *input.shape[1:]]``, true on the elements
        of the features ``chosen`` (``[N, G]``) for rows of ``examples``."""
        if self._per_element:
            elements = chosen
        else:
            spare = torch.cat([chosen, chosen.new_zeros(chosen.shape[0], 1)], dim=1)
            if self.group.shape[0] == 1:
                elements = spare[:, self._slot(self.group[0])]
            else:
                elements = spare.gather(1, self._slot(self.group[examples]))
        parts = elements.split(self._sizes, dim=1)
        return {
            key: part.reshape(-1, *self.batch.leaves[key].shape[1:])
            for key, part in zip(self.batch.attributed, parts)
        }


def _flat_mask(batch: InputBatch, key: Key, mask: Any) -> Tensor:
    """A feature mask for one input as ``[1 or B, E_key]`` ids."""
    x = batch.leaves[key]
    if not isinstance(mask, Tensor) or mask.is_floating_point() or mask.is_complex():
        what = f"{mask.dtype} tensor" if isinstance(mask, Tensor) else type(mask).__name__
        raise InputTypeError(
            f"feature_mask for input {key!r} must be an integer tensor of feature ids, got {what}"
        )
    fits = mask.dim() == x.dim() and all(m in (1, s) for m, s in zip(mask.shape, x.shape))
    if not fits:
        raise InputError(
            f"feature_mask for input {key!r} has shape {list(mask.shape)} but the input has "
            f"shape {list(x.shape)}: give it the input's number of dimensions, each of the "
            f"input's size or 1 (e.g. {[1, *x.shape[1:]]} for one grouping of every example)"
        )
    rows = mask.shape[0]
    return mask.to(torch.long).expand(rows, *x.shape[1:]).reshape(rows, -1)


# -- baselines ---------------------------------------------------------------------------------
def resolve_baselines(batch: InputBatch, baselines: Any) -> dict[Key, Tensor]:
    """What replaces removed elements, per attributed input: a 0-dim tensor or a tensor of the
    input's shape (or ``[1, *shape[1:]]``), in the input's dtype."""
    if isinstance(baselines, str) or (callable(baselines) and not isinstance(baselines, Tensor)):
        per_key = dict.fromkeys(batch.attributed, baselines)
    else:
        per_key = batch.per_key(baselines, "baselines")
    result = {}
    for key, base in per_key.items():
        x = batch.leaves[key]
        if base is None:
            base = 0
        if isinstance(base, str) and base == "blur":
            base = blur()
        elif isinstance(base, str):
            raise InputError(
                f"baselines={base!r} is not a baseline; use a number, a tensor, 'blur' or a "
                "callable input -> baseline"
            )
        if callable(base) and not isinstance(base, Tensor):
            base = base(x)
        if not isinstance(base, Tensor):
            result[key] = torch.tensor(base, dtype=x.dtype, device=x.device)
            continue
        trailing = zip(reversed(base.shape), reversed(x.shape))
        if base.dim() > x.dim() or not all(b in (1, s) for b, s in trailing):
            raise InputError(
                f"baselines for input {key!r} have shape {list(base.shape)}, which does not "
                f"broadcast to the input's shape {list(x.shape)}; give a number, a tensor of "
                f"the input's shape, or one of shape {[1, *x.shape[1:]]}"
            )
        base = base.to(dtype=x.dtype, device=x.device)
        per_example = base.dim() == x.dim() and base.shape[0] == x.shape[0]
        result[key] = base if per_example or not base.dim() else base.expand(x.shape)[:1]
    return result


def baseline_rows(base: Tensor, examples: Tensor) -> Tensor:
    """A resolved baseline for rows of ``examples`` (broadcasts against ``[N, *shape[1:]]``)."""
    if base.dim() and base.shape[0] > 1:
        return base.index_select(0, examples.to(base.device))
    return base


def blur(sigma: float = 5.0) -> Callable[[Tensor], Tensor]:
    """A baseline: the input blurred by a Gaussian of std ``sigma`` pixels over its last two
    dimensions (images ``[B, C, H, W]``), the usual start of insertion curves.

    Example:
        >>> tdlens.metrics.insertion(model, x, attr, target=3, baselines=tdlens.metrics.blur(2.0))
    """
    if not sigma > 0:
        raise InputError(f"blur(sigma=...) needs sigma > 0, got {sigma!r}")

    def blurred(x: Tensor) -> Tensor:
        if x.dim() < 3 or not x.is_floating_point():
            raise InputError(
                f"baselines='blur' blurs images [B, C, H, W] of floats; this input is "
                f"{x.dtype} of shape {list(x.shape)}: give a number or a tensor instead"
            )
        return gaussian_blur(x, sigma)

    return blurred


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """``x`` blurred over its last two dimensions: a separable Gaussian kernel of radius
    ``3 sigma``, edges replicated, applied as weighted shifted slices (on CPU far faster than
    a one-channel ``conv2d``)."""
    out = x
    for dim in (-2, -1):
        size = x.shape[dim]
        radius = min(math.ceil(3 * sigma), size - 1)
        if radius < 1:
            continue
        taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
        bell = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = (bell / bell.sum()).tolist()
        index = torch.arange(size, device=x.device)
        blurred = torch.zeros_like(out)
        for offset, weight in zip(range(-radius, radius + 1), kernel):
            shifted = (index + offset).clamp(0, size - 1)
            blurred = blurred + weight * out.index_select(dim, shifted)
        out = blurred
    return out
