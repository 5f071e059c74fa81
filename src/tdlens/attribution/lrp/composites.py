"""Composites: which rule for which module, and for each kind of call outside them.

A composite maps module types, module paths (globs allowed, as ``named_modules()`` prints
them) or predicates ``(path, module) -> bool`` to rules. A call gets the rule of the innermost
module that has one handling its kind of operation, else the composite's default for that kind
(``defaults``: ``"linear"``, ``"affine"``, ``"activation"``, ``"product"``, ``"softmax"``,
``"norm"``). A module's ``rule`` attribute (captum's way) wins over the composite.

Composites are registered by name (:func:`register`, :func:`get_composite`):
``"epsilon"`` (captum's defaults), ``"epsilon_plus"``, ``"epsilon_gamma_box"``,
``"epsilon_alpha2_beta1"``, ``"transformer"``.

Example:
    >>> comp = lrp.Composite({nn.Linear: lrp.Epsilon(1e-6), "features.0": lrp.ZBox(-1, 1),
    ...                       nn.Conv2d: lrp.Gamma(0.25)})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ...core.errors import InputError, InputTypeError, KeyNotFoundError, format_keys
from ...core.paths import resolve_paths
from .rules import (
    KINDS,
    AlphaBeta,
    Epsilon,
    Gamma,
    Gradient,
    LayerNorm,
    Pass,
    PositiveWeights,
    Product,
    Rule,
    ZBox,
    ZPlus,
)

Key = type | tuple | str | Callable[[str, nn.Module], bool]
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
WEIGHTED = (nn.Linear, *CONVOLUTIONS)
_NEUTRAL = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity, nn.Flatten)


def captum_defaults() -> dict[str, Rule]:
    """captum 0.9's LRP: epsilon 1e-9 on layers and pooling, identity on activations."""
    return {
        "linear": Epsilon(1e-9),
        "affine": Epsilon(1e-9),
        "activation": Pass(),
        "product": Product(),
        "softmax": Gradient(),
        "norm": LayerNorm(),
    }


class Composite:
    """Rules for the modules of a model, by type, path or predicate.

    Args:
        rules: ``{key: rule}``; a key is a module type (matches subclasses), a module path or
            glob (``"features.0"``, ``"blocks.*.mlp"``; a path that names no module is an
            error), or a predicate ``(path, module) -> bool``. Paths win over types and
            predicates; otherwise the first key that matches.
        defaults: rules per kind of call for calls outside every matched module (functional
            calls), updating captum's defaults (:func:`captum_defaults`).
        strict: raise if a module without children (a layer) gets no rule from ``rules``
            (besides dropout, identity and flatten, which need none).
    """

    def __init__(
        self,
        rules: Mapping[Key, Rule] | None = None,
        *,
        defaults: Mapping[str, Rule] | None = None,
        strict: bool = False,
    ) -> None:
        self.rules = dict(rules or {})
        for key, rule in self.rules.items():
            if not isinstance(rule, Rule):
                raise InputTypeError(
                    f"Composite rule for {key!r} is {type(rule).__name__}, not a tdlens.lrp rule "
                    "(e.g. lrp.Epsilon(1e-6))"
                )
            if not isinstance(key, (type, str, tuple)) and not callable(key):
                raise InputTypeError(
                    f"Composite keys are module types, paths or predicates, got {key!r}"
                )
        unknown = set(defaults or {}) - KINDS
        if unknown:
            raise InputError(
                f"Composite defaults are per kind of call, {format_keys(sorted(KINDS))}; got "
                f"{format_keys(sorted(unknown))}"
            )
        self.defaults = {**captum_defaults(), **dict(defaults or {})}
        self.strict = strict

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rules!r}, strict={self.strict})"

    def default(self, kind: str) -> Rule:
        return self.defaults[kind]

    def first_layer(self, model: nn.Module) -> str | None:
        """The path of the first linear or convolution module (the input layer)."""
        return next((p for p, m in model.named_modules() if isinstance(m, WEIGHTED)), None)

    def extra_rules(self, model: nn.Module) -> dict[Key, Rule]:
        """Rules that depend on the model (a subclass's hook: the input layer's rule)."""
        return {}

    def resolve(self, model: nn.Module) -> dict[int, tuple[str, Rule]]:
        """``{id(module): (path, rule)}`` for the modules with a rule of their own."""
        rules = {**self.extra_rules(model), **self.rules}
        by_path: dict[str, Rule] = {}
        for key, path_rule in rules.items():
            if isinstance(key, str):
                try:
                    paths = resolve_paths(model, key)
                except KeyNotFoundError as error:
                    raise KeyNotFoundError(f"Composite rule for path {key!r}: {error}") from None
                for path in paths:
                    by_path.setdefault(path.module, path_rule)
        others = [(k, r) for k, r in rules.items() if not isinstance(k, str)]
        assigned: dict[int, tuple[str, Rule]] = {}
        for path, module in model.named_modules():
            own = _own_rule(module)
            rule = own if own is not None else by_path.get(path) or _match(others, path, module)
            if rule is not None:
                assigned[id(module)] = (path, rule)
            elif self.strict and not any(True for _ in module.children()):
                if not isinstance(module, _NEUTRAL) and path:
                    raise InputError(
                        f"strict composite: module {path!r} ({type(module).__name__}) has no "
                        f"rule; add one, e.g. {{{type(module).__name__}: {suggest(module)}}} or "
                        f"{{{path!r}: {suggest(module)}}}"
                    )
        return assigned


def _match(rules: list[tuple[Any, Rule]], path: str, module: nn.Module) -> Rule | None:
    for key, rule in rules:
        if isinstance(key, (type, tuple)):
            if isinstance(module, key):
                return rule
        elif key(path, module):
            return rule
    return None


