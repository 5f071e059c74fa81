"""Text explainers: every attribution method of tdlens on Hugging Face text models.

An explainer turns texts into the inputs an existing method takes, runs it, and sums its
scores per element:

* gradient methods (``Saliency``, ``InputXGradient``, ``IntegratedGradients``, ``SmoothGrad``,
  ``GradientShap``, ``DeepLift``, ``DeepLiftShap``, ``GuidedBackprop``, ``Deconvolution``,
  ``LRP``)
  attribute ``inputs_embeds``, the output of the model's input
  embedding module, with the attention mask and the other inputs passed through; a token's
  score is the sum of its embedding's attributions (Saliency: of their absolute values), an
  element's the sum (``aggregation="mean"``: the mean) of its tokens';
* perturbation methods (``Occlusion``, ``FeatureAblation``, ``KernelShap``, ``Lime``,
  ``Sobol``, ``ShapleyValueSampling``, ``ShapleyValues``) perturb one number per element, its
  presence: a masked element's tokens all take the mask token (else the pad token, else
  ``replace_token_id``).

Targets of K classes (or, for a causal LM, K generated tokens) run on the multi-target engine:
one forward pass per chunk of rows, K backward passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.errors import InputError, format_keys
from .attribution import TextAttribution
from .granularity import Encoded, Granularity, as_granularity, check_fast, check_texts, encode
from .model import (
    EmbeddingsView,
    InferenceModes,
    PresenceView,
    as_mode,
    embedding_module,
    model_kind,
    read_logits,
)
from .targets import class_targets, text_targets

_SET_BY_TDLENS = (
    "inputs",
    "target",
    "targets",
    "baselines",
    "feature_mask",
    "keys",
    "layer",
    "output",
    "additional_forward_args",
    "return_convergence_delta",
    "return_input_shape",
)


class TextExplainer:
    """Base of the text explainers (interpreto's API on tdlens's methods).

    Args:
        model: a Hugging Face classifier (``AutoModelForSequenceClassification``) or causal
            language model (``AutoModelForCausalLM``); never changed (put it in eval mode
            yourself: dropout in training mode makes every score random).
        tokenizer: its fast tokenizer.
        batch_size: texts per attribution call.
        device: where the inputs go (default: the model's device; the model is not moved).
        granularity: what is scored, :class:`Granularity` (``TOKEN`` by default).
        inference_mode: what is explained, :class:`InferenceModes` (``LOGITS`` by default).
        aggregation: gradient methods, ``"sum"`` (default) or ``"mean"`` of the token scores
            of an element.
        baseline_token_id: gradient baselines (IG, DeepLift, GradientShap): this token's
            embedding at every scored position (default: the pad token, else the mask token).
        replace_token_id: perturbation methods: the token a masked element takes (default:
            the mask token, else the pad token).
        max_new_tokens: causal LMs with ``targets=None``: tokens generated greedily.
        **method_options: options of the method (constructor or ``attribute()``), e.g.
            ``n_steps=``, ``n_samples=``, ``internal_batch_size=``, ``seed=``.
    """

    method_name: ClassVar[str] = ""
    gradient: ClassVar[bool] = True
    baselines_kind: ClassVar[str | None] = None  # "path", "distribution" or None
    option_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        batch_size: int = 4,
        device: torch.device | str | None = None,
        granularity: Granularity | str = Granularity.TOKEN,
        inference_mode: InferenceModes | str = InferenceModes.LOGITS,
        *,
        aggregation: str = "sum",
        baseline_token_id: int | None = None,
        replace_token_id: int | None = None,
        max_new_tokens: int = 10,
        **method_options: Any,
    ) -> None:
        self.kind = model_kind(model)
        check_fast(tokenizer)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        if aggregation not in ("sum", "mean"):
            raise InputError(f"aggregation must be 'sum' or 'mean', got {aggregation!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        reserved = [k for k in method_options if k in _SET_BY_TDLENS]
        if reserved:
            raise InputError(
                f"{type(self).__name__}: {format_keys(reserved)} are set by tdlens.text from "
                "the texts, the targets and the granularity; pass targets to the call"
            )
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.granularity = as_granularity(granularity)
        self.inference_mode = as_mode(inference_mode)
        self.aggregation = aggregation
        self.max_new_tokens = max_new_tokens
        self.options = {**self.option_defaults, **method_options}
        parameter = next(iter(model.parameters()), None)
        self.device = torch.device(device) if device is not None else _device(parameter)
        if parameter is not None and parameter.device.type != self.device.type:
            raise InputError(
                f"device={self.device} but the model is on {parameter.device}: tdlens does not "
                f"move the model; move it yourself (model.to({str(self.device)!r})) or leave "
                "device=None"
            )
        if self.gradient:
            self.embeddings = embedding_module(model)
            self.baseline_id = _token_id(
                tokenizer, baseline_token_id, ("pad_token_id", "mask_token_id"), "baseline"
            )
        else:
            self.replace_id = _token_id(
                tokenizer, replace_token_id, ("mask_token_id", "pad_token_id"), "replace"
            )
        self._method(nn.Linear(1, 1))  # unknown options fail here, before any forward pass

    # -- the public call -----------------------------------------------------------------------
    def __call__(self, inputs: str | list[str], targets: Any = None) -> list[TextAttribution]:
        """One :class:`TextAttribution` per text.

        Args:
            inputs: a text or a list of texts (prompts for a causal LM).
            targets: classifier: ``None`` (the predicted class), a class id or name, a list of
                them (K classes for every text) or one list per text. Causal LM: ``None`` (the
                greedy continuation of ``max_new_tokens``), a text to force, or one per prompt.
        """
        texts = check_texts(inputs)
        if self.kind == "causal_lm":
            from .generation import explain_generation

            forced = text_targets(targets, len(texts))
            return [explain_generation(self, t, f) for t, f in zip(texts, forced)]
        per_text = class_targets(targets, len(texts), self.model)
        results: list[TextAttribution | None] = [None] * len(texts)
        for indices in self._batches(texts, per_text):
            chunk = [texts[i] for i in indices]
            for i, e in zip(indices, self._explain_batch(chunk, [per_text[i] for i in indices])):
                results[i] = e
        return [r for r in results if r is not None]

    explain = __call__

    def evaluate(
        self, metric: Any, explanations: list[TextAttribution], **options: Any
    ) -> list[Any]:
        """A ``tdlens.metrics`` function (``deletion``, ``insertion``, ``comprehensiveness``,
        ``sufficiency``...) on each explanation, at its granularity: removed elements are
        masked as a whole. One result per text, as for one example with K targets.

        Example:
            >>> explanations = explainer(texts)
            >>> explainer.evaluate(tdlens.metrics.deletion, explanations, n_steps=10)
        """
        from .evaluation import evaluate

        return evaluate(self, metric, explanations, **options)

    # -- batching ------------------------------------------------------------------------------
    def _batches(self, texts: list[str], per_text: list[list[int] | None]) -> Iterator[list[int]]:
        """Indices of texts explained together: the same number of targets (and, for
        perturbation methods, of elements: no empty feature takes samples), at most
        ``batch_size``; one text at a time without a pad token or for per-text baselines."""
        groups: dict[Any, list[int]] = {}
        alone = self.baselines_kind == "distribution" or self.tokenizer.pad_token_id is None
        # Decoder classifiers (GPT-2, Llama...: a ``score`` head) read the last non-pad token,
        # which they find from input_ids only: with inputs_embeds, padded texts would be read at
        # the wrong position, so gradient methods batch texts of the same length only.
        same_length = self.gradient and hasattr(self.model, "score")
        for i, text in enumerate(texts):
            key: Any = (len(per_text[i] or [0]),)
            if not self.gradient or same_length:
                enc = encode(self.tokenizer, [text], self.granularity, self.device)
                key += (enc.input_ids.shape[1] if same_length else len(enc.elements[0]),)
            if alone:
                key += (i,)
            groups.setdefault(key, []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                yield indices[start : start + self.batch_size]

    def _explain_batch(
        self, texts: list[str], per_text: list[list[int] | None]
    ) -> list[TextAttribution]:
        enc = encode(self.tokenizer, texts, self.granularity, self.device)
        if any(not e for e in enc.elements):
            empty = texts[next(i for i, e in enumerate(enc.elements) if not e)]
            raise InputError(
                f"the text {empty!r} has no {self.granularity.value} to score (only special "
                "tokens); use Granularity.ALL_TOKENS or remove it"
            )
        classes = self._resolve_classes(enc, per_text)
        k = len(classes[0])
        targets = [torch.tensor([c[j] for c in classes], device=self.device) for j in range(k)]
        scores = self.element_scores(enc, targets)  # [B, K, M]
        labels = getattr(getattr(self.model, "config", None), "id2label", None) or {}
        return [
            TextAttribution(
                text=text,
                elements=enc.elements[b],
                scores=scores[b, :, : len(enc.elements[b])].detach(),
                targets=list(classes[b]),
                target_names=[str(labels.get(c, c)) for c in classes[b]],
                granularity=self.granularity.value,
                method=type(self).__name__,
            )
            for b, text in enumerate(texts)
        ]

    @torch.no_grad()
    def _resolve_classes(self, enc: Encoded, per_text: list[list[int] | None]) -> list[list[int]]:
        if all(p is not None for p in per_text):
            return [list(p) for p in per_text if p is not None]
        logits = read_logits(self.model(**enc.inputs))
        predicted = logits.argmax(-1).tolist()
        return [p if p is not None else [predicted[b]] for b, p in enumerate(per_text)]

    # -- scores --------------------------------------------------------------------------------
    def element_scores(self, enc: Encoded, targets: list[Any]) -> Tensor:
        """``[B, K, M]`` element scores for the K targets (class ids ``[B]`` or index tuples)."""
        if not self.gradient:
            return self._perturbation_scores(enc, targets)
        token = self.token_scores(enc, targets)  # [B, K, L]
        hot = enc.one_hot(token.dtype)
        scores = torch.einsum("bkl,blm->bkm", token, hot)
        if self.aggregation == "mean":
            scores = scores / hot.sum(1).clamp(min=1).unsqueeze(1)
        return scores

    def token_scores(self, enc: Encoded, targets: list[Any]) -> Tensor:
        """``[B, K, L]``: per token, the sum of its embedding's attributions."""
        ids = enc.input_ids
        scored = enc.element_of >= 0
        with torch.no_grad():
            embeds = self.embeddings(ids)
            base = self.embeddings(torch.where(scored, torch.full_like(ids, self.baseline_id), ids))
        others = {k: v for k, v in enc.inputs.items() if k != "input_ids"}
        method = self._method(EmbeddingsView(self.model, self.inference_mode))
        options: dict[str, Any] = {}
        if self.baselines_kind is not None:
            options["baselines"] = {"inputs_embeds": base}
        options.update(self._call_options(embeds))
        attr = method.attribute({"inputs_embeds": embeds, **others}, targets=targets, **options)
        return attr["inputs_embeds"].sum(-1)

    def _perturbation_scores(self, enc: Encoded, targets: list[Any]) -> Tensor:
        b = enc.input_ids.shape[0]
        m = max(len(e) for e in enc.elements)
        view = PresenceView(
            self.model, self.inference_mode, enc.inputs, enc.element_of, self.replace_id
        )
        dtype = _float_dtype(self.model)
        inputs = {
            "presence": torch.ones(b, m, dtype=dtype, device=self.device),
            "example": torch.arange(b, device=self.device),
        }
        attr = self._method(view).attribute(inputs, targets=targets, **self._call_options(None))
        return attr["presence"]

    # -- the method ----------------------------------------------------------------------------
    def _method(self, view: nn.Module) -> Any:
        import tdlens

        cls = getattr(tdlens, self.method_name)
        return cls(view, **self._constructor_options())

    def _constructor_options(self) -> dict[str, Any]:
        return dict(self.options)

    def _call_options(self, embeds: Tensor | None) -> dict[str, Any]:
        return {}


def _device(parameter: Tensor | None) -> torch.device:
    return parameter.device if parameter is not None else torch.device("cpu")


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _token_id(tokenizer: Any, given: int | None, names: tuple[str, ...], what: str) -> int:
    if given is not None:
        if not isinstance(given, int) or not 0 <= given < len(tokenizer):
            raise InputError(f"{what}_token_id={given!r} is not a token id of the tokenizer")
        return given
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    kinds = " or ".join(n.removesuffix("_token_id") for n in names)
    raise InputError(
        f"the tokenizer has no {kinds} token to use as the {what} token; pass "
        f"{what}_token_id=<a token id> (e.g. the id of a neutral token such as '.'); tdlens "
        "does not add tokens or resize the embeddings"
    )
