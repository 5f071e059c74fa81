"""Errors that say what was wrong and how to fix it.

Every error tdlens raises on bad input derives from :class:`TdlensError` and from the builtin
exception a user would expect (``ValueError``, ``TypeError``, ``LookupError``), so existing
``except ValueError`` code keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TdlensError(Exception):
    """Base class of the errors tdlens raises on bad input."""


class InputError(TdlensError, ValueError):
    """An input, baseline or option has the wrong value or shape."""


class InputTypeError(TdlensError, TypeError):
    """An input or option has a type tdlens cannot use."""


class KeyNotFoundError(TdlensError, LookupError):
    """A key or module path does not exist. The message lists the closest ones that do."""

    def __str__(self) -> str:  # LookupError would quote the message like a key
        return str(self.args[0]) if self.args else ""


class TargetError(TdlensError, ValueError):
    """A target does not select one scalar per example of the explained output."""


class TrainModeWarning(UserWarning):
    """The model is in training mode with modules that behave differently there (dropout,
    batch norm): attributions would be noisy or depend on the batch."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates nearest to ``name``: close spellings first, then shared prefixes."""
    candidates = list(candidates)
    near = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if len(near) < n:
        stem = name.rsplit(".", 1)[0]
        near += [c for c in candidates if c.startswith(stem) and c not in near][: n - len(near)]
    return near


def format_keys(keys: Iterable[object], limit: int = 20) -> str:
    """``'a', 'b', ('c', 'd')`` for an error message, cut after ``limit`` keys."""
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
