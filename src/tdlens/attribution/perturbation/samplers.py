"""Space-filling designs in ``[0, 1]^d`` for the Sobol attribution's continuous masks.

``sobol`` (scrambled Sobol' sequence, ``torch.quasirandom.SobolEngine``), ``halton`` (Halton
sequence with a random shift modulo 1, Cranley-Patterson) and ``lhs`` (Latin hypercube: one
point per stratum of every axis). Randomness comes from the run's generator, so a ``seed=``
makes the design reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...core.errors import InputError

_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71)


def sobol_design(n: int, d: int, generator: torch.Generator | None) -> Tensor:
    """``[n, d]`` float64 points of a scrambled Sobol' sequence (seeded from ``generator``)."""
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    engine = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed)
    return engine.draw(n, dtype=torch.float64)


def halton_design(n: int, d: int, generator: torch.Generator | None) -> Tensor:
    """``[n, d]`` float64 points of the Halton sequence, randomly shifted modulo 1."""
    primes = list(_PRIMES)
    candidate = primes[-1] + 2
    while len(primes) < d:  # more dimensions than the table: extend it
        if all(candidate % p for p in primes):
            primes.append(candidate)
        candidate += 2
    index = torch.arange(1, n + 1, dtype=torch.float64)
    columns = []
    for base in primes[:d]:
        value, fraction, rest = torch.zeros(n, dtype=torch.float64), 1.0 / base, index.clone()
        while bool((rest > 0).any()):
            value += fraction * (rest % base)
            rest = torch.div(rest, base, rounding_mode="floor")
            fraction /= base
        columns.append(value)
    shift = torch.rand(d, generator=generator, dtype=torch.float64)
    return (torch.stack(columns, dim=1) + shift) % 1.0


def lhs_design(n: int, d: int, generator: torch.Generator | None) -> Tensor:
    """``[n, d]`` float64 Latin hypercube: each axis has one point in each of its n strata."""
    strata = torch.rand(d, n, generator=generator).argsort(dim=1).T.to(torch.float64)
    jitter = torch.rand(n, d, generator=generator, dtype=torch.float64)
    return (strata + jitter) / n


DESIGNS = {"sobol": sobol_design, "halton": halton_design, "lhs": lhs_design}


def design(name: str, n: int, d: int, generator: torch.Generator | None) -> Tensor:
    """``[n, d]`` points of the named design in ``[0, 1)^d``."""
    if name not in DESIGNS:
        raise InputError(f"sampler={name!r} is not a design; use one of {sorted(DESIGNS)}")
    return DESIGNS[name](n, d, generator)
