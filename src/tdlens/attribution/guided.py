"""GuidedBackprop and Deconvolution: gradients whose ReLU backward lets only positive values
through, for every ReLU call (module, ``F.relu``, ``torch.relu``, ``x.relu()``, in place).

Captum changes the backward of ``nn.ReLU`` modules only, so functional ReLUs keep their plain
gradient there; here the rule is swapped in at the level of autograd
(:mod:`tdlens.attribution.rules`), only while the forward pass builds the graph. Other
activations keep their gradient, as in captum.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Attribution, layer_argument, with_defaults
from .engine import GradientEngine
from .rules import ReluMode


class _ModifiedRelu(Attribution):
    """The gradient of the target with every ReLU's backward replaced (see subclasses)."""

    deconvolution = False

    def __init__(self, model: nn.Module, **options: Any) -> None:
        super().__init__(model, **options)

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
        """Modified gradients shaped like the inputs (``[B, K, ...]`` with ``targets``; like
        the layer's activation with ``layer=``)."""
        batch, target_list, multi, layers = self._prepare(
            inputs, target, targets, output, layer, keys, additional_forward_args
        )
        mode = ReluMode(deconvolution=self.deconvolution)
        with GradientEngine(self.model, batch, target_list, layers, internal_batch_size) as eng:
            grads = eng.accumulate(forward_scope=lambda _samples, _examples: mode)
        return self._layout(batch, grads, multi, layers, layer_argument(self, layer))


class GuidedBackprop(_ModifiedRelu):
    """Guided backpropagation (Springenberg et al. 2015): the gradient, with each ReLU passing
    back only positive gradients where its input was positive, ``relu(grad) * (x > 0)``.

    Example:
        >>> attr = tdlens.GuidedBackprop(model).attribute(x, target=3)    # shaped like x
    """


class Deconvolution(_ModifiedRelu):
    """Deconvolution (Zeiler and Fergus 2014): the gradient, with each ReLU passing back
    ``relu(grad)`` whatever its input was.

    Example:
        >>> attr = tdlens.Deconvolution(model).attribute(x, targets=[0, 1])   # [B, 2, ...]
    """

    deconvolution = True
