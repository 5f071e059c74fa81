"""Shapley values of the features, exact (every coalition) or from sampled permutations.

The game: ``v(S)`` is the target with the features of ``S`` at their input values and the
others at their baselines. The exact method evaluates all ``2**M`` coalitions in one batched
run and weighs them in closed form; the sampling method walks random orders of the features
(with their reverses, antithetic pairs) and averages the marginal contributions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ...core.errors import InputError
from ..base import with_defaults
from .base import PerturbationAttribution, check_samples, masked
from .features import FeatureLayout

MAX_EXACT_FEATURES = 16
"""Exact Shapley values evaluate ``2**M`` coalitions per example; above this many features
the run is refused (group features with ``feature_mask`` or sample)."""


def all_coalitions(n_features: int, device: torch.device | None = None) -> Tensor:
    """``[2**M, M]`` bool: row ``i`` holds the bits of ``i`` (feature ``m`` is bit ``m``)."""
    codes = torch.arange(2**n_features, device=device).unsqueeze(1)
    return (codes >> torch.arange(n_features, device=device)) & 1 == 1


def shapley_weights(coalitions: Tensor) -> Tensor:
    """``[C, M]`` float64: ``phi = scores @ weights`` gives exact Shapley values when the rows
    of ``coalitions`` are every subset. A subset ``S`` counts ``+w(|S| - 1)`` for its members
    and ``-w(|S|)`` for the others, ``w(s) = s! (M - s - 1)! / M!``."""
    m = coalitions.shape[1]
    w = torch.tensor(
        [math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in range(m)]
        + [0.0],
        dtype=torch.float64,
        device=coalitions.device,
    )
    size = coalitions.sum(1)
    member = w[(size - 1).clamp(min=0)].unsqueeze(1)
    other = w[size].unsqueeze(1)
    return torch.where(coalitions, member, -other)


class ShapleyValues(PerturbationAttribution):
    """Exact Shapley values of the features (for a few features: ``2**M`` evaluations each).

    Every position of a feature gets the feature's Shapley value; the values of an example sum
    to ``f(x) - f(baseline)``.

    Example:
        >>> sv = tdlens.ShapleyValues(model)
        >>> attr = sv.attribute(x, feature_mask=torch.tensor([[0, 0, 1]]), target=0)
    """

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool | None = None,
        *,
        targets: Any = None,
        output: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
    ) -> Any:
        """Attributions shaped like the inputs (``[B, K, ...]`` with ``targets``)."""
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
            show_progress=show_progress,
        )
        layout = FeatureLayout.build(run.batch, feature_mask)
        m = layout.n_features
        if m > MAX_EXACT_FEATURES:
            raise InputError(
                f"ShapleyValues needs every coalition of the {m} features: 2**{m} = {2**m:,} "
                f"forward rows per example; it is limited to {MAX_EXACT_FEATURES} features "
                f"({2**MAX_EXACT_FEATURES:,} rows). Group positions into at most "
                f"{MAX_EXACT_FEATURES} features with feature_mask=, or estimate the values "
                "with tdlens.ShapleyValueSampling (n_samples= permutations) or tdlens.KernelShap"
            )
        coalitions = all_coalitions(m, run.device)
        full, scores = run.evaluate(masked(layout, coalitions[:-1], run))
        values = torch.cat([scores, full.unsqueeze(1)], dim=1)  # [B, 2**M, K]
        if not values.is_floating_point():  # integer outputs: the weights are fractions
            values = values.to(torch.get_default_dtype())
        weights = shapley_weights(coalitions).to(values.dtype)
        phi = torch.einsum("bck,cm->bkm", values, weights)
        return run.finish(layout.spread(phi))


def permutation_coalitions(orders: Tensor) -> Tensor:
    """``[P * (M - 1), M]`` bool: the proper non-empty prefixes of each order ``[P, M]``."""
    p, m = orders.shape
    rank = orders.argsort(dim=1)  # rank[p, f]: where feature f comes in order p
    steps = torch.arange(1, m, device=orders.device).reshape(1, m - 1, 1)
    return (rank.unsqueeze(1) < steps).reshape(p * (m - 1), m)


class ShapleyValueSampling(PerturbationAttribution):
    """Shapley values estimated from ``n_samples`` random orders of the features.

    Each order adds the features one at a time from the baseline to the input; a feature's
    value is its mean marginal contribution. With ``antithetic=True`` (default) the orders come
    in pairs, an order and its reverse, which cancels the first-order error of additive parts.
    Per example the values sum to ``f(x) - f(baseline)`` exactly for any ``n_samples``.
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
        show_progress: bool | None = None,
        *,
        targets: Any = None,
        output: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
        antithetic: bool = True,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Any:
        """Attributions shaped like the inputs (``[B, K, ...]`` with ``targets``)."""
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
        m = layout.n_features
        orders = self._orders(run.rand(n_samples, m), antithetic).to(run.device)
        empty = torch.zeros(1, m, dtype=torch.bool, device=run.device)
        coalitions = torch.cat([empty, permutation_coalitions(orders)])
        full, scores = run.evaluate(masked(layout, coalitions, run))
        b, k = full.shape
        prefixes = scores[:, 1:].reshape(b, n_samples, m - 1, k)
        start = scores[:, :1].unsqueeze(1).expand(b, n_samples, 1, k)
        end = full.reshape(b, 1, 1, k).expand(b, n_samples, 1, k)
        path = torch.cat([start, prefixes, end], dim=2)  # [B, P, M + 1, K]
        marginals = path[:, :, 1:] - path[:, :, :-1]  # feature orders[p, j] added at step j
        added = torch.nn.functional.one_hot(orders, m).to(marginals.dtype)  # [P, M, M]
        phi = torch.einsum("bpjk,pjf->bkf", marginals, added) / n_samples
        return run.finish(layout.spread(phi))

    @staticmethod
    def _orders(uniform: Tensor, antithetic: bool) -> Tensor:
        orders = uniform.argsort(dim=1)
        if antithetic:
            half = (orders.shape[0] + 1) // 2
            paired = torch.stack([orders[:half], orders[:half].flip(1)], dim=1).flatten(0, 1)
            orders = paired[: orders.shape[0]]
        return orders
