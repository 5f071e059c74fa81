"""Sobol attribution (Fel et al. 2021): variance-based sensitivity of the target to masks.

Every feature gets a continuous mask value ``m`` in [0, 1] (the input becomes
``baseline + m * (input - baseline)``); the masks follow a quasi-random design. With two
independent designs A and B and the hybrids ``C_i`` (A with column i from B), Jansen's
estimators give the first-order index (variance explained by the feature alone) and the total
index (variance involving the feature) from ``N * (M + 2)`` forward rows per example.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...core.errors import InputError
from ..base import with_defaults
from .base import PerturbationAttribution, check_samples, masked
from .features import FeatureLayout
from .samplers import design


def sobol_coalitions(a: Tensor, b: Tensor) -> Tensor:
    """``[N * (M + 2), M]``: the rows of A, of B, then ``C_i`` for every design point."""
    n, m = a.shape
    eye = torch.eye(m, dtype=torch.bool, device=a.device)
    hybrids = torch.where(eye.unsqueeze(0), b.unsqueeze(1), a.unsqueeze(1))  # [N, M, M]
    return torch.cat([a, b, hybrids.reshape(n * m, m)])


def jansen_indices(scores: Tensor, n: int, m: int) -> tuple[Tensor, Tensor]:
    """First-order and total indices ``[B, K, M]`` from scores laid out as
    :func:`sobol_coalitions` (``[B, N * (M + 2), K]``)."""
    b, _, k = scores.shape
    f_a, f_b = scores[:, :n], scores[:, n : 2 * n]
    f_c = scores[:, 2 * n :].reshape(b, n, m, k)
    variance = torch.cat([f_a, f_b], dim=1).var(dim=1)  # [B, K]
    safe = torch.where(variance > 0, variance, torch.ones_like(variance)).unsqueeze(1)
    total = ((f_a.unsqueeze(2) - f_c) ** 2).mean(1) / 2  # [B, M, K]
    first = variance.unsqueeze(1) - ((f_b.unsqueeze(2) - f_c) ** 2).mean(1) / 2
    zero = (variance == 0).unsqueeze(1)
    first = torch.where(zero, torch.zeros_like(first), first / safe)
    total = torch.where(zero, torch.zeros_like(total), total / safe)
    return first.transpose(1, 2), total.transpose(1, 2)


class Sobol(PerturbationAttribution):
    """Sobol sensitivity indices of the features (total order by default).

    Example:
        >>> sobol = tdlens.Sobol(model)
        >>> attr = sobol.attribute(images, feature_mask=superpixels, n_samples=32, target=3)
    """

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        n_samples: int = 32,
        perturbations_per_eval: int = 1,
        return_input_shape: bool = True,
        show_progress: bool | None = None,
        *,
        order: str = "total",
        sampler: str = "sobol",
        targets: Any = None,
        output: Any = None,
        keys: Any = None,
        internal_batch_size: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Any:
        """Indices shaped like the inputs (``[B, K, ...]`` with ``targets``) or per feature
        (``return_input_shape=False``). ``order``: ``"total"`` or ``"first"``;
        ``n_samples``: design points N (the run evaluates ``N * (M + 2)`` rows per example);
        ``sampler``: ``"sobol"``, ``"halton"`` or ``"lhs"``."""
        check_samples(n_samples, minimum=2)
        if order not in ("total", "first"):
            raise InputError(f"order must be 'total' or 'first', got {order!r}")
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
        points = design(sampler, n_samples, 2 * m, run.generator).to(run.device)
        coalitions = sobol_coalitions(points[:, :m], points[:, m:])
        _, scores = run.evaluate(masked(layout, coalitions, run))
        first, total = jansen_indices(scores, n_samples, m)
        phi = total if order == "total" else first
        if return_input_shape:
            return run.finish(layout.spread(phi))
        return phi if run.multi else phi[:, 0]
