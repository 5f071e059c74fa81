"""Max-sensitivity (Yeh et al. 2019) with captum's signature and semantics.

``sensitivity_max = max_I ||e(x + I) - e(x)|| / ||e(x)||`` over perturbations ``I`` drawn by
``perturb_func``, where ``e`` is the explanation function. As in captum, ``perturb_func``
sees the inputs repeated ``n`` times per example, chunk by chunk (``max_examples_per_batch //
B`` samples per chunk), so a shared seed gives captum's values; ``target`` (per example),
``baselines`` and ``additional_forward_args`` given per example are repeated to match.

The explanation function is called with inputs in the user's structure: a tensor stays a
tensor (captum passes a tuple), a dict or TensorDict keeps its non-attributed entries.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..core.errors import InputError, InputTypeError
from ..core.lazy import is_tensordict
from ..core.structure import InputBatch
from ..core.targets import Target
from ._common import check_budget, check_count, repeat_rows, sample_chunks
from .perturbations import parse_structure, structure_of, uniform_noise

_PER_EXAMPLE = ("target", "baselines", "additional_forward_args")


def sensitivity_max(
    explanation_func: Callable[..., Any],
    inputs: Any,
    perturb_func: Callable[..., Any] = uniform_noise,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 10,
    norm_ord: str | float = "fro",
    max_examples_per_batch: int | None = None,
    **kwargs: Any,
) -> Tensor:
    """The largest relative change of the explanation under small input perturbations,
    ``[B]``; lower is better.

    Args:
        explanation_func: ``(inputs, **kwargs) -> attributions``, e.g. ``ig.attribute`` (a
            method object is accepted too: its ``attribute`` is used).
        inputs: a tensor, tuple, dict or TensorDict.
        perturb_func: ``(inputs[, perturb_radius]) -> perturbed inputs`` in the structure it
            receives (the attributed inputs, repeated); default: uniform noise.
        perturb_radius: passed to ``perturb_func`` when it takes a second argument.
        n_perturb_samples: perturbations per example.
        norm_ord: the norm of the explanation differences (``"fro"``, or an order such as 1,
            2, ``float("inf")``).
        max_examples_per_batch: rows per call of ``explanation_func`` (captum's chunking).
        **kwargs: passed to ``explanation_func`` (``target``, ``baselines``, ``keys``...).

    Returns:
        ``[B]``: per example, the maximum over the perturbations.

    Example:
        >>> ig = tdlens.IntegratedGradients(model)
        >>> tdlens.metrics.sensitivity_max(ig.attribute, x, target=3, n_steps=16)   # [B]
    """
    explain = explanation_function(explanation_func, "explanation_func")
    if kwargs.get("return_convergence_delta"):
        raise InputError(
            "sensitivity_max compares explanations, and with return_convergence_delta=True "
            "explanation_func returns a pair (attributions, delta): leave it out"
        )
    if not callable(explain):
        raise InputTypeError(
            f"explanation_func must be callable, e.g. tdlens.Saliency(model).attribute, got "
            f"{type(explanation_func).__name__}"
        )
    n = check_count(n_perturb_samples, "n_perturb_samples")
    budget = check_budget(max_examples_per_batch)
    ord_ = _vector_ord(norm_ord)
    batch = InputBatch.build(inputs, keys=kwargs.get("keys"))
    batch.check_finite()
    b = batch.batch_size
    takes_radius = len(inspect.signature(perturb_func).parameters) > 1
    with torch.no_grad():
        reference = _flat(explain(inputs, **kwargs), b, "explanation_func")
        scale = torch.linalg.vector_norm(reference, ord=ord_, dim=1)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        worst = None
        for m in sample_chunks(n, b, budget):
            examples = repeat_rows(b, m)
            values = batch.take_rows(examples)
            repeated = {key: values[key] for key in batch.attributed}
            structure = structure_of(batch, repeated)
            perturbed = (
                perturb_func(structure, perturb_radius) if takes_radius else perturb_func(structure)
            )
            expected = {key: v.shape for key, v in repeated.items()}
            values.update(parse_structure(batch, perturbed, expected, "perturb_func's results"))
            rows, _ = batch.rebuild(values)
            explained = explain(rows, **_repeat_kwargs(kwargs, b, examples))
            changes = (
                _flat(explained, b * m, "explanation_func").reshape(b, m, -1) - reference[:, None]
            )
            ratio = torch.linalg.vector_norm(changes, ord=ord_, dim=2) / scale[:, None]
            chunk_max = ratio.max(dim=1).values
            worst = chunk_max if worst is None else torch.maximum(worst, chunk_max)
    assert worst is not None
    return worst


def explanation_function(method: Any, name: str) -> Any:
    """``method.attribute`` for a method object, the function itself otherwise; a model or a
    method class in its place is refused with the fix (they are callable, and would otherwise
    fail deep inside)."""
    if isinstance(method, type):
        raise InputTypeError(
            f"{name} is the class {method.__name__}; give an instance's attribute function, "
            f"e.g. {method.__name__}(model).attribute"
        )
    if isinstance(method, torch.nn.Module):
        raise InputTypeError(
            f"{name} is a model ({type(method).__name__}); give an explanation function, e.g. "
            "tdlens.Saliency(model).attribute, and pass the model to the method"
        )
    return method.attribute if hasattr(method, "attribute") else method


def _vector_ord(norm_ord: Any) -> float:
    if norm_ord == "fro":
        return 2.0
    if isinstance(norm_ord, (int, float)) and not isinstance(norm_ord, bool):
        return float(norm_ord)
    raise InputError(
        f"norm_ord={norm_ord!r} is not a vector norm; use 'fro' (the 2-norm of all attribution "
        "values), or an order such as 1, 2 or float('inf')"
    )


def _flat(explanation: Any, rows: int, name: str) -> Tensor:
    """All tensors of an explanation (tensor, tuple, dict, TensorDict) as ``[rows, -1]``."""
    if is_tensordict(explanation):
        parts = list(explanation.values(include_nested=True, leaves_only=True))
    elif isinstance(explanation, Mapping):
        parts = list(explanation.values())
    elif isinstance(explanation, (tuple, list)):
        parts = list(explanation)
    else:
        parts = [explanation]
    if not parts or not all(
        isinstance(p, Tensor) and p.dim() and p.shape[0] == rows for p in parts
    ):
        shapes = [list(p.shape) if isinstance(p, Tensor) else type(p).__name__ for p in parts]
        raise InputError(
            f"{name} must return attributions with one row per input example ({rows} rows), "
            f"got {shapes}; with return_convergence_delta=True it returns a pair: turn it off"
        )
    return torch.cat([p.reshape(rows, -1) for p in parts], dim=1)


def _repeat_kwargs(kwargs: dict[str, Any], b: int, examples: Tensor) -> dict[str, Any]:
    """Options given per example, repeated for the rows ``examples`` (as captum does)."""
    out = dict(kwargs)
    for name in _PER_EXAMPLE:
        if name in out:
            out[name] = _repeat(out[name], b, examples, is_target=name == "target")
    if isinstance(out.get("targets"), (list, tuple)):
        out["targets"] = [_repeat(t, b, examples, is_target=True) for t in out["targets"]]
    return out


def _repeat(value: Any, b: int, examples: Tensor, is_target: bool) -> Any:
    if isinstance(value, Target):
        return Target(_repeat(value.index, b, examples, True), value.output)
    if isinstance(value, Tensor):
        if value.dim() and value.shape[0] == b:
            return value.index_select(0, examples.to(value.device))
        return value
    if is_target:
        if isinstance(value, list) and len(value) == b:
            return [value[i] for i in examples.tolist()]
        return value
    if is_tensordict(value):
        return value[examples] if value.batch_dims and value.batch_size[0] == b else value
    if isinstance(value, Mapping):
        return {k: _repeat(v, b, examples, False) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_repeat(v, b, examples, False) for v in value)
    return value
