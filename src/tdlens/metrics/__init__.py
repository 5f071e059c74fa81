"""How well an attribution explains the model: faithfulness and robustness metrics.

Every metric takes the model, the inputs (tensor, tuple, dict or TensorDict), the attributions
and ``target`` / ``targets``, and returns per-example values (``[B]``, ``[B, K]`` with
``targets``), or a :class:`CurveResult` where there is a curve. ``import tdlens.metrics`` loads torch
and tdlens's core, nothing heavier.

Example:
    >>> attr = tdlens.Saliency(model).attribute(x, target=3)
    >>> tdlens.metrics.deletion(model, x, attr, target=3).score        # [B], lower is better
    >>> tdlens.metrics.infidelity(model, perturb, x, attr, target=3)   # [B], lower is better
"""

from __future__ import annotations

# Imported eagerly (they need torch and tdlens.core only): several functions share their
# module's name (``infidelity``, ``road``, ``compare``), and a lazily imported submodule would
# shadow the function of the same name on this package.
from ._common import CurveResult
from .compare import Comparison, compare
from .curves import deletion, insertion
from .eraser import comprehensiveness, sufficiency
from .features import blur
from .fidelity import mu_fidelity
from .infidelity import infidelity, infidelity_perturb_func_decorator
from .perturbations import gaussian_noise, uniform_noise
from .road import linear_impute, road
from .sensitivity import sensitivity_max

__all__ = [
    "Comparison",
    "CurveResult",
    "blur",
    "compare",
    "comprehensiveness",
    "deletion",
    "gaussian_noise",
    "infidelity",
    "infidelity_perturb_func_decorator",
    "insertion",
    "linear_impute",
    "mu_fidelity",
    "road",
    "sensitivity_max",
    "sufficiency",
    "uniform_noise",
]
