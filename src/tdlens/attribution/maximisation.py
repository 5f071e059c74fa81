"""ActivationMaximisation: inputs optimised to make a target as large as possible.

Gradient ascent on the inputs (or, with ``layer=``, on a layer's activation) from the given
starting values, optionally with noise, L2 and total-variation penalties and bounds
(Erhan et al. 2009; Olah et al. 2017). Any target works: a class logit, or a neuron of an
internal activation with ``output="<module path>"`` and ``target=<index>``. K targets are
optimised together as ``K * B`` rows of one batch, one forward and one backward pass per step.
Only the optimised tensors get gradients: the model's parameters, their ``.grad``, hooks and
flags stay as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.adapter import ModelAdapter, spec_name
from ..core.errors import InputError, InputTypeError, TargetError
from ..core.targets import Target, predicted, select
from .base import Attribution, layer_argument, random_generator, with_defaults

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


class ActivationMaximisation(Attribution):
    """Optimise inputs to maximise each target; returns the optimised inputs.

    Example:
        >>> am = tdlens.ActivationMaximisation(model, output="features.3")
        >>> images = am.attribute(torch.zeros(1, 3, 32, 32), targets=[(0, 4, 4), (5, 4, 4)],
        ...                       n_steps=200, lr=0.05, tv=1e-3, bounds=(0, 1), seed=0)
        >>> images.shape                # [1, 2, 3, 32, 32]: one optimised image per target
    """

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        *,
        targets: Any = None,
        output: Any = None,
        layer: Any = None,
        keys: Any = None,
        n_steps: int = 100,
        lr: float = 0.05,
        optimizer: str | Callable[..., torch.optim.Optimizer] = "adam",
        l2: float = 0.0,
        tv: float = 0.0,
        bounds: Any = None,
        init_noise: float = 0.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        return_objective: bool = False,
    ) -> Any:
        """Optimised values shaped like the inputs (``[B, K, ...]`` with ``targets``; like the
        layer's activation with ``layer=``).

        Args:
            inputs: starting values (and the model's other inputs, passed through).
            n_steps: optimisation steps.
            lr: learning rate.
            optimizer: ``"adam"``, ``"sgd"``, or ``(params, lr=...) -> torch.optim.Optimizer``.
            l2: weight of the penalty ``sum(v ** 2)`` per example.
            tv: weight of the total variation ``sum |v[i+1] - v[i]|`` over the spatial
                dimensions (those after the channel dimension) per example.
            bounds: ``(low, high)`` (numbers or broadcastable tensors), or a dict of them per
                input; values are clamped to them at the start and after every step.
            init_noise: standard deviation of Gaussian noise added to the starting values.
            generator, seed: where that noise comes from.
            return_objective: also return the targets' values at the result, ``[B]``
                (``[B, K]``).
        """
        _check_options(n_steps, lr, l2, tv, init_noise)
        batch, target_list, multi, layers = self._prepare(
            inputs, target, targets, output, layer, keys, additional_forward_args
        )
        b, k = batch.batch_size, len(target_list)
        rows = torch.arange(b).repeat(k)  # row t * B + e: example e optimised for target t
        gen = random_generator(generator, seed)
        with ModelAdapter(self._module(), batch, target_list, layers) as adapter:
            start, target_list = _start(adapter, batch, target_list, layers)
            limits = {site: _bounds(bounds, site) for site in start}
            values = {}
            for site, value in start.items():
                if init_noise:  # one draw per example, shared by its K targets
                    noise = torch.randn(value.shape, generator=gen, dtype=torch.float64)
                    value = value + init_noise * noise.to(value)
                value = value[rows.to(value.device)]
                values[site] = _clamp(value, limits[site]).detach().requires_grad_()
            step = _optimizer(optimizer, list(values.values()), lr)
            for index in range(n_steps):
                with torch.enable_grad():
                    objective = _objective(adapter, batch, target_list, values, rows, layers)
                    if index == 0:
                        _check_gradients(adapter, target_list, objective, values)
                    loss = -torch.cat(objective).sum()
                    for value in values.values():
                        loss = loss + _penalty(value, l2, tv)
                    grads = torch.autograd.grad(loss, list(values.values()), allow_unused=True)
                step.zero_grad(set_to_none=True)
                for value, grad in zip(values.values(), grads):
                    value.grad = torch.zeros_like(value) if grad is None else grad
                step.step()
                with torch.no_grad():
                    for site, value in values.items():
                        value.copy_(_clamp(value, limits[site]))
            final = None
            if return_objective:
                with torch.no_grad():
                    final = torch.cat(_objective(adapter, batch, target_list, values, rows, layers))
        per_site = {
            site: v.detach().reshape(k, b, *v.shape[1:]).transpose(0, 1)
            for site, v in values.items()
        }
        result = self._layout(batch, per_site, multi, layers, layer_argument(self, layer))
        if final is None:
            return result
        final = final.reshape(k, b).T
        return result, final if multi else final[:, 0]


def _start(
    adapter: ModelAdapter, batch: Any, target_list: list[Target], layers: list[Any]
) -> tuple[dict[Any, Tensor], list[Target]]:
    """Starting values per optimised site, and targets with ``None`` fixed to the predicted
    class at the starting inputs (one forward pass, only when needed)."""
    start = {key: batch.leaves[key] for key in batch.attributed}
    if not layers and all(t.index is not None for t in target_list):
        return start, target_list
    with torch.no_grad():
        explained, layer_values = adapter.run(dict(batch.leaves), layer_mode="observe")
    fixed = []
    for t, values in zip(target_list, explained):
        prediction = predicted(values) if t.index is None else None
        fixed.append(Target(prediction, t.output) if prediction is not None else t)
    return (dict(layer_values) if layers else start), fixed


def _objective(
    adapter: ModelAdapter,
    batch: Any,
    target_list: list[Target],
    values: dict[Any, Tensor],
    rows: Tensor,
    layers: list[Any],
) -> list[Tensor]:
    """Target t's value at rows ``t * B ... (t + 1) * B - 1``, ``[B]`` for each t."""
    b = batch.batch_size
    leaves = batch.take_rows(rows)
    if layers:
        explained, _ = adapter.run(leaves, layer_mode="replace", replacements=values)
    else:
        leaves.update(values)
        explained, _ = adapter.run(leaves)
    examples = torch.arange(b)
    picked = []
    for t, (target, output) in enumerate(zip(target_list, explained)):
        y = select(output[t * b : (t + 1) * b], target.index, examples, spec_name(adapter.specs[t]))
        picked.append(y)
    return picked


def _check_gradients(
    adapter: ModelAdapter,
    target_list: list[Target],
    objective: list[Tensor],
    values: dict[Any, Tensor],
) -> None:
    """Raise if a target's graph does not reach the optimised values (checked once: the
    graph's shape does not change between steps)."""
    for t, y in enumerate(objective):
        reached = y.requires_grad and any(
            g is not None
            for g in torch.autograd.grad(
                y.sum(), list(values.values()), retain_graph=True, allow_unused=True
            )
        )
        if not reached:
            raise _no_gradient(adapter, target_list, t, values)


def _no_gradient(
    adapter: ModelAdapter, target_list: list[Target], t: int, values: dict[Any, Tensor]
) -> TargetError:
    what = "the layer activation" if adapter.layers else "the inputs"
    name = spec_name(adapter.specs[t])
    where = "the model's output" if name == "of the model" else f"output {name}"
    return TargetError(
        f"ActivationMaximisation: target {target_list[t].index!r} of {where} has no gradient "
        f"with respect to {what} being optimised "
        f"({', '.join(map(str, values))}): it does not depend on them, or is computed outside "
        "autograd (an integer output, argmax, .detach(), torch.no_grad). Pick an output or "
        "module path that they reach through differentiable operations"
    )


def _penalty(value: Tensor, l2: float, tv: float) -> Tensor:
    penalty = value.new_zeros(())
    if l2:
        penalty = penalty + l2 * (value * value).sum()
    if tv:
        if value.dim() < 3:
            raise InputError(
                f"tv={tv}: total variation runs over spatial dimensions ([B, C, *spatial]) but "
                f"the optimised value has shape {['B', *value.shape[1:]]}; use l2= instead"
            )
        for dim in range(2, value.dim()):
            penalty = penalty + tv * value.diff(dim=dim).abs().sum()
    return penalty


def _bounds(bounds: Any, site: Any) -> tuple[Any, Any] | None:
    if isinstance(bounds, dict):
        bounds = bounds.get(site, bounds.get(str(site)))
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise InputError(f"bounds must be (low, high) or a dict of them per input, got {bounds!r}")
    return bounds[0], bounds[1]


def _clamp(value: Tensor, limits: tuple[Any, Any] | None) -> Tensor:
    if limits is None:
        return value
    low, high = (torch.as_tensor(v).to(value) if v is not None else None for v in limits)
    return value.clamp(min=low, max=high)


def _optimizer(
    optimizer: str | Callable[..., torch.optim.Optimizer], params: list[Tensor], lr: float
) -> torch.optim.Optimizer:
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise InputError(
                f"optimizer={optimizer!r}: use one of {sorted(OPTIMIZERS)} or a callable "
                "(params, lr=...) -> torch.optim.Optimizer"
            )
        return OPTIMIZERS[optimizer.lower()](params, lr=lr)
    if not callable(optimizer):
        raise InputTypeError(f"optimizer= takes a name or a callable, got {optimizer!r}")
    return optimizer(params, lr=lr)


def _check_options(n_steps: Any, lr: Any, l2: Any, tv: Any, init_noise: Any) -> None:
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 0:
        raise InputError(f"n_steps must be an int >= 0, got {n_steps!r}")
    for name, value in (("lr", lr), ("l2", l2), ("tv", tv), ("init_noise", init_noise)):
        if not isinstance(value, (int, float)) or value < 0:
            raise InputError(f"{name} must be a number >= 0, got {value!r}")
