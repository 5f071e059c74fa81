"""Quadrature rules on [0, 1] for path methods: the points ``alphas`` and their ``weights``.

Same names as captum. ``gausslegendre`` (the default) is exact for polynomials of degree
``2 n - 1``. One deliberate difference: captum's ``riemann_trapezoid`` places ``n`` points at
spacing ``1 / (n - 1)`` but weighs them ``1 / n``, so its weights sum to ``(n - 1) / n``
instead of 1 and the completeness gap never closes. tdlens uses the trapezoid rule itself
(spacing and weights ``1 / (n - 1)``, halved at both ends): its result is captum's times
``n / (n - 1)``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from ..core.errors import InputError

METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def check_steps(n_steps: object) -> None:
    """Raise unless ``n_steps`` is a positive int (the number of integration points)."""
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise InputError(f"n_steps must be a positive int, got {n_steps!r}")


def quadrature(method: str, n_steps: int) -> tuple[Tensor, Tensor]:
    """``(alphas, weights)``, float64 tensors of length ``n_steps`` with ``weights.sum() == 1``.

    Example:
        >>> quadrature("riemann_middle", 4)[0]
        tensor([0.1250, 0.3750, 0.6250, 0.8750], dtype=torch.float64)
    """
    if method not in METHODS:
        raise InputError(f"method={method!r} is not an integration rule; use one of {METHODS}")
    check_steps(n_steps)
    n = n_steps
    f64 = torch.float64
    if method == "gausslegendre":
        alphas, weights = _gauss_legendre(n)
        return alphas.clone(), weights.clone()
    if method == "riemann_trapezoid":
        if n < 2:
            raise InputError("method='riemann_trapezoid' needs n_steps >= 2")
        weights = torch.full((n,), 1.0 / (n - 1), dtype=f64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, n, dtype=f64), weights
    start = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    alphas = (torch.arange(n, dtype=f64) + start) / n
    return alphas, torch.full((n,), 1.0 / n, dtype=f64)


@lru_cache(maxsize=32)
def _gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    """Golub-Welsch: nodes are the eigenvalues of the Jacobi matrix of Legendre polynomials,
    weights twice the squared first components of its eigenvectors; mapped from [-1, 1]."""
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4 * k * k - 1)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    weights = 2 * vectors[0] ** 2
    return (nodes + 1) / 2, weights / 2
