"""tdlens: interpretability for any PyTorch model.

Public names are imported on first use, so ``import tdlens`` costs no more than torch.

Example:
    >>> import tdlens
    >>> ig = tdlens.IntegratedGradients(model)
    >>> attrs = ig.attribute(x, targets=[3, 7, 9])      # [B, 3, *x.shape[1:]]
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Saliency": "tdlens.attribution.gradient",
    "InputXGradient": "tdlens.attribution.gradient",
    "IntegratedGradients": "tdlens.attribution.gradient",
    "Attribution": "tdlens.attribution.base",
    "Target": "tdlens.core.targets",
    "Scope": "tdlens.core.hooks",
    "ModulePath": "tdlens.core.paths",
    "resolve_paths": "tdlens.core.paths",
    "TdlensError": "tdlens.core.errors",
    # gradient family (issue 3)
    "NoiseTunnel": "tdlens.attribution.noise",
    "SmoothGrad": "tdlens.attribution.noise",
    "GradientShap": "tdlens.attribution.shap",
    "DeepLift": "tdlens.attribution.deeplift",
    "DeepLiftShap": "tdlens.attribution.deeplift",
    "GuidedBackprop": "tdlens.attribution.guided",
    "Deconvolution": "tdlens.attribution.guided",
    "GradCam": "tdlens.attribution.cam",
    "GuidedGradCam": "tdlens.attribution.cam",
    "Conductance": "tdlens.attribution.conductance",
    "NeuronConductance": "tdlens.attribution.conductance",
    "ActivationMaximisation": "tdlens.attribution.maximisation",
    # perturbation family (issue 4)
    "FeatureAblation": "tdlens.attribution.perturbation",
    "Occlusion": "tdlens.attribution.perturbation",
    "FeaturePermutation": "tdlens.attribution.perturbation",
    "ShapleyValues": "tdlens.attribution.perturbation",
    "ShapleyValueSampling": "tdlens.attribution.perturbation",
    "KernelShap": "tdlens.attribution.perturbation",
    "Lime": "tdlens.attribution.perturbation",
    "Sobol": "tdlens.attribution.perturbation",
    # dataset-scale attribution (issue 17)
    "attribute_dataset": "tdlens.dataset.run",
    # relevance propagation and attention (issue 13)
    "LRP": "tdlens.attribution.lrp",
    "AttentionRollout": "tdlens.attribution.attention",
    "AttentionFlow": "tdlens.attribution.attention",
    "AttentionXGradient": "tdlens.attribution.attention",
}

# Subpackages reachable as attributes (``tdlens.metrics.infidelity``), imported on first use.
_SUBMODULES = ("metrics", "attribution", "core", "viz", "latent", "text", "weights")
# Submodules that live deeper, reachable under a short name (``from tdlens import lrp``).
_ALIASES = {"lrp": "tdlens.attribution.lrp"}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"tdlens.{name}")
    if name in _ALIASES:
        alias = importlib.import_module(_ALIASES[name])
        sys.modules.setdefault(f"tdlens.{name}", alias)  # ``import tdlens.lrp`` too, after
        return alias
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tdlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
