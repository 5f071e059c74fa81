"""The ``tdlens`` command line: ``tdlens demo`` and ``tdlens --version``.

Importing this module is cheap: scikit-learn and matplotlib are imported only when the demo
runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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
    return parser


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
