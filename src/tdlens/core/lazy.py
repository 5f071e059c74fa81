"""Optional packages, imported on first use and looked up without importing them.

Following einops: to know whether a value is a TensorDict we only look in ``sys.modules``;
if tensordict was never imported, the user cannot have made one.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


def is_tensordict(value: Any) -> bool:
    """Whether ``value`` is a ``TensorDictBase``, without importing tensordict."""
    module = sys.modules.get("tensordict")
    return module is not None and isinstance(value, module.TensorDictBase)


def is_tensordict_module(model: Any) -> bool:
    """Whether ``model`` is a ``tensordict.nn`` module that reads and writes TensorDicts."""
    module = sys.modules.get("tensordict.nn")
    return module is not None and isinstance(model, module.TensorDictModuleBase)


def require(name: str, extra: str) -> Any:
    """Import an optional package, or say which extra installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(
            f"this feature needs the '{name}' package; install it with `pip install tdlens[{extra}]`"
        ) from error
