"""Conductance: how much of the target flows through each neuron of a hidden layer.

Layer conductance (Dhamdhere et al. 2018, captum's LayerConductance) follows the integrated
gradients path of the inputs, ``x(α) = b + α (x - b)``, and sums over consecutive points the
gradient at the layer times the change of the layer's value:
``sum_i grad_L(x(α_i)) * (L(x(α_{i+1})) - L(x(α_i)))``, with ``n_steps + 1`` points ``α_i`` of
the integration rule. Its sum over the layer's neurons approximates ``f(x) - f(b)``.

Without the multiplication by the layer's change (``multiply_by_inputs=False``) what remains is
the path integral of the layer gradient, ``sum_i w_i grad_L(x(α_i))`` over ``n_steps`` points
with the rule's weights: captum's InternalInfluence.

Neuron conductance (captum's NeuronConductance) splits one neuron ``y`` of the layer over the
input features: ``(x - b) * sum_i w_i dF/dy(x(α_i)) * dy/dx(x(α_i))``, the integrated
gradients of the target along the paths through that neuron only. Summed over the features it
approximates the layer conductance of the neuron.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import parse_layers
from ..core.errors import InputError
from ..core.structure import Key
from .base import Attribution, layer_argument, layer_inputs, with_defaults
from .engine import Chunk, GradientEngine, Site, along_path
from .gradient import IntegratedGradients
from .integration import check_steps, quadrature


class Conductance(Attribution):
    """Layer conductance: attributions to the neurons of ``layer`` (several layers, a list or
    a glob, give a dict keyed by path), K targets from one forward pass per chunk.

    Args:
        model: the model.
        layer: the module path(s) to attribute to (also accepted by ``attribute``).
        multiply_by_inputs: ``False`` gives internal influence (the integrated layer gradient).

    Example:
        >>> cond = tdlens.Conductance(model, "features.3")
        >>> attrs, delta = cond.attribute(x, targets=[0, 1], return_convergence_delta=True)
        >>> attrs.shape, delta.shape        # [B, 2, *activation.shape[1:]], [B, 2]
    """

    def __init__(
        self,
        model: nn.Module,
        layer: Any = None,
        *,
        multiply_by_inputs: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(model, layer=layer, **options)
        self.multiply_by_inputs = multiply_by_inputs

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        *,
        targets: Any = None,
        output: Any = None,
        layer: Any = None,
        keys: Any = None,
    ) -> Any:
        """Attributions shaped like the layer's activation (``[B, K, ...]`` with ``targets``),
        and with ``return_convergence_delta`` the gap ``sum(attr) - (f(x) - f(b))``, ``[B]``
        (``[B, K]``; one per layer with several layers)."""
        batch, target_list, multi, layers = self._prepare(
            inputs, target, targets, output, layer, keys, additional_forward_args
        )
        if not layers:
            raise InputError(
                "Conductance attributes to the neurons of a hidden layer: pass "
                "layer='<module path>' (for attributions to the inputs use IntegratedGradients)"
            )
        if not batch.attributed:
            raise InputError(
                "Conductance follows the path from baselines to inputs, but no input is "
                "floating-point: name the inputs to interpolate with keys="
            )
        if attribute_to_layer_input:
            layers = layer_inputs(layers)
        check_steps(n_steps)  # n_steps + 1 points are used: 0 would pass the rule's own check
        base = self._baselines(batch, baselines)
        with GradientEngine(self.model, batch, target_list, layers, internal_batch_size) as eng:
            gap = None
            if return_convergence_delta or eng.needs_predictions():
                gap = IntegratedGradients._endpoints(eng, base, need_gap=True)[2]
            x = {k: batch.leaves[k] for k in batch.attributed}
            if self.multiply_by_inputs:
                alphas = quadrature(method, n_steps + 1)[0]
                total = _conductance(eng, _path(x, base, alphas), n_steps + 1)
            else:
                alphas, weights = quadrature(method, n_steps)
                total = eng.accumulate(
                    n_samples=n_steps, points=_path(x, base, alphas), weights=weights
                )
        layer_arg = layer_argument(self, layer)
        result = self._layout(batch, total, multi, layers, layer_arg)
        if not return_convergence_delta:
            return result
        assert gap is not None
        return result, self._delta(batch, total, gap, multi, layers, layer_arg)


class NeuronConductance(Attribution):
    """Neuron conductance (Dhamdhere et al. 2018): how much each input feature contributes to
    the target through one neuron of ``layer``, K targets from one forward pass per chunk.

    Each chunk takes one forward pass, one backward pass from the neuron to the inputs (shared
    by the K targets) and K backward passes from the targets to the layer.

    Args:
        model: the model.
        layer: the module path of the neuron's layer (``"path:input"``: its input).
        multiply_by_inputs: multiply by ``inputs - baselines`` (``False``: the integrated
            gradient through the neuron alone).

    Example:
        >>> nc = tdlens.NeuronConductance(model, "conv2")
        >>> attrs = nc.attribute(x, (1, 2, 2), targets=[0, 3])   # [B, 2, *x.shape[1:]]
    """

    def __init__(
        self,
        model: nn.Module,
        layer: Any = None,
        *,
        multiply_by_inputs: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)  # the inputs are attributed, not the layer
        self.neuron_layer = layer
        self.multiply_by_inputs = multiply_by_inputs

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
        *,
        targets: Any = None,
        output: Any = None,
        keys: Any = None,
    ) -> Any:
        """Attributions shaped like the inputs (``[B, K, ...]`` with ``targets``).

        ``neuron_selector`` picks the neuron in the layer's activation without the batch
        dimension: an int, a tuple of ints (one per dimension, e.g. ``(channel, row,
        column)``), or a callable ``activation -> [N]`` that selects one entry per row (it is
        also applied to the target's gradient at the layer, so it must not combine entries).
        """
        if self.neuron_layer is None:
            raise InputError(
                "NeuronConductance explains the target through one neuron of a hidden layer: "
                "pass it as NeuronConductance(model, '<module path>') and pick the neuron with "
                "neuron_selector="
            )
        alphas, weights = quadrature(method, n_steps)
        batch, target_list, multi, _ = self._prepare(
            inputs, target, targets, output, None, keys, additional_forward_args
        )
        layers = parse_layers(self._module(), self.neuron_layer)
        if len(layers) != 1:
            raise InputError(
                f"NeuronConductance explains the target through one neuron of one layer, but "
                f"layer={self.neuron_layer!r} names {len(layers)}: "
                f"{', '.join(repr(str(p)) for p in layers)}; name one"
            )
        if attribute_to_neuron_input:
            layers = layer_inputs(layers)
        base = self._baselines(batch, baselines)
        x = {k: batch.leaves[k] for k in batch.attributed}
        through = _neuron(neuron_selector, str(layers[0]))
        with GradientEngine(self.model, batch, target_list, layers, internal_batch_size) as eng:
            if eng.needs_predictions():  # target=None: the predicted class at the inputs
                eng.resolve_predictions(eng.evaluate(torch.arange(batch.batch_size))[0])
            total = eng.accumulate(
                n_samples=n_steps, points=_path(x, base, alphas), weights=weights, through=through
            )
        if self.multiply_by_inputs:
            total = {k: g * (x[k] - base[k]).unsqueeze(1) for k, g in total.items()}
        return self._layout(batch, total, multi, [], None)


def _neuron(selector: Any, layer: str) -> Callable[[Tensor], Tensor]:
    """``neuron_selector`` as ``activation[N, ...] -> [N]``. Its type is checked now, its
    indices against the shape of the first activation it is applied to (the layer's shape is
    known only then)."""
    index: tuple[int, ...] | None = None
    if not callable(selector) or isinstance(selector, Tensor):
        if isinstance(selector, Tensor) and selector.dim() == 0:
            selector = selector.item()
        items = selector if isinstance(selector, tuple) else (selector,)
        try:
            if not items or any(isinstance(i, bool) for i in items):
                raise TypeError
            index = tuple(operator.index(i) for i in items)
        except TypeError:
            raise InputError(
                f"neuron_selector={selector!r} does not pick a neuron: give an int, a tuple of "
                "ints with one index per dimension of the layer's activation after the batch "
                "(e.g. (channel, row, column)), or a callable activation -> [N] that selects "
                "one entry per row"
            ) from None

    def through(values: Tensor) -> Tensor:
        shape = "[" + ", ".join(["B", *map(str, values.shape[1:])]) + "]"
        if index is None:
            picked = selector(values)
        else:
            _check_neuron(index, selector, values.shape[1:], shape, layer)
            where: tuple[slice | int, ...] = (slice(None), *index)
            picked = values[where]
        n = values.shape[0]
        if not isinstance(picked, Tensor) or picked.numel() != n:
            got = list(picked.shape) if isinstance(picked, Tensor) else type(picked).__name__
            raise InputError(
                f"neuron_selector must return one value per row of the activation of layer "
                f"{layer!r}: given rows of shape {list(values.shape)} it returned {got}, "
                f"not [{n}]"
            )
        return picked.reshape(n)

    return through


def _check_neuron(
    index: tuple[int, ...], selector: Any, dims: torch.Size, shape: str, layer: str
) -> None:
    if len(index) != len(dims):
        example = tuple([0] * len(dims)) if len(dims) != 1 else 0
        raise InputError(
            f"neuron_selector={selector!r} has {len(index)} index(es) but the activation of "
            f"layer {layer!r} has shape {shape}: give one index per dimension after the "
            f"batch, e.g. neuron_selector={example!r}"
        )
    for d, (i, size) in enumerate(zip(index, dims)):
        if not -size <= i < size:
            raise InputError(
                f"neuron_selector={selector!r} is out of range for the activation of layer "
                f"{layer!r} of shape {shape}: valid indices along dimension {d + 1} are "
                f"0..{size - 1}"
            )


def _path(x: dict[Key, Tensor], base: dict[Key, Tensor], alphas: Tensor) -> Any:
    """Points ``b + α_s (x - b)`` at the inputs for rows ``(samples, examples)``."""

    def points(samples: Tensor, examples: Tensor) -> dict[Key, Tensor]:
        return {
            key: along_path(base[key], value - base[key], alphas, samples, examples)
            for key, value in x.items()
        }

    return points


def _conductance(eng: GradientEngine, points: Any, n_points: int) -> dict[Site, Tensor]:
    """``sum_i grad_i * (L_{i+1} - L_i)`` per example, target and layer, ``[B, K, ...]``.

    Row ``r = i * B + e`` is point i of example e, so its successor is row ``r + B``. Rows come
    in increasing order, chunk by chunk; pairing each row with the row ``B`` before it needs
    only the last ``B`` rows of the previous chunks (their layer values and, per target, their
    gradients), whatever the chunk size.
    """
    b = eng.batch.batch_size
    k = len(eng.targets)
    acc: dict[Site, Tensor] = {}
    tail_values: dict[Site, Tensor] = {}  # layer values of the last B rows seen
    tail_grads: list[dict[Site, Tensor]] = [{} for _ in range(k)]  # their gradients
    current: Chunk | None = None
    values: dict[Site, Tensor] = {}
    low = first = stop = 0
    for chunk, t, grads, at in eng.gradients(n_samples=n_points, points=points):
        if chunk is not current:  # a new chunk: extend the layer values, keep the last B
            start, end = chunk.start, chunk.stop
            current, low = chunk, max(0, start - b)
            values = {s: _extend(tail_values.get(s), v) for s, v in at.items()}
            tail_values = {s: v[max(0, end - b) - low :] for s, v in values.items()}
            first, stop = max(start, b), max(end, b)  # rows [first, stop) have a predecessor
        for site, grad in grads.items():
            grads_all = _extend(tail_grads[t].get(site), grad)
            tail_grads[t][site] = grads_all[max(0, end - b) - low :]
            if site not in acc:
                acc[site] = grad.new_zeros((b, k, *grad.shape[1:]))
            if stop == first:
                continue
            now = values[site][first - low : stop - low]
            before = values[site][first - b - low : stop - b - low]
            contribution = grads_all[first - b - low : stop - b - low] * (now - before)
            acc[site][:, t] += _per_example(contribution, first, b)
    return acc


def _per_example(rows: Tensor, first: int, b: int) -> Tensor:
    """Sum consecutive rows ``first, first + 1, ...`` per example (row ``r`` is example
    ``r % B``), ``[N, ...] -> [B, ...]``."""
    if first % b == 0 and rows.shape[0] % b == 0:  # whole samples: a reshape and a sum
        return rows.reshape(-1, b, *rows.shape[1:]).sum(0)
    examples = torch.arange(first, first + rows.shape[0], device=rows.device) % b
    return rows.new_zeros((b, *rows.shape[1:])).index_add_(0, examples, rows)


def _extend(tail: Tensor | None, chunk: Tensor) -> Tensor:
    return chunk if tail is None else torch.cat([tail, chunk])
