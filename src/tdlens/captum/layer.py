"""captum's Layer* classes: the generic methods with ``layer=``, under captum's signatures.

Each is a subclass of the tdlens method it names, built as captum builds it
(``LayerIntegratedGradients(model, layer, device_ids=None, multiply_by_inputs=True)``), with
``layer`` a module object (as captum users write it), a list of them, or a path. ``attribute``
takes captum's arguments; ``attribute_to_layer_input=True`` attributes to the layer's input.
Several layers give a list in the given order, as captum returns them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..attribution.base import Attribution
from ..attribution.cam import GradCam
from ..attribution.conductance import Conductance
from ..attribution.deeplift import DeepLift
from ..attribution.gradient import InputXGradient, IntegratedGradients
from ..attribution.perturbation import FeatureAblation, FeaturePermutation
from ..core.adapter import ModelAdapter, parse_layers
from ..core.errors import InputError, InputTypeError
from ..core.structure import InputBatch
from ._methods import DeepLiftShap, GradientShap


def module_path(model: Any, layer: Any, to_input: bool = False) -> Any:
    """``layer`` (a module of ``model``, a list of them, or paths) as tdlens module paths;
    ``to_input``: the layer's input instead of its output."""
    if isinstance(layer, (list, tuple)):
        return [module_path(model, one, to_input) for one in layer]
    if isinstance(layer, nn.Module):
        if not isinstance(model, nn.Module):
            raise InputTypeError(
                "a layer given as a module object needs the model as an nn.Module (its path is "
                f"looked up in the model); got {type(model).__name__}: pass the path instead"
            )
        path = next((name for name, m in model.named_modules() if m is layer), None)
        if path is None:
            raise InputError(
                f"the layer {type(layer).__name__} is not a submodule of the model "
                f"{type(model).__name__}; pass a module of this model (or its path)"
            )
        layer = path
    if not isinstance(layer, str):
        raise InputTypeError(f"layer must be a module or a module path, got {type(layer).__name__}")
    if to_input and ":" not in layer:
        return f"{layer}:input"
    return layer


def check_captum_only(device_ids: Any = None, grad_kwargs: Any = None) -> None:
    """captum options tdlens has no use for: refused rather than ignored."""
    if device_ids is not None:
        raise InputError(
            "device_ids= (captum's DataParallel replicas) is not supported: tdlens calls the "
            "model as given; pass device_ids=None"
        )
    if grad_kwargs is not None:
        raise InputError(
            "grad_kwargs= (extra arguments of torch.autograd.grad) is not supported; tdlens "
            "takes the gradients itself"
        )


def as_list(result: Any, layer: Any) -> Any:
    """tdlens's ``{path: value}`` for several layers as captum's list, in the given order."""
    if isinstance(layer, (list, tuple)) and isinstance(result, dict):
        return list(result.values())
    return result


class _Layer:
    """What the layer aliases share: the layer as given, and its site per call."""

    captum_layer: Any

    def _site(self, attribute_to_layer_input: bool) -> Any:
        return module_path(self.model, self.captum_layer, attribute_to_layer_input)  # type: ignore[attr-defined]

    def _call(self, parent: Callable[..., Any], to_input: bool, *args: Any, **kw: Any) -> Any:
        result = parent(*args, layer=self._site(to_input), **kw)
        if isinstance(result, tuple) and len(result) == 2 and kw.get("return_convergence_delta"):
            return as_list(result[0], self.captum_layer), result[1]
        return as_list(result, self.captum_layer)


class LayerIntegratedGradients(_Layer, IntegratedGradients):
    """captum's LayerIntegratedGradients: IntegratedGradients with ``layer=``."""

    def __init__(
        self,
        forward_func: Any,
        layer: Any,
        device_ids: Any = None,
        multiply_by_inputs: bool = True,
    ) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func, multiply_by_inputs)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
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
        grad_kwargs: Any = None,
    ) -> Any:
        check_captum_only(grad_kwargs=grad_kwargs)
        return self._call(
            super().attribute,
            attribute_to_layer_input,
            inputs,
            baselines,
            target,
            additional_forward_args,
            n_steps,
            method,
            internal_batch_size,
            return_convergence_delta=return_convergence_delta,
        )


class LayerConductance(_Layer, Conductance):
    """captum's LayerConductance: Conductance at ``layer``."""

    def __init__(self, forward_func: Any, layer: Any, device_ids: Any = None) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
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
        grad_kwargs: Any = None,
    ) -> Any:
        check_captum_only(grad_kwargs=grad_kwargs)
        return self._call(
            super().attribute,
            attribute_to_layer_input,
            inputs,
            baselines,
            target,
            additional_forward_args,
            n_steps,
            method,
            internal_batch_size,
            return_convergence_delta=return_convergence_delta,
        )


class InternalInfluence(_Layer, Conductance):
    """captum's InternalInfluence: the integrated gradient at ``layer`` (conductance without
    the multiplication by the layer's change)."""

    def __init__(self, forward_func: Any, layer: Any, device_ids: Any = None) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func, multiply_by_inputs=False)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        attribute_to_layer_input: bool = False,
        grad_kwargs: Any = None,
    ) -> Any:
        check_captum_only(grad_kwargs=grad_kwargs)
        return self._call(
            super().attribute,
            attribute_to_layer_input,
            inputs,
            baselines,
            target,
            additional_forward_args,
            n_steps,
            method,
            internal_batch_size,
        )


