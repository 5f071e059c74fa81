"""The model adapter: run any model on rows of a batch and return what the targets explain.

It turns each target's ``output`` into either an entry of the model's output (tuple index,
dict key, ModelOutput field, TensorDict key) or a module path whose activation is explained
(captum's Neuron* methods). It also hooks the ``layer`` sites that layer attribution
differentiates against: observed, cut from the graph above them, or replaced by given values.
When every explained value is an internal activation, the forward pass stops as soon as all of
them are computed.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from .errors import InputError, InputTypeError, TrainModeWarning
from .hooks import HookSet
from .outputs import read_output
from .paths import ModulePath, resolve_paths
from .structure import InputBatch, Key
from .targets import Target, predicted, select


class _StopForward(Exception):
    """Raised inside a hook once everything needed is computed; never escapes the adapter."""


OutputSpec = tuple[str, Any]  # ("model", key) or ("module", ModulePath)


def output_spec(model: nn.Module | Callable[..., Any], output: Any) -> OutputSpec:
    """Whether ``output`` names an entry of the model's output or a module path."""
    if output is None or isinstance(output, (int, tuple)) or not isinstance(model, nn.Module):
        return ("model", output)
    if isinstance(output, (ModulePath, nn.Module)):
        return ("module", resolve_paths(model, output)[0])
    if isinstance(output, str):
        names = {name for name, _ in model.named_modules()}
        if ":" in output or "[" in output or output.split("[")[0] in names - {""}:
            paths = resolve_paths(model, output)
            if len(paths) != 1:
                raise InputError(f"output={output!r} matches {len(paths)} modules; name one")
            return ("module", paths[0])
        return ("model", output)
    raise InputTypeError(
        f"output= takes an index, a key or a module path, got {type(output).__name__}"
    )


def spec_name(spec: OutputSpec) -> str:
    kind, key = spec
    if kind == "module":
        return f"'{key}' (module activation)"
    return "of the model" if key is None else repr(key)