def suggest(module: nn.Module) -> str:
    """A rule to suggest for a module in an error message."""
    name = type(module).__name__
    if isinstance(module, WEIGHTED) or name == "Conv1D":
        return "lrp.Epsilon(1e-6)"
    if "Norm" in name:
        return "lrp.Pass()" if "RMS" in name or "Batch" not in name else "lrp.Epsilon(1e-6)"
    if "Pool" in name:
        return "lrp.Epsilon(1e-6)"
    return "lrp.Pass()"


def _own_rule(module: nn.Module) -> Rule | None:
    """A ``rule`` attribute set the captum way: a tdlens rule or a captum rule, translated."""
    rule = module.__dict__.get("rule")
    if rule is None or isinstance(rule, Rule):
        return rule
    names = [cls.__name__ for cls in type(rule).__mro__]
    zero_bias = bool(getattr(rule, "set_bias_to_zero", False))
    if "IdentityRule" in names:
        return Pass()
    if "EpsilonRule" in names:
        return Epsilon(float(rule.STABILITY_FACTOR))
    if "GammaRule" in names:
        bias = "zero" if zero_bias else "keep"
        return Gamma(float(rule.gamma), epsilon=float(rule.STABILITY_FACTOR), bias=bias)
    if "Alpha1_Beta0_Rule" in names:
        return PositiveWeights(
            epsilon=float(rule.STABILITY_FACTOR), bias="zero" * zero_bias or "keep"
        )
    raise InputTypeError(
        f"module {type(module).__name__} has a rule attribute of type {type(rule).__name__}, "
        "which tdlens cannot translate; set a tdlens.lrp rule (e.g. lrp.Epsilon(1e-6)) instead"
    )


# -- named composites -------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[..., Composite]] = {}


def register(name: str) -> Callable[[Callable[..., Composite]], Callable[..., Composite]]:
    """Register a composite factory under ``name`` (used as ``composite="name"``)."""

    def decorate(factory: Callable[..., Composite]) -> Callable[..., Composite]:
        _REGISTRY[name] = factory
        return factory

    return decorate


def get_composite(composite: Composite | str | None, **options: Any) -> Composite:
    """A composite from itself, a registered name, or ``None`` (captum's defaults)."""
    if composite is None:
        return Composite()
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, str) and composite in _REGISTRY:
        return _REGISTRY[composite](**options)
    raise InputError(
        f"unknown composite {composite!r}; registered: {format_keys(sorted(_REGISTRY))}, or "
        "pass a tdlens.lrp.Composite"
    )


@register("epsilon")
def EpsilonComposite(epsilon: float = 1e-9) -> Composite:
    """The epsilon rule everywhere (captum's defaults with another ``epsilon``)."""
    return Composite(defaults={"linear": Epsilon(epsilon), "affine": Epsilon(epsilon)})


@register("epsilon_plus")
def EpsilonPlus(epsilon: float = 1e-6) -> Composite:
    """z+ on convolutions, epsilon on dense layers."""
    return Composite(
        {CONVOLUTIONS: ZPlus(), nn.Linear: Epsilon(epsilon)},
        defaults={"linear": Epsilon(epsilon)},
    )


@register("epsilon_alpha2_beta1")
def EpsilonAlpha2Beta1(epsilon: float = 1e-6) -> Composite:
    """alpha 2 beta 1 on convolutions, epsilon on dense layers."""
    return Composite(
        {CONVOLUTIONS: AlphaBeta(2, 1), nn.Linear: Epsilon(epsilon)},
        defaults={"linear": Epsilon(epsilon)},
    )


class EpsilonGammaBox(Composite):
    """ZBox on the input layer, gamma on convolutions, epsilon on dense layers (Montavon et
    al. 2019's recommendation for image classifiers).

    Args:
        low, high: the bounds of the input (e.g. of normalised pixels).
        gamma, epsilon: of the gamma and epsilon rules.
    """

    def __init__(
        self, low: Any = -3.0, high: Any = 3.0, *, gamma: float = 0.25, epsilon: float = 1e-6
    ) -> None:
        super().__init__(
            {CONVOLUTIONS: Gamma(gamma), nn.Linear: Epsilon(epsilon)},
            defaults={"linear": Epsilon(epsilon)},
        )
        self.low, self.high = low, high

    def extra_rules(self, model: nn.Module) -> dict[Key, Rule]:
        first = self.first_layer(model)
        return {} if first is None else {first: ZBox(self.low, self.high)}


register("epsilon_gamma_box")(EpsilonGammaBox)


def _activation_module(path: str, module: nn.Module) -> bool:
    """Hugging Face activation modules (``NewGELUActivation``...) and RMS norms written as
    modules: element-wise, so relevance passes them whole."""
    kind = type(module)
    return kind.__module__.startswith("transformers.activations") or (
        kind.__name__.endswith("RMSNorm") and not any(True for _ in module.children())
    )


@register("transformer")
def Transformer(epsilon: float = 1e-6, attention: str = "attnlrp") -> Composite:
    """AttnLRP (Achtibat et al. 2024): epsilon on linear layers, identity on activations,
    half-split products (``q k^T``, attention times values, gating), the gradient through
    softmax, layer norms with the scale held constant. ``attention="ah"`` holds the attention
    pattern constant instead (all relevance to the values; Ali et al. 2022).
    """
    if attention not in ("attnlrp", "ah"):
        raise InputError(f"Transformer(attention=...) is 'attnlrp' or 'ah', got {attention!r}")
    return Composite(
        {_activation_module: Pass()},
        defaults={
            "linear": Epsilon(epsilon),
            "affine": Epsilon(epsilon),
            "product": Product(hold_attention=attention == "ah"),
        },
    )
