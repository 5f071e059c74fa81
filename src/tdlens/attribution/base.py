"""What every attribution method shares: constructor defaults, input and target handling, and
the layout of results.

A method subclasses :class:`Attribution` and writes ``attribute`` with captum's positional
arguments followed by tdlens's keyword-only ones (``targets``, ``output``, ``layer``,
``keys``). Options given to the constructor become defaults of every call; the call's own
value wins.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..core.adapter import as_key_layer, parse_layers, warn_if_training
from ..core.errors import InputError, InputTypeError, format_keys
from ..core.paths import ModulePath, is_path_like
from ..core.structure import InputBatch
from ..core.targets import Target, normalize_targets
from ..core.tdkeys import check_input_keys

F = TypeVar("F", bound=Callable[..., Any])
_CONSTRUCTOR_ONLY = ("layer", "output")


_FLAG_ANNOTATIONS = ("bool", "bool | None", "Optional[bool]")


def _flags(signature: inspect.Signature) -> tuple[dict[int, str], frozenset[str]]:
    """The parameters annotated ``bool``: by position (``self`` is 0) and by name."""
    names = [
        name
        for name, p in signature.parameters.items()
        if p.annotation in _FLAG_ANNOTATIONS or p.annotation is bool
    ]
    order = list(signature.parameters)
    return {order.index(n): n for n in names}, frozenset(names)


def check_flags(
    owner: str, flags: tuple[dict[int, str], frozenset[str]], args: tuple, kwargs: dict
) -> None:
    """Raise unless every flag given is a bool (or None): ``abs="no"`` or a stray object would
    otherwise be read as true without a word."""
    by_position, by_name = flags
    given = [(by_position[i + 1], a) for i, a in enumerate(args) if i + 1 in by_position]
    given += [(k, v) for k, v in kwargs.items() if k in by_name]
    for name, value in given:
        if value is not None and not isinstance(value, bool):
            raise InputTypeError(f"{owner}: {name}= takes True or False, got {value!r}")


def with_defaults(method: F) -> F:
    """Fill the arguments a call leaves out from the constructor's defaults."""
    signature = inspect.signature(method)
    flags = _flags(signature)

    var_keyword = [p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]

    @functools.wraps(method)
    def wrapper(self: Attribution, *args: Any, **kwargs: Any) -> Any:
        if self.defaults:
            bound = signature.bind_partial(self, *args, **kwargs).arguments
            given = set(bound).union(*(bound.get(name, {}) for name in var_keyword))
            kwargs.update({k: v for k, v in self.defaults.items() if k not in given})
        if flags[1]:
            check_flags(f"{type(self).__name__}.attribute", flags, args, kwargs)
        return method(self, *args, **kwargs)

    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


_OPTIONS: dict[type[Attribution], tuple[str, ...]] = {}


def _options(cls: type[Attribution]) -> tuple[str, ...]:
    """The options ``cls.attribute`` takes (what constructor defaults may set), cached."""
    if cls not in _OPTIONS:
        _OPTIONS[cls] = tuple(
            name
            for name, p in inspect.signature(cls.attribute).parameters.items()
            if name not in ("self", "inputs") and p.kind is not p.VAR_KEYWORD
        )
    return _OPTIONS[cls]


