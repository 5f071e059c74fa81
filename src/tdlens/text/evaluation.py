"""``tdlens.metrics`` at the granularity of a text explanation.

A metric perturbs *elements* (words, tokens, sentences) the way the explainer's perturbation
methods do: through :class:`~.model.PresenceView`, one presence number per element, 0 masking
all the element's tokens with the replacement token. Deletion and insertion remove or insert
elements in the order of their scores; comprehensiveness and sufficiency remove or keep the
top elements.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import InputError
from .attribution import TextAttribution
from .granularity import encode
from .model import PresenceView

if TYPE_CHECKING:
    from .explainers import TextExplainer


def evaluate(
    explainer: TextExplainer,
    metric: Callable[..., Any],
    explanations: list[TextAttribution],
    **options: Any,
) -> list[Any]:
    """``metric`` (e.g. ``tdlens.metrics.deletion``) on each explanation, one result per text
    laid out as for one example with K targets (``curve [1, K, ...]``, ``score [1, K]``).

    ``options`` go to the metric (``n_steps=``, ``percentages=``...); removed elements take
    the replacement token (the mask token, else the pad token, else ``replace_token_id``).
    """
    if explainer.kind != "classifier":
        raise InputError("metrics at element granularity are for classifier explanations")
    replace_id = getattr(explainer, "replace_id", None)
    if replace_id is None:
        from .explainers import _token_id

        replace_id = _token_id(
            explainer.tokenizer, None, ("mask_token_id", "pad_token_id"), "replace"
        )
    fixed = [
        k for k in ("inputs", "baselines", "targets", "target", "feature_mask") if k in options
    ]
    if fixed:
        raise InputError(f"{fixed} are set from the explanations; pass the metric's own options")
    results = []
    for e in explanations:
        if e.granularity != explainer.granularity.value:
            raise InputError(
                f"the explanation is at {e.granularity!r} granularity but the explainer at "
                f"{explainer.granularity.value!r}: evaluate with an explainer of the same one"
            )
        enc = encode(explainer.tokenizer, [e.text], explainer.granularity, explainer.device)
        if enc.elements[0] != e.elements:
            raise InputError(
                f"the explanation's elements {e.elements[:5]}... do not match the text's "
                f"{enc.elements[0][:5]}...: explain and evaluate with the same tokenizer"
            )
        view = PresenceView(
            explainer.model, explainer.inference_mode, enc.inputs, enc.element_of, replace_id
        )
        dtype = e.scores.dtype if e.scores.is_floating_point() else torch.float64
        m = len(e.elements)
        inputs = {
            "presence": torch.ones(1, m, dtype=dtype, device=explainer.device),
            "example": torch.zeros(1, dtype=torch.long, device=explainer.device),
        }
        attributions = {"presence": e.scores.to(explainer.device).unsqueeze(0)}
        results.append(
            metric(view, inputs, attributions, targets=list(e.targets), baselines=0.0, **options)
        )
    return results
