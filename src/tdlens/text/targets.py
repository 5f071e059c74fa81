"""``targets=`` of a text explanation: class ids or names for a classifier, texts to force
(or ``None``: the greedy continuation) for a causal language model. Checked before any
forward pass."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..core.errors import InputError, InputTypeError, KeyNotFoundError, format_keys


def class_targets(targets: Any, n_texts: int, model: Any) -> list[list[int] | None]:
    """Per text, the K class ids to explain (``None``: the predicted class).

    ``None``; an int or a class name (the same class for every text); a list of them (the
    same K classes for every text); a list of such lists, one per text (``[n_texts, K]``, a
    2-D tensor too).
    """
    if targets is None:
        return [None] * n_texts
    if isinstance(targets, Tensor):
        targets = targets.tolist()
    labels = _labels(model)
    if isinstance(targets, (int, str)):
        return [[_class_id(targets, labels, model)]] * n_texts
    if not isinstance(targets, (list, tuple)) or not targets:
        raise InputTypeError(
            f"targets= takes None, a class id or name, a list of them, or one list per text; "
            f"got {targets!r}"
        )
    if all(isinstance(t, (list, tuple, Tensor)) for t in targets):
        if len(targets) != n_texts:
            raise InputError(
                f"targets= holds {len(targets)} lists but there are {n_texts} texts: give one "
                "list of classes per text, or one flat list for every text"
            )
        per_text = []
        for row in targets:
            row = row.tolist() if isinstance(row, Tensor) else list(row)
            if not row:
                raise InputError("targets= holds an empty list of classes for a text")
            per_text.append([_class_id(t, labels, model) for t in row])
        return list(per_text)
    classes = [_class_id(t, labels, model) for t in targets]
    return [list(classes) for _ in range(n_texts)]


def _labels(model: Any) -> dict[str, int]:
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None) or {}
    return {str(name): int(i) for i, name in id2label.items()}


def _class_id(value: Any, labels: dict[str, int], model: Any) -> int:
    if isinstance(value, bool):
        raise InputTypeError(f"a class target must be an int or a class name, got {value!r}")
    if isinstance(value, int):
        n = getattr(getattr(model, "config", None), "num_labels", None)
        if n is not None and not -n <= value < n:
            raise InputError(
                f"class id {value} is out of range: the model has {n} classes (0..{n - 1})"
            )
        return value % n if n else value
    if isinstance(value, str):
        if value in labels:
            return labels[value]
        raise KeyNotFoundError(
            f"the model has no class named {value!r}; its classes are "
            f"{format_keys(labels) or '(none named in model.config.id2label)'}. Target texts "
            "(teacher forcing) are for causal language models, not classifiers"
        )
    raise InputTypeError(f"a class target must be an int or a class name, got {value!r}")


def text_targets(targets: Any, n_texts: int) -> list[str | None]:
    """Per prompt, the continuation to force (``None``: the greedy continuation)."""
    if targets is None:
        return [None] * n_texts
    if isinstance(targets, str):
        return [targets] * n_texts
    if isinstance(targets, (list, tuple)) and all(isinstance(t, str) for t in targets):
        if len(targets) != n_texts:
            raise InputError(
                f"targets= holds {len(targets)} texts for {n_texts} prompts: give one target "
                "text per prompt (or one string for all)"
            )
        for i, t in enumerate(targets):
            if not t:
                raise InputError(f"targets[{i}] is an empty text: nothing to attribute")
        return list(targets)
    raise InputTypeError(
        f"for a causal language model targets= takes None (the greedy continuation), a text "
        f"or one text per prompt; got {targets!r}"
    )
