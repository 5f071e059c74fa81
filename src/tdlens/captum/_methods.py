"""The captum-named methods whose call forms or result layouts differ from tdlens's own.

The others are tdlens's classes themselves: their constructors and ``attribute`` already take
captum's arguments and lay results out as captum does.
"""

from __future__ import annotations

from typing import Any

from ..attribution.base import Attribution
from ..attribution.cam import GuidedGradCam
from ..attribution.deeplift import DeepLift
from ..attribution.deeplift import DeepLiftShap as _DeepLiftShap
from ..attribution.gradient import InputXGradient, IntegratedGradients, Saliency
from ..attribution.guided import Deconvolution, GuidedBackprop
from ..attribution.noise import NoiseTunnel as _NoiseTunnel
from ..attribution.perturbation import (
    FeatureAblation,
    FeaturePermutation,
    KernelShap,
    Occlusion,
    ShapleyValues,
    ShapleyValueSampling,
)
from ..attribution.shap import GradientShap as _GradientShap
from .lime import Lime, LimeBase

__all__ = [
    "Attribution",
    "Deconvolution",
    "DeepLift",
    "DeepLiftShap",
    "FeatureAblation",
    "FeaturePermutation",
    "GradientShap",
    "GuidedBackprop",
    "GuidedGradCam",
    "InputXGradient",
    "IntegratedGradients",
    "KernelShap",
    "Lime",
    "LimeBase",
    "NoiseTunnel",
    "Occlusion",
    "Saliency",
    "ShapleyValueSampling",
    "ShapleyValues",
]


def _flat_delta(result: Any, multi: bool) -> Any:
    """``(attributions, delta [B, S])`` as captum's ``(attributions, delta [B * S])``,
    example-major; with tdlens's ``targets=`` (``[B, K, S]``) the K dimension stays."""
    attributions, delta = result
    if multi:
        return attributions, delta
    return attributions, delta.reshape(-1)


class NoiseTunnel(_NoiseTunnel):
    """captum's NoiseTunnel: the delta of every noisy copy, flat ``[B * nt_samples]``.

    Example:
        >>> nt = tdlens.captum.NoiseTunnel(tdlens.captum.IntegratedGradients(model))
        >>> attr, delta = nt.attribute(x, nt_samples=4, target=0, return_convergence_delta=True)
        >>> delta.shape                             # [B * 4]
    """

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return self.attribution_method.has_convergence_delta()

    def attribute(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().attribute(inputs, *args, **kwargs)
        if not kwargs.get("return_convergence_delta"):
            return result
        return _flat_delta(result, kwargs.get("targets") is not None)


class DeepLiftShap(_DeepLiftShap):
    """captum's DeepLiftShap: the delta of every (input, baseline) pair, flat ``[B * S]``."""

    def has_convergence_delta(self) -> bool:
        return True

    def attribute(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        result = super().attribute(inputs, *args, **kwargs)
        if not _wants_delta(super().attribute, args, kwargs):
            return result
        return _flat_delta(result, kwargs.get("targets") is not None)


class GradientShap(_GradientShap):
    """captum's GradientShap: the delta of every sample, flat ``[B * n_samples]``."""

    def has_convergence_delta(self) -> bool:
        return True

    def attribute(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if not _wants_delta(super().attribute, args, kwargs):
            return super().attribute(inputs, *args, **kwargs)
        kwargs = _by_name(super().attribute, args, kwargs)
        result = super().attribute(inputs, per_sample_delta=True, **kwargs)
        return _flat_delta(result, kwargs.get("targets") is not None)


def _by_name(method: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    import inspect

    names = [
        n
        for n, p in inspect.signature(method).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD and n != "inputs"
    ]
    return {**dict(zip(names, args)), **kwargs}


def _wants_delta(method: Any, args: tuple, kwargs: dict[str, Any]) -> bool:
    return bool(_by_name(method, args, kwargs).get("return_convergence_delta"))