class LayerGradientXActivation(_Layer, InputXGradient):
    """captum's LayerGradientXActivation: InputXGradient at ``layer``."""

    def __init__(
        self,
        forward_func: Any,
        layer: Any,
        device_ids: Any = None,
        multiply_by_inputs: bool = True,
        memory_efficient: bool = False,
    ) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func, multiply_by_inputs)
        self.captum_layer = layer
        self.memory_efficient = memory_efficient  # tdlens holds one graph per chunk anyway

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        grad_kwargs: Any = None,
    ) -> Any:
        check_captum_only(grad_kwargs=grad_kwargs)
        return self._call(
            super().attribute, attribute_to_layer_input, inputs, target, additional_forward_args
        )


class LayerGradCam(_Layer, GradCam):
    """captum's LayerGradCam: GradCam at ``layer``."""

    def __init__(self, forward_func: Any, layer: Any, device_ids: Any = None) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        grad_kwargs: Any = None,
    ) -> Any:
        check_captum_only(grad_kwargs=grad_kwargs)
        return self._call(
            super().attribute,
            False,
            inputs,
            target,
            additional_forward_args,
            attribute_to_layer_input,
            relu_attributions,
            attr_dim_summation,
        )

    def _site(self, attribute_to_layer_input: bool) -> Any:
        return module_path(self.model, self.captum_layer)  # GradCam reads the flag itself


class LayerDeepLift(_Layer, DeepLift):
    """captum's LayerDeepLift: DeepLift at ``layer``."""

    def __init__(self, model: nn.Module, layer: Any, multiply_by_inputs: bool = True) -> None:
        super().__init__(model, multiply_by_inputs)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
        grad_kwargs: Any = None,
    ) -> Any:
        check_captum_only(grad_kwargs=grad_kwargs)
        return self._call(
            super().attribute,
            attribute_to_layer_input,
            inputs,
            baselines,
            target,
            additional_forward_args,
            return_convergence_delta=return_convergence_delta,
            custom_attribution_func=custom_attribution_func,
        )


class LayerDeepLiftShap(_Layer, DeepLiftShap):
    """captum's LayerDeepLiftShap: DeepLiftShap at ``layer`` (delta flat, ``[B * S]``)."""

    def __init__(self, model: nn.Module, layer: Any, multiply_by_inputs: bool = True) -> None:
        super().__init__(model, multiply_by_inputs)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        baselines: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> Any:
        return self._call(
            super().attribute,
            attribute_to_layer_input,
            inputs,
            baselines,
            target,
            additional_forward_args,
            return_convergence_delta=return_convergence_delta,
            custom_attribution_func=custom_attribution_func,
        )


class LayerGradientShap(_Layer, GradientShap):
    """captum's LayerGradientShap: GradientShap at ``layer`` (delta flat, ``[B * n_samples]``)."""

    def __init__(
        self,
        forward_func: Any,
        layer: Any,
        device_ids: Any = None,
        multiply_by_inputs: bool = True,
    ) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func, multiply_by_inputs)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        baselines: Any,
        n_samples: int = 5,
        stdevs: Any = 0.0,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
    ) -> Any:
        return self._call(
            super().attribute,
            attribute_to_layer_input,
            inputs,
            baselines,
            n_samples,
            stdevs,
            target,
            additional_forward_args,
            return_convergence_delta=return_convergence_delta,
        )


class LayerFeatureAblation(FeatureAblation):
    """captum's LayerFeatureAblation: FeatureAblation of the layer's activation
    (``layer_mask`` and ``layer_baselines`` refer to it)."""

    def __init__(self, forward_func: Any, layer: Any, device_ids: Any = None) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func, layer=module_path(forward_func, layer))
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        layer_baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        layer_mask: Any = None,
        attribute_to_layer_input: bool = False,
        perturbations_per_eval: int = 1,
    ) -> Any:
        self.layer = module_path(self.model, self.captum_layer, attribute_to_layer_input)
        return super().attribute(
            inputs,
            layer_baselines,
            target,
            additional_forward_args,
            layer_mask,
            perturbations_per_eval,
        )


class LayerFeaturePermutation(FeaturePermutation):
    """captum's LayerFeaturePermutation: FeaturePermutation of the layer's activation."""

    def __init__(self, forward_func: Any, layer: Any, device_ids: Any = None) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func, layer=module_path(forward_func, layer))

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        layer_mask: Any = None,
        perturbations_per_eval: int = 1,
    ) -> Any:
        return super().attribute(
            inputs, target, additional_forward_args, layer_mask, perturbations_per_eval
        )


class LayerActivation(Attribution):
    """captum's LayerActivation: the layer's activation (or input) for the inputs.

    Example:
        >>> acts = tdlens.captum.LayerActivation(model, model.conv1).attribute(x)
    """

    _MULTIPLIES_BY_INPUTS = True  # as captum reports it

    def __init__(self, forward_func: Any, layer: Any, device_ids: Any = None) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func)
        self.captum_layer = layer

    def attribute(
        self,
        inputs: Any,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
    ) -> Any:
        """The activation of each layer, ``[B, ...]`` (a list for several layers)."""
        site = module_path(self.model, self.captum_layer, attribute_to_layer_input)
        batch = InputBatch.build(
            inputs,
            additional_forward_args=additional_forward_args,
            require_float=False,
            need_attributed=False,
        )
        layers = parse_layers(self._module(), site)
        with torch.no_grad(), ModelAdapter(self.model, batch, [], layers) as adapter:
            _, values = adapter.run(dict(batch.leaves))
        if isinstance(self.captum_layer, (list, tuple)):
            return [values[p] for p in layers]
        return values[layers[0]]
