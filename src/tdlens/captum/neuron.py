"""captum's Neuron* classes: the generic methods with ``output=<layer>`` and ``target=<neuron>``.

``NeuronX(model, layer).attribute(inputs, neuron_selector, ...)`` explains one neuron of the
layer's output (its input with ``attribute_to_neuron_input=True``) by the inputs: the method
``X`` with ``output=`` the layer's path and ``target=`` the neuron. ``neuron_selector`` takes
captum's forms: an int, a tuple of ints (slices sum the entries they cover, as in captum), or a
callable ``activation -> [B]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..attribution.conductance import NeuronConductance as _NeuronConductance
from ..attribution.deeplift import DeepLift
from ..attribution.gradient import IntegratedGradients, Saliency
from ..attribution.guided import Deconvolution, GuidedBackprop
from ..attribution.perturbation import FeatureAblation
from ..core.errors import InputTypeError
from ._methods import DeepLiftShap, GradientShap
from .layer import check_captum_only, module_path


def neuron_target(selector: Any) -> Any:
    """captum's ``neuron_selector`` as a tdlens target on the layer's activation."""
    if isinstance(selector, bool) or not (isinstance(selector, (int, tuple)) or callable(selector)):
        raise InputTypeError(
            f"neuron_selector must be an int, a tuple of ints and slices, or a callable "
            f"activation -> [B]; got {type(selector).__name__}"
        )
    if isinstance(selector, tuple) and any(isinstance(i, slice) for i in selector):

        def summed(values: Tensor) -> Tensor:
            picked = values[(slice(None), *selector)]
            return picked.reshape(picked.shape[0], -1).sum(1)

        return summed
    return selector


class _Neuron:
    """What the neuron aliases share: the layer as given, the neuron's output site."""

    captum_layer: Any

    def _output(self, to_input: bool) -> Any:
        return module_path(self.model, self.captum_layer, to_input)  # type: ignore[attr-defined]


class NeuronGradient(_Neuron, Saliency):
    """captum's NeuronGradient: the gradient of one neuron with respect to the inputs."""

    def __init__(self, forward_func: Any, layer: nn.Module, device_ids: Any = None) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        neuron_selector: Any,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
    ) -> Any:
        return super().attribute(
            inputs,
            neuron_target(neuron_selector),
            False,
            additional_forward_args,
            output=self._output(attribute_to_neuron_input),
        )


class NeuronIntegratedGradients(_Neuron, IntegratedGradients):
    """captum's NeuronIntegratedGradients: IntegratedGradients of one neuron."""

    def __init__(
        self,
        forward_func: Any,
        layer: nn.Module,
        device_ids: Any = None,
        multiply_by_inputs: bool = True,
    ) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func, multiply_by_inputs)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
    ) -> Any:
        return super().attribute(
            inputs,
            baselines,
            neuron_target(neuron_selector),
            additional_forward_args,
            n_steps,
            method,
            internal_batch_size,
            output=self._output(attribute_to_neuron_input),
        )


class NeuronConductance(_NeuronConductance):
    """captum's NeuronConductance, with captum's default rule (``riemann_trapezoid``: tdlens
    uses the trapezoid rule itself, see docs/captum.md)."""

    def __init__(
        self,
        forward_func: Any,
        layer: Any,
        device_ids: Any = None,
        multiply_by_inputs: bool = True,
    ) -> None:
        check_captum_only(device_ids)
        super().__init__(
            forward_func, module_path(forward_func, layer), multiply_by_inputs=multiply_by_inputs
        )

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "riemann_trapezoid",
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
        grad_kwargs: Any = None,
    ) -> Any:
        check_captum_only(grad_kwargs=grad_kwargs)
        return super().attribute(
            inputs,
            neuron_target(neuron_selector),
            baselines,
            target,
            additional_forward_args,
            n_steps,
            method,
            internal_batch_size,
            attribute_to_neuron_input,
        )


class NeuronDeepLift(_Neuron, DeepLift):
    """captum's NeuronDeepLift: DeepLift of one neuron."""

    def __init__(self, model: nn.Module, layer: nn.Module, multiply_by_inputs: bool = True):
        super().__init__(model, multiply_by_inputs)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any = None,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> Any:
        return super().attribute(
            inputs,
            baselines,
            neuron_target(neuron_selector),
            additional_forward_args,
            custom_attribution_func=custom_attribution_func,
            output=self._output(attribute_to_neuron_input),
        )


class NeuronDeepLiftShap(_Neuron, DeepLiftShap):
    """captum's NeuronDeepLiftShap: DeepLiftShap of one neuron."""

    def __init__(self, model: nn.Module, layer: nn.Module, multiply_by_inputs: bool = True):
        super().__init__(model, multiply_by_inputs)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> Any:
        return super().attribute(
            inputs,
            baselines,
            neuron_target(neuron_selector),
            additional_forward_args,
            custom_attribution_func=custom_attribution_func,
            output=self._output(attribute_to_neuron_input),
        )


class NeuronGradientShap(_Neuron, GradientShap):
    """captum's NeuronGradientShap: GradientShap of one neuron."""

    def __init__(
        self,
        forward_func: Any,
        layer: nn.Module,
        device_ids: Any = None,
        multiply_by_inputs: bool = True,
    ) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func, multiply_by_inputs)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any,
        n_samples: int = 5,
        stdevs: float = 0.0,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
    ) -> Any:
        return super().attribute(
            inputs,
            baselines,
            n_samples,
            stdevs,
            neuron_target(neuron_selector),
            additional_forward_args,
            output=self._output(attribute_to_neuron_input),
        )


class _NeuronModifiedRelu(_Neuron):
    """NeuronGuidedBackprop and NeuronDeconvolution: the modified backward from one neuron."""

    def __init__(self, model: nn.Module, layer: nn.Module, device_ids: Any = None) -> None:
        check_captum_only(device_ids)
        super().__init__(model)  # type: ignore[call-arg]
        self.captum_layer = layer

    def attribute(
        self,
        inputs: Any,
        neuron_selector: Any,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
    ) -> Any:
        return super().attribute(  # type: ignore[misc]
            inputs,
            neuron_target(neuron_selector),
            additional_forward_args,
            output=self._output(attribute_to_neuron_input),
        )


class NeuronGuidedBackprop(_NeuronModifiedRelu, GuidedBackprop):  # type: ignore[misc]
    """captum's NeuronGuidedBackprop: guided backpropagation from one neuron."""


class NeuronDeconvolution(_NeuronModifiedRelu, Deconvolution):  # type: ignore[misc]
    """captum's NeuronDeconvolution: deconvolution from one neuron."""


class NeuronFeatureAblation(_Neuron, FeatureAblation):
    """captum's NeuronFeatureAblation: FeatureAblation of one neuron's value."""

    def __init__(self, forward_func: Any, layer: nn.Module, device_ids: Any = None) -> None:
        check_captum_only(device_ids)
        super().__init__(forward_func)
        self.captum_layer = layer

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        attribute_to_neuron_input: bool = False,
        perturbations_per_eval: int = 1,
    ) -> Any:
        return super().attribute(
            inputs,
            baselines,
            neuron_target(neuron_selector),
            additional_forward_args,
            feature_mask,
            perturbations_per_eval,
            output=self._output(attribute_to_neuron_input),
        )