class Attribution:
    """Base of the attribution methods.

    Args:
        model: any ``nn.Module`` (or callable, when no module path is used).
        layer: attribute to this module's output (``"path:input"``: its input) instead of the
            model inputs; a list or a glob gives one result per layer.
        output: which model output to explain (index, key) or a module path to explain an
            internal activation (neuron attribution with ``target`` picking the neuron).
        **defaults: default values of ``attribute()`` options.
    """

    def __init__(
        self,
        model: nn.Module | Callable[..., Any],
        *,
        layer: Any = None,
        output: Any = None,
        **defaults: Any,
    ) -> None:
        if not callable(model):
            raise InputTypeError(f"{type(self).__name__} needs a model, got {type(model).__name__}")
        options = _options(type(self))
        unknown = [k for k in defaults if k not in options]
        if unknown:
            raise InputError(
                f"{type(self).__name__}() got unknown option(s) {format_keys(unknown)}; "
                f"options of attribute() are {format_keys(options)}"
            )
        self.model = model
        self.layer = layer
        self.output = output
        self.defaults = defaults

    attribute: Callable[..., Any]

    # -- captum's surface ----------------------------------------------------------------------
    _MULTIPLIES_BY_INPUTS = False  # what captum's class reports when it has no option

    @property
    def multiplies_by_inputs(self) -> bool:
        """Whether the attributions are multiplied by the inputs (or ``inputs - baselines``):
        global attributions, captum's read-only property of the same name."""
        return bool(getattr(self, "multiply_by_inputs", self._MULTIPLIES_BY_INPUTS))

    @classmethod
    def get_name(cls) -> str:
        """The class name in words (``"KernelShap"`` -> ``"Kernel Shap"``), as captum's
        ``get_name`` gives it; progress bars use it."""
        name = cls.__name__
        return "".join(" " + c if c.isupper() and i else c for i, c in enumerate(name))

    def has_convergence_delta(self) -> bool:
        """Whether ``attribute`` can return a convergence delta
        (``return_convergence_delta=True``)."""
        return "return_convergence_delta" in _options(type(self))

    def compute_convergence_delta(
        self,
        attributions: Any,
        start_point: Any,
        end_point: Any,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """``sum(attributions) - (f(end_point) - f(start_point))`` per example, ``[B]``: how far
        the attributions are from completeness (captum's method of the same name).

        ``start_point`` is usually the baselines (a number, or tensors shaped like the inputs
        or ``[1, ...]``), ``end_point`` the inputs; ``attributions`` are laid out like the
        inputs. Only for methods with a convergence delta.

        Example:
            >>> attr = ig.attribute(x, target=0)
            >>> ig.compute_convergence_delta(attr, 0.0, x, target=0)    # [B]
        """
        from .delta import convergence_delta

        if not self.has_convergence_delta():
            raise InputError(f"{type(self).__name__} has no convergence delta")
        return convergence_delta(
            self, attributions, start_point, end_point, target, additional_forward_args
        )

    def attribute_future(self, *args: Any, **kwargs: Any) -> Any:
        """captum's ``attribute_future``: gradients cannot flow through a
        ``torch.futures.Future``, so only perturbation methods implement it."""
        raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Constructors check their bool flags (``multiply_by_inputs``...) like calls do."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_checks_flags", False):
            return
        flags = _flags(inspect.signature(init))
        if not flags[1]:
            return

        @functools.wraps(init)
        def checked(self: Attribution, *args: Any, **options: Any) -> None:
            check_flags(type(self).__name__, flags, args, options)
            init(self, *args, **options)

        checked._checks_flags = True  # type: ignore[attr-defined]
        cls.__init__ = checked  # type: ignore[method-assign]

    # -- shared steps --------------------------------------------------------------------------
    def _module(self) -> nn.Module:
        if not isinstance(self.model, nn.Module):
            raise InputTypeError(
                f"module paths need an nn.Module model, got {type(self.model).__name__}"
            )
        return self.model

    def _prepare(
        self,
        inputs: Any,
        target: Any,
        targets: Any,
        output: Any,
        layer: Any,
        keys: Any,
        additional_forward_args: Any,
        require_float: bool = True,
    ) -> tuple[InputBatch, list[Target], bool, list[ModulePath]]:
        """Check everything that can be checked before any forward pass."""
        layer = layer if layer is not None else self.layer
        batch = InputBatch.build(
            inputs,
            keys=keys,
            additional_forward_args=additional_forward_args,
            # with layer=, named inputs are only replaced by baselines, never differentiated
            require_float=require_float and layer is None,
            need_attributed=layer is None,
        )
        batch.check_finite()
        batch.check_dtypes(self.model)
        check_input_keys(self.model, batch.kind, batch.leaves)
        warn_if_training(self.model)
        output = output if output is not None else self.output
        if batch.outer_shape is not None and isinstance(target, Tensor):
            if tuple(target.shape[: len(batch.outer_shape)]) == tuple(batch.outer_shape):
                target = target.reshape(batch.batch_size, *target.shape[len(batch.outer_shape) :])
        target_list, multi = normalize_targets(target, targets, output, batch.batch_size)
        layers = parse_layers(self._module(), layer) if layer is not None else []
        return batch, target_list, multi, layers

    def _baselines(self, batch: InputBatch, baselines: Any) -> dict[Any, Tensor]:
        """Baselines per attributed input, expanded to its shape (default zeros)."""
        result = {}
        for key, base in batch.per_key(baselines, "baselines").items():
            x = batch.leaves[key]
            if base is None:
                result[key] = torch.zeros_like(x)
                continue
            if not isinstance(base, Tensor):
                if not isinstance(base, (int, float)) or not math.isfinite(base):
                    raise InputError(
                        f"baselines for input {key!r} must be a finite number or a tensor, got "
                        f"{base!r}"
                    )
                result[key] = torch.full_like(x, float(base))
                continue
            # captum's forms only: a looser broadcast would take [8, 8] or [1, 8, 8] for
            # [B, 1, 8, 8] inputs, which are more often a mistake than a meant layout
            if base.dim() != 0 and tuple(base.shape) not in (tuple(x.shape), (1, *x.shape[1:])):
                raise InputError(
                    f"baselines for input {key!r} have shape {list(base.shape)}, which is not a "
                    f"form baselines take for the input's shape {list(x.shape)}: give a number, "
                    f"a tensor of the input's shape, or one of shape {[1, *x.shape[1:]]} "
                    "(shared by all examples)"
                )
            check_finite_baselines(key, base)
            result[key] = base.to(dtype=x.dtype, device=x.device).expand_as(x)
        return result

    def _layout(
        self,
        batch: InputBatch,
        per_site: dict[Any, Tensor],
        multi: bool,
        layers: list[ModulePath],
        layer_arg: Any,
        k_dim: bool = True,
    ) -> Any:
        """``[B, K, ...]`` results per site in the user's structure; K dropped for one target
        (``k_dim=False``: the results come without it, ``[B, ...]``)."""
        if not multi and k_dim:
            per_site = {site: value[:, 0] for site, value in per_site.items()}
        if not layers:
            return batch.pack(per_site, extra_dims=int(multi))
        if (
            len(layers) == 1
            and (is_path_like(layer_arg) or as_key_layer(self._module(), layer_arg) is not None)
            and not (isinstance(layer_arg, str) and "*" in layer_arg)
        ):
            return batch.unflatten(per_site[layers[0]])
        return {str(path): batch.unflatten(per_site[path]) for path in layers}

    def _delta(
        self,
        batch: InputBatch,
        per_site: dict[Any, Tensor],
        gap: Tensor,
        multi: bool,
        layers: list[ModulePath],
        layer_arg: Any,
    ) -> Any:
        """The completeness gap ``sum(attributions) - gap`` (``gap``: ``[B, K]``, what the
        attributions should add up to), ``[B, K]`` (K dropped for one target): summed over
        the inputs; with several layers one per layer, laid out like the attributions, since
        each layer's attributions alone should add up to the gap."""
        b = batch.batch_size
        sums = {site: v.reshape(b, v.shape[1], -1).sum(-1) for site, v in per_site.items()}
        if layers:
            per_layer = {site: total - gap.to(total) for site, total in sums.items()}
            return self._layout(batch, per_layer, multi, layers, layer_arg)
        delta = sum(sums.values()) - gap.to(next(iter(sums.values())))
        return batch.unflatten(delta if multi else delta[:, 0])


def check_finite_baselines(key: Any, base: Tensor) -> None:
    """Raise if baselines hold NaN or inf (inputs are checked the same way)."""
    if base.is_floating_point() and not bool(torch.isfinite(base).all()):
        raise InputError(
            f"baselines for input {key!r} contain NaN or inf; attributions from them would be "
            "NaN. Give finite baselines"
        )


def random_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    """The generator a sampling method draws from: ``generator``, a new one seeded with
    ``seed``, or ``None`` (torch's global generator)."""
    if generator is not None and seed is not None:
        raise InputError("pass either generator= or seed=, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputTypeError(f"generator= takes a torch.Generator, got {type(generator).__name__}")
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return generator


def layer_inputs(layers: list[ModulePath]) -> list[ModulePath]:
    """captum's ``attribute_to_layer_input=True``: each layer's input instead of its output."""
    return [ModulePath(p.module, "input", p.selector) if p.site == "output" else p for p in layers]


def layer_argument(self: Attribution, layer: Any) -> Any:
    return layer if layer is not None else self.layer
