"""captum's names and call forms on tdlens: ``import tdlens.captum as attr`` reads like
``import captum.attr as attr``.

Every class takes captum's constructor arguments (``LayerIntegratedGradients(model, layer,
device_ids=None, multiply_by_inputs=True)``, ``NeuronConductance(model, layer)``...) and
``attribute`` takes captum's arguments; results, including convergence deltas, are laid out as
captum lays them out. Layer* and Neuron* classes are thin aliases of the generic methods with
``layer=`` / ``output=`` (a module object or a path). tdlens's own options (``targets=``,
``keys=``, ``seed=``...) stay available. The main namespace (``tdlens.IntegratedGradients``)
keeps tdlens's layouts; see docs/captum.md for the differences.

Example:
    >>> import tdlens.captum as attr
    >>> lig = attr.LayerIntegratedGradients(model, model.embedding)
    >>> attributions, delta = lig.attribute(x, target=0, return_convergence_delta=True)
"""

from __future__ import annotations

import importlib
from typing import Any

_SAME = "tdlens.captum._methods"
_LAYER = "tdlens.captum.layer"
_NEURON = "tdlens.captum.neuron"

_PUBLIC = {
    name: _SAME
    for name in (
        "Attribution",
        "Saliency",
        "InputXGradient",
        "IntegratedGradients",
        "NoiseTunnel",
        "GradientShap",
        "DeepLift",
        "DeepLiftShap",
        "GuidedBackprop",
        "Deconvolution",
        "GuidedGradCam",
        "FeatureAblation",
        "Occlusion",
        "FeaturePermutation",
        "ShapleyValues",
        "ShapleyValueSampling",
        "KernelShap",
        "Lime",
        "LimeBase",
    )
}
_PUBLIC.update(
    dict.fromkeys(
        (
            "LayerGradCam",
            "LayerConductance",
            "InternalInfluence",
            "LayerActivation",
            "LayerGradientXActivation",
            "LayerIntegratedGradients",
            "LayerDeepLift",
            "LayerDeepLiftShap",
            "LayerGradientShap",
            "LayerFeatureAblation",
            "LayerFeaturePermutation",
        ),
        _LAYER,
    )
)
_PUBLIC.update(
    dict.fromkeys(
        (
            "NeuronConductance",
            "NeuronGradient",
            "NeuronIntegratedGradients",
            "NeuronDeepLift",
            "NeuronDeepLiftShap",
            "NeuronGradientShap",
            "NeuronGuidedBackprop",
            "NeuronDeconvolution",
            "NeuronFeatureAblation",
        ),
        _NEURON,
    )
)

__all__ = sorted([*_PUBLIC, "visualization"])


def __getattr__(name: str) -> Any:
    if name == "visualization":
        return importlib.import_module("tdlens.captum.visualization")
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tdlens.captum' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
