"""NoiseTunnel over any attribution method, and SmoothGrad, its common case.

``NoiseTunnel(method).attribute(x, nt_samples=S, stdevs=σ, ...)`` adds Gaussian noise to the
attributed inputs ``S`` times, runs ``method`` once on the ``S * B`` noisy rows (the K targets
of ``targets=[...]`` stay K targets, per-example targets and baselines follow their rows), and
reduces over the samples: the mean (``smoothgrad``), the mean of squares (``smoothgrad_sq``) or
the variance (``vargrad``), as captum does. ``nt_samples_batch_size`` runs the samples in
chunks; results do not depend on it. Randomness comes from ``generator=`` or ``seed=`` (else
torch's global generator), drawn in a fixed order: baseline indices first (with
``draw_baseline_from_distrib``), then for each sample in turn one standard normal tensor per
attributed input, in its dtype (in input order; inputs with stdev 0 draw nothing).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter import ModelAdapter
from ..core.errors import InputError, InputTypeError, KeyNotFoundError, closest, format_keys
from ..core.lazy import is_tensordict
from ..core.structure import InputBatch, Key
from ..core.targets import Target, normalize_targets
from .base import Attribution, random_generator, with_defaults
from .engine import by_example, whole_samples

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")
_PER_EXAMPLE_OPTIONS = ("baselines", "feature_mask")  # follow their rows, as captum's expand


class SampleNoise:
    """Gaussian noise of sample ``s`` for every example, drawn sample by sample from one
    generator, so that the noise of a row does not depend on how rows are chunked.

    Args:
        inputs: the attributed inputs, ``[B, ...]`` each.
        stdevs: the standard deviation per input.
        generator: where the noise comes from (``None``: torch's global generator).
    """

    def __init__(
        self,
        inputs: dict[Key, Tensor],
        stdevs: dict[Key, float],
        generator: torch.Generator | None,
    ) -> None:
        self.inputs = inputs
        self.stdevs = stdevs
        self.generator = generator
        self.batch_size = next(iter(inputs.values())).shape[0]
        self._drawn: dict[int, dict[Key, Tensor]] = {}
        self._next = 0

    def inputs_at(self, samples: Tensor, examples: Tensor) -> dict[Key, Tensor]:
        """The noisy inputs of rows ``(samples[i], examples[i])``, ``[N, ...]`` per input.
        Rows come sample-major and in increasing order across calls (a call may begin inside
        the last sample of the previous one)."""
        low, high = int(samples.min()), int(samples.max())
        for sample in [s for s in self._drawn if s < low]:
            del self._drawn[sample]
        whole = whole_samples(samples, examples, self.batch_size) is not None
        if whole and low == self._next:  # fresh samples of every example: draw into the rows
            self._next = high + 1
            return self._fill(high - low + 1, by_example(samples, examples, self.batch_size))
        for sample in range(self._next, high + 1):
            self._drawn[sample] = {key: self._draw(key, x) for key, x in self._noisy_inputs()}
        self._next = max(self._next, high + 1)
        noisy = {}
        for key, x in self.inputs.items():
            if self.stdevs[key] == 0:
                noisy[key] = x[examples.to(x.device)]
                continue
            drawn = torch.stack([self._drawn[s][key] for s in range(low, high + 1)])
            rows = (samples - low).to(x.device), examples.to(x.device)
            noisy[key] = x[rows[1]] + drawn[rows]
        return noisy

    def _noisy_inputs(self) -> list[tuple[Key, Tensor]]:
        return [(key, x) for key, x in self.inputs.items() if self.stdevs[key] != 0]

    def _draw(self, key: Key, x: Tensor, out: Tensor | None = None) -> Tensor:
        """One sample's noise for input ``key`` (into ``out`` when given), drawn on the
        generator's device: ``normal_(0, std)``, the same numbers as ``randn * std``."""
        device = self.generator.device if self.generator is not None else torch.device("cpu")
        if out is None or out.device != device:
            noise = torch.empty(x.shape, dtype=x.dtype, device=device)
        else:
            noise = out
        noise.normal_(0.0, self.stdevs[key], generator=self.generator)
        if out is not None and noise is not out:
            out.copy_(noise)
            return out
        return noise.to(x.device)

    def _fill(self, count: int, example_major: bool) -> dict[Key, Tensor]:
        """The next ``count`` samples of every example, ``[count * B, ...]`` per input, sample
        by sample or (``example_major``) example by example: noise drawn sample by sample
        (inputs in order) into one buffer, the input added in the same pass."""
        out = {}
        for key, x in self.inputs.items():
            if self.stdevs[key] != 0:
                out[key] = torch.empty((count, *x.shape), dtype=x.dtype, device=x.device)
        for i in range(count):
            for key, x in self._noisy_inputs():
                self._draw(key, x, out=out[key][i])
        result = {}
        for key, x in self.inputs.items():
            noise = out.get(key)
            if example_major:  # [B, count, ...]
                rows = x.unsqueeze(1).expand(-1, count, *x.shape[1:])
                if noise is not None:
                    full = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
                    rows = torch.add(rows, noise.transpose(0, 1), out=full)
            else:  # [count, B, ...]
                rows = x.expand(count, *x.shape) if noise is None else noise.add_(x)
            result[key] = rows.reshape(-1, *x.shape[1:])
        return result


def check_stdevs(batch: InputBatch, stdevs: Any) -> dict[Key, float]:
    """``stdevs`` (a number, or one per attributed input) as ``{key: float}``."""
    per_key = batch.per_key(stdevs, "stdevs")
    for key, value in per_key.items():
        if isinstance(value, Tensor) and value.numel() == 1:
            value = float(value)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise InputError(
                f"stdevs for input {key!r} must be a non-negative number (the standard deviation "
                f"of the noise), got {value!r}"
            )
        per_key[key] = float(value)
    return per_key


class NoiseTunnel(Attribution):
    """Average (``smoothgrad``), average of squares or variance of an attribution method over
    noisy copies of the inputs (Smilkov et al. 2017; Adebayo et al. 2018).

    Args:
        attribution_method: a tdlens attribution method, e.g. ``tdlens.Saliency(model)``.
        **defaults: default values of ``attribute()`` options, its own or the method's.

    Example:
        >>> nt = tdlens.NoiseTunnel(tdlens.IntegratedGradients(model))
        >>> attrs = nt.attribute(x, nt_samples=10, stdevs=0.1, targets=[3, 7], seed=0)
        >>> attrs.shape                        # [B, 2, *x.shape[1:]]
    """

    def __init__(self, attribution_method: Attribution, **defaults: Any) -> None:
        _check_method(attribution_method)
        super().__init__(attribution_method.model)
        allowed = {*_parameters(type(self).attribute), *_parameters(attribution_method.attribute)}
        unknown = [k for k in defaults if k not in allowed]
        if unknown:
            raise InputError(
                f"{type(self).__name__}() got unknown option(s) {format_keys(unknown)}; options "
                f"are those of attribute() and of {type(attribution_method).__name__}."
                f"attribute(): {format_keys(sorted(allowed))}"
            )
        self.attribution_method = attribution_method
        self.defaults = defaults

    @with_defaults
    def attribute(
        self,
        inputs: Any,
        nt_type: str = "smoothgrad",
        nt_samples: int = 5,
        nt_samples_batch_size: int | None = None,
        stdevs: float | tuple[float, ...] = 1.0,
        draw_baseline_from_distrib: bool = False,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """The method's attributions, reduced over ``nt_samples`` noisy copies of the inputs.

        Args:
            inputs: a tensor, tuple, dict or TensorDict; noise goes on the attributed inputs.
            nt_type: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
            nt_samples: noisy copies per example.
            nt_samples_batch_size: copies per call of the method (default all).
            stdevs: standard deviation of the noise, one number or one per attributed input.
            draw_baseline_from_distrib: ``baselines`` holds a distribution (``[N, ...]``);
                each noisy copy gets a baseline drawn from it (one index for all inputs).
            generator, seed: where the noise comes from (default torch's global generator).
                A method that samples too (GradientShap) gets the same generator.
            **kwargs: options of the method (``target``, ``targets``, ``baselines``,
                ``layer``, ``output``, ``n_steps``, ...).

        Returns:
            What the method returns for the inputs, shaped alike (``[B, K, ...]`` with
            ``targets``). With ``return_convergence_delta=True`` also the method's delta of
            every noisy copy, ``[B, nt_samples]`` (``[B, K, nt_samples]``).
        """
        return self._attribute(
            inputs,
            kwargs,
            nt_type=nt_type,
            nt_samples=nt_samples,
            nt_samples_batch_size=nt_samples_batch_size,
            stdevs=stdevs,
            draw_baseline_from_distrib=draw_baseline_from_distrib,
            generator=generator,
            seed=seed,
        )

    def _attribute(
        self,
        inputs: Any,
        kwargs: dict[str, Any],
        *,
        nt_type: str,
        nt_samples: int,
        nt_samples_batch_size: int | None,
        stdevs: Any,
        draw_baseline_from_distrib: bool,
        generator: torch.Generator | None,
        seed: int | None,
    ) -> Any:
        method = self.attribution_method
        chunk = _check_sampling(nt_type, nt_samples, nt_samples_batch_size)
        delta = bool(kwargs.get("return_convergence_delta"))
        if delta and "return_convergence_delta" not in _parameters(method.attribute):
            raise InputError(
                f"return_convergence_delta: {type(method).__name__} has no convergence delta"
            )
        batch = InputBatch.build(
            inputs,
            keys=kwargs.get("keys"),
            additional_forward_args=kwargs.pop("additional_forward_args", None),
        )
        batch.check_finite()
        b = batch.batch_size
        noise_std = check_stdevs(batch, stdevs)
        gen = random_generator(generator, seed)
        if gen is not None and "generator" in _parameters(method.attribute):
            kwargs.setdefault("generator", gen)
        target_list, multi = self._targets(batch, kwargs)
        drawn = _draw_baselines(kwargs, b, nt_samples, gen) if draw_baseline_from_distrib else None
        # detached: inputs that require grad (common captum usage) would make the noisy copies
        # part of the user's graph, and writing into preallocated buffers is refused there
        noise = SampleNoise({k: batch.leaves[k].detach() for k in batch.attributed}, noise_std, gen)
        sums: Any = None
        squares: Any = None
        deltas = []
        for first in range(0, nt_samples, chunk):
            count = min(chunk, nt_samples - first)
            # example by example (the copies of one example side by side, as captum lays them
            # out): alike neighbours make CPU kernels with data-dependent branches faster
            samples = torch.arange(first, first + count).repeat(b)
            examples = torch.arange(b).repeat_interleave(count)
            values = {
                **batch.take_rows(examples, skip=noise.inputs),
                **noise.inputs_at(samples, examples),
            }
            noisy, extra = batch.rebuild({key: values[key] for key in batch.leaves})
            call = dict(kwargs)
            if extra is not None:
                call["additional_forward_args"] = extra
            call.update(_row_options(kwargs, b, samples, examples, drawn))
            expanded = [Target(_rows_of(t.index, examples), t.output) for t in target_list]
            if multi:
                call["targets"] = expanded
            else:
                call["target"] = expanded[0]
            result = method.attribute(noisy, **call)
            if delta:
                result, chunk_delta = result
                deltas.append(chunk_delta.reshape(b, count, *chunk_delta.shape[1:]))
            per_sample = _map(lambda r, n=count: r.reshape(b, n, *r.shape[1:]), result)
            sums = _combine(sums, _map(lambda r: r.sum(1), per_sample))
            if nt_type != "smoothgrad":
                squares = _combine(squares, _map(lambda r: (r * r).sum(1), per_sample))
        attributions = _smooth(nt_type, sums, squares, nt_samples)
        if not delta:
            return attributions
        return attributions, torch.cat(deltas, dim=1).movedim(1, -1)

    def _targets(self, batch: InputBatch, kwargs: dict[str, Any]) -> tuple[list[Target], bool]:
        """The call's targets, with ``None`` fixed to the predicted class of the clean inputs
        (noise must not change which class each copy explains)."""
        method = self.attribution_method
        output = kwargs.get("output", method.output)
        target_list, multi = normalize_targets(
            kwargs.pop("target", None), kwargs.pop("targets", None), output, batch.batch_size
        )
        if all(t.index is not None for t in target_list):
            return target_list, multi
        with torch.no_grad(), ModelAdapter(self._module(), batch, target_list) as adapter:
            explained, _ = adapter.run(dict(batch.leaves))
            adapter.learn_predictions(explained, torch.arange(batch.batch_size))
        return adapter.resolved_targets(), multi


class SmoothGrad(NoiseTunnel):
    """SmoothGrad: a NoiseTunnel over Saliency, or over a named base method.

    Args:
        model: the model.
        base: the method to smooth: a name (``"saliency"``, ``"integrated_gradients"``,
            ``"InputXGradient"``...), a method class, or a method instance.
        **options: options of the base method's constructor (``multiply_by_inputs``,
            ``layer``, ``output``) go to it; the others are defaults of ``attribute()``
            (``nt_samples``, ``stdevs``, ``abs``, ``n_steps``...).

    Example:
        >>> sg = tdlens.SmoothGrad(model, nt_samples=20, stdevs=0.15)
        >>> attrs = sg.attribute(x, targets=[0, 1], seed=0)      # [B, 2, *x.shape[1:]]
    """

    def __init__(self, model: nn.Module, base: Any = "saliency", **options: Any) -> None:
        if isinstance(base, Attribution):
            method = base
        else:
            cls = _method_class(base)
            init = _parameters(cls.__init__) | {"layer", "output"}
            method = cls(model, **{k: options.pop(k) for k in list(options) if k in init})
        super().__init__(method, **options)


# -- helpers -----------------------------------------------------------------------------------
def _parameters(fn: Callable[..., Any]) -> set[str]:
    return {
        name
        for name, p in inspect.signature(fn).parameters.items()
        if name not in ("self", "inputs", "model") and p.kind is not p.VAR_KEYWORD
    }


def _check_method(method: Any) -> None:
    if isinstance(method, Attribution):
        return
    if isinstance(method, type) and issubclass(method, Attribution):
        raise InputTypeError(
            f"NoiseTunnel takes an attribution method instance, got the class {method.__name__}; "
            f"write NoiseTunnel({method.__name__}(model))"
        )
    if isinstance(method, nn.Module):
        raise InputTypeError(
            f"NoiseTunnel wraps an attribution method, got a model ({type(method).__name__}); "
            "write NoiseTunnel(tdlens.Saliency(model)), or tdlens.SmoothGrad(model)"
        )
    name = type(method).__name__
    origin = type(method).__module__.split(".")[0]
    hint = (
        f"this is a {origin} method: use tdlens.{name}(model) instead"
        if hasattr(method, "attribute")
        else "pass a method such as tdlens.Saliency(model)"
    )
    raise InputTypeError(f"NoiseTunnel needs a tdlens attribution method, got {name}; {hint}")


def _check_sampling(nt_type: Any, nt_samples: Any, batch_size: Any) -> int:
    if nt_type not in NT_TYPES:
        raise InputError(f"nt_type={nt_type!r} is not a noise tunnel type; use one of {NT_TYPES}")
    if not isinstance(nt_samples, int) or isinstance(nt_samples, bool) or nt_samples < 1:
        raise InputError(f"nt_samples must be a positive int, got {nt_samples!r}")
    if batch_size is None:
        return nt_samples
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(
            f"nt_samples_batch_size must be a positive int (noisy copies per call), got "
            f"{batch_size!r}"
        )
    return min(batch_size, nt_samples)


def _smooth(nt_type: str, sums: Any, squares: Any, n: int) -> Any:
    """The mean, the mean of squares, or the variance ``E[a^2] - E[a]^2`` (captum's formula)."""
    mean = _map(lambda s: s / n, sums)
    if nt_type == "smoothgrad":
        return mean
    mean_sq = _map(lambda s: s / n, squares)
    if nt_type == "smoothgrad_sq":
        return mean_sq
    return _map(lambda m2, m: m2 - m * m, mean_sq, mean)


def _rows_of(index: Any, examples: Tensor) -> Any:
    """A target for rows of ``examples``: per-example entries follow their rows."""
    if isinstance(index, Tensor) and index.dim() > 0:
        return index.index_select(0, examples.to(index.device))
    if isinstance(index, list):
        return [index[e] for e in examples.tolist()]
    return index


def _draw_baselines(
    kwargs: dict[str, Any], b: int, nt_samples: int, gen: torch.Generator | None
) -> Tensor:
    """Indices ``[S, B]`` into the baseline distribution, one joint draw for all inputs."""
    baselines = kwargs.get("baselines")
    sizes = {int(v.shape[0]) for v in _leaves(baselines)}
    if not sizes:
        raise InputError(
            "draw_baseline_from_distrib=True draws baselines from baselines=, a tensor (or one "
            "per input) whose first dimension indexes the baseline samples; none was given"
        )
    if len(sizes) > 1:
        raise InputError(
            f"baselines for different inputs hold different numbers of samples {sorted(sizes)}; "
            "with draw_baseline_from_distrib=True baseline sample i of every input is drawn "
            "together, so give each input the same number"
        )
    return torch.randint(sizes.pop(), (nt_samples, b), generator=gen)


def _row_options(
    kwargs: dict[str, Any], b: int, samples: Tensor, examples: Tensor, drawn: Tensor | None
) -> dict[str, Any]:
    """Per-example options (baselines, feature masks) for the rows of a chunk."""
    out = {}
    picked = drawn[samples, examples] if drawn is not None else examples
    for name in _PER_EXAMPLE_OPTIONS:
        if kwargs.get(name) is None:
            continue
        if name == "baselines" and drawn is not None:
            out[name] = _map_leaves(lambda v: v[picked.to(_device(v))], kwargs[name])
        else:
            out[name] = _map_leaves(
                lambda v: v[examples.to(_device(v))] if _rows(v) == b > 1 else v, kwargs[name]
            )
    return out


def _method_class(name: Any) -> type[Attribution]:
    if isinstance(name, type) and issubclass(name, Attribution):
        return name
    import tdlens

    def norm(text: str) -> str:
        return text.replace("_", "").replace(" ", "").lower()

    classes = {}
    for public, module in tdlens._PUBLIC.items():
        if module.startswith("tdlens.attribution.") and public not in ("NoiseTunnel", "SmoothGrad"):
            classes[norm(public)] = public
    if not isinstance(name, str) or norm(name) not in classes:
        near = closest(str(name), list(classes.values()))
        raise KeyNotFoundError(
            f"SmoothGrad(base={name!r}): no attribution method of that name; "
            f"{'did you mean ' + format_keys(near) + '?' if near else ''} methods are "
            f"{format_keys(sorted(classes.values()))}"
        )
    cls = getattr(tdlens, classes[norm(name)])
    return cls  # type: ignore[no-any-return]


# -- structures of results and options ----------------------------------------------------------
def _map(fn: Callable[..., Tensor], first: Any, *rest: Any) -> Any:
    """``fn`` over the tensors of like-shaped results (tensor, tuple, dict or TensorDict)."""
    if isinstance(first, Tensor):
        return fn(first, *rest)
    if isinstance(first, (tuple, list)):
        return type(first)(_map(fn, *items) for items in zip(first, *rest))
    if is_tensordict(first):
        from tensordict import TensorDict

        keys = list(first.keys(include_nested=True, leaves_only=True))
        values = {k: fn(first.get(k), *(r.get(k) for r in rest)) for k in keys}
        dims = first.batch_dims
        shape = next(iter(values.values())).shape[:dims] if values else first.batch_size
        td = TensorDict({}, batch_size=shape)
        for key, value in values.items():
            td.set(key, value)
        return td
    if isinstance(first, dict):
        return {k: _map(fn, v, *(r[k] for r in rest)) for k, v in first.items()}
    raise InputTypeError(
        f"NoiseTunnel reduces tensors, tuples, dicts or TensorDicts; the method returned "
        f"{type(first).__name__}"
    )


def _combine(total: Any, part: Any) -> Any:
    return part if total is None else _map(torch.add, total, part)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, Tensor) or is_tensordict(value):
        return [value] if _rows(value) is not None else []
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return []


def _map_leaves(fn: Callable[[Any], Any], value: Any) -> Any:
    """``fn`` over the batched tensors (and TensorDicts) of an option; numbers stay."""
    if isinstance(value, Tensor) or is_tensordict(value):
        return fn(value) if _rows(value) is not None else value
    if isinstance(value, (tuple, list)):
        return type(value)(_map_leaves(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: _map_leaves(fn, v) for k, v in value.items()}
    return value


def _rows(value: Any) -> int | None:
    if is_tensordict(value):
        return int(value.batch_size[0]) if value.batch_dims else None
    return int(value.shape[0]) if value.dim() else None


def _device(value: Any) -> torch.device:
    return value.device if value.device is not None else torch.device("cpu")
