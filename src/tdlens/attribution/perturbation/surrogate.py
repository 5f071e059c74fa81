"""Lime and KernelShap: fit a linear surrogate on random coalitions of the features.

Samplers draw binary coalitions per example (Bernoulli for Lime, the Shapley kernel's
distribution for KernelShap); one batched forward scores them for every target; the estimator
solves every example's and target's linear system at once (:mod:`.linear`) on the model's
device, where captum fits one scikit-learn model per example and per target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ...core.errors import InputError, InputTypeError
from ...core.structure import Key
from ..base import with_defaults
from .base import PerturbationAttribution, PerturbationRun, Perturbations, check_samples
from .features import FeatureLayout
from .linear import Lasso, LinearModel, LinearRegression, resolve_model
from .shapley import all_coalitions

Similarity = Callable[[dict[Key, Tensor], dict[Key, Tensor], Tensor], Tensor]
"""``(original rows, perturbed rows, coalitions [N, M]) -> weights [N]``, on batches of rows."""


def get_exp_kernel_similarity_function(
    distance_mode: str = "cosine", kernel_width: float = 1.0
) -> Similarity:
    """captum's default Lime weight ``exp(-d^2 / (2 width^2))`` of the distance ``d`` between
    the flattened original and perturbed inputs, for batches of rows."""
    if distance_mode not in ("cosine", "euclidean"):
        raise InputError(f"distance_mode must be 'cosine' or 'euclidean', got {distance_mode!r}")

    def similarity(original: dict, perturbed: dict, _coalitions: Tensor) -> Tensor:
        a = torch.cat([v.reshape(v.shape[0], -1).double() for v in original.values()], 1)
        b = torch.cat([v.reshape(v.shape[0], -1).double() for v in perturbed.values()], 1)
        if distance_mode == "cosine":
            distance = 1 - torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-8)
        else:
            distance = (a - b).norm(dim=1)
        return torch.exp(-(distance**2) / (2 * kernel_width**2))

    return similarity


def bernoulli_coalitions(run: PerturbationRun, n_samples: int, n_features: int) -> Tensor:
    """``[B, S, M]`` bool: every feature present with probability 1/2 (captum's Lime)."""
    return run.rand(run.batch.batch_size, n_samples, n_features) < 0.5


def shapley_kernel_coalitions(run: PerturbationRun, n_draws: int, n_features: int) -> Tensor:
    """``[B, n_draws, M]`` bool from the Shapley kernel: a size ``k`` in ``1..M-1`` with
    probability proportional to ``1 / (k (M - k))``, then a uniform subset of that size; each
    draw is followed by its complement (antithetic pairs: same kernel weight)."""
    m, b = n_features, run.batch.batch_size
    sizes = torch.arange(1, m, dtype=torch.float64)
    probs = 1.0 / (sizes * (m - sizes))
    half = (n_draws + 1) // 2
    draws = (
        torch.multinomial(
            (probs / probs.sum()).expand(b * half, -1), 1, replacement=True, generator=run.generator
        ).reshape(b, half, 1)
        + 1
    )
    rank = run.rand(b, half, m).argsort(-1).argsort(-1)
    chosen = rank < draws.to(rank.device)
    paired = torch.stack([chosen, ~chosen], dim=2).reshape(b, 2 * half, m)
    return paired[:, :n_draws]


def _coalition_perturbations(
    run: PerturbationRun,
    layout: FeatureLayout,
    coalitions: Tensor,
    on_rows: Callable[[Tensor, Tensor, dict[Key, Tensor], Tensor], None] | None = None,
) -> Perturbations:
    """Per-example coalitions ``[B, S, M]`` as perturbations, with a callback per chunk."""
    inputs = {k: run.batch.leaves[k] for k in run.batch.attributed}

    def build(samples: Tensor, examples: Tensor) -> dict[Key, Tensor]:
        rows = coalitions[examples.to(coalitions.device), samples.to(coalitions.device)]
        values = layout.apply(rows, examples, inputs, run.baselines)
        if on_rows is not None:
            on_rows(samples, examples, values, rows)
        return values

    return Perturbations(coalitions.shape[1], build)


class _Surrogate(PerturbationAttribution):
    _MULTIPLIES_BY_INPUTS = False  # a surrogate's coefficients are local (captum: False)

    def _result(
        self, run: PerturbationRun, layout: FeatureLayout, phi: Tensor, return_input_shape: bool
    ) -> Any:
        """``phi [B, K, M]`` spread over the inputs, or as ``[B, (K,) M]`` per feature."""
        if return_input_shape:
            return run.finish(layout.spread(phi))
        phi = layout.per_id(phi)
        return phi if run.multi else phi[:, 0]


class KernelShap(_Surrogate):
    """Kernel SHAP (Lundberg and Lee 2017): Shapley values as the weighted least-squares fit
    of coalitions drawn from the Shapley kernel, constrained to sum to ``f(x) - f(baseline)``.

    The constraint is solved exactly (one coefficient eliminated), so per example the values
    sum to ``f(x) - f(baseline)`` up to rounding for any ``n_samples``. When ``n_samples``
    covers every coalition (``2**M``), all of them are used with their kernel weights and the
    result is the exact Shapley values.

    Example:
        >>> ks = tdlens.KernelShap(model)
        >>> attr = ks.attribute(x, feature_mask=mask, n_samples=200, targets=[0, 1], seed=0)
    """

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        return_input_shape: bool = True,
        show_progress: bool | None = None,
        *,
        targets: Any = None,
        output: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Any:
        """Shapley value estimates shaped like the inputs (``[B, K, ...]`` with ``targets``),
        or ``[B, (K,) M]`` per feature with ``return_input_shape=False``."""
        check_samples(n_samples)
        run = self._start(
            inputs,
            target=target,
            targets=targets,
            output=output,
            keys=keys,
            additional_forward_args=additional_forward_args,
            baselines=baselines,
            perturbations_per_eval=perturbations_per_eval,
            internal_batch_size=internal_batch_size,
            generator=generator,
            seed=seed,
            show_progress=show_progress,
        )
        layout = FeatureLayout.build(run.batch, feature_mask)
        m, b = layout.n_features, run.batch.batch_size
        if n_samples < m + 1:
            raise InputError(
                f"KernelShap fits {m} feature values from n_samples={n_samples} evaluations; "
                f"it needs n_samples >= {m + 1} (the baseline plus one coalition per feature), "
                f"and about {2 * m + 2048} for accurate values. Raise n_samples, or group "
                "positions into fewer features with feature_mask="
            )
        empty = torch.zeros(b, 1, m, dtype=torch.bool, device=run.device)
        if m > 1 and n_samples >= 2**m - 1:  # every proper coalition, weighed exactly
            proper = all_coalitions(m, run.device)[1:-1]
            size = proper.sum(1).double()
            sample_weight = (m - 1) / (
                torch.tensor([math.comb(m, int(k)) for k in size], dtype=torch.float64)
                * size
                * (m - size)
            )
            drawn = proper.unsqueeze(0).expand(b, -1, -1)
        elif m == 1:  # one feature: its value is the whole gap, no coalition to draw
            drawn = empty[:, :0]
            sample_weight = torch.ones(0, dtype=torch.float64)
        else:
            drawn = shapley_kernel_coalitions(run, n_samples - 1, m).to(run.device)
            sample_weight = torch.ones(drawn.shape[1], dtype=torch.float64)
        coalitions = torch.cat([empty, drawn], dim=1)
        full, scores = run.evaluate(_coalition_perturbations(run, layout, coalitions))
        phi = self._constrained_fit(drawn, scores, full, sample_weight.to(scores.device))
        return self._result(run, layout, phi, return_input_shape)

    @staticmethod
    def _constrained_fit(
        drawn: Tensor, scores: Tensor, full: Tensor, sample_weight: Tensor
    ) -> Tensor:
        """``[B, K, M]``: min sum_s w_s (v(z_s) - v0 - z_s . phi)^2 s.t. sum(phi) = f(x) - v0."""
        v0 = scores[:, 0]  # [B, K], f(baseline)
        gap = full - v0
        m = drawn.shape[-1]
        if m == 1:
            return gap.unsqueeze(-1)
        z = drawn.to(scores.dtype)
        y = scores[:, 1:] - v0.unsqueeze(1) - z[..., -1:] * gap.unsqueeze(1)  # [B, S, K]
        x = z[..., :-1] - z[..., -1:]
        fit = LinearRegression(fit_intercept=False)
        coef, _ = fit.fit(x, y, sample_weight.expand(z.shape[0], -1))  # [B, M-1, K]
        coef = coef.to(scores.dtype)
        last = gap - coef.sum(1)
        return torch.cat([coef, last.unsqueeze(1)], dim=1).transpose(1, 2)


class Lime(_Surrogate):
    """LIME (Ribeiro et al. 2016): the coefficients of a weighted linear surrogate fitted on
    random coalitions of the features (present: input value; absent: baseline).

    Args:
        model: the model.
        interpretable_model: a tdlens linear model (:class:`LinearRegression`,
            :class:`Ridge`, :class:`Lasso`, or ``"linear"``/``"ridge"``/``"lasso"``); default
            ``Lasso(alpha=0.01)`` as in captum. All examples and targets are fitted at once.
        similarity_func: ``(original rows, perturbed rows, coalitions [N, M]) -> [N]`` weights,
            called on batches of rows (captum calls it once per sample); default
            ``get_exp_kernel_similarity_function("cosine", 1.0)`` as in captum.
        perturb_func: ``(run, n_samples, n_features) -> [B, S, M]`` coalitions (bool, or float in
            [0, 1]); default: every feature present with probability 1/2.
    """

    def __init__(
        self,
        model: Any,
        interpretable_model: LinearModel | str | None = None,
        similarity_func: Similarity | None = None,
        perturb_func: Callable[[PerturbationRun, int, int], Tensor] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        self.interpretable_model = resolve_model(
            Lasso(alpha=0.01) if interpretable_model is None else interpretable_model
        )
        self.similarity_func = similarity_func or get_exp_kernel_similarity_function()
        self.perturb_func = perturb_func or bernoulli_coalitions

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        return_input_shape: bool = True,
        show_progress: bool | None = None,
        *,
        targets: Any = None,
        output: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Any:
        """Surrogate coefficients shaped like the inputs (``[B, K, ...]`` with ``targets``),
        or ``[B, (K,) M]`` per feature with ``return_input_shape=False``."""
        check_samples(n_samples)
        run = self._start(
            inputs,
            target=target,
            targets=targets,
            output=output,
            keys=keys,
            additional_forward_args=additional_forward_args,
            baselines=baselines,
            perturbations_per_eval=perturbations_per_eval,
            internal_batch_size=internal_batch_size,
            generator=generator,
            seed=seed,
            show_progress=show_progress,
        )
        layout = FeatureLayout.build(run.batch, feature_mask)
        b = run.batch.batch_size
        coalitions = self.perturb_func(run, n_samples, layout.n_features).to(run.device)
        if coalitions.shape != (b, n_samples, layout.n_features):
            raise InputTypeError(
                f"perturb_func returned shape {list(coalitions.shape)}; expected "
                f"[{b}, {n_samples}, {layout.n_features}] (examples, samples, features)"
            )
        weights = torch.empty(n_samples, b, dtype=torch.float64, device=run.device)
        inputs_ = {k: run.batch.leaves[k] for k in run.batch.attributed}

        def weigh(samples: Tensor, examples: Tensor, values: dict, rows: Tensor) -> None:
            original = {k: v.index_select(0, examples.to(v.device)) for k, v in inputs_.items()}
            w = self.similarity_func(original, values, rows)
            if not isinstance(w, Tensor) or w.reshape(-1).shape[0] != samples.shape[0]:
                raise InputTypeError(
                    "similarity_func must return one weight per row (a tensor of shape "
                    f"[{samples.shape[0]}]); tdlens calls it on batches of perturbed rows"
                )
            weights[samples.to(run.device), examples.to(run.device)] = w.reshape(-1).to(weights)

        _, scores = run.evaluate(_coalition_perturbations(run, layout, coalitions, weigh))
        coef, _ = self.interpretable_model.fit(coalitions, scores, weights.T)
        return self._result(run, layout, coef.to(scores.dtype).transpose(1, 2), return_input_shape)
