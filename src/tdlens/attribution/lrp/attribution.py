"""Layer-wise relevance propagation on the multi-target gradient engine.

The rules act at the level of autograd (:mod:`tdlens.attribution.lrp.mode`): while each
chunk's forward pass builds its graph, every linear layer, activation, product, softmax,
normalisation and attention call gets its rule's backward, whether it is a module or a
function. The relevance of an input is the input times the gradient that reaches it; it starts
from the target's value, since the output times its gradient of one is that value. The K
targets take K backward passes over the one graph, as in every gradient method.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ...core.errors import InputError, InputTypeError, format_keys
from ..base import Attribution, layer_argument, with_defaults
from ..engine import GradientEngine
from .canonizers import Canonizer
from .composites import Composite, get_composite
from .mode import LRPMode


class LRP(Attribution):
    """Layer-wise relevance propagation (Bach et al. 2015): the target's value is passed back
    layer by layer, each layer dividing its output's relevance among its inputs by a rule.

    Without a composite the rules are captum 0.9's: epsilon 1e-9 on linear, convolution,
    pooling and batch-norm layers, identity on activations and dropout, and a module's
    ``rule`` attribute is honoured; unlike captum, functional calls (``F.relu``, ``x + y``,
    ``torch.matmul``...) and any architecture work (products, softmax, layer norm and
    attention get AttnLRP's rules).

    Args:
        model: the model (never changed: canonizers undo their edits on exit).
        composite: a :class:`~tdlens.attribution.lrp.composites.Composite` or a registered
            name (``"epsilon_plus"``, ``"epsilon_gamma_box"``, ``"epsilon_alpha2_beta1"``,
            ``"transformer"``); default captum's rules.
        canonizers: rewrites applied during each call (``lrp.MergeBatchNorm()``).

    Example:
        >>> attr = tdlens.LRP(model).attribute(x, target=3)          # like x, sums to f(x)[3]
        >>> lrp_ = tdlens.LRP(model, composite="epsilon_gamma_box")
        >>> attrs = lrp_.attribute(x, targets=[1, 2])                 # [B, 2, *x.shape[1:]]
    """

    def __init__(
        self,
        model: nn.Module,
        composite: Composite | str | None = None,
        canonizers: Sequence[Canonizer] = (),
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        self.composite = get_composite(composite)
        self.canonizers = list(canonizers)
        for canonizer in self.canonizers:
            if not isinstance(canonizer, Canonizer):
                raise InputTypeError(
                    f"canonizers take tdlens.lrp canonizers (e.g. lrp.MergeBatchNorm()), got "
                    f"{type(canonizer).__name__}"
                )

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        *,
        targets: Any = None,
        output: Any = None,
        layer: Any = None,
        keys: Any = None,
        initial_relevance: Any = None,
        internal_batch_size: int | None = None,
    ) -> Any:
        """Relevance shaped like the inputs (``[B, K, ...]`` with ``targets``; like the
        layer's activation with ``layer=``) and, with ``return_convergence_delta``,
        ``sum(relevance) - R_start`` of shape ``[B]`` (``[B, K]``): what the bias terms and
        stabilisers absorbed (captum's delta has the other sign).

        ``initial_relevance``: the relevance the target starts with instead of its value, a
        number or a tensor ``[B]`` (``[B, K]``); relevance is linear in it (a target whose
        value is 0 passes none).
        """
        batch, target_list, multi, layers = self._prepare(
            inputs, target, targets, output, layer, keys, additional_forward_args
        )
        with self.canonized() as model:
            mode = LRPMode(model, self.composite)

            def scope(_samples: Tensor, _examples: Tensor) -> Any:
                return mode.active()

            with GradientEngine(model, batch, target_list, layers, internal_batch_size) as eng:
                relevance = eng.accumulate(
                    transform=lambda _site, grad, point: mode.relevance_at(point, grad),
                    forward_scope=scope,
                )
                start = None
                if return_convergence_delta or initial_relevance is not None:
                    examples = torch.arange(batch.batch_size)
                    explained, _ = eng.evaluate(examples)
                    eng.resolve_predictions(explained)
                    start = torch.stack(eng.scalars(explained, examples), dim=1)  # [B, K]
        if mode.unhandled:
            warnings.warn(
                f"LRP: {format_keys(sorted(mode.unhandled))} ha"
                f"{'s' if len(mode.unhandled) == 1 else 've'} no LRP rule and ran as they are "
                "(relevance through them is gradient times input; nn.MultiheadAttention is "
                "one such call: F.scaled_dot_product_attention has rules)",
                stacklevel=3,
            )
        if initial_relevance is not None:
            assert start is not None
            relevance, start = _rescale(relevance, start, initial_relevance)
        layer_arg = layer_argument(self, layer)
        result = self._layout(batch, relevance, multi, layers, layer_arg)
        if not return_convergence_delta:
            return result
        assert start is not None
        return result, self._delta(batch, relevance, start, multi, layers, layer_arg)

    @contextmanager
    def canonized(self) -> Iterator[nn.Module]:
        """The model with the canonizers applied, restored on exit (also on an exception)."""
        model = self._module()
        with ExitStack() as stack:
            for canonizer in self.canonizers:
                stack.enter_context(canonizer.apply(model))
            yield model


def _rescale(
    relevance: dict[Any, Tensor], start: Tensor, initial: Any
) -> tuple[dict[Any, Tensor], Tensor]:
    """Relevance for another starting relevance (``[B, K]`` like ``start``)."""
    r = torch.as_tensor(initial, dtype=start.dtype, device=start.device)
    if r.dim() == 1:
        r = r.unsqueeze(1)
    try:
        r = r.expand_as(start)
    except RuntimeError:
        raise InputError(
            f"initial_relevance of shape {list(r.shape)} does not fit the targets' values "
            f"{list(start.shape)} ([B, K]); give a number, [B] or [B, K]"
        ) from None
    factor = torch.where(start == 0, torch.zeros_like(r), r / torch.where(start == 0, 1, start))
    scaled = {}
    for site, value in relevance.items():
        shape = (*factor.shape, *[1] * (value.dim() - 2))
        scaled[site] = value * factor.reshape(shape).to(value)
    return scaled, r
