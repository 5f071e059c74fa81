"""Batched weighted linear surrogates in torch: least squares, ridge and lasso.

Lime and KernelShap fit one linear model per example and per target. Here all of them are one
batched problem on the model's device: ``X [B, S, P]`` (or ``[S, P]`` shared), ``Y [B, S, K]``,
sample weights ``[B, S]``; the K targets share the Gram matrix of their example. Objectives
follow scikit-learn so that results match its estimators:

* :class:`LinearRegression`: ``sum_s w_s (y_s - x_s @ coef - b)^2``, minimum-norm solution;
* :class:`Ridge`: the same plus ``alpha * |coef|^2``;
* :class:`Lasso`: ``sum_s w_s (y_s - x_s @ coef - b)^2 / (2 sum_s w_s) + alpha * |coef|_1``,
  solved by cyclic coordinate descent on the Gram matrix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from ...core.errors import InputError


class LinearModel(ABC):
    """A batched weighted linear fit. Subclasses solve the centred normal equations."""

    def __init__(self, *, fit_intercept: bool = True) -> None:
        self.fit_intercept = fit_intercept

    def fit(self, x: Tensor, y: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """``(coef [B, P, K], intercept [B, K])`` for ``x [B or 1, S, P]``, ``y [B, S, K]``,
        ``weights [B or 1, S]``; computed in float64 (float32 where float64 is missing)."""
        dtype = torch.float64 if y.device.type != "mps" else torch.float32
        x, y = x.to(device=y.device, dtype=dtype), y.to(dtype)
        w = weights.to(device=y.device, dtype=dtype).unsqueeze(-1)  # [B, S, 1]
        if self.fit_intercept:
            total = w.sum(-2, keepdim=True)
            x_mean = (w * x).sum(-2, keepdim=True) / total
            y_mean = (w * y).sum(-2, keepdim=True) / total
            x, y = x - x_mean, y - y_mean
        gram = x.transpose(-1, -2) @ (w * x)  # [B, P, P]
        moment = x.transpose(-1, -2) @ (w * y)  # [B, P, K]
        coef = self._solve(gram, moment, w.sum(-2).squeeze(-1))
        if self.fit_intercept:
            intercept = (y_mean - x_mean @ coef).squeeze(-2)
        else:
            intercept = coef.new_zeros(coef.shape[0], coef.shape[-1])
        return coef, intercept

    @abstractmethod
    def _solve(self, gram: Tensor, moment: Tensor, weight_sum: Tensor) -> Tensor:
        """The coefficients ``[B, P, K]`` from the centred weighted normal equations."""


class LinearRegression(LinearModel):
    """Weighted least squares (scikit-learn's ``LinearRegression``; minimum-norm when the
    samples do not determine every coefficient)."""

    def _solve(self, gram: Tensor, moment: Tensor, weight_sum: Tensor) -> Tensor:
        return torch.linalg.pinv(gram, hermitian=True) @ moment


class Ridge(LinearModel):
    """Weighted ridge regression, ``alpha * |coef|^2`` penalty (scikit-learn's ``Ridge``)."""

    def __init__(self, alpha: float = 1.0, *, fit_intercept: bool = True) -> None:
        super().__init__(fit_intercept=fit_intercept)
        if alpha < 0:
            raise InputError(f"Ridge alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def _solve(self, gram: Tensor, moment: Tensor, weight_sum: Tensor) -> Tensor:
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        return torch.linalg.pinv(gram + self.alpha * eye, hermitian=True) @ moment


class Lasso(LinearModel):
    """Weighted lasso (scikit-learn's ``Lasso``, whose sample weights are rescaled to sum to
    the number of samples), by coordinate descent over all examples and targets at once.

    Args:
        alpha: the L1 penalty.
        max_iter: sweeps over the coefficients at most.
        tol: stop when no coefficient moved by more than ``tol`` times the largest one.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        fit_intercept: bool = True,
        max_iter: int = 1000,
        tol: float = 1e-8,
    ) -> None:
        super().__init__(fit_intercept=fit_intercept)
        if alpha < 0:
            raise InputError(f"Lasso alpha must be >= 0, got {alpha}")
        self.alpha, self.max_iter, self.tol = alpha, max_iter, tol

    def _solve(self, gram: Tensor, moment: Tensor, weight_sum: Tensor) -> Tensor:
        scale = weight_sum.reshape(-1, 1, 1)
        gram, moment = gram / scale, moment / scale
        if gram.shape[0] != moment.shape[0]:
            gram = gram.expand(moment.shape[0], -1, -1)
        p = gram.shape[-1]
        coef = moment.new_zeros(moment.shape)  # [B, P, K]
        residual = moment.clone()  # moment - gram @ coef
        diagonal = gram.diagonal(dim1=-2, dim2=-1)  # [B, P]
        safe = torch.where(diagonal > 0, diagonal, torch.ones_like(diagonal))
        for sweep in range(self.max_iter):
            largest_step = moment.new_zeros(())
            for j in range(p):
                old = coef[:, j]
                rho = residual[:, j] + diagonal[:, j, None] * old
                new = torch.sign(rho) * (rho.abs() - self.alpha).clamp(min=0) / safe[:, j, None]
                new = torch.where(diagonal[:, j, None] > 0, new, torch.zeros_like(new))
                step = new - old
                coef[:, j] = new
                residual -= gram[:, :, j, None] * step.unsqueeze(1)
                largest_step = torch.maximum(largest_step, step.abs().max())
            if sweep % 5 == 4 and largest_step <= self.tol * max(float(coef.abs().max()), 1e-12):
                break
        return coef


def resolve_model(model: object) -> LinearModel:
    """``interpretable_model=`` as a :class:`LinearModel`: an instance, or one of the names
    ``"linear"`` (least squares), ``"ridge"``, ``"lasso"`` with scikit-learn's defaults."""
    if isinstance(model, LinearModel):
        return model
    names = {"linear": LinearRegression, "ridge": Ridge, "lasso": Lasso}
    if isinstance(model, str) and model in names:
        return names[model]()
    raise InputError(
        f"interpretable_model must be a tdlens linear model (LinearRegression(), Ridge(alpha), "
        f"Lasso(alpha) from tdlens.attribution.perturbation) or one of {sorted(names)}, got "
        f"{model!r}; these fit every example and target at once in torch"
    )
