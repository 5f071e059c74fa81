"""Logistic probe heads, fitted together: the heads of all paths with the same feature width
form one batched model (``[P, D, C]`` weights, one ``baddbmm`` per step), so twelve layers cost
about what one does. The paths share no parameter, so the joint optimum of the summed
objectives is each path's own optimum.

Objective per path: ``mean_i CE(z_i W + b, y_i) + l2/2 ||W||^2`` (softmax over C classes, also
for C = 2); with ``rank=r``, ``W = U V`` and the penalty ``l2/2 (||U||^2 + ||V||^2)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ._features import Features

Standard = dict[str, tuple[Tensor, Tensor]]


class HeadGroup(nn.Module):
    """The heads of P paths with feature width D: ``z [P, n, D] -> [P, n, C]``."""

    def __init__(
        self, names: list[str], dim: int, outputs: int, rank: int | None, dtype: torch.dtype,
        seed: int, device: torch.device,
    ) -> None:  # fmt: skip
        super().__init__()
        self.names = names
        paths = len(names)
        self.bias = nn.Parameter(torch.zeros(paths, 1, outputs, dtype=dtype, device=device))
        self.factors = nn.ParameterList()
        if rank is None:
            self.factors.append(torch.zeros(paths, dim, outputs, dtype=dtype, device=device))
        else:  # a zero factor pair has zero gradient: start from small random factors
            generator = torch.Generator().manual_seed(seed)
            u = torch.randn(paths, dim, rank, generator=generator, dtype=torch.float64)
            v = torch.randn(paths, rank, outputs, generator=generator, dtype=torch.float64)
            self.factors.append((u / math.sqrt(dim)).to(device, dtype))
            self.factors.append((v * 0.01).to(device, dtype))

    def matrices(self) -> Tensor:
        """``[P, D, C]``."""
        if len(self.factors) == 1:
            return self.factors[0]
        return self.factors[0] @ self.factors[1]

    def forward(self, z: Tensor) -> Tensor:
        if len(self.factors) == 1:
            return torch.baddbmm(self.bias, z, self.factors[0])
        return torch.baddbmm(self.bias, z @ self.factors[0], self.factors[1])

    def objective(self, z: Tensor, target: Tensor, l2: float) -> Tensor:
        """The sum over paths of each path's objective (``z [P, n, D]``, ``target [n]``)."""
        logits = self(z)
        paths, _, classes = logits.shape
        target = target.to(logits.device).repeat(paths)
        fit = nn.functional.cross_entropy(logits.reshape(-1, classes), target)
        penalty = sum((f * f).sum() for f in self.factors)
        return fit * paths + 0.5 * l2 * penalty  # type: ignore[return-value]

    def weights(self) -> dict[str, tuple[Tensor, Tensor]]:
        matrices, bias = self.matrices().detach(), self.bias.detach()
        return {name: (matrices[i], bias[i, 0]) for i, name in enumerate(self.names)}


# Below this many feature entries per step, one thread is faster: the matrices of a probe are
# small, and on a busy machine intra-op threads wait on each other at every tiny kernel
# (measured: 12 paths x 480 rows x 128 features, L-BFGS, 2 threads 1.9 s, 1 thread 0.68 s).
_ONE_THREAD_BELOW = 1 << 24


@contextlib.contextmanager
def threads_for(numel: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if numel >= _ONE_THREAD_BELOW or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def head_groups(
    names: list[str], standard: Standard, outputs: int, rank: int | None, seed: int
) -> list[HeadGroup]:
    by_shape: dict[tuple[int, torch.dtype, torch.device], list[str]] = {}
    for name in names:
        mean = standard[name][0]
        by_shape.setdefault((len(mean), mean.dtype, mean.device), []).append(name)
    return [
        HeadGroup(group, dim, outputs, rank, dtype, seed, device)
        for (dim, dtype, device), group in by_shape.items()
    ]


def _stacked(group: HeadGroup, feats: dict[str, Tensor], keep: Tensor, standard: Standard):
    rows = [
        (feats[n][keep].to(standard[n][0].dtype) - standard[n][0]) / standard[n][1]
        for n in group.names
    ]
    return torch.stack(rows)


def fit_lbfgs(
    groups: list[HeadGroup],
    features: Features,
    y: Tensor,
    train: Tensor,
    standard: Standard,
    l2: float,
    max_iter: int,
) -> None:
    """Full-batch L-BFGS on the in-memory training rows, one run per group."""
    assert features.full is not None
    target = y[train]
    for group in groups:
        z = _stacked(group, features.full, train, standard)
        double = z.dtype == torch.float64
        optimizer = torch.optim.LBFGS(
            list(group.parameters()),
            lr=1,
            max_iter=max_iter,
            history_size=20,
            # float32 losses stop moving near 1e-7 relative: tighter tolerances burn max_iter
            tolerance_grad=1e-9 if double else 1e-5,
            tolerance_change=1e-12 if double else 1e-9,
            line_search_fn="strong_wolfe",
        )

        def closure(group: HeadGroup = group, z: Tensor = z, opt=optimizer) -> Tensor:
            opt.zero_grad(set_to_none=True)
            loss = group.objective(z, target, l2)
            loss.backward()
            return loss

        with torch.enable_grad(), threads_for(z.numel()):
            optimizer.step(closure)


def fit_adam(
    groups: list[HeadGroup],
    features: Features,
    y: Tensor,
    train: Tensor,
    standard: Standard,
    l2: float,
    lr: float,
    epochs: int,
    generator: torch.Generator,
) -> None:
    """Mini-batch Adam, ``epochs`` passes, learning rate decaying to zero along a cosine."""
    params = [p for group in groups for p in group.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    if features.full is not None:
        steps_per_epoch = math.ceil(features.n / features.batch_size)
    elif features.chunks:
        steps_per_epoch = len(features.chunks)
    else:
        steps_per_epoch = math.ceil(features.n / features.batch_size)
    total, step = epochs * max(1, steps_per_epoch), 0
    shuffle = generator if (features.full is not None or features.chunks) else None
    with torch.enable_grad():
        for _ in range(epochs):
            for feats, rows in features.passes(shuffle):
                keep = train[rows]
                if not keep.any():
                    continue
                target = y[rows[keep]]
                loss = sum(
                    g.objective(_stacked(g, feats, keep, standard), target, l2) for g in groups
                )
                for param_group in optimizer.param_groups:
                    param_group["lr"] = (
                        lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[union-attr]
                optimizer.step()
                step += 1
