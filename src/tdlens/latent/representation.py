"""Representation geometry: linear CKA between two activation sets, and the TwoNN intrinsic
dimension of one.

Both work on ``[N, ...]`` tensors (flattened to ``[N, D]``) and compute in float64. CKA is
computed in feature space (``[D1, D2]`` products, never an ``[N, N]`` Gram matrix), so N can
be large.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.errors import InputError, InputTypeError


def _rows(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputTypeError(f"{name} must be a tensor [N, ...], got {type(x).__name__}")
    if x.ndim < 2:
        raise InputError(f"{name} must be [N, D] (one row per example), got {list(x.shape)}")
    return x.detach().reshape(len(x), -1).double()


def cka(x: Tensor, y: Tensor, *, debiased: bool = False) -> float:
    """Linear centred kernel alignment between two activation sets on the same N examples.

    ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred X and Y: 1 for
    identical representations, invariant to orthogonal transforms and isotropic scaling of
    either. ``debiased=True`` uses the unbiased HSIC estimator (Song et al., 2012), which
    removes the upward bias of CKA when D is large compared with N (needs N >= 4).

    Args:
        x: ``[N, ...]`` activations.
        y: ``[N, ...]`` activations of the same examples (any width).

    Example:
        >>> x = torch.randn(100, 8)
        >>> latent.cka(x, 3 * x @ torch.linalg.qr(torch.randn(8, 8))[0])
        1.0
    """
    a, b = _rows(x, "x"), _rows(y, "y")
    if len(a) != len(b):
        raise InputError(
            f"cka needs the same examples in both sets: x has {len(a)} rows, y has {len(b)}"
        )
    a, b = a - a.mean(0), b - b.mean(0)
    if debiased:
        if len(a) < 4:
            raise InputError(f"debiased CKA needs at least 4 examples, got {len(a)}")
        value = _hsic_u(a, b) / math.sqrt(max(_hsic_u(a, a) * _hsic_u(b, b), 1e-300))
    else:
        cross = torch.linalg.matrix_norm(b.T @ a) ** 2
        norms = torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b)
        value = float(cross / norms.clamp_min(1e-300))
    return float(value)


def _hsic_u(a: Tensor, b: Tensor) -> float:
    """The unbiased HSIC of linear kernels ``K = a a^T``, ``L = b b^T`` (diagonals zeroed),
    from feature-space products only."""
    n = len(a)
    k_diag, l_diag = (a * a).sum(1), (b * b).sum(1)
    trace = float(torch.linalg.matrix_norm(b.T @ a) ** 2 - (k_diag * l_diag).sum())
    k_rows = a @ a.sum(0) - k_diag  # K~ 1
    l_rows = b @ b.sum(0) - l_diag
    k_sum, l_sum = float(k_rows.sum()), float(l_rows.sum())
    cross = float(k_rows @ l_rows)
    return (trace + k_sum * l_sum / ((n - 1) * (n - 2)) - 2 * cross / (n - 2)) / (n * (n - 3))


def intrinsic_dimension(
    x: Tensor, *, estimator: str = "fit", discard: float = 0.1, chunk: int = 1024
) -> float:
    """The TwoNN intrinsic dimension (Facco et al., 2017) of a point cloud ``[N, ...]``.

    For each point, ``mu = r2 / r1`` (distances to its second and first nearest neighbours)
    follows a Pareto law with exponent d. ``estimator="fit"`` fits ``-log(1 - F(mu)) = d
    log(mu)`` through the origin after discarding the largest ``discard`` share of ``mu``
    (as in the paper); ``"mle"`` is the maximum-likelihood ``(N - 1) / sum(log mu)``.
    Duplicate points (``r1 = 0``) are left out.

    Example:
        >>> plane = torch.randn(2000, 2) @ torch.randn(2, 50)
        >>> latent.intrinsic_dimension(plane)      # about 2
    """
    points = _rows(x, "x")
    if estimator not in ("fit", "mle"):
        raise InputError(f"estimator must be 'fit' or 'mle', got {estimator!r}")
    if not 0 <= discard < 1:
        raise InputError(f"discard is a share of the points, in [0, 1), got {discard!r}")
    if len(points) < 3:
        raise InputError(f"TwoNN needs at least 3 points, got {len(points)}")
    nearest = []
    for start in range(0, len(points), chunk):  # [chunk, N] distances at a time
        dist = torch.cdist(points[start : start + chunk], points)
        rows = torch.arange(start, min(start + chunk, len(points)))
        dist[rows - start, rows] = math.inf
        nearest.append(dist.topk(2, largest=False).values)
    r = torch.cat(nearest)
    r = r[r[:, 0] > 0]
    mu = torch.sort(r[:, 1] / r[:, 0]).values
    if len(mu) < 3:
        raise InputError("TwoNN found fewer than 3 distinct points")
    if estimator == "mle":
        return float((len(mu) - 1) / torch.log(mu).sum())
    n = len(mu)
    keep = max(2, int(n * (1 - discard)))
    empirical = torch.arange(1, n + 1, dtype=torch.float64) / n
    log_mu = torch.log(mu[:keep])
    target = -torch.log1p(-empirical[:keep])
    return float((log_mu * target).sum() / (log_mu * log_mu).sum())
