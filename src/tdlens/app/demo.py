"""The explorer on ``tdlens demo``'s digits CNN: ``tdlens explore --demo``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .explorer import Explorer

__all__ = ["DEMO_METHODS", "digits_explorer"]

DEMO_METHODS: dict[str, dict[str, Any]] = {
    "Saliency": {},
    "InputXGradient": {},
    "IntegratedGradients": {"n_steps": 32},
    "GuidedBackprop": {},
    "Occlusion": {"sliding_window_shapes": (1, 2, 2)},
}


def digits_explorer(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    classes: Sequence[str] | None = None,
    methods: Any = None,
) -> Explorer:
    """An :class:`Explorer` over the demo's held-out digits (360 images ``[1, 8, 8]``).

    The CNN is trained once (a few seconds) and cached like ``tdlens demo`` does.

    Args:
        cache_dir: The weights cache; ``tdlens.demo.default_cache_dir()`` when None.
        classes: Ten class names; ``"0"`` ... ``"9"`` when None.
        methods: The methods; :data:`DEMO_METHODS` when None.
    """
    from pathlib import Path

    from tdlens.demo import DemoConfig, default_cache_dir, load_digits_data, load_or_train

    config = DemoConfig()
    x_train, y_train, x_test, y_test = load_digits_data(config.seed, config.test_fraction)
    cache = default_cache_dir() if cache_dir is None else cache_dir
    model, _, _ = load_or_train(config, x_train, y_train, Path(cache))
    return Explorer(
        model,
        (x_test, y_test),
        classes=list(classes) if classes is not None else [str(i) for i in range(10)],
        methods=DEMO_METHODS if methods is None else methods,
        modality="image",
        title="tdlens explorer: digits CNN",
    )