class ModelAdapter:
    """Calls ``model`` on keyed leaves, with hooks for targets' module outputs and layer sites.

    Use as a context manager: hooks exist only inside it.
    """

    def __init__(
        self,
        model: nn.Module | Callable[..., Any],
        batch: InputBatch,
        targets: list[Target],
        layers: list[ModulePath] | None = None,
    ) -> None:
        self.model = model
        self.batch = batch
        self.targets = list(targets)
        self.specs = [output_spec(model, t.output) for t in targets]
        self._predictions: dict[int, Tensor] = {}  # target=None fixed to a class per example
        self.layers = list(layers or [])
        self._module_specs = sorted({s for s in self.specs if s[0] == "module"}, key=str)
        self._needs_model_output = any(s[0] == "model" for s in self.specs)
        self._hooks = HookSet()
        self._buffers = _TrainingBuffers(None)  # taken on entering
        self._captured: dict[ModulePath, Any] = {}
        self._layer_values: dict[ModulePath, Tensor] = {}
        self._layer_mode = "observe"
        self._replacements: dict[ModulePath, Tensor] = {}

    def __enter__(self) -> ModelAdapter:
        self._buffers = _TrainingBuffers(self.model)
        if self._module_specs or self.layers:
            model = cast(nn.Module, self.model)  # module paths were resolved on a Module
            for _, path in self._module_specs:
                self._hooks.on_site(model, path, functools.partial(self._capture, path))
            for path in self.layers:
                self._hooks.on_site(model, path, functools.partial(self._layer, path))
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._hooks.close()
        finally:
            self._buffers.restore()

    # -- hooks ---------------------------------------------------------------------------------
    def _capture(self, path: ModulePath, value: Any) -> None:
        self._captured[path] = value
        self._maybe_stop()

    def _layer(self, path: ModulePath, value: Any) -> Any:
        if path in self._layer_values:
            raise InputError(
                f"layer {str(path)!r} ran more than once in one forward pass; layer attribution "
                "needs a module that runs once (give each use its own module)"
            )
        if not isinstance(value, Tensor):
            raise InputTypeError(
                f"layer {str(path)!r} holds {type(value).__name__}, not a tensor; pick a tensor "
                f"with a selector, e.g. '{path.module}:{path.site}[0]'"
            )
        if self._layer_mode == "replace":
            new = self._replacements.get(path)  # a layer without replacement is observed
            if new is not None and new.shape != value.shape:
                raise InputError(
                    f"layer {str(path)!r}: replacement of shape {list(new.shape)} for an "
                    f"activation of shape {list(value.shape)}"
                )
        elif self._layer_mode == "leaf":
            # With one layer, cutting the graph there spares the backward pass everything
            # upstream. With several, a cut would hide the later layers' paths from the earlier
            # ones, so the graph stays whole and gradients are taken at the tensors themselves.
            if len(self.layers) == 1 or not value.requires_grad:
                new = value.detach().requires_grad_()
            else:
                self._layer_values[path] = value
                self._maybe_stop()
                return None
        else:
            new = None
        self._layer_values[path] = value.detach() if new is None else new
        self._maybe_stop()
        return new

    def _maybe_stop(self) -> None:
        if (
            not self._needs_model_output
            and len(self._captured) == len(self._module_specs)
            and len(self._layer_values) == len(self.layers)
        ):
            raise _StopForward

    # -- running -------------------------------------------------------------------------------
    def run(
        self,
        values: dict[Key, Any],
        *,
        layer_mode: str = "observe",
        replacements: dict[ModulePath, Tensor] | None = None,
    ) -> tuple[list[Tensor], dict[ModulePath, Tensor]]:
        """One forward pass on ``values``.

        Args:
            values: every input leaf, for the rows of this pass.
            layer_mode: what layer hooks do: ``"observe"`` (record, detached), ``"leaf"``
                (replace by a detached copy that requires grad: gradients stop there), or
                ``"replace"`` (substitute ``replacements``).

        Returns:
            The explained value of each target (``[N, ...]``, one per target, shared objects
            for targets with the same output) and the layer values of this pass.
        """
        self._captured = {}
        self._layer_values = {}
        self._layer_mode = layer_mode
        self._replacements = replacements or {}
        output = None
        try:
            output = self.batch.call(self.model, values)
        except _StopForward:
            pass
        explained: dict[OutputSpec, Tensor] = {}
        for spec in self.specs:
            if spec in explained:
                continue
            kind, key = spec
            if kind == "model":
                explained[spec] = read_output(output, key, self.model)
            else:
                if spec not in self._captured and key not in self._captured:
                    raise InputError(f"module {str(key)!r} did not run in the forward pass")
                value = self._captured[key]
                if not isinstance(value, Tensor):
                    raise InputTypeError(
                        f"output={str(key)!r} is {type(value).__name__}, not a tensor; select "
                        f"one with '{key.module}:{key.site}[0]'"
                    )
                explained[spec] = value
        missing = [p for p in self.layers if p not in self._layer_values]
        if missing:
            raise InputError(f"layer {str(missing[0])!r} did not run in the forward pass")
        return [explained[s] for s in self.specs], dict(self._layer_values)

    # -- reading targets -------------------------------------------------------------------------
    def learn_predictions(self, explained: list[Tensor], examples: Tensor) -> None:
        """Fix ``target=None`` on a ``[B, C]`` output to the predicted class of ``examples``,
        from the explained outputs of those examples' original (unperturbed) rows. Chunks of
        the original rows may come in several calls."""
        for i, target in enumerate(self.targets):
            if target.index is not None:
                continue
            guess = predicted(explained[i])
            if guess is not None:
                table = self._predictions.get(i)
                if table is None:
                    table = self._predictions[i] = torch.zeros(
                        self.batch.batch_size, dtype=torch.long, device=guess.device
                    )
                table[examples.to(guess.device)] = guess

    def resolved_targets(self) -> list[Target]:
        """The targets, ``target=None`` replaced by the predictions learnt so far."""
        return [
            Target(self._predictions[i], t.output) if i in self._predictions else t
            for i, t in enumerate(self.targets)
        ]

    def pick(
        self,
        explained: list[Tensor],
        examples: Tensor | Callable[[], Tensor],
        rows_are_inputs: bool = False,
    ) -> list[Tensor]:
        """The scalar per row each target picks from its explained output, ``[N]`` each
        (``examples``: of the rows, or a function making them; see :func:`select`).

        ``rows_are_inputs``: the rows are the original inputs themselves, so an unresolved
        ``target=None`` takes each row's own predicted class.
        """
        picked = []
        for i, (target, values) in enumerate(zip(self.targets, explained)):
            index = self._predictions.get(i, target.index)
            if index is None and rows_are_inputs:
                guess = predicted(values)
                if guess is not None:
                    picked.append(values[torch.arange(values.shape[0]), guess])
                    continue
            picked.append(select(values, index, examples, spec_name(self.specs[i])))
        return picked


