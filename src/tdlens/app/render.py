"""PNG pictures for the explorer's page: a sample as it is, and an attribution drawn with
:mod:`tdlens.viz` (heatmap over the image, or feature bars)."""

from __future__ import annotations

import io
import threading
from typing import Any

__all__ = ["attribution_png", "sample_png"]

# matplotlib shares font and text caches between figures: draw one figure at a time
_LOCK = threading.Lock()


def sample_png(sample: Any, modality: str) -> bytes:
    """An image sample at its own resolution (the page scales it up without smoothing)."""
    from matplotlib.image import imsave

    from tdlens.viz.image import image_to_show

    if modality != "image":
        raise ValueError("only image samples have a picture")
    array, cmap = image_to_show(sample)
    buffer = io.BytesIO()
    with _LOCK:
        imsave(buffer, array, cmap=cmap, format="png")
    return buffer.getvalue()


def attribution_png(
    sample: Any,
    attributions: Any,
    *,
    modality: str,
    feature_names: list[str] | None,
    sign: str = "auto",
) -> bytes:
    """The attribution of one sample: a heatmap over the image with a colour bar, or bars of
    the 20 features of largest absolute attribution."""
    import tdlens.viz

    with _LOCK:
        if modality == "image":
            # a layer's map (GradCam without upsampling) is not image-shaped: drawn alone
            under = sample if attributions.shape[-2:] == sample.shape[-2:] else None
            plot = tdlens.viz.heatmap(attributions, under, sign=sign, size=2.8)
        else:
            plot = tdlens.viz.feature_bars(
                attributions, feature_names, values=sample, top_k=20, width=5.0
            )
        return plot.png()
