"""GradCam and GuidedGradCam: class activation maps from a layer's activations and gradients.

GradCam (Selvaraju et al. 2017, captum's LayerGradCam) weighs each channel of a layer's
activation ``A`` (``[B, C, *spatial]``) by the mean over the spatial positions of the target's
gradient there, and sums over the channels: ``sum_c mean(dy/dA_c) * A_c``, ``[B, 1, *spatial]``.
It runs on the gradient engine (the transform of the layer gradient), so K targets share one
forward pass. GuidedGradCam multiplies guided backpropagation's input attributions by the map
upsampled to the input's size.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import InputError, InputTypeError
from ..core.paths import ModulePath, is_path_like
from ..core.structure import InputBatch
from .base import Attribution, layer_argument, layer_inputs, with_defaults
from .engine import GradientEngine


class GradCam(Attribution):
    """Grad-CAM maps at ``layer`` (a convolutional layer: an activation ``[B, C, *spatial]``).

    Args:
        model: the model.
        layer: the module path of the layer (a list or glob gives a dict keyed by path).

    Example:
        >>> cam = tdlens.GradCam(model, "features.3")
        >>> maps = cam.attribute(x, targets=[0, 1], relu_attributions=True, upsample_to="input")
        >>> maps.shape                  # [B, 2, 1, *x.shape[2:]]
    """

    def __init__(self, model: nn.Module, layer: Any = None, **options: Any) -> None:
        super().__init__(model, layer=layer, **options)

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        *,
        targets: Any = None,
        output: Any = None,
        layer: Any = None,
        keys: Any = None,
        upsample_to: Any = None,
        interpolate_mode: str = "nearest",
        internal_batch_size: int | None = None,
    ) -> Any:
        """Maps ``[B, 1, *spatial]`` (``[B, K, 1, *spatial]`` with ``targets``; ``C`` instead
        of ``1`` without ``attr_dim_summation``).

        Args:
            attribute_to_layer_input: use the layer's input instead of its output.
            relu_attributions: keep the positive part of the map (the paper's Grad-CAM).
            attr_dim_summation: sum the weighted channels (else one map per channel).
            upsample_to: ``None`` (the layer's resolution), ``"input"`` (the spatial size of
                the attributed input) or a size such as ``(224, 224)``.
            interpolate_mode: the ``torch.nn.functional.interpolate`` mode for upsampling.
        """
        batch, target_list, multi, layers = self._prepare(
            inputs, target, targets, output, layer, keys, additional_forward_args
        )
        if not layers:
            raise InputError(
                f"{type(self).__name__} needs the layer to compute maps at: pass "
                f"layer='<module path of a convolutional layer>' to {type(self).__name__}(model, "
                "layer) or to attribute()"
            )
        if attribute_to_layer_input:
            layers = layer_inputs(layers)

        def transform(site: ModulePath, grad: Tensor, activation: Tensor) -> Tensor:
            if activation.dim() < 3:
                shape = ", ".join(["B", *map(str, activation.shape[1:])])
                raise InputError(
                    f"{type(self).__name__} at layer {str(site)!r}: its activation has shape "
                    f"[{shape}], with no spatial dimension after the channels; Grad-CAM needs "
                    "[B, C, *spatial]. Pick a convolutional layer "
                    "(or InputXGradient(layer=...) for activation times gradient)"
                )
            weights = grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True)
            cam = weights * activation
            if attr_dim_summation:
                cam = cam.sum(dim=1, keepdim=True)
            return F.relu(cam) if relu_attributions else cam

        check_mode(interpolate_mode)
        if upsample_to is None and interpolate_mode != "nearest":
            raise InputError(
                f"interpolate_mode={interpolate_mode!r} applies when the maps are upsampled: "
                "pass upsample_to='input' or a size, or leave interpolate_mode out"
            )
        with GradientEngine(self.model, batch, target_list, layers, internal_batch_size) as eng:
            maps = eng.accumulate(transform=transform)
        if upsample_to is not None:
            size = _size(batch, upsample_to)
            maps = {site: upsample(m, size, interpolate_mode) for site, m in maps.items()}
        return self._layout(batch, maps, multi, layers, layer_argument(self, layer))


class GuidedGradCam(Attribution):
    """Guided Grad-CAM: guided backpropagation times the (positive) Grad-CAM map at ``layer``,
    upsampled to each input's spatial size. Inputs shaped ``[B, C, *spatial]`` like the map.

    Example:
        >>> ggc = tdlens.GuidedGradCam(model, "features.3")
        >>> attrs = ggc.attribute(x, targets=[0, 1])        # [B, 2, *x.shape[1:]]
    """

    def __init__(self, model: nn.Module, layer: Any = None, **options: Any) -> None:
        super().__init__(model, layer=layer, **options)

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        interpolate_mode: str = "nearest",
        attribute_to_layer_input: bool = False,
        *,
        targets: Any = None,
        output: Any = None,
        layer: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
    ) -> Any:
        """Attributions shaped like the inputs (``[B, K, ...]`` with ``targets``)."""
        from .guided import GuidedBackprop

        layer = layer_argument(self, layer)
        check_mode(interpolate_mode)
        if not is_path_like(layer) or (isinstance(layer, str) and "*" in layer):
            raise InputError(
                "GuidedGradCam needs one layer for its map: layer='<module path of a "
                f"convolutional layer>' (got {layer!r})"
            )
        common = dict(
            target=target,
            additional_forward_args=additional_forward_args,
            targets=targets,
            output=output if output is not None else self.output,
            keys=keys,
            internal_batch_size=internal_batch_size,
        )
        model = self._module()
        maps = GradCam(model).attribute(
            inputs,
            layer=layer,
            attribute_to_layer_input=attribute_to_layer_input,
            relu_attributions=True,
            **common,
        )
        guided = GuidedBackprop(model).attribute(inputs, **common)
        batch = InputBatch.build(inputs, keys=keys, additional_forward_args=additional_forward_args)
        multi = targets is not None
        per_key = batch.per_key(guided, "result")
        result = {}
        for key, attr in per_key.items():
            x = batch.leaves[key]
            if x.dim() != maps.dim() - int(multi):
                raise InputError(
                    f"GuidedGradCam: input {key!r} of shape {list(x.shape)} has no spatial "
                    f"dimensions matching the map of layer {layer!r} (shape "
                    f"{['B', *maps.shape[1:]]}); attribute only the image-like inputs with keys="
                )
            result[key] = attr * upsample(maps, tuple(x.shape[2:]), interpolate_mode)
        return batch.pack(result, extra_dims=int(multi))


INTERPOLATE_MODES = (
    "nearest",
    "nearest-exact",
    "linear",
    "bilinear",
    "bicubic",
    "trilinear",
    "area",
)


def check_mode(mode: object) -> None:
    """Raise unless ``mode`` is one of torch's interpolation modes."""
    if mode not in INTERPOLATE_MODES:
        raise InputError(f"interpolate_mode={mode!r} is not one of {INTERPOLATE_MODES}")


def upsample(maps: Tensor, size: tuple[int, ...], mode: str) -> Tensor:
    """Interpolate ``[B, (K,) C, *spatial]`` maps to ``size`` (captum's
    ``LayerAttribution.interpolate``, over any leading dimensions)."""
    spatial = maps.dim() - len(size)
    if spatial < 2:
        raise InputError(
            f"cannot upsample maps of shape {list(maps.shape)} to {list(size)}: the size has "
            f"{len(size)} dimensions but the maps only {maps.dim() - 2} spatial ones"
        )
    lead = maps.shape[: spatial - 1]
    flat = maps.reshape(-1, *maps.shape[spatial - 1 :])
    out = F.interpolate(flat, size=size, mode=mode)
    return out.reshape(*lead, *out.shape[1:])


def _size(batch: InputBatch, upsample_to: Any) -> tuple[int, ...]:
    if isinstance(upsample_to, str):
        if upsample_to != "input":
            raise InputError(
                f"upsample_to={upsample_to!r}: use 'input' (the input's spatial size) or a size "
                "such as (224, 224)"
            )
        shapes = {tuple(batch.leaves[k].shape[2:]) for k in batch.attributed}
        if len(shapes) != 1 or not next(iter(shapes)):
            raise InputError(
                "upsample_to='input' needs one attributed input with spatial dimensions "
                f"([B, C, *spatial]); the attributed inputs have spatial sizes {sorted(shapes)}; "
                "pass the size, e.g. upsample_to=(224, 224)"
            )
        return shapes.pop()
    if isinstance(upsample_to, int):
        raise InputTypeError(
            f"upsample_to={upsample_to}: give one size per spatial dimension, e.g. "
            f"({upsample_to}, {upsample_to})"
        )
    return tuple(int(s) for s in upsample_to)
