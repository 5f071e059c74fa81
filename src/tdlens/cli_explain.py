"""``tdlens explain``, ``tdlens methods`` and ``tdlens explore``: the command-line handlers.

They use only the public API (method classes from ``tdlens``, figures from ``tdlens.viz``,
``tdlens.app.Explorer``); the library never imports this module.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["CliError", "load_object", "method_classes", "run_explain", "run_explore", "run_methods"]


class CliError(Exception):
    """A failure the command reports as one line (exit status 1, or ``status``)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# -- loading -----------------------------------------------------------------------------------
def load_object(spec: str) -> Any:
    """The object named by ``module:attribute`` (or ``path/to/file.py:attribute``); a function
    or class there is called without arguments, a module or other object is returned as is.

    Raises:
        CliError: Naming the part that could not be found and how to fix it.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(
            f"expected module:attribute (e.g. my_models:make_model), got {spec!r}", status=2
        )
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise CliError(f"no Python file {str(path)!r}")
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        if loader_spec is None or loader_spec.loader is None:
            raise CliError(f"cannot import {str(path)!r} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # like `python -m`: modules in the current folder
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            raise CliError(
                f"cannot import module {module_name!r} ({error}); run from the folder that holds "
                "it, set PYTHONPATH, or give a file path (path/to/file.py:attribute)"
            ) from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            names = [n for n in dir(value) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise CliError(f"{module_name} has no attribute {attribute!r}{hint}")
        value = getattr(value, part)
    if inspect.isfunction(value) or inspect.isclass(value):
        value = value()  # a factory: make_model, or an nn.Module class with default arguments
    return value


def load_inputs(path: Path) -> Any:
    """Inputs from a ``.pt`` file (``torch.load(weights_only=True)``: a tensor, or a tuple or
    dict of tensors) or a ``.npy`` array (no pickles)."""
    import torch

    if not path.is_file():
        raise CliError(f"no input file {str(path)!r}")
    if path.suffix == ".npy":
        import numpy as np

        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except ValueError as error:
            raise CliError(f"cannot read {str(path)!r} as a .npy array: {error}") from None
    if path.suffix not in (".pt", ".pth"):
        raise CliError(f"--input must be a .pt or .npy file, got {str(path)!r}", status=2)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors have many types; say which file and why
        raise CliError(
            f"cannot load {str(path)!r} with torch.load(weights_only=True): {error}; save plain "
            "tensors (torch.save(x, path))"
        ) from None


def parse_value(text: str) -> Any:
    """A Python literal (``32``, ``0.5``, ``(1, 2, 2)``, ``True``, ``None``), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_args(items: Sequence[str]) -> dict[str, Any]:
    """``--arg name=value`` items as keyword arguments."""
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise CliError(f"--arg expects name=value (e.g. n_steps=32), got {item!r}", status=2)
        options[name] = parse_value(value)
    return options


def method_classes() -> dict[str, Any]:
    """tdlens's public attribution method classes by name."""
    import tdlens

    found = {}
    for name in tdlens.__all__:
        value = getattr(tdlens, name)
        if inspect.isclass(value) and issubclass(value, tdlens.Attribution):
            if value is not tdlens.Attribution:
                found[name] = value
    return found


def _method(name: str) -> Any:
    classes = method_classes()
    if name not in classes:
        close = difflib.get_close_matches(name, classes, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CliError(f"unknown method {name!r}; {hint}`tdlens methods` lists them", status=2)
    return classes[name]


# -- tdlens methods ----------------------------------------------------------------------------
def run_methods(stream: TextIO | None = None) -> int:
    """Prints every method with its ``attribute()`` arguments and their defaults."""
    stream = stream or sys.stdout
    for name, cls in method_classes().items():
        doc = (inspect.getdoc(cls) or "").split("\n", 1)[0]
        print(f"{name}: {doc}", file=stream)
        params = []
        for param in inspect.signature(cls.attribute).parameters.values():
            if param.name in ("self", "inputs") or param.kind is param.VAR_KEYWORD:
                continue
            if param.default is param.empty:
                params.append(f"{param.name} (required)")
            else:
                params.append(f"{param.name}={param.default!r}")
        print(f"    {', '.join(params)}", file=stream)
    return 0


# -- tdlens explain ----------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on a terminal; silent when ``stream`` is not one (piped)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.label = total, label
        self.enabled = total > 1 and self.stream.isatty()
        self.start = time.perf_counter()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = width * done // self.total
        seconds = time.perf_counter() - self.start
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} ({seconds:.1f} s)")
        if done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _split(inputs: Any, batch_size: int) -> list[Any]:
    import torch

    if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0:
        return [inputs]  # structured inputs go in one call
    return list(inputs.split(batch_size)) if len(inputs) else [inputs]


