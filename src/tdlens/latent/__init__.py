"""Latent-space methods: cache, patch, steer and ablate internal activations; probes on them,
the logit lens, representation similarity.

Example:
    >>> from tdlens import latent
    >>> acts = latent.cache(model, ids, paths="blocks.*")
    >>> res = latent.patch(model, clean, corrupted, paths="blocks.*.attn",
    ...                    metric=latent.logit_diff(correct, wrong))
    >>> probes = latent.fit_probes(model, loader, paths="encoder.layer.*", labels="label")
"""

from .ablation import ablate
from .atp import attribution_patching
from .cache import cache
from .cells import PatchResult
from .lens import logit_lens
from .metrics import kl, logit_diff, prob
from .patching import patch
from .probing import Probe, Probes, fit_probes
from .representation import cka, intrinsic_dimension
from .steering import steer, steering_vector

__all__ = [
    "PatchResult",
    "Probe",
    "Probes",
    "ablate",
    "attribution_patching",
    "cache",
    "cka",
    "fit_probes",
    "intrinsic_dimension",
    "kl",
    "logit_diff",
    "logit_lens",
    "patch",
    "prob",
    "steer",
    "steering_vector",
]
