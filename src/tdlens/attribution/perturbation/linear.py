"""Batched weighted linear surrogates in torch: least squares, ridge and lasso.

Lime and KernelShap fit one linear model per example and per target. Here all of them are one
batched problem on the model's device: ``X [B, S, P]`` (or ``[S, P]`` shared), ``Y [B, S, K]``,
sample weights ``[B, S]``; the K targets share the Gram matrix of their example. Objectives
follow scikit-learn so that results match its estimators:

* :class:`LinearRegression`: ``sum_s w_s (y_s - x_s @ coef - b)^2``, minimum-norm solution;
* :class:`Ridge`: the same plus ``alpha * |coef|^2``;
* :class:`Lasso`: ``sum_s w_s (y_s - x_s @ coef - b)^2 / (2 sum_s w_s) + alpha * |coef|_1``,
  solved by ADMM on the Gram matrix, then exactly on the support it finds.
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
    the number of samples), solved for all examples and targets at once.

    With ``G = X'WX / sum(w)`` and ``m = X'Wy / sum(w)`` (centred), each fit minimises
    ``c'Gc / 2 - m'c + alpha |c|_1``. The solver is over-relaxed ADMM (relaxation 1.6; Boyd et
    al. 2011, sections 3.4.3 and 6.4) with ``G + rho I`` inverted once per example and
    ``rho = sqrt(l_max * max(l_min, l_max / 1000))`` from ``eigvalsh(G)``, so an iteration is
    one batched matmul and six elementwise ops over every example and target. Every 10
    iterations each unfinished fit is polished: the lasso optimum solves
    ``G_AA c_A = m_A - alpha sign(c_A)`` on its support ``A``, so this system (batched
    Cholesky) on the support and signs of the ADMM iterate gives the exact optimum, up to
    rounding, once the iterate has found them (typically after 10 to 30 iterations, long before
    ADMM itself is that precise). A fit is done when the polished point, or else the ADMM
    iterate (a non-unique optimum, a singular ``G_AA``), meets the optimality conditions.

    Measured against FISTA (step ``1 / l_max``, momentum from ``l_min``) and plain ADMM, each
    with the same polishing, on Lime-like problems (32 examples, 20 to 200 binary samples, 5 to
    64 features): over-relaxed ADMM found the support and reached 1e-12 in the fewest
    iterations (1.2 to 2.7x fewer), and the polish made the result exact instead of ``tol``-close.
    The former solver, cyclic coordinate descent, ran about ten small ops per feature per sweep
    in a Python loop: 5 to 10x slower on 200 samples of 16 or 64 features, 50x on 25 samples
    (Lime's default ``n_samples``) of 16 features.

    Args:
        alpha: the L1 penalty (0: least squares).
        max_iter: ADMM iterations at most; a fit still unfinished then returns the iterate.
        tol: a fit is done when the optimality (KKT) conditions hold to ``tol`` times its
            largest ``|m_j|`` (the smallest alpha that makes every coefficient 0):
            ``|m_j - (Gc)_j - alpha sign(c_j)|`` where ``c_j != 0``, else
            ``|m_j - (Gc)_j| - alpha``, are at most that. At least 64 times the float
            precision (1.4e-14 in float64).
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
        gram, moment = gram / scale, moment / scale  # gram [B or 1, P, P], moment [B, P, K]
        b, p, _ = moment.shape
        eye = torch.eye(p, dtype=gram.dtype, device=gram.device)
        diagonal = gram.diagonal(dim1=-2, dim2=-1)
        dead = diagonal <= 0  # zero-variance features: coefficient 0
        top = diagonal.amax(-1, keepdim=True)
        top = torch.where(top > 0, top, torch.ones_like(top))
        eigen = torch.linalg.eigvalsh(gram + torch.diag_embed(dead * top))  # dead ones: top
        largest = eigen[:, -1:]
        rho = (largest * torch.maximum(eigen[:, :1], largest / 1000)).sqrt().unsqueeze(-1)
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(gram + rho * eye))
        base = _RELAXATION * (inverse @ moment)
        step = (_RELAXATION * rho * inverse).expand(b, -1, -1)
        threshold = torch.where(dead.unsqueeze(-1), torch.inf, self.alpha / rho)
        gram = gram.expand(b, -1, -1)
        tol = max(self.tol, 64 * torch.finfo(moment.dtype).eps)  # float32 on mps: 8e-6
        limit = tol * moment.abs().amax(-2, keepdim=True)  # [B, 1, K]
        z, u = torch.zeros_like(moment), torch.zeros_like(moment)
        coef, done = torch.zeros_like(moment), torch.zeros_like(limit, dtype=torch.bool)
        for iteration in range(1, self.max_iter + 1):
            # x = (G + rho I)^-1 (m + rho (z - u)); v = 1.6 x - 0.6 z + u; z = soft(v); u = v - z
            v = torch.baddbmm(base, step, z - u).add_(u).add_(z, alpha=1 - _RELAXATION)
            z = v - v.clamp(-threshold, threshold)
            u = v - z
            if iteration % _CHECK_EVERY and iteration < self.max_iter:
                continue
            i, k = (~done).squeeze(-2).nonzero().unbind(-1)
            fit_gram, fit_moment = gram[i], moment[i, :, k].unsqueeze(-1)  # [n, P, P], [n, P, 1]
            iterate = z[i, :, k].unsqueeze(-1)
            polished, info = _restricted_optimum(fit_gram, fit_moment, iterate.sign(), self.alpha)
            both = torch.cat([polished, iterate], -1)
            met = _kkt_violation(fit_gram, fit_moment, both, self.alpha) <= limit[i, :, k, None]
            exact = met[..., :1] & (info == 0).reshape(-1, 1, 1)
            coef[i, :, k] = torch.where(exact, polished, iterate).squeeze(-1)
            done[i, 0, k] = (exact | met[..., 1:]).reshape(-1)
            if bool(done.all()):
                break
        return coef


_RELAXATION = 1.6  # ADMM over-relaxation
_CHECK_EVERY = 10  # ADMM iterations between polishes


def _restricted_optimum(
    gram: Tensor, moment: Tensor, sign: Tensor, alpha: float
) -> tuple[Tensor, Tensor]:
    """The lasso's optimum ``[N, P, 1]`` among coefficients with the support and signs of
    ``sign [N, P, 1]``: ``gram_AA c_A = moment_A - alpha sign_A``, 0 elsewhere; and the
    Cholesky status (0: solved)."""
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    support = sign != 0
    factor, info = torch.linalg.cholesky_ex(torch.where(support & support.mT, gram, eye))
    return torch.cholesky_solve((moment - alpha * sign) * support, factor), info


def _kkt_violation(gram: Tensor, moment: Tensor, coef: Tensor, alpha: float) -> Tensor:
    """``[N, 1, K]``: how far ``coef [N, P, K]`` is from the lasso's optimality conditions, the
    largest entry of the smallest subgradient of ``c'Gc / 2 - m'c + alpha |c|_1``."""
    residual = torch.baddbmm(moment, gram, coef, alpha=-1)  # m - G c
    off = torch.where(
        coef != 0, residual - alpha * coef.sign(), (residual.abs() - alpha).clamp(min=0)
    )
    return off.abs().amax(-2, keepdim=True)


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
