"""Streamed statistics of probes: feature moments for standardisation, ridge probes solved
exactly from streamed sufficient statistics, and scores (accuracy, R^2).

Probes work on standardised features ``z = (x - mean) / scale``. The ridge objective is
``mean_i ||y_i - z_i W - b||^2 + l2 ||W||^2``, solved in closed form; with ``rank=r`` the fitted
values are projected on their top ``r`` principal directions (reduced-rank ridge). Logistic
heads are in :mod:`._logistic`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Moments:
    """Streaming sums of one path's features (float64), for the mean and standard deviation."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: Tensor | None = None
        self.sumsq: Tensor | None = None

    def add(self, x: Tensor) -> None:
        x64 = x.double()
        if self.sum is None:
            self.sum, self.sumsq = x64.sum(0), (x64 * x64).sum(0)
        else:
            assert self.sumsq is not None
            self.sum += x64.sum(0)
            self.sumsq += (x64 * x64).sum(0)
        self.n += x.shape[0]

    def standardizer(self, dtype: torch.dtype, standardize: bool) -> tuple[Tensor, Tensor]:
        """``(mean, scale)``; constant features get scale 1 so they stay finite."""
        assert self.sum is not None and self.sumsq is not None
        mean = self.sum / self.n
        var = (self.sumsq / self.n - mean * mean).clamp_min(0)
        scale = var.sqrt()
        scale = torch.where(scale > 1e-12 * (1 + mean.abs()), scale, torch.ones_like(scale))
        if not standardize:
            mean, scale = torch.zeros_like(mean), torch.ones_like(scale)
        return mean.to(dtype), scale.to(dtype)


class RidgeStats:
    """Streaming ``[z 1]^T [z 1]`` and ``[z 1]^T y`` of one path's training rows (float64)."""

    def __init__(self) -> None:
        self.gram: Tensor | None = None
        self.cross: Tensor | None = None
        self.n = 0

    def add(self, z: Tensor, y: Tensor) -> None:
        ones = torch.ones(z.shape[0], 1, dtype=torch.float64, device=z.device)
        z1 = torch.cat([z.double(), ones], 1)
        y64 = y.to(z.device).double().reshape(y.shape[0], -1)
        gram, cross = z1.T @ z1, z1.T @ y64
        if self.gram is None:
            self.gram, self.cross = gram, cross
        else:
            assert self.cross is not None
            self.gram += gram
            self.cross += cross
        self.n += z.shape[0]

    def solve(self, l2: float, rank: int | None) -> tuple[Tensor, Tensor]:
        """``(W [D, K], b [K])`` of the ridge objective (the bias is not penalised)."""
        assert self.gram is not None and self.cross is not None
        dim = self.gram.shape[0] - 1
        penalty = torch.full((dim + 1,), l2 * self.n, dtype=torch.float64)
        penalty[-1] = 0.0
        system = self.gram + torch.diag(penalty)
        # tiny jitter keeps an unregularised, rank-deficient system solvable
        system += torch.eye(dim + 1, dtype=torch.float64) * 1e-10 * system.diagonal().mean()
        coef = torch.linalg.solve(system, self.cross)
        if rank is not None and rank < coef.shape[1]:
            # reduced-rank ridge: keep the top directions of the fitted values' covariance
            fitted_cov = coef.T @ self.gram @ coef
            _, vectors = torch.linalg.eigh(fitted_cov)
            top = vectors[:, -rank:]
            coef = coef @ top @ top.T
        return coef[:-1], coef[-1]


class Score:
    """Streaming score of one head on one split: accuracy, or the residual sum for R^2."""

    def __init__(self, classification: bool) -> None:
        self.classification = classification
        self.hits = 0.0
        self.residual: Tensor | float = 0.0  # per output
        self.n = 0

    def add(self, prediction: Tensor, y: Tensor) -> None:
        if not len(y):
            return
        y = y.to(prediction.device)
        if self.classification:
            self.hits += float((prediction.argmax(-1) == y).sum())
        else:
            diff = prediction.double() - y.double().reshape(prediction.shape)
            self.residual = self.residual + (diff**2).sum(0).cpu()
        self.n += len(y)

    def value(self, y_split: Tensor) -> float:
        """Accuracy, or R^2 averaged over outputs (``y_split``: all labels of the split)."""
        if self.n == 0:
            return math.nan
        if self.classification:
            return self.hits / self.n
        y64 = y_split.double().reshape(len(y_split), -1)
        total = ((y64 - y64.mean(0)) ** 2).sum(0)
        r2 = 1 - self.residual / total.clamp_min(1e-300)
        return float(r2.mean())