class _TrainingBuffers:
    """The buffers of the modules in training mode, as they were: a forward pass in training
    mode updates some of them in place (BatchNorm's running statistics and batch count,
    spectral norm's power-iteration vectors), and the attribution's many forward passes over
    perturbed or interpolated rows must not leave the user's model changed. Eval-mode
    modules update nothing and cost nothing here."""

    def __init__(self, model: Any) -> None:
        self.saved: list[tuple[nn.Module, str, Tensor, Tensor]] = []
        if not isinstance(model, nn.Module):
            return
        # a plain walk over the children (about 0.6 us a module, 1.5x faster than
        # ``modules()``); a module reached twice is saved once
        stack, seen = [model], set()
        while stack:
            module = stack.pop()
            stack.extend(child for child in module._modules.values() if child is not None)
            if not (module.training and module._buffers) or id(module) in seen:
                continue
            seen.add(id(module))
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    self.saved.append((module, name, buffer, buffer.clone()))

    def restore(self) -> None:
        """Put back every buffer, the same object with its old values. All are copied back:
        BatchNorm's kernel writes its running statistics without bumping their version
        counter, so a write cannot be detected cheaply."""
        if not self.saved:
            return
        with torch.no_grad():
            for module, name, buffer, values in self.saved:
                if module._buffers.get(name) is not buffer:
                    module._buffers[name] = buffer
                buffer.copy_(values)
        self.saved = []


_TRAIN_SENSITIVE = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def warn_if_training(model: Any) -> None:
    """Warn when ``model`` is in training mode with dropout or batch norm inside: captum users
    forget ``model.eval()`` more than anything else, and the attributions are then noisy
    (random dropout masks) or depend on the batch (batch statistics), without any error."""
    if not isinstance(model, nn.Module) or not model.training:
        return
    for name, module in model.named_modules():
        if module.training and isinstance(module, _TRAIN_SENSITIVE):
            effect = (
                "drops random units on every forward pass: attributions will be noisy"
                if isinstance(module, nn.modules.dropout._DropoutNd)
                else "normalises with the statistics of each forward batch: attributions will "
                "depend on the other rows"
            )
            warnings.warn(
                f"the model is in training mode, where {type(module).__name__} "
                f"{name or '(the model)'!r} {effect}. Call model.eval() first (tdlens leaves "
                "the mode as it is)",
                TrainModeWarning,
                stacklevel=_user_stacklevel(),
            )
            return


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside tdlens: a warning is then reported (and
    filtered) at the user's line, once per line of user code, not once per process."""
    frame, level = sys._getframe(2), 2
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("tdlens"):
        frame, level = frame.f_back, level + 1
    return level


def parse_layers(model: nn.Module, layer: Any) -> list[ModulePath]:
    """``layer=`` as a list of resolved paths (a string, a list of strings, globs)."""
    if layer is None:
        return []
    if isinstance(layer, (str, ModulePath, nn.Module)):
        return resolve_paths(model, layer)
    if not isinstance(layer, (list, tuple)):
        raise InputTypeError(
            f"layer= takes a module path (e.g. 'encoder.layer.0'), a submodule object or a "
            f"list of them, got {type(layer).__name__}"
        )
    return resolve_paths(model, list(layer))
