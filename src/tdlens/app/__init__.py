"""The interactive explorer: a local web page over a model, a dataset and attribution methods.

Needs Flask (the ``app`` extra: ``pip install 'tdlens[app]'``), imported when the explorer
starts serving. The library never imports this package; it uses only tdlens's public API.

Example:
    >>> from tdlens.app import Explorer
    >>> app = Explorer(model, (x, y), classes=names, methods=["Saliency", "Occlusion"])
    >>> app.serve(port=8765)               # blocks; app.start() / app.stop() in notebooks
"""

from tdlens.app.explorer import MODALITIES, Explorer
from tdlens.app.methods import ExplorerError

__all__ = ["MODALITIES", "Explorer", "ExplorerError"]
