"""Explain Hugging Face text models: classifiers and generations, at token, word or sentence
level, with every attribution method of tdlens (interpreto's API).

Example:
    >>> from tdlens.text import KernelShap, Granularity, InferenceModes
    >>> explainer = KernelShap(model, tokenizer, batch_size=32, granularity=Granularity.WORD,
    ...                        inference_mode=InferenceModes.SOFTMAX, n_samples=200)
    >>> e = explainer(["a great movie", "dull and long"])[0]
    >>> e.elements, e.scores.shape            # (['a', 'great', 'movie'], [1, 3])
"""

from .attribution import TextAttribution
from .custom import Aggregator, AttributionExplainer, MeanAggregator, Perturbator
from .explainers import TextExplainer
from .granularity import Granularity
from .methods import (
    LRP,
    Deconvolution,
    DeepLift,
    DeepLiftShap,
    FeatureAblation,
    GradientShap,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    Lime,
    Occlusion,
    Saliency,
    ShapleyValues,
    ShapleyValueSampling,
    SmoothGrad,
    Sobol,
)
from .model import InferenceModes

__all__ = [
    "LRP",
    "Aggregator",
    "AttributionExplainer",
    "Deconvolution",
    "DeepLift",
    "DeepLiftShap",
    "FeatureAblation",
    "GradientShap",
    "Granularity",
    "GuidedBackprop",
    "InferenceModes",
    "InputXGradient",
    "IntegratedGradients",
    "KernelShap",
    "Lime",
    "MeanAggregator",
    "Occlusion",
    "Perturbator",
    "Saliency",
    "ShapleyValueSampling",
    "ShapleyValues",
    "SmoothGrad",
    "Sobol",
    "TextAttribution",
    "TextExplainer",
]
