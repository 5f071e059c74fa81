"""Latent interventions: cache, patch, steer and ablate internal activations of any model.

Example:
    >>> from tdlens import latent
    >>> acts = latent.cache(model, ids, paths="blocks.*")
    >>> res = latent.patch(model, clean, corrupted, paths="blocks.*.attn",
    ...                    metric=latent.logit_diff(correct, wrong))
"""

from .ablation import ablate
from .atp import attribution_patching
from .cache import cache
from .cells import PatchResult
from .metrics import kl, logit_diff, prob
from .patching import patch
from .steering import steer, steering_vector

__all__ = [
    "PatchResult",
    "ablate",
    "attribution_patching",
    "cache",
    "kl",
    "logit_diff",
    "patch",
    "prob",
    "steer",
    "steering_vector",
]
