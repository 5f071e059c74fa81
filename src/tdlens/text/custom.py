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
from ..attribution.perturbation import (
    FeatureLayout,
    PerturbationAttribution,
    PerturbationRun,
    Perturbations,
    masked,
)
from ..core.errors import InputError, InputTypeError
from .explainers import TextExplainer
from .granularity import Encoded
from .model import EmbeddingsView


class Perturbator:
    """Makes the perturbed versions of a text.

    A *masking* perturbator writes :meth:`get_masks`: one row per perturbation, one column per
    element, 1 where the element is kept and 0 where its tokens take the mask token (floats
    are kept at >= 1/2). An *embedding* perturbator is given ``inputs_embedder`` (the model's
    input embedding module) and writes :meth:`perturb_embeddings` instead: perturbed token
    embeddings and, per perturbation, a number per element for the aggregator (for instance
    how much the element was moved). Random perturbators draw from ``generator`` (the call's
    ``seed=``), so that results are reproducible.

    Args:
        inputs_embedder: the module mapping token ids to embeddings, for embedding
            perturbators (``model.get_input_embeddings()``); ``None`` for masking ones.
    """

    def __init__(self, inputs_embedder: nn.Module | None = None) -> None:
        if inputs_embedder is not None and not callable(inputs_embedder):
            raise InputTypeError(
                f"inputs_embedder must be a module mapping token ids to embeddings, got "
                f"{type(inputs_embedder).__name__}"
            )
        self.inputs_embedder = inputs_embedder

    def get_masks(self, n_elements: int, generator: torch.Generator | None) -> Tensor:
        """``[S, n_elements]`` masks, the same for every text of a batch."""
        raise NotImplementedError(f"{type(self).__name__} must define get_masks()")

    def perturb_embeddings(
        self, embeddings: Tensor, element_of: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """``(perturbed [B, S, L, D], masks [B, S, M])`` from the texts' ``embeddings``
        ``[B, L, D]`` and the element of each position ``element_of`` ``[B, L]`` (``-1``:
        padding and unscored special tokens, which should stay as they are)."""
        raise NotImplementedError(
            f"{type(self).__name__} has an inputs_embedder and must define perturb_embeddings()"
        )


class Aggregator:
    """Turns the scores of the perturbed texts into element attributions."""

    def aggregate(self, original: Tensor, scores: Tensor, masks: Tensor) -> Tensor:
        """``[B, K, M]`` from ``original`` ``[B, K]`` (the unperturbed texts), ``scores``
        ``[B, S, K]`` (the perturbed ones) and the perturbator's ``masks`` (``[S, M]``, or
        ``[B, S, M]`` from an embedding perturbator)."""
        raise NotImplementedError(f"{type(self).__name__} must define aggregate()")


class MeanAggregator(Aggregator):
    """Per element, the mean drop ``original - score`` over the perturbations that mask it
    (mask below 1/2; 0 if none does): occlusion's estimator."""

    def aggregate(self, original: Tensor, scores: Tensor, masks: Tensor) -> Tensor:
        removed = (masks < 0.5).to(scores.dtype)  # [S, M] or [B, S, M]
        if removed.dim() == 2:
            removed = removed.unsqueeze(0).expand(scores.shape[0], -1, -1)
        drop = original.unsqueeze(1) - scores  # [B, S, K]
        total = torch.einsum("bsk,bsm->bkm", drop, removed)
        return total / removed.sum(1).clamp(min=1).unsqueeze(1)


class _Custom(PerturbationAttribution):
    """The core method a custom explainer runs: the perturbator's masks as coalitions over the
    elements' presence or, with ``element_of`` (an embedding perturbator), its perturbed
    embeddings as the rows."""

    def __init__(
        self,
        model: Any,
        perturbator: Perturbator,
        aggregator: Aggregator,
        element_of: Tensor | None = None,
        **defaults: Any,
    ):
        super().__init__(model, **defaults)
        self.perturbator, self.aggregator, self.element_of = perturbator, aggregator, element_of

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
        if self.element_of is not None:
            return self._embedded(run)
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

    def _embedded(self, run: PerturbationRun) -> Any:
        assert self.element_of is not None
        embeds = run.batch.leaves["inputs_embeds"]
        b, m = embeds.shape[0], int(self.element_of.max()) + 1
        perturbed, masks = self.perturbator.perturb_embeddings(
            embeds, self.element_of, run.generator
        )
        name = type(self.perturbator).__name__
        if (
            perturbed.dim() != 4
            or perturbed.shape[0] != b
            or perturbed.shape[2:] != embeds.shape[1:]
        ):
            raise InputError(
                f"{name}.perturb_embeddings returned embeddings of shape {list(perturbed.shape)};"
                f" expected [{b}, n_perturbations, {', '.join(map(str, embeds.shape[1:]))}]"
            )
        if masks.shape[:2] != perturbed.shape[:2] or masks.shape[2] < m:
            raise InputError(
                f"{name}.perturb_embeddings returned masks of shape {list(masks.shape)}; "
                f"expected [{b}, {perturbed.shape[1]}, {m}]"
            )

        def build(samples: Tensor, examples: Tensor) -> dict[Any, Tensor]:
            rows = perturbed[examples.to(perturbed.device), samples.to(perturbed.device)]
            return {"inputs_embeds": rows}

        original, scores = run.evaluate(Perturbations(perturbed.shape[1], build))
        phi = self.aggregator.aggregate(original, scores, masks.to(scores))
        return run.finish({"inputs_embeds": phi})


class AttributionExplainer(TextExplainer):
    """A text explainer from a perturbator and an aggregator (interpreto's base class).

    Args:
        model, tokenizer, batch_size, device: as every text explainer (see
            :class:`~.explainers.TextExplainer`, whose keyword options it takes too:
            ``granularity=``, ``inference_mode=``, ``replace_token_id=``, ``seed=``...).
        perturbator: a :class:`Perturbator` (masking elements, or perturbing embeddings when
            it has an ``inputs_embedder``). aggregator: an :class:`Aggregator`.
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

    def element_scores(self, enc: Encoded, targets: list[Any]) -> Tensor:
        embedder = self.perturbator.inputs_embedder
        if embedder is None:
            return super().element_scores(enc, targets)
        with torch.no_grad():
            embeds = embedder(enc.input_ids)
        others = {k: v for k, v in enc.inputs.items() if k != "input_ids"}
        method = _Custom(
            EmbeddingsView(self.model, self.inference_mode),
            self.perturbator,
            self.aggregator,
            enc.element_of,
            **self._constructor_options(),
        )
        return method.attribute({"inputs_embeds": embeds, **others}, targets=targets)[
            "inputs_embeds"
        ]
