"""Run captum's own attribution tests with tdlens swapped in, and count what passes.

captum's tests (``tests/attr`` in its git repository; the package on PyPI ships none) are run
unchanged, except that inside each test file every name imported from ``captum`` that is an
attribution class (``Saliency``, ``IntegratedGradients``, ``NoiseTunnel``, ``LimeBase``...)
resolves to the class of the same name in :mod:`tdlens.captum`. Everything else stays
captum's: the test helpers (``captum.testing``), its models, its utilities, the argument
objects a captum user passes (``SkLearnLasso``, ``get_exp_kernel_similarity_function``). A
captum attribution class that tdlens lacks becomes a class whose constructor raises, so the
tests that use it fail (and are counted) instead of silently running captum.

Every test of the listed files counts: a skipped or erroring test is not a pass.

Usage::

    git clone https://github.com/meta-pytorch/captum /tmp/captum-src
    git -C /tmp/captum-src checkout v0.9.0
    python scripts/captum_suite.py /tmp/captum-src             # tdlens swapped in
    python scripts/captum_suite.py /tmp/captum-src --reference # captum itself (all pass)
    python scripts/captum_suite.py /tmp/captum-src --show-failures -k lime

The checkout's ``captum`` package is put first on ``sys.path`` (its tests import their helpers
from ``captum.testing``, which the wheel does not ship), so the checkout must be the release
the tests belong to; the script stops if its version differs from ``--expect-version``.
Needs ``pytest`` and ``parameterized`` (``pip install parameterized``).
"""

from __future__ import annotations

import argparse
import builtins
import collections
import os
import sys
import types
from pathlib import Path
from typing import Any

FILES = (
    "test_saliency.py",
    "test_input_x_gradient.py",
    "test_integrated_gradients_basic.py",
    "test_deeplift_basic.py",
    "test_occlusion.py",
    "test_feature_ablation.py",
    "test_shapley.py",
    "test_kernel_shap.py",
    "test_lime.py",
    "test_gradient_shap.py",
    "test_guided_backprop.py",
    "test_deconvolution.py",
)


class _Missing:
    """Stands for a captum attribution class that tdlens does not have."""

    captum_name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"tdlens.captum has no {self.captum_name}")


def _is_captum_attribution_class(value: Any) -> bool:
    if not isinstance(value, type):
        return False
    from captum.attr._utils.attribution import Attribution

    if issubclass(value, Attribution):
        return True
    return value.__module__.startswith("captum.attr._core")


class _SwappedModule(types.ModuleType):
    """A view of a captum module in which attribution classes are tdlens's."""

    def __init__(self, module: types.ModuleType, swaps: dict[str, Any]) -> None:
        super().__init__(module.__name__)
        self._captum_module = module
        self._swaps = swaps

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._captum_module, name)
        if not _is_captum_attribution_class(value):
            return value
        if name not in self._swaps:
            import tdlens.captum

            if hasattr(tdlens.captum, name):
                self._swaps[name] = getattr(tdlens.captum, name)
            else:
                self._swaps[name] = type(name, (_Missing,), {"captum_name": name})
        return self._swaps[name]


class SwapPlugin:
    """pytest plugin: the import hook, and per-file outcome counts."""

    def __init__(self, test_dir: Path, files: list[str]) -> None:
        self.test_files = {str((test_dir / name).resolve()) for name in files}
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.failures: dict[str, str] = {}
        self._swaps: dict[str, Any] = {}
        self._import = builtins.__import__

    def install(self) -> None:
        real_import = self._import

        def swapped_import(
            name: str,
            globals: dict[str, Any] | None = None,
            locals: Any = None,
            fromlist: Any = (),
            level: int = 0,
        ) -> Any:
            module = real_import(name, globals, locals, fromlist, level)
            if (
                fromlist
                and level == 0
                and name.startswith("captum")
                and globals is not None
                and str(Path(globals.get("__file__") or "-").resolve()) in self.test_files
            ):
                return _SwappedModule(module, self._swaps)
            return module

        builtins.__import__ = swapped_import

    def uninstall(self) -> None:
        builtins.__import__ = self._import

    # -- pytest hooks --------------------------------------------------------------------------
    def pytest_runtest_logreport(self, report: Any) -> None:
        name = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome = "passed" if report.passed else ("skipped" if report.skipped else "failed")
            self.counts[name][outcome] += 1
            if not report.passed:
                self.failures[report.nodeid] = _reason(report)
        elif report.when == "teardown" and report.failed:
            self.counts[name]["passed"] -= 1
            self.counts[name]["failed"] += 1
            self.failures[report.nodeid] = _reason(report)

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            name = report.nodeid.rsplit("/", 1)[-1]
            self.counts[name]["collection error"] += 1
            self.failures[report.nodeid] = _reason(report)


def _reason(report: Any) -> str:
    text = str(getattr(report, "longrepr", "") or "")
    lines = [line for line in text.splitlines() if line.startswith("E ")]
    return (lines[-1] if lines else text.splitlines()[-1] if text else "?")[:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="captum source checkout (git, v0.9.0)")
    parser.add_argument("--reference", action="store_true", help="run captum itself")
    parser.add_argument("--expect-version", default="0.9.0")
    parser.add_argument("--show-failures", action="store_true", help="one line per failure")
    parser.add_argument("-k", default=None, help="pytest -k expression")
    parser.add_argument("--files", nargs="*", default=list(FILES))
    args = parser.parse_args(argv)

    root = args.checkout.resolve()
    test_dir = root / "tests" / "attr"
    missing = [f for f in args.files if not (test_dir / f).is_file()]
    if missing:
        parser.error(f"{test_dir} lacks {', '.join(missing)}: pass a captum git checkout")
    sys.path.insert(0, str(root))
    os.chdir(root)
    import captum

    if not Path(captum.__file__).resolve().is_relative_to(root):
        parser.error(f"captum imports from {captum.__file__}, not from the checkout {root}")
    if captum.__version__ != args.expect_version:
        parser.error(f"the checkout is captum {captum.__version__}, not {args.expect_version}")

    import pytest

    plugin = SwapPlugin(test_dir, args.files)
    if not args.reference:
        plugin.install()
    pytest_args = ["-q", "-p", "no:cacheprovider", "--rootdir", str(root), "-o", "addopts="]
    pytest_args += ["-W", "ignore::DeprecationWarning", "-W", "ignore::UserWarning"]
    if args.k:
        pytest_args += ["-k", args.k]
    pytest_args += [str(test_dir / f) for f in args.files]
    try:
        pytest.main(pytest_args, plugins=[plugin])
    finally:
        plugin.uninstall()

    if args.show_failures:
        print("\nfailures:")
        for nodeid, reason in sorted(plugin.failures.items()):
            print(f"  {nodeid}\n      {reason}")
    who = "captum 0.9.0 itself" if args.reference else "tdlens swapped in"
    print(f"\ncaptum {captum.__version__} tests/attr with {who}:")
    print(f"  {'file':40s} {'passed':>7s} {'of':>4s}")
    total_passed = total = 0
    for name in args.files:
        counter = plugin.counts.get(name, collections.Counter())
        n = sum(counter.values())
        total_passed += counter["passed"]
        total += n
        print(f"  {name:40s} {counter['passed']:7d} {n:4d}")
    share = 100 * total_passed / total if total else 0.0
    print(f"  {'total':40s} {total_passed:7d} {total:4d}  ({share:.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
