"""Features: which input positions move together when a perturbation method masks them.

A ``feature_mask`` gives every position of every attributed input an integer feature id
(captum's convention: ids ``0..M-1``, the same id in two inputs is one feature spanning both).
Without a mask every scalar of every attributed input is its own feature. :class:`FeatureLayout`
turns a coalition (which of the M features are present, ``[N, M]``) into model inputs, and
feature-level scores (``[B, K, M]``) back into attributions shaped like the inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...core.errors import InputError, InputTypeError
from ...core.structure import InputBatch, Key


class FeatureLayout:
    """Feature ids per attributed input, broadcast to ``[1 or B, *input.shape[1:]]``.

    Attributes:
        masks: ``{key: LongTensor[1 or B, *shape]}`` feature id of every position.
        n_features: M, one more than the largest id.
    """

    def __init__(
        self, masks: dict[Key, Tensor], n_features: int, ids: Tensor | None = None
    ) -> None:
        self.masks = masks
        self.n_features = n_features
        self.ids = ids  # the user's feature ids when they had gaps (renumbered 0..M-1)

    @property
    def shared(self) -> bool:
        """Whether every example has the same feature ids (masks with one row)."""
        return all(mask.shape[0] == 1 for mask in self.masks.values())

    @classmethod
    def build(cls, batch: InputBatch, feature_mask: Any) -> FeatureLayout:
        """The layout of ``feature_mask`` (a tensor, tuple or dict like the inputs, or None)."""
        if all(batch.leaves[k][0].numel() == 0 for k in batch.attributed):
            shapes = {k: list(batch.leaves[k].shape) for k in batch.attributed}
            raise InputError(
                f"the attributed inputs have no positions to perturb (shapes {shapes}, e.g. a "
                "zero-length sequence): there are no features to attribute. Skip such inputs"
            )
        if feature_mask is None:
            masks, start = {}, 0
            for key in batch.attributed:
                shape = batch.leaves[key].shape[1:]
                count = int(torch.Size(shape).numel())
                device = batch.leaves[key].device
                ids = torch.arange(start, start + count, device=device).reshape(1, *shape)
                masks[key], start = ids, start + count
            return cls(masks, start)
        masks = {}
        for key, mask in batch.per_key(feature_mask, "feature_mask").items():
            masks[key] = _check_mask(key, mask, batch.leaves[key], batch.batch_size)
        low = min(int(m.min()) for m in masks.values() if m.numel())
        if low < 0:
            raise InputError(
                f"feature_mask holds the negative id {low}; feature ids are integers 0..M-1"
            )
        n_features = max(int(m.max()) for m in masks.values() if m.numel()) + 1
        ids = torch.unique(torch.cat([m.reshape(-1).cpu() for m in masks.values()]))
        if ids.numel() == n_features:
            return cls(masks, n_features)
        # ids with gaps (0, 2, 4...): an id no position carries is not a feature, and would
        # count in the samplers of KernelShap, Lime and Shapley sampling as one
        masks = {
            key: torch.searchsorted(ids.to(mask.device), mask.contiguous())
            for key, mask in masks.items()
        }
        return cls(masks, int(ids.numel()), ids)

    def per_id(self, per_feature: Tensor) -> Tensor:
        """``[..., M]`` feature scores laid out by the user's ids (``[..., max id + 1]``, 0 for
        ids no position carries)."""
        if self.ids is None:
            return per_feature
        out = per_feature.new_zeros((*per_feature.shape[:-1], int(self.ids[-1]) + 1))
        out[..., self.ids.to(per_feature.device)] = per_feature
        return out

    # -- coalitions to inputs ------------------------------------------------------------------
    def present(self, coalitions: Tensor, examples: Tensor) -> dict[Key, Tensor]:
        """Per input, the value of each row's coalition at every position: ``[N, *shape]``.

        Args:
            coalitions: ``[N, M]``, one row per model row (bool, or float in [0, 1]).
            examples: ``[N]``, the example each row perturbs (for per-example masks).
        """
        out = {}
        for key, mask in self.masks.items():
            flat = mask.reshape(mask.shape[0], -1).to(coalitions.device)
            if flat.shape[0] == 1:
                picked = coalitions[:, flat[0]]
            else:
                picked = coalitions.gather(1, flat[examples.to(flat.device)])
            out[key] = picked.reshape(coalitions.shape[0], *mask.shape[1:])
        return out

    def apply(
        self,
        coalitions: Tensor,
        examples: Tensor,
        inputs: dict[Key, Tensor],
        baselines: dict[Key, Tensor],
    ) -> dict[Key, Tensor]:
        """Model inputs for coalition rows: the input where present, the baseline elsewhere.

        Boolean coalitions select; float coalitions in [0, 1] interpolate from the baseline
        (``baseline + z * (input - baseline)``, Sobol's masks), rounded for integer inputs.
        """
        out = {}
        for key, z in self.present(coalitions, examples).items():
            x = inputs[key].index_select(0, examples.to(inputs[key].device))
            base = baselines[key].index_select(0, examples.to(inputs[key].device))
            z = z.to(x.device)
            if z.dtype == torch.bool:
                out[key] = torch.where(z, x, base)
            elif x.is_floating_point():
                out[key] = base + z.to(x.dtype) * (x - base)
            else:  # token ids cannot be mixed: keep the token where the mask is >= 1/2
                out[key] = torch.where(z >= 0.5, x, base)
        return out

    # -- feature scores to attributions --------------------------------------------------------
    def spread(self, per_feature: Tensor) -> dict[Key, Tensor]:
        """``[B, K, M]`` feature scores as ``{key: [B, K, *shape]}``: every position gets the
        score of its feature."""
        b, k, _ = per_feature.shape
        out = {}
        for key, mask in self.masks.items():
            flat = mask.reshape(mask.shape[0], -1).to(per_feature.device)
            index = flat.unsqueeze(1).expand(b, k, flat.shape[1])
            out[key] = per_feature.gather(2, index).reshape(b, k, *mask.shape[1:])
        return out


def _check_mask(key: Key, mask: Any, x: Tensor, batch_size: int) -> Tensor:
    if not isinstance(mask, Tensor):
        raise InputTypeError(
            f"feature_mask for input {key!r} is a {type(mask).__name__}; give an integer "
            f"tensor of the input's shape {list(x.shape)} (or one that broadcasts to it)"
        )
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise InputTypeError(
            f"feature_mask for input {key!r} has dtype {mask.dtype}; feature ids are integers "
            "(cast it with .long())"
        )
    shape = x.shape
    try:
        broadcast = torch.broadcast_shapes(mask.shape, shape)
    except RuntimeError:
        broadcast = None
    if broadcast != shape or mask.dim() > x.dim():
        raise InputError(
            f"feature_mask for input {key!r} has shape {list(mask.shape)}, which does not "
            f"broadcast to the input's shape {list(shape)}; give a mask of shape "
            f"{[1, *shape[1:]]} (shared by all examples) or {list(shape)} (one per example)"
        )
    mask = mask.reshape(*[1] * (x.dim() - mask.dim()), *mask.shape)
    rows = batch_size if mask.shape[0] == batch_size and batch_size > 1 else 1
    return mask[:rows].expand(rows, *shape[1:]).to(device=x.device, dtype=torch.long)
