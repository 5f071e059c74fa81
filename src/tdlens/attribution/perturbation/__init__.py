"""Perturbation attribution: forward passes only, so it works on any model, with gradients or
without.

Every method is a sampler of perturbations, one batched forward that reads all targets, and an
estimator (see :mod:`.base` and ``docs/perturbation.md`` for adding a method).
"""

from .ablation import FeatureAblation, FeaturePermutation, Occlusion
from .base import PerturbationAttribution, PerturbationRun, Perturbations, masked
from .features import FeatureLayout
from .linear import Lasso, LinearModel, LinearRegression, Ridge
from .shapley import ShapleyValues, ShapleyValueSampling
from .sobol import Sobol
from .surrogate import KernelShap, Lime, get_exp_kernel_similarity_function

__all__ = [
    "FeatureAblation",
    "FeatureLayout",
    "FeaturePermutation",
    "KernelShap",
    "Lasso",
    "Lime",
    "LinearModel",
    "LinearRegression",
    "Occlusion",
    "PerturbationAttribution",
    "PerturbationRun",
    "Perturbations",
    "Ridge",
    "ShapleyValueSampling",
    "ShapleyValues",
    "Sobol",
    "get_exp_kernel_similarity_function",
    "masked",
]
