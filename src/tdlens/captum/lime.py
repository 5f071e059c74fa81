"""captum's Lime call forms: its callables and its interpretable models, and LimeBase.

tdlens's :class:`~tdlens.attribution.perturbation.Lime` draws every coalition of every example
at once and fits all surrogates as one batched problem. captum's users bring callables written
for one sample at a time and models with captum's ``fit(DataLoader)`` / ``representation()``
interface (``SkLearnLasso``...). Here they are accepted as they are:

* ``similarity_func(original_input, perturbed_input, perturbed_interpretable_input, **kwargs)``
  is called per perturbed row, with captum's keyword arguments (``baselines``,
  ``feature_mask``, ``num_interp_features``);
* ``perturb_func(original_input, **kwargs) -> [1, M]`` (or a generator function) draws one
  interpretable sample per call;
* ``interpretable_model``: a tdlens linear model, a captum ``Model`` (``fit(DataLoader)`` then
  ``representation()``), or a scikit-learn style estimator (``fit(X, y, sample_weight)`` then
  ``coef_``), fitted per example and target.

:class:`LimeBase` is captum's general form (sampling in the input space or the interpretable
space, with user transforms between them), for one example per call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from ..attribution.base import with_defaults
from ..attribution.perturbation.base import PerturbationAttribution
from ..attribution.perturbation.linear import LinearModel
from ..attribution.perturbation.surrogate import Lime as _Lime
from ..core.errors import InputError, InputTypeError
from ..core.outputs import read_output
from ..core.structure import InputBatch, Key
from ..core.targets import select
from ._inputs import captum_errors, every_input, no_future


class ForeignLinearModel(LinearModel):
    """A captum ``Model`` or a scikit-learn style estimator as a tdlens linear model: one fit
    per example and target (what captum does), coefficients read back as ``[B, P, K]``."""

    def __init__(self, model: Any) -> None:
        super().__init__(fit_intercept=True)
        self.model = model

    def fit(self, x: Tensor, y: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        b, k = y.shape[0], y.shape[-1]
        x = x.expand(b, *x.shape[-2:]).float()
        weights = weights.expand(b, -1).float()
        coef = torch.zeros(b, x.shape[-1], k, dtype=torch.float64)
        for example in range(b):
            for t in range(k):
                coef[example, :, t] = self._fit_one(x[example], y[example, :, t], weights[example])
        return coef, coef.new_zeros(b, k)

    def _fit_one(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        return fit_foreign(self.model, x, y.float(), w).reshape(-1).double()

    def _solve(self, gram: Tensor, moment: Tensor, weight_sum: Tensor) -> Tensor:
        raise NotImplementedError  # fit() is overridden


def fit_foreign(model: Any, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """Fit a captum ``Model`` or an estimator on one surrogate problem; its coefficients."""
    if hasattr(model, "representation"):
        from torch.utils.data import DataLoader, TensorDataset

        model.fit(DataLoader(TensorDataset(x, y, w), batch_size=len(x)))
        return model.representation().detach().cpu()
    model.fit(x.cpu().numpy(), y.cpu().numpy(), sample_weight=w.cpu().numpy())
    return torch.as_tensor(model.coef_)


def as_linear_model(model: Any) -> LinearModel | str | None:
    if model is None or isinstance(model, (LinearModel, str)):
        return model
    if callable(getattr(model, "fit", None)):
        return ForeignLinearModel(model)
    raise InputTypeError(
        f"interpretable_model must be a tdlens linear model, a captum Model (fit(DataLoader), "
        f"representation()) or a scikit-learn style estimator; got {type(model).__name__}"
    )


class LimeBase(PerturbationAttribution):
    """captum's ``LimeBase(forward_func, interpretable_model, similarity_func, perturb_func,
    perturb_interpretable_space, from_interp_rep_transform, to_interp_rep_transform)``: draw
    ``n_samples`` perturbations of one example with ``perturb_func`` (in the interpretable
    space, mapped to inputs by ``from_interp_rep_transform``, or in the input space, mapped
    back by ``to_interp_rep_transform``), weigh each with ``similarity_func``, run the model on
    ``perturbations_per_eval`` of them per forward pass, and fit ``interpretable_model``.

    Returns the surrogate's coefficients (``representation()``). Every callable gets the extra
    keyword arguments of ``attribute`` as captum passes them.

    Example:
        >>> lb = tdlens.captum.LimeBase(model, SkLearnLasso(alpha=0.01), sim, perturb, False,
        ...                             None, to_interp)
        >>> coefs = lb.attribute(x[:1], target=0, n_samples=100, num_interp_features=3)
    """

    def __init__(
        self,
        forward_func: Any,
        interpretable_model: Any,
        similarity_func: Callable[..., Any],
        perturb_func: Callable[..., Any],
        perturb_interpretable_space: bool,
        from_interp_rep_transform: Callable[..., Any] | None,
        to_interp_rep_transform: Callable[..., Any] | None,
    ) -> None:
        super().__init__(forward_func)
        transform = from_interp_rep_transform if perturb_interpretable_space else None
        transform = transform or (None if perturb_interpretable_space else to_interp_rep_transform)
        if transform is None:
            needed = "from" if perturb_interpretable_space else "to"
            raise InputError(
                f"LimeBase with perturb_interpretable_space={perturb_interpretable_space} needs "
                f"{needed}_interp_rep_transform to map samples between the two spaces"
            )
        self.interpretable_model = interpretable_model
        self.similarity_func = similarity_func
        self.perturb_func = perturb_func
        self.perturb_interpretable_space = perturb_interpretable_space
        self.from_interp_rep_transform = from_interp_rep_transform
        self.to_interp_rep_transform = to_interp_rep_transform

    attribute_future = no_future

    @captum_errors
    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        n_samples: int = 50,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> Tensor:
        """The fitted surrogate's coefficients, ``[1, M]`` for one target."""
        check = InputBatch.build(inputs, require_float=False)  # inputs checked before any work
        if not isinstance(n_samples, int) or n_samples < 1:
            raise InputError(f"n_samples must be a positive int, got {n_samples!r}")
        if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
            raise InputError(
                f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}"
            )
        del check
        draws = _draws(self.perturb_func, inputs, kwargs)
        interpretable: list[Tensor] = []
        weights: list[float] = []
        scores: list[Tensor] = []
        pending: list[Any] = []
        bar = _progress(show_progress, -(-n_samples // perturbations_per_eval), self.get_name())
        for _ in range(n_samples):
            try:
                sample = next(draws)
            except StopIteration:
                import warnings

                warnings.warn("perturb_func stopped before n_samples samples", stacklevel=2)
                break
            if self.perturb_interpretable_space:
                interp = sample
                model_input = self.from_interp_rep_transform(sample, inputs, **kwargs)  # type: ignore[misc]
            else:
                model_input = sample
                interp = self.to_interp_rep_transform(sample, inputs, **kwargs)  # type: ignore[misc]
            interpretable.append(torch.as_tensor(interp).reshape(1, -1).float())
            w = self.similarity_func(inputs, model_input, interp, **kwargs)
            weights.append(float(w.reshape(-1)[0]) if isinstance(w, Tensor) else float(w))
            pending.append(model_input)
            if len(pending) == perturbations_per_eval:
                scores.append(self._evaluate(pending, target, additional_forward_args))
                pending = []
                bar.update()
        if pending:
            scores.append(self._evaluate(pending, target, additional_forward_args))
            bar.update()
        bar.close()
        x = torch.cat(interpretable)
        y = torch.cat(scores).float()
        w = torch.tensor(weights, dtype=torch.float32)
        model = self.interpretable_model
        if isinstance(model, LinearModel):
            coef, _ = model.fit(x.unsqueeze(0), y.reshape(1, -1, 1), w.unsqueeze(0))
            return coef[0, :, 0].reshape(1, -1).float()
        return fit_foreign(model, x, y, w)

    def _evaluate(self, pending: list[Any], target: Any, additional_forward_args: Any) -> Tensor:
        """One forward pass over the pending perturbed inputs: one score per input."""
        count = len(pending)
        if isinstance(pending[0], Tensor):
            joined: Any = torch.cat(pending)
        else:
            joined = tuple(torch.cat(parts) for parts in zip(*pending))
        extra = _repeat(additional_forward_args, count)
        batch = InputBatch.build(joined, additional_forward_args=extra, require_float=False)
        with torch.no_grad():
            out = batch.call(self.model, batch.leaves)
        if not isinstance(out, Tensor) and not isinstance(out, (tuple, list, dict)):
            return torch.tensor([float(out)])
        values = read_output(out, None, self.model)
        if target is not None and values.dim() >= 2:
            rows = values.shape[0]
            index = _repeat_target(target, rows // max(1, batch.batch_size // count or 1), count)
            values = select(values, index, torch.arange(rows), "of the model")
        if values.numel() != count:
            raise InputError(
                f"LimeBase needs one output per perturbed input: {count} perturbed inputs per "
                f"forward pass gave {values.numel()} values (output shape {list(values.shape)}); "
                "select one value per input with target="
            )
        return values.reshape(-1).detach()


def _repeat(args: Any, count: int) -> Any:
    """captum's expansion of ``additional_forward_args`` to ``count`` stacked perturbations."""
    if args is None or count == 1:
        return args
    items = args if isinstance(args, tuple) else (args,)
    out = tuple(
        a.repeat(count, *[1] * (a.dim() - 1)) if isinstance(a, Tensor) and a.dim() else a
        for a in items
    )
    return out if isinstance(args, tuple) else out[0]


def _repeat_target(target: Any, _rows: int, count: int) -> Any:
    if isinstance(target, list):
        return target * count
    if isinstance(target, Tensor) and target.numel() > 1:
        return target.reshape(-1).repeat(count)
    return target


class _NoBar:
    def update(self) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(show: bool, total: int, name: str) -> Any:
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{name} attribution")


class Lime(_Lime):
    """captum's ``Lime(forward_func, interpretable_model=None, similarity_func=None,
    perturb_func=None)`` with captum's callables and models (see the module docstring).

    Without captum-style callables this is tdlens's batched Lime (every example and target
    fitted at once); a captum ``Model`` or estimator is fitted per example and target there
    too. With a ``similarity_func`` or ``perturb_func`` written for captum, each example runs
    through :class:`LimeBase` with captum's interpretable-space sampling, as captum does.

    Example:
        >>> from captum._utils.models.linear_model import SkLearnLasso
        >>> lime = tdlens.captum.Lime(model, interpretable_model=SkLearnLasso(alpha=0.01))
        >>> attr = lime.attribute(x, target=0, n_samples=200)
    """

    def __init__(
        self,
        forward_func: Any,
        interpretable_model: Any = None,
        similarity_func: Callable[..., Any] | None = None,
        perturb_func: Callable[..., Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(forward_func, as_linear_model(interpretable_model), **options)
        self.captum_similarity = similarity_func
        self.captum_perturb = perturb_func

    attribute_future = no_future

    @captum_errors
    @with_defaults
    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        return_input_shape: bool = True,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> Any:
        """captum's ``Lime.attribute``; tdlens's keyword options (``targets=``, ``seed=``...)
        work without captum-style callables."""
        args = (inputs, baselines, target, additional_forward_args, feature_mask, n_samples)
        if self.captum_similarity is None and self.captum_perturb is None:
            return super().attribute(
                *args,
                perturbations_per_eval,
                return_input_shape,
                show_progress,
                **every_input(inputs, kwargs),
            )
        if kwargs:
            raise InputError(
                f"Lime with captum-style callables takes captum's arguments only; got "
                f"{sorted(kwargs)}"
            )
        return self._per_example(*args, perturbations_per_eval, return_input_shape, show_progress)

    def _one_value_per_call(self, batch: InputBatch) -> bool:
        """Whether the model returns one value for the whole batch (one forward pass)."""
        with torch.no_grad():
            return _one_value(batch.call(self.model, batch.leaves))

    def _per_example(
        self,
        inputs: Any,
        baselines: Any,
        target: Any,
        additional_forward_args: Any,
        feature_mask: Any,
        n_samples: int,
        perturbations_per_eval: int,
        return_input_shape: bool,
        show_progress: bool,
    ) -> Any:
        from ..attribution.perturbation.features import FeatureLayout

        batch = InputBatch.build(
            inputs,
            additional_forward_args=additional_forward_args,
            require_float=False,
            keys=every_input(inputs, {}).get("keys"),
        )
        layout = FeatureLayout.build(batch, feature_mask)
        base = self._baselines(batch, baselines)
        single = not isinstance(inputs, tuple)
        m, b = layout.n_features, batch.batch_size
        engine = LimeBase(
            self.model,
            self.interpretable_model,
            self.captum_similarity or _default_similarity,
            self.captum_perturb or _bernoulli,
            True,
            _from_interpretable,
            None,
        )
        engine.get_name = self.get_name  # type: ignore[method-assign]
        coefs = []
        if b > 1 and self._one_value_per_call(batch):
            # captum's semantics for a model that returns one value for the whole batch: one
            # surrogate for the batch, every example perturbed alike (one row of results)
            masks = {k: v[:1] for k, v in layout.masks.items()}
            coef = engine.attribute(
                inputs,
                target=target,
                additional_forward_args=additional_forward_args,
                n_samples=n_samples,
                perturbations_per_eval=perturbations_per_eval,
                show_progress=show_progress,
                baselines=_one_example(base, single),
                feature_mask=_one_example(masks, single),
                num_interp_features=m,
            )
            coefs.append(torch.as_tensor(coef).reshape(1, m))
            b = 0
        for example in range(b):
            rows = {k: v[example : example + 1] for k, v in batch.leaves.items() if k in base}
            masks = {
                k: v[example : example + 1] if v.shape[0] > 1 else v
                for k, v in layout.masks.items()
            }
            extra = _example_args(additional_forward_args, example, b)
            coef = engine.attribute(
                _one_example(rows, single),
                target=_example_target(target, example, b),
                additional_forward_args=extra,
                n_samples=n_samples,
                perturbations_per_eval=perturbations_per_eval,
                show_progress=show_progress,
                baselines=_one_example(
                    {k: v[example : example + 1] for k, v in base.items()}, single
                ),
                feature_mask=_one_example(masks, single),
                num_interp_features=m,
            )
            coefs.append(torch.as_tensor(coef).reshape(1, m))
        phi = torch.cat(coefs).to(torch.float32)
        if not return_input_shape:
            return phi
        spread = layout.spread(phi.unsqueeze(1))
        dtype = {k: batch.leaves[k].dtype for k in spread}
        per_key = {
            k: v[:, 0].to(dtype[k] if dtype[k].is_floating_point else v.dtype)
            for k, v in spread.items()
        }
        return batch.pack(per_key)


def _one_value(out: Any) -> bool:
    if isinstance(out, (int, float)):
        return True
    return isinstance(out, Tensor) and out.numel() == 1


def _one_example(leaves: dict[Key, Tensor], single: bool) -> Any:
    rows = tuple(leaves.values())
    return rows[0] if single else rows


def _example_args(args: Any, example: int, b: int) -> Any:
    if args is None or b == 1:
        return args
    items = args if isinstance(args, tuple) else (args,)
    out = tuple(
        a[example : example + 1] if isinstance(a, Tensor) and a.dim() and a.shape[0] == b else a
        for a in items
    )
    return out if isinstance(args, tuple) else out[0]


def _example_target(target: Any, example: int, b: int) -> Any:
    if isinstance(target, list) and len(target) == b:
        return target[example]
    if isinstance(target, Tensor) and target.dim() and target.shape[0] == b:
        return target[example : example + 1]
    return target


def _default_similarity(original: Any, perturbed: Any, _interp: Any, **_kwargs: Any) -> float:
    """captum's default weight: ``exp(-d^2 / 2)`` of the cosine distance of the inputs."""
    a = _flat(original)
    p = _flat(perturbed)
    distance = 1 - torch.nn.functional.cosine_similarity(a, p, dim=0)
    return float(torch.exp(-(distance**2) / 2))


def _flat(value: Any) -> Tensor:
    parts = [value] if isinstance(value, Tensor) else list(value)
    return torch.cat([p.reshape(-1).double() for p in parts])


def _bernoulli(original: Any, **kwargs: Any) -> Tensor:
    """captum's default Lime sample: every interpretable feature present with probability 1/2."""
    return torch.bernoulli(torch.full((1, kwargs["num_interp_features"]), 0.5))


def _from_interpretable(sample: Tensor, original: Any, **kwargs: Any) -> Any:
    """Present features keep the input, absent ones take the baseline."""
    single = isinstance(original, Tensor)
    inputs = (original,) if single else tuple(original)
    masks = (kwargs["feature_mask"],) if single else tuple(kwargs["feature_mask"])
    bases = (kwargs["baselines"],) if single else tuple(kwargs["baselines"])
    keep = sample.reshape(-1).bool()
    out = tuple(
        torch.where(keep.to(x.device)[mask.to(x.device)], x, torch.as_tensor(base).to(x))
        for x, mask, base in zip(inputs, masks, bases)
    )
    return out[0] if single else out


def _draws(func: Callable[..., Any], original: Any, kwargs: dict[str, Any]) -> Iterator[Tensor]:
    if inspect.isgeneratorfunction(func):
        yield from func(original, **kwargs)
        return
    while True:
        yield func(original, **kwargs)
