"""FeatureAblation, Occlusion and FeaturePermutation: remove one feature at a time.

Each sample takes one feature away (replaced by its baseline, by a sliding window of
baselines, or by the values of other examples of the batch); the estimator is the drop of the
target, ``f(x) - f(x without the feature)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ...core.errors import InputError
from ...core.structure import Key
from ..base import with_defaults
from ..engine import whole_samples
from .base import PerturbationAttribution, Perturbations, masked
from .features import FeatureLayout
from .occlusion import WindowGrid


class FeatureAblation(PerturbationAttribution):
    """Replace each feature (group of positions) by its baseline; the attribution of every
    position of the feature is ``f(x) - f(x with the feature ablated)``.

    With ``layer=`` (captum's LayerFeatureAblation) the features are positions of the layer's
    activation: ``feature_mask`` and ``baselines`` (default 0) refer to it, and the result is
    shaped like it.

    Example:
        >>> fa = tdlens.FeatureAblation(model)
        >>> attr = fa.attribute(x, feature_mask=mask, targets=[0, 1, 2])   # [B, 3, *x.shape[1:]]
    """

    perturbs_layers = True

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool | None = None,
        *,
        targets: Any = None,
        output: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
    ) -> Any:
        """Attributions shaped like the inputs (``[B, K, ...]`` with ``targets``)."""
        run = self._start(
            inputs,
            target=target,
            targets=targets,
            output=output,
            keys=keys,
            additional_forward_args=additional_forward_args,
            baselines=baselines,
            perturbations_per_eval=perturbations_per_eval,
            internal_batch_size=internal_batch_size,
            show_progress=show_progress,
        )
        layout = FeatureLayout.build(run.batch, feature_mask)
        one_off = ~torch.eye(layout.n_features, dtype=torch.bool, device=run.device)
        full, scores = run.evaluate(masked(layout, one_off, run))
        drop = full.unsqueeze(1) - scores  # [B, M, K]
        return run.finish(layout.spread(drop.transpose(1, 2)))


class Occlusion(PerturbationAttribution):
    """Slide a window of baselines over each input; a position's attribution is the mean drop
    of the target over the windows that cover it (captum's Occlusion).

    Example:
        >>> attr = tdlens.Occlusion(cnn).attribute(images, sliding_window_shapes=(3, 4, 4),
        ...                                        strides=(3, 2, 2), target=0)
    """

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        sliding_window_shapes: Any,
        strides: Any = None,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool | None = None,
        *,
        targets: Any = None,
        output: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
    ) -> Any:
        """Attributions shaped like the inputs (``[B, K, ...]`` with ``targets``)."""
        run = self._start(
            inputs,
            target=target,
            targets=targets,
            output=output,
            keys=keys,
            additional_forward_args=additional_forward_args,
            baselines=baselines,
            perturbations_per_eval=perturbations_per_eval,
            internal_batch_size=internal_batch_size,
            show_progress=show_progress,
        )
        grids = WindowGrid.for_inputs(run.batch, sliding_window_shapes, strides)
        offsets, start = {}, 0
        for key, grid in grids.items():
            offsets[key], start = start, start + grid.n_windows
        inputs_ = {k: run.batch.leaves[k] for k in run.batch.attributed}

        b = run.batch.batch_size

        def build(samples: Tensor, examples: Tensor) -> dict[Key, Tensor]:
            # rows of whole samples (every window over every example): the S window masks
            # broadcast over the B examples, nothing is gathered
            whole = whole_samples(samples, examples, b)
            if whole is not None:
                samples = torch.arange(*whole)
            out = {}
            for key, grid in grids.items():
                x, base = inputs_[key], run.baselines[key]
                local = samples - offsets[key]
                inside = (local >= 0) & (local < grid.n_windows)
                window = grid.masks(local.clamp(0, grid.n_windows - 1)).to(x.device)
                window &= inside.to(x.device).reshape(-1, *[1] * (x.dim() - 1))
                if whole is not None:  # [S, 1, ...] against [1, B, ...]
                    both = torch.where(window.unsqueeze(1), base.unsqueeze(0), x.unsqueeze(0))
                    out[key] = both.reshape(-1, *x.shape[1:])
                    continue
                rows = examples.to(x.device)
                out[key] = torch.where(window, base.index_select(0, rows), x.index_select(0, rows))
            return out

        full, scores = run.evaluate(Perturbations(start, build, shared=True))
        drop = (full.unsqueeze(1) - scores).transpose(1, 2)  # [B, K, windows]
        per_key = {
            key: grid.mean_over_windows(drop[:, :, offsets[key] : offsets[key] + grid.n_windows])
            for key, grid in grids.items()
        }
        return run.finish(per_key)


class FeaturePermutation(PerturbationAttribution):
    """Permutation feature importance: shuffle one feature across the batch; the attribution
    is ``f(x) - f(x with the feature shuffled)`` per example.

    Args:
        model: the model.
        perm_func: captum's ``perm_func(x [B, ...], feature_mask [1, ...] bool) -> [B, ...]``;
            by default one random permutation of the batch per feature, drawn from
            ``generator=`` / ``seed=`` (the same permutation for every input of a feature).
        layer: permute positions of this layer's activation instead of the inputs (captum's
            LayerFeaturePermutation); ``feature_mask`` then refers to the activation.
    """

    perturbs_layers = True

    def __init__(
        self,
        model: Any,
        perm_func: Callable[[Tensor, Tensor], Tensor] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        self.perm_func = perm_func

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool | None = None,
        *,
        targets: Any = None,
        output: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Any:
        """Attributions shaped like the inputs (``[B, K, ...]`` with ``targets``)."""
        run = self._start(
            inputs,
            target=target,
            targets=targets,
            output=output,
            keys=keys,
            additional_forward_args=additional_forward_args,
            perturbations_per_eval=perturbations_per_eval,
            internal_batch_size=internal_batch_size,
            generator=generator,
            seed=seed,
            show_progress=show_progress,
        )
        layout = FeatureLayout.build(run.batch, feature_mask)
        m, b = layout.n_features, run.batch.batch_size
        if b < 2:
            raise InputError(
                f"FeaturePermutation shuffles each feature across the examples of the batch, "
                f"and a batch of {b} has nothing to shuffle with (every attribution would be "
                "0); pass a batch of several examples, or use FeatureAblation with baselines"
            )
        inputs_ = {k: run.batch.leaves[k] for k in run.batch.attributed}
        if self.perm_func is None:
            perms = run.rand(m, b).argsort(dim=1).to(run.device)
            identity = (perms == torch.arange(b, device=run.device)).all(dim=1)
            perms[identity] = torch.arange(b, device=run.device).roll(1)
        cache: dict[int, dict[Key, Tensor]] = {}

        def permuted(feature: int) -> dict[Key, Tensor]:
            if feature not in cache:
                cache.clear()  # rows come in sample order: only the current feature is kept
                cache[feature] = {}
                for key, mask in layout.masks.items():
                    selected = (mask == feature).to(inputs_[key].device)
                    moved = self.perm_func(inputs_[key], selected)  # type: ignore[misc]
                    if not isinstance(moved, Tensor) or moved.shape != inputs_[key].shape:
                        got = list(moved.shape) if isinstance(moved, Tensor) else type(moved)
                        raise InputError(
                            f"perm_func returned {got} for input {key!r} of shape "
                            f"{list(inputs_[key].shape)}; it must return a tensor of the "
                            "input's shape (the batch with the feature's positions permuted)"
                        )
                    cache[feature][key] = moved
            return cache[feature]

        def build(samples: Tensor, examples: Tensor) -> dict[Key, Tensor]:
            if self.perm_func is not None:
                out: dict[Key, list[Tensor]] = {k: [] for k in inputs_}
                for feature in samples.unique_consecutive().tolist():
                    rows = examples[samples == feature]
                    for key, value in permuted(feature).items():
                        out[key].append(value.index_select(0, rows.to(value.device)))
                return {k: torch.cat(v) for k, v in out.items()}
            one_hot = torch.eye(m, dtype=torch.bool, device=run.device)[samples.to(run.device)]
            selected = layout.present(one_hot, examples)
            donors = perms[samples.to(run.device), examples.to(run.device)]
            result = {}
            for key, sel in selected.items():
                x = inputs_[key]
                own = x.index_select(0, examples.to(x.device))
                other = x.index_select(0, donors.to(x.device))
                result[key] = torch.where(sel.to(x.device), other, own)
            return result

        full, scores = run.evaluate(Perturbations(m, build, shared=layout.shared))
        drop = full.unsqueeze(1) - scores
        return run.finish(layout.spread(drop.transpose(1, 2)))
