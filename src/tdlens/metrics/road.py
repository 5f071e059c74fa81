"""ROAD: RemOve And Debias (Rong et al. 2022), for images.

The top (``order="morf"``, most relevant first) or bottom (``"lerf"``) fraction of the pixels
is removed and imputed by *noisy linear imputation*: each removed pixel equals the weighted
mean of its 8 neighbours (direct ones weigh 1/6, diagonal ones 1/12), which is a sparse linear
system over the removed pixels, then Gaussian noise of std ``noise`` is added. The imputation
leaks little about which pixels were removed, so the score drop reflects their information,
not the shape of the hole. The target score at each fraction is the curve; MoRF curves should
fall fast (low mean), LeRF curves stay high.

The linear system of each image and channel is solved by conjugate gradients with a Jacobi
preconditioner, in batch on all rows of a forward pass (the reference implementation solves
one sparse system per image with scipy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.errors import InputError
from ..core.structure import InputBatch, Key
from ._common import CurveResult, PerBlock, check_fractions
from .curves import Replace, top_fraction_scores

ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_NEIGHBOURS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def road(
    model: Callable[..., Any],
    inputs: Any,
    attributions: Any,
    target: Any = None,
    *,
    targets: Any = None,
    percentages: Sequence[float] = ROAD_FRACTIONS,
    order: str = "morf",
    noise: float = 0.01,
    feature_mask: Any = "pixels",
    generator: torch.Generator | None = None,
    max_examples_per_batch: int | None = None,
    output: Any = None,
    keys: Any = None,
) -> CurveResult:
    """The target score with a fraction of the pixels removed and imputed, per fraction.

    Args:
        percentages: fractions of the features (pixels) removed, in (0, 1].
        order: ``"morf"`` removes the most attributed first, ``"lerf"`` the least.
        noise: std of the Gaussian noise added to imputed values (0: plain linear imputation).
        feature_mask: ``"pixels"`` (default: all channels of a position together), ``None``
            (every element) or feature ids, e.g. superpixels.
        generator: the random generator of the noise.
        Others: as :func:`tdlens.metrics.deletion`; the attributed inputs must be images
            ``[B, C, H, W]`` (any dims before the last two are imputed separately).

    Returns:
        :class:`CurveResult`: ``fractions`` ``[P]``, ``curve`` ``[B, P]`` (``[B, K, P]``) the
        target scores, ``score`` their mean over the fractions.

    Example:
        >>> morf = tdlens.metrics.road(model, images, attr, target=labels)
        >>> lerf = tdlens.metrics.road(model, images, attr, target=labels, order="lerf")
        >>> (lerf.score - morf.score).mean()      # larger: a more faithful attribution
    """
    fractions = check_fractions(percentages, "percentages")
    if order not in ("morf", "lerf"):
        raise InputError(
            f"order={order!r}: use 'morf' (remove the most relevant pixels first) or 'lerf' "
            "(the least relevant first)"
        )
    if not noise >= 0:
        raise InputError(f"noise is a standard deviation >= 0, got {noise!r}")
    _, curve, finish = top_fraction_scores(
        model,
        inputs,
        attributions,
        fractions=fractions,
        keep=False,
        replacement=lambda call: _noisy_imputation(call.batch, noise, generator),
        feature_mask=feature_mask,
        descending=order == "morf",
        check=_check_images,
        target=target,
        targets=targets,
        output=output,
        keys=keys,
        max_examples_per_batch=max_examples_per_batch,
    )
    return CurveResult(fractions, finish(curve), finish(curve.mean(-1)))


def _check_images(batch: InputBatch) -> None:
    for key in batch.attributed:
        x = batch.leaves[key]
        if x.dim() < 3 or not x.is_floating_point():
            raise InputError(
                f"ROAD imputes images: input {key!r} is {x.dtype} of shape {list(x.shape)}, "
                "not float [B, C, H, W]; for other inputs use tdlens.metrics.deletion or "
                "comprehensiveness"
            )


def _noisy_imputation(
    batch: InputBatch, noise: float, generator: torch.Generator | None
) -> Replace:
    """Removed elements take their linear imputation plus noise; the noise of each block of
    rows is drawn once, in block order, whatever the chunking."""
    draws = PerBlock(
        lambda _block: {
            key: torch.randn(batch.leaves[key].shape, generator=generator).to(batch.leaves[key])
            for key in batch.attributed
        }
    )

    def impute(key: Key, x: Tensor, removed: Tensor, blocks: Tensor, examples: Tensor) -> Tensor:
        filled = linear_impute(x, removed)
        if noise:
            filled = filled + noise * draws.rows(blocks, examples, lambda drawn: drawn[key])
        return torch.where(removed, filled, x)

    return impute


def linear_impute(
    x: Tensor, removed: Tensor, *, rtol: float | None = None, max_iter: int | None = None
) -> Tensor:
    """``x`` with the ``removed`` elements (bool, broadcasting to ``x``) replaced by the linear
    imputation of ROAD: each equals the weighted mean of its in-image 8-neighbours, known or
    imputed, over the last two dimensions.

    Solves ``L u = W k`` (``L``: the weighted graph Laplacian restricted to the removed pixels,
    symmetric positive definite unless a whole image is removed, which leaves it at 0) by
    preconditioned conjugate gradients, to a relative residual of ``rtol`` (default 1e-10 in
    float64, 1e-6 otherwise).
    """
    h, w = x.shape[-2:]
    values = x.reshape(-1, 1, h, w)
    hole = removed.expand(x.shape).reshape(-1, 1, h, w).to(values.dtype)
    degree = _neighbours(torch.ones(1, 1, h, w, dtype=values.dtype, device=values.device))

    def laplacian(t: Tensor) -> Tensor:
        return hole * (degree * t - _neighbours(hole * t))

    rhs = hole * _neighbours(values * (1 - hole))
    tol = rtol if rtol is not None else (1e-10 if values.dtype == torch.float64 else 1e-6)
    limit = max_iter if max_iter is not None else 20 * max(h, w) + 50
    solution = torch.zeros_like(values)
    residual = rhs.clone()
    direction = residual / degree
    rz = _dot(residual, direction)
    target_norm = tol * _dot(rhs, rhs).sqrt()
    for _ in range(limit):
        if bool((_dot(residual, residual).sqrt() <= target_norm).all()):
            break
        step = laplacian(direction)
        curvature = _dot(direction, step)
        alpha = _safe_ratio(rz, curvature)
        solution = solution + alpha * direction
        residual = residual - alpha * step
        z = residual / degree
        rz_next = _dot(residual, z)
        direction = z + _safe_ratio(rz_next, rz) * direction
        rz = rz_next
    return torch.where(hole.bool(), solution, values).reshape(x.shape)


def _neighbours(t: Tensor) -> Tensor:
    """The weighted sum of each pixel's in-image 8-neighbours (``[N, 1, H, W]``): shifted
    slices of the zero-padded image (on CPU far faster than a 1-channel ``conv2d``)."""
    padded = F.pad(t, (1, 1, 1, 1))
    h, w = t.shape[-2:]
    total = torch.zeros_like(t)
    for di, row in enumerate(_NEIGHBOURS):
        for dj, weight in enumerate(row):
            if weight:
                total = total + weight * padded[..., di : di + h, dj : dj + w]
    return total


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=(1, 2, 3), keepdim=True)


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, 0 where ``den`` is 0 (a converged or empty system stays put)."""
    return torch.where(den != 0, num / torch.where(den != 0, den, 1.0), 0.0)
