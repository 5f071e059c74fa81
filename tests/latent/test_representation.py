"""CKA (linear and debiased) and the TwoNN intrinsic dimension."""

from __future__ import annotations

import pytest
import torch

from tdlens import latent


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_cka(x, y, debiased=False):
    """CKA from the [N, N] Gram matrices, as written in the papers."""
    n = len(x)
    k, l_ = x @ x.T, y @ y.T
    if not debiased:
        h = torch.eye(n, dtype=x.dtype) - 1 / n
        hsic = lambda a, b: torch.trace(a @ h @ b @ h)  # noqa: E731
    else:

        def hsic(a, b):
            a, b = a - torch.diag(a.diagonal()), b - torch.diag(b.diagonal())
            one = torch.ones(n, dtype=x.dtype)
            return (torch.trace(a @ b) + (one @ a @ one) * (one @ b @ one) / ((n - 1) * (n - 2))
                    - 2 / (n - 2) * (one @ a @ b @ one)) / (n * (n - 3))  # fmt: skip

    return float(hsic(k, l_) / torch.sqrt(hsic(k, k) * hsic(l_, l_)))


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_properties(debiased):
    x = randn(200, 12)
    q, _ = torch.linalg.qr(randn(12, 12, seed=1))
    assert latent.cka(x, x, debiased=debiased) == pytest.approx(1, abs=1e-12)
    assert latent.cka(x, x @ q, debiased=debiased) == pytest.approx(1, abs=1e-10)
    assert latent.cka(x, 7.5 * x, debiased=debiased) == pytest.approx(1, abs=1e-12)
    y = randn(200, 5, seed=2)
    value = latent.cka(x, y, debiased=debiased)
    assert value == pytest.approx(reference_cka(x, y, debiased), abs=1e-10)
    assert latent.cka(x @ q * 3, y, debiased=debiased) == pytest.approx(value, abs=1e-10)
    assert latent.cka(x, y, debiased=debiased) == pytest.approx(latent.cka(y, x, debiased=debiased))


def test_debiased_cka_removes_the_bias_of_wide_random_features():
    x, y = randn(50, 500), randn(50, 500, seed=1)
    assert latent.cka(x, y) > 0.5  # linear CKA of unrelated wide features is biased upwards
    assert abs(latent.cka(x, y, debiased=True)) < 0.05


def test_cka_errors():
    with pytest.raises(ValueError, match="x has 10 rows, y has 9"):
        latent.cka(randn(10, 3), randn(9, 3))


@pytest.mark.parametrize("estimator", ["fit", "mle"])
def test_two_nn_on_a_plane_in_50d(estimator):
    plane = randn(2000, 2) @ randn(2, 50, seed=1)
    assert latent.intrinsic_dimension(plane, estimator=estimator) == pytest.approx(2, abs=0.2)
    cube = torch.rand(2000, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert latent.intrinsic_dimension(cube, estimator=estimator) == pytest.approx(5, abs=0.75)


def test_two_nn_chunking_does_not_change_the_result():
    points = randn(300, 2) @ randn(2, 10, seed=1)
    full = latent.intrinsic_dimension(points)
    assert latent.intrinsic_dimension(points, chunk=7) == pytest.approx(full, rel=1e-12)
