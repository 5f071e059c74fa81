"""Custom perturbation methods, as in interpreto: a :class:`Perturbator` and an
:class:`Aggregator` given to :class:`AttributionExplainer`.

These are the text-facing names of tdlens's sampler / estimator framework
(``docs/perturbation.md``): the perturbator is the sampler of coalitions over a text's
elements, the core's batched forward scores every perturbed text for all targets, and the
aggregator is the estimator. A method written this way gets batching, chunking, targets,
granularity and an untouched model from the core.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..attribution.base import with_defaults
from ..attribution.perturbation import FeatureLayout, PerturbationAttribution, masked
from ..core.errors import InputError, InputTypeError
from .explainers import TextExplainer


class Perturbator:
    """Makes the perturbed versions of a text: one row per perturbation, one column per
    element, 1 where the element is kept and 0 where it is masked (floats are kept at >= 1/2).

    Subclasses write :meth:`get_masks`; random ones draw from ``generator`` (the call's
    ``seed=``), so that results are reproducible.
    """

    def get_masks(self, n_elements: int, generator: torch.Generator | None) -> Tensor:
        """``[S, n_elements]`` masks, the same for every text of a batch."""
        raise NotImplementedError(f"{type(self).__name__} must define get_masks()")


class Aggregator:
    """Turns the scores of the perturbed texts into element attributions."""

    def aggregate(self, original: Tensor, scores: Tensor, masks: Tensor) -> Tensor:
        """``[B, K, M]`` from ``original`` ``[B, K]`` (the unperturbed texts), ``scores``
        ``[B, S, K]`` (the perturbed ones) and the perturbator's ``masks`` ``[S, M]``."""
        raise NotImplementedError(f"{type(self).__name__} must define aggregate()")


class MeanAggregator(Aggregator):
    """Per element, the mean drop ``original - score`` over the perturbations that mask it
    (0 if none does): occlusion's estimator."""

    def aggregate(self, original: Tensor, scores: Tensor, masks: Tensor) -> Tensor:
        removed = (masks < 0.5).to(scores.dtype)  # [S, M]
        drop = original.unsqueeze(1) - scores  # [B, S, K]
        total = torch.einsum("bsk,sm->bkm", drop, removed)
        return total / removed.sum(0).clamp(min=1)


class _Custom(PerturbationAttribution):
    """The core method a custom explainer runs: the perturbator's masks as coalitions."""

    def __init__(
        self, model: Any, perturbator: Perturbator, aggregator: Aggregator, **defaults: Any
    ):
        super().__init__(model, **defaults)
        self.perturbator, self.aggregator = perturbator, aggregator

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        *,
        targets: Any = None,
        internal_batch_size: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        show_progress: bool | None = None,
    ) -> Any:
        run = self._start(
            inputs,
            target=target,
            targets=targets,
            output=None,
            keys=None,
            additional_forward_args=None,
            internal_batch_size=internal_batch_size,
            generator=generator,
            seed=seed,
            show_progress=show_progress,
        )
        layout = FeatureLayout.build(run.batch, None)
        m = layout.n_features
        masks = self.perturbator.get_masks(m, run.generator)
        if not isinstance(masks, Tensor) or masks.dim() != 2 or masks.shape[1] != m:
            shape = list(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
            raise InputError(
                f"{type(self.perturbator).__name__}.get_masks({m}, ...) returned {shape}; "
                f"expected a tensor [n_perturbations, {m}]"
            )
        coalitions = masks.to(run.device) >= 0.5
        original, scores = run.evaluate(masked(layout, coalitions, run))
        phi = self.aggregator.aggregate(original, scores, masks.to(scores))
        return run.finish(layout.spread(phi))


class AttributionExplainer(TextExplainer):
    """A text explainer from a perturbator and an aggregator (interpreto's base class).

    Args:
        model, tokenizer, batch_size, device: as every text explainer (see
            :class:`~.explainers.TextExplainer`, whose keyword options it takes too:
            ``granularity=``, ``inference_mode=``, ``replace_token_id=``, ``seed=``...).
        perturbator: a :class:`Perturbator`. aggregator: an :class:`Aggregator`.
        use_gradient: must be ``False``: a custom method scores perturbed texts by forward
            passes (gradient methods are the built-in explainers).

    Example:
        >>> class OneAtATime(Perturbator):
        ...     def get_masks(self, n, generator):
        ...         return 1 - torch.eye(n)
        >>> explainer = AttributionExplainer(model, tokenizer, 8, perturbator=OneAtATime(),
        ...                                  aggregator=MeanAggregator())
        >>> explainer(["a great movie"])      # equals tdlens.text.Occlusion
    """

    gradient = False

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        batch_size: int = 4,
        perturbator: Perturbator | None = None,
        aggregator: Aggregator | None = None,
        device: torch.device | str | None = None,
        use_gradient: bool = False,
        **options: Any,
    ) -> None:
        if not isinstance(perturbator, Perturbator):
            raise InputTypeError(
                f"perturbator must be a tdlens.text.Perturbator, got {type(perturbator).__name__}"
            )
        if not isinstance(aggregator, Aggregator):
            raise InputTypeError(
                f"aggregator must be a tdlens.text.Aggregator, got {type(aggregator).__name__}"
            )
        if use_gradient:
            raise InputError(
                "use_gradient=True is not supported by AttributionExplainer: custom methods "
                "score perturbed texts by forward passes; for gradients use the built-in "
                "explainers (SmoothGrad, IntegratedGradients, GradientShap...)"
            )
        self.perturbator, self.aggregator = perturbator, aggregator
        super().__init__(model, tokenizer, batch_size, device, **options)

    def _method(self, view: nn.Module) -> Any:
        return _Custom(view, self.perturbator, self.aggregator, **self._constructor_options())
