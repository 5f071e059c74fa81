"""The explorer's text modality: samples are texts, each configured method runs through the
:mod:`tdlens.text` explainer of the same name (at token or word granularity), and the answer
carries the scored elements so that the page can highlight them (as text nodes, never HTML).

Only the public API of :mod:`tdlens.text` is used: an answer equals
``getattr(tdlens.text, method)(model, tokenizer, granularity=..., **args)([text],
targets=target)[0]``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .methods import ArgSpec, MethodSpec, _kind, configured_methods

__all__ = [
    "TextMethod",
    "build_text_methods",
    "check_texts",
    "compute_text",
    "predict_texts",
    "text_deletion",
]

# Set by tdlens.text from the text, the target and the granularity (see its explainers), or
# computed by it when not given (SmoothGrad's ``stdevs``: 0.1 x the embedding matrix's std, in
# embedding units; the method's own default of 1.0 would mean something else), so not shown.
_NOT_EDITABLE = frozenset(
    {"inputs", "target", "targets", "baselines", "feature_mask", "keys", "layer", "output"}
    | {"additional_forward_args", "return_convergence_delta", "return_input_shape"}
    | {"stdevs", "generator", "show_progress", "kwargs"}
)
GRANULARITIES = ("token", "word")


class TextMethod:
    """One :mod:`tdlens.text` explainer class bound to the explorer's model and tokenizer."""

    def __init__(self, cls: Any, model: Any, tokenizer: Any, granularity: str) -> None:
        self.cls, self.model, self.tokenizer, self.granularity = cls, model, tokenizer, granularity

    def explainer(self, **options: Any) -> Any:
        return self.cls(self.model, self.tokenizer, granularity=self.granularity, **options)

    def attribute(self, text: str, *, target: int, **options: Any) -> Any:
        """The :class:`~tdlens.text.TextAttribution` of ``text`` for class ``target``."""
        return self.explainer(**options)([text], targets=target)[0]


def _is_explainer(value: Any) -> bool:
    from tdlens.text import TextExplainer

    return inspect.isclass(value) and issubclass(value, TextExplainer) and bool(value.method_name)


def build_text_methods(
    model: Any, tokenizer: Any, methods: Any, granularity: str
) -> dict[str, MethodSpec]:
    """Method specs for the text view: ``methods`` are names of :mod:`tdlens.text` explainers,
    or a mapping from a name to its options (``{"IntegratedGradients": {"n_steps": 16}}``).

    Editable on the page: the explainer's method's ``attribute()`` arguments whose default
    (the explainer's own where it has one) is a bool, number, string or list of ints, minus
    those tdlens.text sets itself; other options given here pass unchanged.
    """
    import tdlens
    import tdlens.text as text

    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}; got {granularity!r}")
    specs = {}
    for name, given in configured_methods(methods).items():
        cls: Any = getattr(text, str(name), None)
        if not _is_explainer(cls):
            available = ", ".join(n for n in text.__all__ if _is_explainer(getattr(text, n)))
            raise ValueError(f"unknown text method {name!r}; tdlens.text has: {available}")
        options = dict(given or {})
        args: dict[str, ArgSpec] = {}
        parameters = inspect.signature(getattr(tdlens, cls.method_name).attribute).parameters
        for param in parameters.values():
            if param.name == "self" or param.name in _NOT_EDITABLE:
                continue
            value = options.pop(param.name, cls.option_defaults.get(param.name, param.default))
            kind = _kind(value)
            if kind is not None:
                args[param.name] = ArgSpec(param.name, kind, value)
            elif value is not param.default and value is not inspect.Parameter.empty:
                options[param.name] = value
        method = TextMethod(cls, model, tokenizer, granularity)
        try:
            method.explainer(**options)  # unknown options fail here, before any forward pass
        except (tdlens.TdlensError, TypeError, ValueError) as error:
            raise ValueError(f"method {name}: {error}") from None
        specs[str(name)] = MethodSpec(str(name), method, args, options)
    return specs


def model_inputs(tokenizer: Any, texts: Sequence[str], model: Any) -> dict[str, Tensor]:
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    padding = len(texts) > 1
    encoded = tokenizer(list(texts), padding=padding, truncation=True, return_tensors="pt")
    return {k: v.to(device) for k, v in encoded.items()}


def predict_texts(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int
) -> tuple[Tensor, Tensor]:
    """Predicted class ``[N]`` and class probabilities ``[N, C]`` of ``texts``, in padded
    batches of ``batch_size`` texts (one by one without a pad token), without gradients."""
    from tdlens.text.model import read_logits

    if getattr(tokenizer, "pad_token_id", None) is None:
        batch_size = 1  # texts of different lengths cannot share a batch without padding
    probs = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            logits = read_logits(
                model(**model_inputs(tokenizer, texts[start : start + batch_size], model))
            )
            if logits.ndim != 2:
                raise ValueError(
                    "the text explorer needs a sequence classifier returning logits [B, C]; "
                    f"got shape {list(logits.shape)}"
                )
            probs.append(logits.float().softmax(-1).cpu())
    table = torch.cat(probs)
    return table.argmax(-1), table


def check_texts(inputs: Any) -> None:
    for i in range(len(inputs)):
        if not isinstance(inputs[i], str):
            raise TypeError(
                f"text samples must be strings; sample {i} is {type(inputs[i]).__name__} (pass "
                "a list of texts or of (text, label) pairs)"
            )


def text_deletion(spec: MethodSpec, explanation: Any) -> dict[str, Any] | None:
    """The deletion curve of ``explanation`` on the class probability, its elements removed
    (all their tokens take the mask token, else the pad token) most attributed first, as
    ``tdlens.text``'s ``evaluate(tdlens.metrics.deletion, ...)`` computes it; None when the
    tokenizer has neither token."""
    import tdlens
    import tdlens.text as text

    method: TextMethod = spec.method
    try:
        evaluator = text.FeatureAblation(
            method.model,
            method.tokenizer,
            granularity=method.granularity,
            inference_mode=text.InferenceModes.SOFTMAX,
        )
        curve = evaluator.evaluate(tdlens.metrics.deletion, [explanation])[0]
    except (tdlens.TdlensError, ValueError):
        return None
    return {
        "auc": float(curve.score[0, 0]),
        "fractions": curve.fractions.tolist(),
        "curve": curve.curve[0, 0].tolist(),
    }


def compute_text(
    spec: MethodSpec, sample: str, target: int, options: dict[str, Any]
) -> dict[str, Any]:
    """The explorer's answer for ``spec`` on one text (all but the sample id)."""
    explanation, took_ms = spec.run(sample, target, options)
    scores = explanation.scores[0].detach()
    return {
        "method": spec.name,
        "target": target,
        "args": spec.shown_args(options),
        "scores": scores.tolist(),
        "shape": list(scores.shape),
        "elements": list(explanation.elements),
        "granularity": explanation.granularity,
        "took_ms": round(took_ms, 3),
        "deletion": text_deletion(spec, explanation),
    }
