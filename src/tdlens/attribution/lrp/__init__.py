"""Layer-wise relevance propagation: rules, composites, canonizers (``tdlens.lrp``).

Example:
    >>> from tdlens import lrp
    >>> comp = lrp.Composite({nn.Linear: lrp.Epsilon(1e-6), nn.Conv2d: lrp.Gamma(0.25)})
    >>> attr = tdlens.LRP(model, composite=comp).attribute(x, target=3)
    >>> print(lrp.conservation(model, x, target=3, composite=comp))
"""

from __future__ import annotations

from .attribution import LRP
from .canonizers import Canonizer, MergeBatchNorm
from .composites import (
    Composite,
    EpsilonAlpha2Beta1,
    EpsilonComposite,
    EpsilonGammaBox,
    EpsilonPlus,
    Transformer,
    captum_defaults,
    get_composite,
    register,
)
from .conservation import ConservationReport, conservation
from .ops import LinearOp, stabilise
from .rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    LayerNorm,
    Pass,
    PositiveWeights,
    Product,
    Rule,
    WSquare,
    ZBox,
    ZPlus,
)

RMSNorm = LayerNorm  # the same rule: the normalisation's scale held constant

__all__ = [
    "LRP",
    "AlphaBeta",
    "Canonizer",
    "Composite",
    "ConservationReport",
    "Epsilon",
    "EpsilonAlpha2Beta1",
    "EpsilonComposite",
    "EpsilonGammaBox",
    "EpsilonPlus",
    "Flat",
    "Gamma",
    "Gradient",
    "LayerNorm",
    "LinearOp",
    "MergeBatchNorm",
    "Pass",
    "PositiveWeights",
    "Product",
    "RMSNorm",
    "Rule",
    "Transformer",
    "WSquare",
    "ZBox",
    "ZPlus",
    "captum_defaults",
    "conservation",
    "get_composite",
    "register",
    "stabilise",
]
