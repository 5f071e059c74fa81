"""Latent-space methods: probes on activations, the logit lens, representation similarity.

Example:
    >>> from tdlens import latent
    >>> probes = latent.fit_probes(model, loader, paths="encoder.layer.*", labels="label")
    >>> probes.table()
"""

from .lens import logit_lens
from .probing import Probe, Probes, fit_probes
from .representation import cka, intrinsic_dimension

__all__ = ["Probe", "Probes", "cka", "fit_probes", "intrinsic_dimension", "logit_lens"]
