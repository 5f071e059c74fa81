"""The text counterpart of each attribution method: the same name, the same options, run by
:class:`~.explainers.TextExplainer` on embeddings (gradient methods) or element presence
(perturbation methods)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .explainers import TextExplainer


class Saliency(TextExplainer):
    """Gradient of the target at the token embeddings; a token's score is the sum of the
    absolute gradient over the embedding (its L1 norm).

    Example:
        >>> e = Saliency(model, tokenizer, granularity=Granularity.WORD)(["a great movie"])[0]
    """

    method_name = "Saliency"


class InputXGradient(TextExplainer):
    """Embedding times gradient, summed over the embedding."""

    method_name = "InputXGradient"


class IntegratedGradients(TextExplainer):
    """Integrated Gradients along the straight path from the baseline embeddings (the pad
    token's at every scored position) to the text's embeddings; per text the scores of the
    elements add up to ``f(text) - f(baseline)`` (completeness in embedding space).

    Example:
        >>> ig = IntegratedGradients(model, tokenizer, n_steps=32)
        >>> ig(["a great movie"], targets=["positive", "negative"])[0].scores.shape   # [2, 3]
    """

    method_name = "IntegratedGradients"
    baselines_kind = "path"


class DeepLift(TextExplainer):
    """DeepLift against the baseline embeddings (rescale rule; see ``docs/deeplift.md`` on
    layer norms and attention)."""

    method_name = "DeepLift"
    baselines_kind = "path"


class DeepLiftShap(TextExplainer):
    """DeepLift against the baseline embeddings as a one-baseline distribution (texts are
    explained one at a time: each has its own baseline)."""

    method_name = "DeepLiftShap"
    baselines_kind = "distribution"


class GuidedBackprop(TextExplainer):
    """Guided backpropagation to the token embeddings (negative gradients cut at ReLUs),
    summed over the embedding."""

    method_name = "GuidedBackprop"


class Deconvolution(TextExplainer):
    """Deconvolution to the token embeddings (ReLUs applied to the gradient), summed over the
    embedding."""

    method_name = "Deconvolution"


class LRP(TextExplainer):
    """Layer-wise relevance propagation to the token embeddings (``composite="transformer"``
    gives AttnLRP's rules for attention, softmax and layer norms; see ``docs/lrp.md``); a
    token's relevance is the sum over its embedding."""

    method_name = "LRP"


class GradientShap(TextExplainer):
    """Gradient SHAP with the baseline embeddings as the baseline distribution (texts are
    explained one at a time: each has its own baseline)."""

    method_name = "GradientShap"
    baselines_kind = "distribution"
    option_defaults: ClassVar[dict[str, Any]] = {"n_samples": 20}


class SmoothGrad(TextExplainer):
    """Saliency averaged over noisy copies of the embeddings. ``stdevs`` defaults to 0.1 times
    the standard deviation of the embedding matrix (the noise is in embedding units)."""

    method_name = "SmoothGrad"
    option_defaults: ClassVar[dict[str, Any]] = {"nt_samples": 10}

    def _constructor_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if k != "stdevs"}

    def _call_options(self, embeds: Tensor | None) -> dict[str, Any]:
        stdevs = self.options.get("stdevs")
        if stdevs is None:
            with torch.no_grad():
                stdevs = 0.1 * float(self.embeddings.weight.std())
        return {"stdevs": stdevs}


class Occlusion(TextExplainer):
    """Mask windows of ``sliding_window_shapes`` consecutive elements (default one), moved by
    ``strides`` (default one); an element's score is the mean drop of the target over the
    windows that cover it."""

    method_name = "Occlusion"
    gradient = False
    option_defaults: ClassVar[dict[str, Any]] = {"sliding_window_shapes": (1,)}


class FeatureAblation(TextExplainer):
    """Mask one element at a time; its score is the drop of the target."""

    method_name = "FeatureAblation"
    gradient = False


class KernelShap(TextExplainer):
    """Kernel SHAP over the elements (masked: the mask token); per text the scores add up to
    ``f(text) - f(all elements masked)``.

    Example:
        >>> ks = KernelShap(model, tokenizer, granularity=Granularity.WORD, n_samples=200)
        >>> ks(["a great movie", "dull and long"])
    """

    method_name = "KernelShap"
    gradient = False
    option_defaults: ClassVar[dict[str, Any]] = {"n_samples": 200}


class Lime(TextExplainer):
    """Lime over the elements: a weighted linear fit on random maskings (weights from the
    cosine distance between the kept elements and the full text)."""

    method_name = "Lime"
    gradient = False
    option_defaults: ClassVar[dict[str, Any]] = {"n_samples": 200}


class Sobol(TextExplainer):
    """Total Sobol indices of the elements (a mask value below 1/2 masks the element: tokens
    cannot be mixed)."""

    method_name = "Sobol"
    gradient = False


class ShapleyValueSampling(TextExplainer):
    """Shapley values of the elements from random orders (antithetic pairs)."""

    method_name = "ShapleyValueSampling"
    gradient = False


class ShapleyValues(TextExplainer):
    """Exact Shapley values of the elements (at most 16 elements per text)."""

    method_name = "ShapleyValues"
    gradient = False
