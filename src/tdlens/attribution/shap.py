"""GradientShap: expected gradients over baselines drawn from a distribution.

For each example and each of ``n_samples`` samples: a baseline ``b`` drawn from the baseline
distribution, the input with Gaussian noise ``x~ = x + N(0, stdevs²)``, and ``α ~ U(0, 1)``; the
attribution is the mean over samples of ``grad f(b + α (x~ - b)) * (x~ - b)`` (Lundberg & Lee
2017, captum's GradientShap). The samples are points of the gradient engine, so K targets share
one forward pass per chunk of ``internal_batch_size`` rows (captum has no such option).

Randomness comes from ``generator=`` or ``seed=`` (else torch's global generator), drawn in a
fixed order whatever the chunking: baseline indices ``[S, B]``, then ``α`` ``[S, B]`` (float64),
then the noise sample by sample (see :class:`~tdlens.attribution.noise.SampleNoise`). With
several inputs, one index picks the baseline of every input (a baseline sample is a joint
example); captum draws an index per input.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import InputError, InputTypeError
from ..core.structure import InputBatch, Key
from .base import (
    Attribution,
    check_finite_baselines,
    layer_argument,
    random_generator,
    with_defaults,
)
from .engine import GradientEngine
from .noise import SampleNoise, check_stdevs


class GradientShap(Attribution):
    """Gradient SHAP: SmoothGrad of ``(x - b) * grad`` at random points between baselines
    drawn from a distribution and noisy inputs.

    With ``layer=`` the gradients are taken at the layer and multiplied by the layer's values
    at the noisy input minus at the baseline (captum's LayerGradientShap); ``output=<module
    path>`` explains a neuron (NeuronGradientShap).

    Args:
        model: the model.
        multiply_by_inputs: multiply by ``x~ - b`` (default); ``False`` gives the mean gradient.

    Example:
        >>> gs = tdlens.GradientShap(model)
        >>> attrs = gs.attribute(x, baselines=torch.randn(20, *x.shape[1:]), targets=[0, 1],
        ...                      n_samples=50, seed=0)                   # [B, 2, *x.shape[1:]]
    """

    def __init__(self, model: nn.Module, multiply_by_inputs: bool = True, **options: Any):
        super().__init__(model, **options)
        self.multiply_by_inputs = multiply_by_inputs

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        n_samples: int = 5,
        stdevs: float | tuple[float, ...] = 0.0,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        *,
        targets: Any = None,
        output: Any = None,
        layer: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        per_sample_delta: bool = False,
    ) -> Any:
        """Attributions shaped like the inputs (``[B, K, ...]`` with ``targets``).

        Args:
            baselines: the distribution to draw from: per attributed input a tensor
                ``[N, *input.shape[1:]]`` (the same N for all inputs: sample i of every input
                is drawn together), or a number (one baseline); default 0.
            n_samples: samples per example.
            stdevs: standard deviation of the noise added to the inputs (one number or one per
                attributed input).

        Returns:
            The attributions, and with ``return_convergence_delta`` the gap
            ``sum(attr) - mean over samples of (f(x~) - f(b))``, ``[B]`` (``[B, K]``; one per
            layer with several layers): captum returns the ``n_samples * B`` per-sample gaps,
            whose mean over samples this is. With ``per_sample_delta=True`` the delta is that
            of every sample, ``sum(attr of the sample) - (f(x~) - f(b))``, ``[B, n_samples]``
            (``[B, K, n_samples]``; one layer only), as ``tdlens.captum.GradientShap`` lays
            it out flat.
        """
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
            raise InputError(f"n_samples must be a positive int, got {n_samples!r}")
        batch, target_list, multi, layers = self._prepare(
            inputs, target, targets, output, layer, keys, additional_forward_args
        )
        if not batch.attributed:
            raise InputError(
                "GradientShap interpolates inputs between baselines and the inputs, but no input "
                "is floating-point: name the inputs to interpolate with keys="
            )
        b, s = batch.batch_size, n_samples
        x = {k: batch.leaves[k] for k in batch.attributed}
        distribution = _distribution(batch, inputs, baselines)
        gen = random_generator(generator, seed)
        size = max(len(d) for d in distribution.values())
        drawn = torch.randint(size, (s, b), generator=gen)
        alphas = torch.rand((s, b), generator=gen, dtype=torch.float64)
        noise = SampleNoise(x, check_stdevs(batch, stdevs), gen)
        with GradientEngine(self.model, batch, target_list, layers, internal_batch_size) as eng:
            if eng.needs_predictions():
                eng.resolve_predictions(eng.evaluate(torch.arange(b))[0])
            need_gap = return_convergence_delta
            ends = _Ends(eng, x, distribution, drawn, noise, need_gap, per_sample_delta)
            rows = None
            if return_convergence_delta and per_sample_delta:
                rows = torch.zeros(s * b, len(target_list), dtype=torch.float64)
            need_layer_ends = bool(layers) and self.multiply_by_inputs

            def points(samples: Tensor, examples: Tensor) -> dict[Key, Tensor]:
                base, diff, _ = ends.rows(samples, examples, need_layer_ends)
                a = alphas[samples, examples]
                return {
                    k: base[k] + a.to(d).reshape(-1, *[1] * (d.dim() - 1)) * d
                    for k, d in diff.items()
                }

            def factors(samples: Tensor, examples: Tensor) -> dict[Any, Tensor]:
                _, diff, layer_diff = ends.rows(samples, examples, need_layer_ends)
                return layer_diff if layers else diff

            total = eng.accumulate(
                n_samples=s,
                points=points,
                weights=torch.full((s,), 1.0 / s, dtype=torch.float64),
                factors=factors if self.multiply_by_inputs else None,
                row_sums=rows,
            )
        layer_arg = layer_argument(self, layer)
        result = self._layout(batch, total, multi, layers, layer_arg)
        if not return_convergence_delta:
            return result
        if rows is None:
            return result, self._delta(batch, total, ends.gap / s, multi, layers, layer_arg)
        if len(layers) > 1:
            raise InputError("per_sample_delta=True takes one layer")
        dtype = next(iter(total.values())).dtype
        delta = (rows - ends.sample_gaps).reshape(s, b, -1).permute(1, 2, 0).to(dtype)
        return result, delta if multi else delta[:, 0]


class _Ends:
    """The two ends of each sample's path, per chunk of rows: the noisy input and the drawn
    baseline, and when needed the layer values and the model's targets at both (one forward
    pass over the two, shared by the layer factors and the convergence delta). ``points``
    and ``factors`` of one chunk ask for the same rows: they are computed once."""

    def __init__(
        self,
        eng: GradientEngine,
        x: dict[Key, Tensor],
        distribution: dict[Key, Tensor],
        drawn: Tensor,
        noise: SampleNoise,
        need_gap: bool,
        per_sample: bool = False,
    ) -> None:
        self.eng, self.x, self.distribution, self.drawn, self.noise = (
            eng,
            x,
            distribution,
            drawn,
            noise,
        )
        self.need_gap = need_gap
        b, k = eng.batch.batch_size, len(eng.targets)
        self.gap = torch.zeros(b, k, dtype=torch.float64)
        # per row (sample * B + example) with per_sample: the gap of each sample's path
        self.sample_gaps = torch.zeros(drawn.numel() if per_sample else 0, k, dtype=torch.float64)
        self._key: tuple[int, int] | None = None
        self._rows: tuple[Any, Any, Any] = ({}, {}, {})

    def rows(
        self, samples: Tensor, examples: Tensor, need_layers: bool
    ) -> tuple[dict[Key, Tensor], dict[Key, Tensor], dict[Any, Tensor]]:
        """Per input the baselines and ``noisy input - baseline`` of the rows, and per layer
        the change of its value between the two (when needed)."""
        b = self.eng.batch.batch_size
        first = int(samples[0]) * b + int(examples[0])
        key = (first, len(samples))
        if key == self._key:
            return self._rows
        noisy = self.noise.inputs_at(samples, examples)
        picked = self.drawn[samples, examples]
        base = {k: d[picked.to(d.device) % len(d)] for k, d in self.distribution.items()}
        layer_diff: dict[Any, Tensor] = {}
        if need_layers or self.need_gap:
            layer_diff = self._evaluate(samples * b + examples, examples, noisy, base)
        diff = {k: noisy[k] - base[k] for k in self.x}
        self._key, self._rows = key, (base, diff, layer_diff)
        return self._rows

    def _evaluate(
        self, rows: Tensor, examples: Tensor, noisy: dict[Key, Tensor], base: dict[Key, Tensor]
    ) -> dict[Any, Tensor]:
        n = len(examples)
        both = torch.cat([examples, examples])
        explained, layer_values = self.eng.evaluate(
            both, {k: torch.cat([noisy[k], base[k]]) for k in self.x}
        )
        if self.need_gap:
            ends = torch.stack(self.eng.scalars(explained, both), dim=1).to(self.gap)
            self.gap.index_add_(0, examples.to(self.gap.device), ends[:n] - ends[n:])
            if self.sample_gaps.numel():
                self.sample_gaps.index_add_(0, rows, ends[:n] - ends[n:])
        return {p: v[:n] - v[n:] for p, v in layer_values.items()}


def _distribution(batch: InputBatch, inputs: Any, baselines: Any) -> dict[Key, Tensor]:
    """The baseline distribution per attributed input, ``[N, *input.shape[1:]]`` each; a
    callable is called with the inputs if it takes an argument (as captum calls it)."""
    if callable(baselines) and not isinstance(baselines, Tensor):
        takes_inputs = len(inspect.signature(baselines).parameters) > 0
        baselines = baselines(inputs) if takes_inputs else baselines()
    result = {}
    for key, base in batch.per_key(baselines, "baselines").items():
        x = batch.leaves[key]
        if base is None or isinstance(base, (int, float)):
            base = torch.full((1, *x.shape[1:]), float(base or 0.0))
        if not isinstance(base, Tensor):
            raise InputTypeError(
                f"baselines for input {key!r} must be a tensor [N, *input.shape[1:]] of N "
                f"baseline samples or a number, got {type(base).__name__}"
            )
        if base.dim() == x.dim() - 1 and base.shape == x.shape[1:]:
            base = base.unsqueeze(0)
        if base.dim() != x.dim() or base.shape[1:] != x.shape[1:]:
            raise InputError(
                f"baselines for input {key!r} have shape {list(base.shape)}; GradientShap draws "
                f"baselines from a distribution of shape [N, {', '.join(map(str, x.shape[1:]))}] "
                f"(N samples shaped like one example of the input {list(x.shape)})"
            )
        check_finite_baselines(key, base)
        result[key] = base.to(dtype=x.dtype, device=x.device)
    sizes = {k: int(v.shape[0]) for k, v in result.items()}
    if len(set(sizes.values()) - {1}) > 1:
        raise InputError(
            f"baselines of the inputs hold different numbers of samples {sizes}; baseline sample "
            "i of every input is drawn together, so give each input the same number (or one)"
        )
    return result
