"""DeepLift and DeepLiftShap, with the rules applied to autograd rather than to modules.

Each chunk of rows runs twice: once over the baselines (no graph; the inputs and outputs of
the non-linear calls are recorded) and once over the inputs, where every non-linear call,
functional or module, gets the DeepLift rule against its recorded twin, paired by call order
(:mod:`tdlens.attribution.rules`). The K targets then take K backward passes over that one
graph, as in every gradient method. Pairing by call order needs no batch dimension in the
activations (sequence-first layouts work), and the backward passes run over the input rows
only: half of captum's, which runs inputs and baselines through one graph.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import InputError, InputTypeError, format_keys
from ..core.structure import InputBatch
from .base import Attribution, check_finite_baselines, layer_argument, with_defaults
from .engine import GradientEngine, Site
from .rules import RESCALE, DeepLiftMode

ReferencesFn = Callable[[Tensor, Tensor], dict[Any, Tensor]]
_SUPPORTED = ", ".join([*sorted(RESCALE), "softmax", "max_pool1d/2d/3d"])


class DeepLift(Attribution):
    """DeepLift with the rescale rule (Shrikumar et al. 2017): for each non-linear function the
    gradient is replaced by ``(f(x) - f(x0)) / (x - x0)``, its input's change over its
    output's; the attributions are these multipliers times ``inputs - baselines`` and sum to
    ``f(inputs) - f(baselines)`` (exactly when every non-linear function has a rescale or max
    pooling rule; softmax's normalisation and gradient fallbacks leave a gap).

    Rules exist for ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus (rescale), Softmax and max
    pooling (1d/2d/3d), whether they are modules, functions (``F.relu``, ``torch.sigmoid``,
    ``x.tanh()``, in place or not) or one module used several times. Other non-linear functions
    keep their gradient: those in ``tdlens.attribution.rules.GRADIENT_FALLBACK`` (GELU, SiLU,
    layer norm, ``exp``, adaptive max pooling...) with one warning per call that names them;
    products of two activations (gating, attention scores) silently.

    With ``layer=`` the attributions are to the layer's activation, ``(a(x) - a(x0))`` times its
    multiplier (captum's LayerDeepLift); ``output=<module path>`` with ``target`` explains one
    neuron (NeuronDeepLift).

    Args:
        model: the model.
        multiply_by_inputs: multiply the multipliers by ``inputs - baselines`` (global
            attribution); ``False`` returns the multipliers (local).
        eps: where ``|x - x0| < eps`` at a non-linear function, its gradient is used instead.

    Example:
        >>> dl = tdlens.DeepLift(model)
        >>> attr, delta = dl.attribute(x, targets=[3, 7], return_convergence_delta=True)
        >>> attr.shape, delta.shape      # ([B, 2, *x.shape[1:]], [B, 2])
    """

    def __init__(
        self, model: nn.Module, multiply_by_inputs: bool = True, eps: float = 1e-10, **options: Any
    ) -> None:
        super().__init__(model, **options)
        self.multiply_by_inputs = multiply_by_inputs
        self.eps = eps

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
        *,
        targets: Any = None,
        output: Any = None,
        layer: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
    ) -> Any:
        """Attributions shaped like the inputs (``[B, K, ...]`` with ``targets``; like the
        layer's activation with ``layer=``) and, with ``return_convergence_delta``,
        ``sum(attributions) - (f(inputs) - f(baselines))`` of shape ``[B]`` (``[B, K]``).

        ``baselines``: a number, a tensor of the input's shape or of shape ``[1, ...]``, or one
        per input (tuple, dict); default zeros. ``custom_attribution_func(multipliers[,
        inputs[, baselines]])`` takes and returns tuples over the attributed inputs (layers).
        """
        batch, target_list, multi, layers = self._prepare(
            inputs, target, targets, output, layer, keys, additional_forward_args
        )
        base = self._baselines(batch, baselines)
        attributions, delta = self._attribute(
            batch,
            target_list,
            layers,
            internal_batch_size,
            n_samples=1,
            references=lambda _samples, examples: {k: v[examples] for k, v in base.items()},
            custom=custom_attribution_func,
            with_delta=return_convergence_delta,
        )
        result = self._layout(batch, attributions, multi, layers, layer_argument(self, layer))
        if delta is None:
            return result
        return result, delta if multi else delta[:, 0]

    def _attribute(
        self,
        batch: InputBatch,
        target_list: list,
        layers: list,
        internal_batch_size: int | None,
        *,
        n_samples: int,
        references: ReferencesFn,
        custom: Callable[..., Any] | None,
        with_delta: bool,
    ) -> tuple[dict[Site, Tensor], Tensor | None]:
        """Mean DeepLift attributions over ``n_samples`` references per example (``[B, K,
        ...]`` per site) and, if asked, the delta per row ``sample * B + example`` (``[S B,
        K]``). ``references(samples, examples)`` gives the baselines of rows."""
        b, k = batch.batch_size, len(target_list)
        mode = DeepLiftMode(self.eps)
        acc: dict[Site, Tensor] = {}
        delta: Tensor | None = None
        with GradientEngine(self.model, batch, target_list, layers, internal_batch_size) as eng:
            reference = _ReferencePass(eng, mode, references, with_delta)
            if with_delta:
                reference.input_values = _target_values(eng)
            for chunk, t, grads, at in eng.gradients(n_samples=n_samples, forward_scope=reference):
                rows, examples = chunk.rows, chunk.examples
                parts = self._contributions(grads, at, reference.points, custom)
                if with_delta:
                    gap = reference.input_values[examples, t] - reference.values[:, t]
                    if delta is None:
                        delta = gap.new_zeros((n_samples * b, k))
                    delta[rows, t] = -gap
                    for part in parts.values():
                        delta[rows, t] += part.reshape(len(rows), -1).sum(1).to(gap)
                for site, part in parts.items():
                    if site not in acc:
                        acc[site] = part.new_zeros((b, k, *part.shape[1:]))
                    part = part / n_samples if n_samples > 1 else part
                    acc[site][:, t].index_add_(0, examples.to(part.device), part)
        _warn_fallbacks(type(self).__name__, mode.fallbacks)
        return acc, delta

    def _contributions(
        self,
        grads: dict[Site, Tensor],
        at: dict[Site, Tensor],
        refs: dict[Site, Tensor],
        custom: Callable[..., Any] | None,
    ) -> dict[Site, Tensor]:
        """Multipliers to attributions, per site, for the rows of one chunk and one target."""
        if custom is None:
            if not self.multiply_by_inputs:
                return grads
            return {site: grad * (at[site] - refs[site]) for site, grad in grads.items()}
        sites = list(grads)
        arguments = [tuple(d[s] for s in sites) for d in (grads, at, refs)]
        n_params = len(inspect.signature(custom).parameters)
        if not 1 <= n_params <= 3:
            raise InputError(
                "custom_attribution_func takes 1 to 3 arguments (multipliers, inputs, "
                f"baselines), got one with {n_params}"
            )
        result = custom(*arguments[:n_params])
        result = (result,) if isinstance(result, Tensor) else tuple(result)
        if len(result) != len(sites) or any(
            r.shape != g.shape for r, g in zip(result, arguments[0])
        ):
            raise InputError(
                f"custom_attribution_func must return one tensor per attributed input, shaped "
                f"like it: expected {[list(g.shape) for g in arguments[0]]}, got "
                f"{[list(getattr(r, 'shape', [])) for r in result]}"
            )
        return dict(zip(sites, result))


class DeepLiftShap(DeepLift):
    """DeepLift averaged over a distribution of baselines, approximating SHAP values (Lundberg
    and Lee 2017): for each input, DeepLift against every baseline, then the mean.

    Args:
        model: the model.
        multiply_by_inputs: see :class:`DeepLift`.
        eps: see :class:`DeepLift`.

    Example:
        >>> dls = tdlens.DeepLiftShap(model)
        >>> attr = dls.attribute(x, baselines=background, target=3)   # background: [S, ...]
    """

    def __init__(
        self, model: nn.Module, multiply_by_inputs: bool = True, eps: float = 1e-10, **options: Any
    ) -> None:
        super().__init__(model, multiply_by_inputs=multiply_by_inputs, eps=eps, **options)

    @with_defaults
    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        baselines: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
        *,
        targets: Any = None,
        output: Any = None,
        layer: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
    ) -> Any:
        """Attributions shaped like the inputs (``[B, K, ...]`` with ``targets``), the mean of
        DeepLift over the S baselines; with ``return_convergence_delta`` also the delta of
        every (input, baseline) pair, ``[B, S]`` (``[B, K, S]`` with ``targets``), laid out
        like NoiseTunnel's per-copy deltas (captum returns the same values flat, ``[B * S]``
        input-major: ``delta.reshape(-1)`` gives them).

        ``baselines``: per attributed input a tensor ``[S, *input.shape[1:]]`` (a tuple or dict
        for several inputs), or a callable returning that, called with ``inputs`` if it takes
        an argument. ``internal_batch_size`` counts (input, baseline) pairs.
        """
        batch, target_list, multi, layers = self._prepare(
            inputs, target, targets, output, layer, keys, additional_forward_args
        )
        distribution = _distribution(batch, inputs, baselines)
        n = next(iter(distribution.values())).shape[0]
        attributions, delta = self._attribute(
            batch,
            target_list,
            layers,
            internal_batch_size,
            n_samples=n,
            references=lambda samples, _examples: {k: v[samples] for k, v in distribution.items()},
            custom=custom_attribution_func,
            with_delta=return_convergence_delta,
        )
        result = self._layout(batch, attributions, multi, layers, layer_argument(self, layer))
        if delta is None:
            return result
        b = batch.batch_size
        delta = delta.reshape(n, b, -1).permute(1, 2, 0)  # [B, K, S]
        return result, delta if multi else delta[:, 0]


class _ReferencePass:
    """The forward scope of one chunk: the pass over its baselines (recording the non-linear
    calls, and the layer activations and target values there), then the rules for the pass
    over its inputs."""

    def __init__(
        self, eng: GradientEngine, mode: DeepLiftMode, references: ReferencesFn, with_delta: bool
    ) -> None:
        self.eng = eng
        self.mode = mode
        self.references = references
        self.with_delta = with_delta
        self.points: dict[Site, Tensor] = {}
        self.values = torch.empty(0)
        self.input_values = torch.empty(0)

    @contextmanager
    def __call__(self, samples: Tensor, examples: Tensor) -> Iterator[None]:
        baselines = self.references(samples, examples)
        with self.mode.recording():
            explained, layer_values = self.eng.evaluate(examples, baselines)
        self.points = layer_values if self.eng.layers else baselines
        if self.with_delta:
            self.values = torch.stack(self.eng.scalars(explained, examples), dim=1)
        with self.mode.replaying():
            yield
        self.mode.check_replayed()


def _target_values(eng: GradientEngine) -> Tensor:
    """The K target values at the B inputs, ``[B, K]`` (fixing ``target=None`` to the
    predicted class, so that the baselines' values are read at the same class)."""
    examples = torch.arange(eng.batch.batch_size)
    explained, _ = eng.evaluate(examples)
    eng.resolve_predictions(explained)
    return torch.stack(eng.scalars(explained, examples), dim=1)


def _distribution(batch: InputBatch, inputs: Any, baselines: Any) -> dict[Any, Tensor]:
    """DeepLiftShap's baselines as ``{key: [S, *input.shape[1:]]}``, checked."""
    if callable(baselines) and not isinstance(baselines, Tensor):
        takes_inputs = len(inspect.signature(baselines).parameters) > 0
        baselines = baselines(inputs) if takes_inputs else baselines()
    if baselines is None or isinstance(baselines, (int, float)):
        raise InputTypeError(
            "DeepLiftShap needs baselines as a distribution: a tensor of shape "
            "[S, *input.shape[1:]] per attributed input; for one baseline use DeepLift"
        )
    result = {}
    for key, dist in batch.per_key(baselines, "baselines").items():
        x = batch.leaves[key]
        if not isinstance(dist, Tensor):
            raise InputTypeError(
                f"DeepLiftShap baselines for input {key!r} are {type(dist).__name__}; give a "
                f"tensor of shape [S, {', '.join(map(str, x.shape[1:]))}] (S baselines)"
            )
        if dist.dim() != x.dim() or dist.shape[1:] != x.shape[1:] or dist.shape[0] == 0:
            raise InputError(
                f"DeepLiftShap baselines for input {key!r} have shape {list(dist.shape)}, but "
                f"the input has shape {list(x.shape)}: baselines are S examples shaped like "
                f"one input, [S, {', '.join(map(str, x.shape[1:]))}]"
            )
        check_finite_baselines(key, dist)
        result[key] = dist.to(dtype=x.dtype, device=x.device)
    sizes = {key: dist.shape[0] for key, dist in result.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(
            f"DeepLiftShap baselines disagree on the number of baselines S (first dimension): "
            f"{sizes}; give every input the same S"
        )
    return result


def _warn_fallbacks(method: str, names: set[str]) -> None:
    if names:
        warnings.warn(
            f"{method}: {format_keys(sorted(names))} ha{'s' if len(names) == 1 else 've'} no "
            f"DeepLift rule; the ordinary gradient was used there, so attributions need not sum "
            f"to f(inputs) - f(baselines). Rules exist for {_SUPPORTED}",
            stacklevel=5,  # the user's attribute() call
        )
