"""Saliency, InputXGradient and IntegratedGradients on the multi-target gradient engine.

Each takes captum's arguments, plus ``targets=[...]`` (K targets from one forward pass: the
result gets a K dimension after the batch), ``output=`` (which output, or a module path for
neuron attribution), ``layer=`` (attribute to a module's activation) and ``keys=`` (which
inputs to attribute).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import InputError
from .base import Attribution, layer_argument, with_defaults
from .engine import GradientEngine, along_path
from .integration import quadrature


class Saliency(Attribution):
    """The gradient of the target with respect to the inputs (absolute value by default).

    Example:
        >>> attr = tdlens.Saliency(model).attribute(x, targets=[0, 1])   # [B, 2, *x.shape[1:]]
    """

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        abs: bool = True,
        additional_forward_args: Any = None,
        *,
        targets: Any = None,
        output: Any = None,
        layer: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
    ) -> Any:
        """Gradients at the inputs (or at ``layer``), shaped like them (``[B, K, ...]``)."""
        batch, target_list, multi, layers = self._prepare(
            inputs, target, targets, output, layer, keys, additional_forward_args
        )
        transform = (lambda _s, g, _p: g.abs()) if abs else None
        with GradientEngine(self.model, batch, target_list, layers, internal_batch_size) as eng:
            grads = eng.accumulate(transform=transform, k_dim=multi)
        return self._layout(batch, grads, multi, layers, layer_argument(self, layer), k_dim=multi)


class InputXGradient(Attribution):
    """The input times the gradient of the target; with ``layer=``, activation times gradient
    (captum's LayerGradientXActivation; ``multiply_by_inputs=False`` gives the gradient)."""

    def __init__(self, model: nn.Module, multiply_by_inputs: bool = True, **options: Any):
        super().__init__(model, **options)
        self.multiply_by_inputs = multiply_by_inputs

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
        internal_batch_size: int | None = None,
    ) -> Any:
        """Input (or activation) times gradient, shaped like the inputs (``[B, K, ...]``)."""
        batch, target_list, multi, layers = self._prepare(
            inputs, target, targets, output, layer, keys, additional_forward_args
        )
        transform = (lambda _s, g, point: g * point) if self.multiply_by_inputs else None
        with GradientEngine(self.model, batch, target_list, layers, internal_batch_size) as eng:
            attributions = eng.accumulate(transform=transform, k_dim=multi)
        layer_arg = layer_argument(self, layer)
        return self._layout(batch, attributions, multi, layers, layer_arg, k_dim=multi)


class IntegratedGradients(Attribution):
    """Integrated Gradients (Sundararajan et al. 2017): the path integral of gradients from a
    baseline to the input, times the input minus the baseline.

    With ``layer=`` it integrates over the layer's activation between its value at the
    baselines and at the inputs (captum's LayerIntegratedGradients); with ``output=<module
    path>`` it explains a neuron (captum's NeuronIntegratedGradients).

    Args:
        model: the model.
        multiply_by_inputs: multiply the integrated gradients by ``inputs - baselines``
            (global attribution); ``False`` gives the local one.

    Example:
        >>> ig = tdlens.IntegratedGradients(model)
        >>> attr, delta = ig.attribute(x, targets=[3, 7], return_convergence_delta=True)
        >>> attr.shape, delta.shape      # ([B, 2, *x.shape[1:]], [B, 2])
    """

    def __init__(self, model: nn.Module, multiply_by_inputs: bool = True, **options: Any):
        super().__init__(model, **options)
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
        *,
        targets: Any = None,
        output: Any = None,
        layer: Any = None,
        keys: Any = None,
    ) -> Any:
        """Attributions shaped like the inputs (``[B, K, ...]`` with ``targets``), and with
        ``return_convergence_delta`` the completeness gap ``sum(attr) - (f(x) - f(baseline))``
        of shape ``[B]`` (``[B, K]``)."""
        alphas, weights = quadrature(method, n_steps)
        batch, target_list, multi, layers = self._prepare(
            inputs, target, targets, output, layer, keys, additional_forward_args
        )
        if layers and not batch.attributed:
            raise InputError(
                "IntegratedGradients with layer= interpolates the layer between its values at "
                "the baselines and at the inputs, but no input is replaced by a baseline (none is "
                "floating-point): name them with keys=, e.g. keys=['input_ids'] with "
                "baselines={'input_ids': pad_ids} (default 0)"
            )
        base = self._baselines(batch, baselines)
        b = batch.batch_size
        with GradientEngine(self.model, batch, target_list, layers, internal_batch_size) as eng:
            start, diff, gap = self._endpoints(
                eng, base, need_gap=return_convergence_delta or eng.needs_predictions() or None
            )
            dtype = next(iter(diff.values())).dtype
            alphas = alphas.to(dtype)

            def points(samples: Tensor, examples: Tensor) -> dict[Any, Tensor]:
                return {
                    site: along_path(start[site], diff[site], alphas, samples, examples)
                    for site in eng.sites
                }

            total = eng.accumulate(n_samples=n_steps, points=points, weights=weights.to(dtype))
        if self.multiply_by_inputs:
            total = {site: g * diff[site].unsqueeze(1) for site, g in total.items()}
        result = self._layout(batch, total, multi, layers, layer_argument(self, layer))
        if not return_convergence_delta:
            return result
        assert gap is not None
        summed = sum(g.reshape(b, g.shape[1], -1).sum(-1) for g in total.values())
        delta = summed - gap.to(summed)
        return result, batch.unflatten(delta if multi else delta[:, 0])

    @staticmethod
    def _endpoints(
        eng: GradientEngine, base: dict[Any, Tensor], need_gap: bool | None
    ) -> tuple[dict[Any, Tensor], dict[Any, Tensor], Tensor | None]:
        """Path start and ``end - start`` per site, and ``f(x) - f(baseline)`` as ``[B, K]``
        when the delta or ``target=None`` needs it; one forward pass over inputs and baselines
        (also how layer activations at both ends are found)."""
        batch = eng.batch
        b = batch.batch_size
        if not eng.layers and not need_gap:
            start = base
            return start, {k: batch.leaves[k] - base[k] for k in batch.attributed}, None
        examples = torch.arange(b).repeat(2)
        both = {k: torch.cat([batch.leaves[k], base[k]]) for k in batch.attributed}
        explained, layer_values = eng.evaluate(examples, both)
        eng.resolve_predictions(explained)
        ends = torch.stack(eng.scalars(explained, examples), dim=1)  # [2B, K]
        gap = ends[:b] - ends[b:]
        if eng.layers:
            start = {p: layer_values[p][b:] for p in eng.layers}
            diff = {p: layer_values[p][:b] - layer_values[p][b:] for p in eng.layers}
        else:
            start = base
            diff = {k: batch.leaves[k] - base[k] for k in batch.attributed}
        return start, diff, gap
