"""Explanation infidelity (Yeh et al. 2019) with captum's signature and semantics.

``infidelity = E_I[(I . attribution - (f(x) - f(x - I)))^2]`` over perturbations ``I`` drawn
by ``perturb_func``. As in captum, ``perturb_func`` is called once per chunk on the inputs
repeated ``n`` times per example (``repeat_interleave``: rows ``b * n .. b * n + n - 1`` are
example b), with chunks of ``max_examples_per_batch // B`` samples per example: the same seed
gives captum's perturbations and captum's values. Unlike captum, the unperturbed inputs run
through the model once, not once per chunk, the attributions are not repeated per sample, and
``targets=[...]`` scores K targets on the same perturbations (attributions ``[B, K, ...]``).

Dict and TensorDict inputs replace captum's ``additional_forward_args``: ``perturb_func``
receives (and returns) the attributed entries in the same structure; the other entries are
passed to the model unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..core.errors import InputError
from ..core.lazy import is_tensordict
from ..core.structure import InputBatch, Key
from ._common import MetricCall, check_count, repeat_rows, sample_chunks
from .perturbations import map_structure, parse_structure, structure_of


def infidelity(
    model: Callable[..., Any],
    perturb_func: Callable[..., Any],
    inputs: Any,
    attributions: Any,
    baselines: Any = None,
    target: Any = None,
    n_perturb_samples: int = 10,
    max_examples_per_batch: int | None = None,
    normalize: bool = False,
    *,
    targets: Any = None,
    output: Any = None,
    keys: Any = None,
    additional_forward_args: Any = None,
) -> Tensor:
    """Infidelity of ``attributions`` per example; lower is better.

    Args:
        model: any model (captum's ``forward_func``).
        perturb_func: ``(inputs[, baselines]) -> (perturbations, perturbed_inputs)``, both in
            the structure of the inputs it receives (see
            :func:`infidelity_perturb_func_decorator` to return only the perturbed inputs).
        inputs: a tensor, tuple, dict or TensorDict.
        attributions: shaped like the attributed inputs (``[B, K, ...]`` with ``targets``).
        baselines: passed to ``perturb_func`` as its second argument when given.
        target: captum's target (``None``: the predicted class of a ``[B, C]`` output).
        n_perturb_samples: perturbations per example.
        max_examples_per_batch: rows per forward pass, as in captum (at least one sample of
            every example per pass).
        normalize: rescale the attributions by the least-squares factor first (captum's).
        targets: K targets, each with its attributions ``[:, k]``; output, keys: as for
            the attribution methods.
        additional_forward_args: captum's extra model arguments, for tensor or tuple inputs
            (keyword-only here; dict and TensorDict inputs carry them as entries instead).

    Returns:
        ``[B]`` (``[B, K]`` with ``targets``) infidelity values.

    Example:
        >>> def perturb(x):
        ...     noise = 0.003 * torch.randn_like(x)
        ...     return noise, x - noise
        >>> tdlens.metrics.infidelity(model, perturb, x, attr, target=3)     # [B]
    """
    n = check_count(n_perturb_samples, "n_perturb_samples")
    with MetricCall(
        model,
        inputs,
        attributions,
        target=target,
        targets=targets,
        output=output,
        keys=keys,
        max_examples_per_batch=max_examples_per_batch,
        require_float=True,
        broadcast=False,
        additional_forward_args=additional_forward_args,
    ) as call:
        batch, b, k = call.batch, call.batch.batch_size, call.k
        attr = {key: a.reshape(b, k, -1) for key, a in call.attributions.items()}
        base = None if baselines is None else batch.per_key(baselines, "baselines")
        original = call.original()
        sums = original.new_zeros(3 if normalize else 1, b, k)
        for m in sample_chunks(n, b, call.budget):
            examples = repeat_rows(b, m)
            values = batch.take_rows(examples)
            perturbations, perturbed = _perturb(perturb_func, batch, values, base, examples)
            values.update(perturbed)
            drops = (original[examples] - call.score(examples, values)).reshape(b, m, k)
            products = [
                torch.bmm(attr[key], perturbations[key].reshape(b, m, -1).to(attr[key]).mT)
                for key in batch.attributed
            ]  # [B, K, m] per input: attribution . perturbation, without repeating attributions
            dots = torch.stack(products).sum(0).mT.to(drops.dtype)
            if normalize:
                sums += torch.stack([dots * dots, dots * drops, drops * drops]).sum(2)
            else:
                sums += ((dots - drops) ** 2).sum(1)
    if normalize:
        beta = sums[1] / torch.where(sums[0] != 0, sums[0], torch.ones_like(sums[0]))
        values_ = beta * beta * sums[0] - 2 * beta * sums[1] + sums[2]
    else:
        values_ = sums[0]
    return call.finish(values_ / n)


def _perturb(
    perturb_func: Callable[..., Any],
    batch: InputBatch,
    values: dict[Key, Any],
    baselines: dict[Key, Any] | None,
    examples: Tensor,
) -> tuple[dict[Key, Tensor], dict[Key, Tensor]]:
    """Call ``perturb_func`` on the repeated inputs (and baselines); check what it returns."""
    repeated = {key: values[key] for key in batch.attributed}
    args = [structure_of(batch, repeated)]
    if baselines is not None:
        args.append(structure_of(batch, _repeat_baselines(batch, baselines, examples)))
    result = perturb_func(*args)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        what = (
            f"a {type(result).__name__}"
            if not isinstance(result, (tuple, list))
            else f"{len(result)} values"
        )
        raise InputError(
            f"perturb_func must return (perturbations, perturbed_inputs), got {what}. Return "
            "both, or decorate a function that returns only the perturbed inputs with "
            "@tdlens.metrics.infidelity_perturb_func_decorator(multiply_by_inputs)"
        )
    expected = {key: value.shape for key, value in repeated.items()}
    perturbations = parse_structure(batch, result[0], expected, "perturb_func's perturbations")
    perturbed = parse_structure(batch, result[1], expected, "perturb_func's perturbed inputs")
    return perturbations, perturbed


def _repeat_baselines(batch: InputBatch, baselines: dict[Key, Any], examples: Tensor) -> dict:
    """Per-example baselines repeated like the inputs (captum: when their first dimension is
    the batch size and above one); numbers and shared tensors as given."""
    b = batch.batch_size
    return {
        key: base.index_select(0, examples.to(base.device))
        if isinstance(base, Tensor) and base.dim() and base.shape[0] == b > 1
        else base
        for key, base in baselines.items()
    }


def infidelity_perturb_func_decorator(
    multiply_by_inputs: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., tuple[Any, Any]]]:
    """Turn a ``perturb_func`` that returns only the perturbed inputs into one that also
    returns the perturbations, as captum's decorator does: ``inputs - perturbed`` for local
    attributions (``multiply_by_inputs=False``: Saliency...), ``(inputs - perturbed) /
    (inputs - baselines)`` (0 in the denominator read as 1) for global ones (IG, InputXGradient).

    Example:
        >>> @tdlens.metrics.infidelity_perturb_func_decorator(multiply_by_inputs=False)
        ... def perturb(x):
        ...     return x - 0.01 * torch.randn_like(x)
    """

    def decorate(perturb_func: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
        @functools.wraps(perturb_func)
        def with_perturbations(inputs: Any, baselines: Any = None) -> tuple[Any, Any]:
            perturbed = (
                perturb_func(inputs) if baselines is None else perturb_func(inputs, baselines)
            )
            return _differences(inputs, perturbed, baselines, multiply_by_inputs), perturbed

        return with_perturbations

    return decorate


def _differences(inputs: Any, perturbed: Any, baselines: Any, multiply_by_inputs: bool) -> Any:
    def one(x: Tensor, x_perturbed: Tensor, base: Any = None) -> Tensor:
        diff = x - x_perturbed
        if not multiply_by_inputs:
            return diff
        denom = x - (0 if base is None else base)
        return diff / torch.where(denom != 0, denom, torch.ones_like(denom))

    if isinstance(baselines, (tuple, list, Mapping)) or is_tensordict(baselines):
        return map_structure(one, inputs, perturbed, baselines)
    return map_structure(lambda x, p: one(x, p, baselines), inputs, perturbed)
