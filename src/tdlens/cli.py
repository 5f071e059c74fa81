"""The ``tdlens`` command line: ``tdlens demo``, ``tdlens explain``, ``tdlens methods``,
``tdlens explore`` and ``tdlens --version``.

Importing this module is cheap: scikit-learn, matplotlib and Flask are imported only when a
command needs them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    from importlib import metadata

    try:
        return metadata.version("tdlens")
    except metadata.PackageNotFoundError:
        import tdlens

        return str(getattr(tdlens, "__version__", "unknown"))


def _positive_int(text: str) -> int:
    """Parses a strictly positive integer for argparse."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser with its subcommands.

    Returns:
        The ``tdlens`` parser.
    """
    parser = argparse.ArgumentParser(
        prog="tdlens",
        description="Interpretability for any PyTorch model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="train a small CNN on scikit-learn's digits and explain it (PNG + HTML)",
        description=(
            "Train (or load from the cache) a small CNN on scikit-learn's 8x8 digits, explain a "
            "few test digits for the predicted and the runner-up class with Saliency, "
            "InputXGradient and IntegratedGradients, and write PNG heatmaps and index.html."
        ),
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("tdlens-demo"),
        metavar="DIR",
        help="output folder (default: ./tdlens-demo)",
    )
    demo.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="weights cache (default: $XDG_CACHE_HOME/tdlens or ~/.cache/tdlens)",
    )
    demo.add_argument(
        "--n-examples",
        type=_positive_int,
        default=6,
        metavar="N",
        help="number of test digits to explain, at most 50 (default: 6)",
    )
    demo.add_argument(
        "--no-cache",
        action="store_true",
        help="always train, and neither read nor write the weights cache",
    )
    demo.set_defaults(handler=_run_demo)
    _add_tools(commands)
    return parser


def _add_tools(commands: Any) -> None:
    """The ``explain``, ``methods`` and ``explore`` subcommands."""
    explain = commands.add_parser(
        "explain",
        help="attribute a model's outputs for inputs in a file; write the attributions",
        description=(
            "Load a model from module:attribute (a function or class is called without "
            "arguments; the model is put in eval mode), inputs from a .pt tensor file "
            "(torch.load with weights_only=True) or a .npy array, run an attribution method "
            "and save the attributions with torch.save."
        ),
        epilog="example: tdlens explain my_models:make_model --input x.pt "
        "--method IntegratedGradients --target 3 --arg n_steps=32 --out attr.pt --png attr.png",
    )
    explain.add_argument("model", metavar="MODULE:ATTR", help="the model, e.g. my_models:model")
    explain.add_argument("--input", required=True, type=Path, metavar="FILE", help=".pt or .npy")
    explain.add_argument("--method", required=True, metavar="NAME", help="see `tdlens methods`")
    explain.add_argument(
        "--target",
        default=None,
        metavar="T",
        help="class index, comma-separated indices (several targets), or 'pred' (default)",
    )
    explain.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an attribute() argument as a Python literal, e.g. n_steps=32 (repeatable)",
    )
    explain.add_argument("--out", required=True, type=Path, metavar="FILE", help="output .pt")
    explain.add_argument("--png", type=Path, default=None, metavar="FILE", help="also a figure")
    explain.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        metavar="N",
        help="examples per attribute() call (default: 64); a progress bar shows on a terminal",
    )
    explain.add_argument("--seed", type=int, default=None, help="seed for sampling methods")
    explain.set_defaults(handler=_run_tool)

    methods = commands.add_parser(
        "methods", help="list the attribution methods and their arguments"
    )
    methods.set_defaults(handler=_run_tool)

    explore = commands.add_parser(
        "explore",
        help="open the interactive explorer (needs the app extra)",
        description="Serve the explorer: --demo for the digits CNN, or MODULE:FUNCTION "
        "returning a tdlens.app.Explorer.",
    )
    explore.add_argument("spec", nargs="?", default=None, metavar="MODULE:FUNCTION")
    explore.add_argument("--demo", action="store_true", help="the demo's digits CNN")
    explore.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: free)")
    explore.add_argument(
        "--host", default="127.0.0.1", help="interface (default 127.0.0.1; others warn)"
    )
    explore.add_argument("--cache-dir", type=Path, default=None, metavar="DIR")
    explore.set_defaults(handler=_run_tool)


def _run_tool(args: argparse.Namespace) -> int:
    """Runs ``explain``, ``methods`` or ``explore``; a failure prints one line and exits 1
    (2 for a usage error)."""
    from tdlens import cli_explain

    try:
        if args.command == "methods":
            return cli_explain.run_methods()
        if args.command == "explore":
            return cli_explain.run_explore(
                args.spec, demo=args.demo, port=args.port, host=args.host, cache_dir=args.cache_dir
            )
        return cli_explain.run_explain(
            args.model,
            args.input,
            args.method,
            target=args.target,
            args=args.arg,
            out=args.out,
            png=args.png,
            batch_size=args.batch_size,
            seed=args.seed,
        )
    except cli_explain.CliError as error:
        print(f"tdlens {args.command}: {error}", file=sys.stderr)
        return error.status


def _run_demo(args: argparse.Namespace) -> int:
    """Runs ``tdlens demo`` with the parsed arguments.

    Args:
        args: The parsed command line.

    Returns:
        The exit status.
    """
    from importlib.util import find_spec

    missing = [name for name in ("sklearn", "matplotlib") if find_spec(name) is None]
    if missing:
        print(
            f"tdlens demo needs {' and '.join(missing)}; install the demo extra with "
            "`pip install 'tdlens[demo]'`",
            file=sys.stderr,
        )
        return 1
    from tdlens.demo import MAX_EXAMPLES, run_demo

    if args.n_examples > MAX_EXAMPLES:
        print(f"tdlens demo: --n-examples is at most {MAX_EXAMPLES}", file=sys.stderr)
        return 2
    from tdlens.core.errors import TdlensError

    try:
        run_demo(
            out_dir=args.out,
            cache_dir=args.cache_dir,
            n_examples=args.n_examples,
            use_cache=not args.no_cache,
        )
    except TdlensError as error:
        print(f"tdlens demo: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``tdlens`` command.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status: 0 on success, 2 on a usage error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
