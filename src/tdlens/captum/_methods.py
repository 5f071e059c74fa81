"""The captum-named methods whose call forms or result layouts differ from tdlens's own.

The others are tdlens's classes themselves: their constructors and ``attribute`` already take
captum's arguments and lay results out as captum does.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..attribution.base import Attribution
from ..attribution.cam import GuidedGradCam
from ..attribution.deeplift import DeepLift
from ..attribution.deeplift import DeepLiftShap as _DeepLiftShap
from ..attribution.gradient import InputXGradient, IntegratedGradients, Saliency
from ..attribution.guided import Deconvolution, GuidedBackprop
from ..attribution.noise import NoiseTunnel as _NoiseTunnel
from ..attribution.perturbation import FeatureAblation as _FeatureAblation
from ..attribution.perturbation import FeaturePermutation as _FeaturePermutation
from ..attribution.perturbation import KernelShap as _KernelShap
from ..attribution.perturbation import Occlusion as _Occlusion
from ..attribution.perturbation import ShapleyValues as _ShapleyValues
from ..attribution.perturbation import ShapleyValueSampling as _ShapleyValueSampling
from ..attribution.shap import GradientShap as _GradientShap
from ._inputs import (
    NO_FUTURE,
    broadcast_baselines,
    captum_errors,
    every_input,
    every_output,
    no_future,
)
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

    compute_convergence_delta = captum_errors(_DeepLiftShap.compute_convergence_delta)

    def has_convergence_delta(self) -> bool:
        return True

    @captum_errors
    def attribute(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        result = super().attribute(inputs, *args, **kwargs)
        if not _wants_delta(super().attribute, args, kwargs):
            return result
        return _flat_delta(result, kwargs.get("targets") is not None)


class GradientShap(_GradientShap):
    """captum's GradientShap: the delta of every sample, flat ``[B * n_samples]``."""

    compute_convergence_delta = captum_errors(_GradientShap.compute_convergence_delta)

    def has_convergence_delta(self) -> bool:
        return True

    @captum_errors
    def attribute(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs = _by_name(super().attribute, args, kwargs)
        if not kwargs.get("return_convergence_delta"):
            return super().attribute(inputs, **kwargs)
        result = super().attribute(inputs, per_sample_delta=True, **kwargs)
        return _flat_delta(result, kwargs.get("targets") is not None)


def _captum_class(name: str, parent: type) -> type:
    """``parent`` as captum runs it: every input tensor attributed, integer ones too."""

    method = getattr(parent, "attribute")  # noqa: B009
    signature = inspect.signature(method)

    def attribute(self: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(self, inputs, *args, **kwargs).arguments
        if bound.get("baselines") is not None:
            kwargs = _by_name(method, args, kwargs)
            args = ()
            kwargs["baselines"] = broadcast_baselines(inputs, kwargs["baselines"])
        if (
            name not in ("KernelShap",)
            and bound.get("target") is None
            and kwargs.get("targets") is None
        ):
            every = every_output(self.model, inputs, bound.get("additional_forward_args"))
            if every is not None:
                kwargs = _by_name(method, args, kwargs)
                args = ()
                kwargs.pop("target", None)
                result = method(self, inputs, targets=every, **every_input(inputs, kwargs))
                return _output_dims(result, every, flat=name in _FLAT_OUTPUTS)
        return method(self, inputs, *args, **every_input(inputs, kwargs))

    attribute.__signature__ = signature  # type: ignore[attr-defined]
    doc = f"captum's {name}: every input tensor is attributed, integer ones too (tdlens's "
    doc += "default attributes the floating-point ones); bad arguments raise errors that are "
    doc += "also AssertionErrors, as captum's asserts are."
    body: dict[str, Any] = {"attribute": captum_errors(attribute), "__doc__": doc}
    if name in NO_FUTURE:
        body["attribute_future"] = no_future
    body["__module__"] = __name__
    return type(name, (parent,), body)


FeatureAblation = _captum_class("FeatureAblation", _FeatureAblation)
Occlusion = _captum_class("Occlusion", _Occlusion)
FeaturePermutation = _captum_class("FeaturePermutation", _FeaturePermutation)
ShapleyValues = _captum_class("ShapleyValues", _ShapleyValues)
ShapleyValueSampling = _captum_class("ShapleyValueSampling", _ShapleyValueSampling)
KernelShap = _captum_class("KernelShap", _KernelShap)


_FLAT_OUTPUTS = ("FeatureAblation", "Occlusion", "FeaturePermutation")
"""captum lays these out as one row per output entry, ``[B * C, ...]``; the Shapley methods
as ``[B, C, ...]``."""


def _output_dims(result: Any, targets: list[tuple[int, ...]], flat: bool) -> Any:
    """``[B, K, ...]`` (K: the output entries) as captum lays it out: ``[B, *output_shape,
    ...]``, or ``[B * K, ...]`` with ``flat``."""
    shape = tuple(max(t[d] for t in targets) + 1 for d in range(len(targets[0])))
    if isinstance(result, tuple):
        return tuple(_output_dims(r, targets, flat) for r in result)
    if flat:
        return result.reshape(-1, *result.shape[2:])
    return result.reshape(result.shape[0], *shape, *result.shape[2:])


def _by_name(method: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    import inspect

    names = [
        n
        for n, p in inspect.signature(method).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD and n not in ("self", "inputs")
    ]
    return {**dict(zip(names, args)), **kwargs}


def _wants_delta(method: Any, args: tuple, kwargs: dict[str, Any]) -> bool:
    return bool(_by_name(method, args, kwargs).get("return_convergence_delta"))