def run_explain(
    model_spec: str,
    input_path: Path,
    method_name: str,
    *,
    target: str | None,
    args: Sequence[str],
    out: Path,
    png: Path | None,
    batch_size: int,
    seed: int | None,
) -> int:
    """Runs ``tdlens explain``; see ``tdlens explain --help``."""
    import torch

    import tdlens

    options = parse_args(args)
    cls = _method(method_name)
    target_options = _parse_target(target)
    if png is not None and png.suffix.lower() != ".png":
        raise CliError(f"--png must name a .png file, got {str(png)!r}", status=2)
    model = load_object(model_spec)
    if not callable(model):
        raise CliError(f"{model_spec} is a {type(model).__name__}, not a model (a callable)")
    if isinstance(model, torch.nn.Module):
        model.eval()  # explanations of a trained model: dropout off, batch norm frozen
    inputs = load_inputs(input_path)
    if seed is not None:
        torch.manual_seed(seed)
    try:
        method = cls(model, **options)
        chunks = _split(inputs, batch_size)
        progress = Progress(len(chunks), method_name)
        parts = []
        for i, chunk in enumerate(chunks):
            parts.append(method.attribute(chunk, **target_options))
            progress.update(i + 1)
    except tdlens.TdlensError as error:
        raise CliError(f"{method_name} failed: {error}") from None
    result = parts[0] if len(parts) == 1 else torch.cat(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, out)
    print(f"wrote {method_name} attributions {_shape(result)} to {out}")
    if png is not None:
        _write_png(png, inputs, result, method_name)
        print(f"wrote {png}")
    return 0


def _parse_target(text: str | None) -> dict[str, Any]:
    if text is None or text.lower() in ("pred", "predicted", "none"):
        return {}
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise CliError(
            f"--target must be a class index, comma-separated indices, or 'pred'; got {text!r}",
            status=2,
        ) from None
    return {"target": values[0]} if len(values) == 1 else {"targets": values}


def _shape(result: Any) -> str:
    return str(list(result.shape)) if hasattr(result, "shape") else type(result).__name__


def _write_png(path: Path, inputs: Any, result: Any, method_name: str) -> None:
    import torch

    import tdlens.viz

    if not isinstance(result, torch.Tensor) or not isinstance(inputs, torch.Tensor):
        raise CliError("--png draws tensor inputs only; the attributions were saved")
    if result.shape != inputs.shape:
        raise CliError(
            f"--png needs one target (attributions {list(result.shape)} vs inputs "
            f"{list(inputs.shape)}); the attributions were saved"
        )
    if inputs.ndim in (3, 4):  # [B, H, W] or [B, C, H, W] images: a grid of at most 16
        plot = tdlens.viz.comparison_grid(inputs[:16], {method_name: result[:16]})
    elif inputs.ndim == 2:
        title = f"{method_name}, example 0" if len(inputs) > 1 else method_name
        plot = tdlens.viz.feature_bars(result[0], values=inputs[0], top_k=30, title=title)
    else:
        raise CliError(f"--png draws [B, F] or image batches; inputs are {list(inputs.shape)}")
    plot.save(path)


# -- tdlens explore ----------------------------------------------------------------------------
def run_explore(
    spec: str | None, *, demo: bool, port: int, host: str, cache_dir: Path | None
) -> int:
    """Runs ``tdlens explore``: the demo's explorer, or the one a user function returns."""
    from importlib.util import find_spec

    if find_spec("flask") is None:
        raise CliError(
            "tdlens explore needs Flask; install the app extra: pip install 'tdlens[app]'"
        )
    from tdlens.app import Explorer

    if demo == (spec is not None):
        raise CliError("give either --demo or module:function (returning an Explorer)", status=2)
    if demo:
        missing = [name for name in ("sklearn", "matplotlib") if find_spec(name) is None]
        if missing:
            raise CliError(f"--demo needs {' and '.join(missing)}: pip install 'tdlens[demo,app]'")
        from tdlens.app.demo import digits_explorer

        explorer = digits_explorer(cache_dir)
    else:
        explorer = load_object(spec or "")
        if not isinstance(explorer, Explorer):
            raise CliError(f"{spec} gave a {type(explorer).__name__}, not a tdlens.app.Explorer")
    explorer.serve(port=port, host=host)
    return 0
