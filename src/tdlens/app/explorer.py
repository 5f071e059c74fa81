"""The explorer: a model, a dataset and a few attribution methods, behind a local web page.

Everything the page shows comes from this object's methods (:meth:`Explorer.samples`,
:meth:`Explorer.methods`, :meth:`Explorer.attribute`), which the JSON API serves unchanged
and which use only tdlens's public API. Model calls run on one worker thread
(:class:`~tdlens.app.worker.Worker`); answers are cached per (sample, method, target, args).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor

from .data import freeze, predict_all, split_dataset
from .methods import ExplorerError, MethodSpec, build_methods
from .worker import Worker

__all__ = ["MODALITIES", "Explorer", "ExplorerError"]

MODALITIES = ("image", "tabular")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Explorer:
    """An interactive, sample-based attribution explorer (the successor of Captum Insights).

    Args:
        model: A classifier mapping a batch ``[B, *shape]`` to scores ``[B, C]``; never
            changed (no hook is left, parameters and flags stay as they were).
        dataset: ``(inputs, labels)`` tensors, or a sequence (e.g. a torch ``Dataset``) of
            ``(input, label)`` pairs or of inputs alone.
        classes: C class names (shown escaped); ``"0"``, ``"1"``, ... when None.
        methods: tdlens method names, or a mapping from a name to default ``attribute()``
            arguments (``{"Occlusion": {"sliding_window_shapes": (1, 2, 2)}}``).
        modality: ``"image"`` (inputs ``[C, H, W]`` or ``[H, W]``) or ``"tabular"``
            (inputs ``[F]``, with ``feature_names``). Text is not supported yet.
        feature_names: F names of a tabular input.
        title: The page title.
        cache_size: How many attributions are kept.
        batch_size: Rows per forward pass when predicting the whole dataset.
        check: Predict every sample and run every method once on the first sample now, so
            that a misconfigured method (e.g. GradCam without ``layer``) or a wrong number
            of class names fails here rather than on the page.

    Example:
        >>> app = Explorer(model, (x_test, y_test), classes=names,
        ...                methods=["Saliency", "IntegratedGradients"], modality="image")
        >>> app.start(port=0); print(app.url)     # http://127.0.0.1:<free port>/
        >>> app.stop()
    """

    def __init__(
        self,
        model: Any,
        dataset: Any,
        *,
        classes: Sequence[str] | None = None,
        methods: Any = ("Saliency", "IntegratedGradients"),
        modality: str = "image",
        feature_names: Sequence[str] | None = None,
        title: str = "tdlens explorer",
        cache_size: int = 512,
        batch_size: int = 256,
        check: bool = True,
    ) -> None:
        if modality not in MODALITIES:
            hint = " (the text view is not built yet)" if modality == "text" else ""
            raise ValueError(f"modality must be one of {MODALITIES}{hint}; got {modality!r}")
        if not callable(model):
            raise TypeError(f"Explorer needs a callable model, got {type(model).__name__}")
        self.model = model
        self.modality = modality
        self.title = str(title)
        self._inputs, self._labels = split_dataset(dataset)
        if len(self) == 0:
            raise ValueError("the dataset is empty")
        shape = tuple(self.sample(0).shape)
        if modality == "tabular":
            if len(shape) != 1:
                raise ValueError(f"tabular samples must be vectors [F]; got shape {list(shape)}")
            names = feature_names or [f"feature {i}" for i in range(shape[0])]
            if len(names) != shape[0]:
                raise ValueError(f"{len(names)} feature names for {shape[0]} features")
            self.feature_names: list[str] | None = [str(n) for n in names]
        else:
            if len(shape) not in (2, 3):
                raise ValueError(
                    f"image samples must be [C, H, W] or [H, W]; got shape {list(shape)}"
                )
            self.feature_names = None
        self._classes = None if classes is None else [str(c) for c in classes]
        self._specs: dict[str, MethodSpec] = build_methods(model, methods, shape)
        self._worker = Worker()
        self._cache: OrderedDict[Hashable, dict[str, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._batch_size = batch_size
        self._predictions: tuple[Tensor, Tensor] | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        if check:
            n_classes = self._prediction_table()[1].shape[1]
            if self._classes is not None and len(self._classes) != n_classes:
                raise ValueError(
                    f"{len(self._classes)} class names for a model with {n_classes} outputs"
                )
            for name in self._specs:
                try:
                    self.attribute(0, name, 0)
                except ExplorerError as error:
                    raise ValueError(f"method {name} does not run here: {error.message}") from None

    # -- data --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._inputs)

    def sample(self, index: int) -> Tensor:
        """Sample ``index`` as a tensor (without batch dimension)."""
        value = self._inputs[index]
        return value if isinstance(value, Tensor) else torch.as_tensor(value)

    def label(self, index: int) -> int | None:
        if self._labels is None:
            return None
        return int(self._labels[index])

    @property
    def classes(self) -> list[str]:
        """The class names (``"0"``, ``"1"``, ... when none were given)."""
        if self._classes is None:
            n = int(self._prediction_table()[1].shape[1])
            self._classes = [str(i) for i in range(n)]
        return self._classes

    def _prediction_table(self) -> tuple[Tensor, Tensor]:
        """Predicted class ``[N]`` and class probabilities ``[N, C]`` of every sample."""
        if self._predictions is None:
            self._predictions = self._worker.run(
                ("predictions",),
                lambda: predict_all(self.model, self.sample, len(self), self._batch_size),
            )
        return self._predictions

    def _check_index(self, sample: Any) -> int:
        if isinstance(sample, bool) or not isinstance(sample, int):
            raise ExplorerError(f"'sample' must be an integer id, got {sample!r}")
        if not 0 <= sample < len(self):
            raise ExplorerError(f"no sample {sample}: ids run from 0 to {len(self) - 1}", 404)
        return sample

    def _check_class(self, value: Any, what: str) -> int:
        n = len(self.classes)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
            raise ExplorerError(f"{what} must be a class id from 0 to {n - 1}, got {value!r}")
        return value

    # -- the API -----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Title, modality, class names, feature names and the number of samples."""
        return {
            "title": self.title,
            "modality": self.modality,
            "classes": self.classes,
            "feature_names": self.feature_names,
            "n_samples": len(self),
            "has_labels": self._labels is not None,
        }

    def samples(
        self,
        *,
        offset: int = 0,
        limit: int = 48,
        label: int | None = None,
        predicted: int | None = None,
        misclassified: bool = False,
    ) -> dict[str, Any]:
        """One page of samples that pass the filters.

        Returns:
            ``{"total": matches, "offset", "limit", "samples": [{"id", "label", "predicted",
            "confidence", "misclassified"}, ...]}``.
        """
        if offset < 0 or not 1 <= limit <= 1000:
            raise ExplorerError("offset must be >= 0 and limit between 1 and 1000")
        pred, probs = self._prediction_table()
        keep = torch.ones(len(self), dtype=torch.bool)
        labels = self._labels
        if label is not None:
            if labels is None:
                raise ExplorerError("this dataset has no labels to filter by")
            keep &= labels == self._check_class(label, "label")
        if predicted is not None:
            keep &= pred == self._check_class(predicted, "predicted")
        if misclassified:
            if labels is None:
                raise ExplorerError("this dataset has no labels, so nothing is misclassified")
            keep &= labels != pred
        ids = keep.nonzero().flatten().tolist()
        rows = []
        for i in ids[offset : offset + limit]:
            p, y = int(pred[i]), self.label(i)
            rows.append(
                {
                    "id": i,
                    "label": y,
                    "predicted": p,
                    "confidence": round(float(probs[i, p]), 6),
                    "misclassified": y is not None and y != p,
                }
            )
        return {"total": len(ids), "offset": offset, "limit": limit, "samples": rows}

    def methods(self) -> list[dict[str, Any]]:
        """The configured methods and the arguments the page may set, with their defaults."""
        return [spec.as_json() for spec in self._specs.values()]

    def attribute(
        self, sample: Any, method: Any, target: Any = None, args: Any = None
    ) -> dict[str, Any]:
        """Attributes one sample, as ``method.attribute(x[sample:sample+1], target=target,
        **args)`` would, plus its deletion-curve score (``tdlens.metrics.deletion``).

        Args:
            sample: The sample id.
            method: A configured method name.
            target: A class id; None: the predicted class.
            args: ``attribute()`` arguments the method exposes (see :meth:`methods`).

        Returns:
            ``{"sample", "method", "target", "args", "scores" (flat), "shape", "elements"
            (feature names, tabular only), "took_ms", "deletion": {"auc", "fractions",
            "curve"}, "cached"}``.

        Raises:
            ExplorerError: With a 4xx status on an unknown sample or method, or a bad argument.
        """
        index = self._check_index(sample)
        if not isinstance(method, str) or method not in self._specs:
            raise ExplorerError(
                f"unknown method {method!r}; configured methods: {', '.join(self._specs)}", 404
            )
        spec = self._specs[method]
        options = spec.resolve(args)
        if target is None:
            target = int(self._prediction_table()[0][index])
        target = self._check_class(target, "target")
        key = (index, method, target, freeze(options))
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return {**hit, "cached": True}
        answer = self._worker.run(key, lambda: self._compute(index, spec, target, options))
        with self._cache_lock:
            self._cache[key] = answer
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return {**answer, "cached": False}

    def _compute(
        self, index: int, spec: MethodSpec, target: int, options: dict[str, Any]
    ) -> dict[str, Any]:
        import tdlens

        x = self.sample(index).unsqueeze(0)
        start = time.perf_counter()
        try:
            attr = spec.method.attribute(x, target=target, **options)
        except (tdlens.TdlensError, ValueError, TypeError) as error:
            raise ExplorerError(f"{spec.name} failed with these arguments: {error}") from error
        took_ms = (time.perf_counter() - start) * 1e3
        attr = attr.detach()
        # per-pixel deletion for images (all channels of a pixel at once), per-feature else;
        # on class probabilities, as in RISE, so that the area lies in [0, 1]
        mask = "pixels" if self.modality == "image" and x.ndim == 4 else None
        try:
            curve = tdlens.metrics.deletion(
                self._probabilities, x, attr, target=target, feature_mask=mask
            )
            deletion: dict[str, Any] | None = {
                "auc": float(curve.score[0]),
                "fractions": curve.fractions.tolist(),
                "curve": curve.curve[0].tolist(),
            }
        except (tdlens.TdlensError, ValueError, RuntimeError):
            deletion = None  # e.g. a layer's map (GradCam) that does not fit the input
        answer = {
            "sample": index,
            "method": spec.name,
            "target": target,
            "args": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in options.items()
                if k in spec.args
            },
            "scores": attr[0].reshape(-1).tolist(),
            "shape": list(attr.shape[1:]),
            "took_ms": round(took_ms, 3),
            "deletion": deletion,
        }
        if self.feature_names is not None:
            answer["elements"] = self.feature_names
        return answer

    def sample_png(self, sample: Any) -> bytes:
        """Image sample ``sample`` as PNG (404 for tabular data)."""
        from .render import sample_png

        index = self._check_index(sample)
        if self.modality != "image":
            raise ExplorerError("tabular samples have no picture", 404)
        return sample_png(self.sample(index), self.modality)

    def attribution_png(
        self, sample: Any, method: Any, target: Any = None, args: Any = None
    ) -> bytes:
        """:meth:`attribute`'s result drawn as PNG: a heatmap with a colour bar over the image,
        or a bar chart of the features (computed, or taken from the cache)."""
        from .render import attribution_png

        answer = self.attribute(sample, method, target, args)
        scores = torch.tensor(answer["scores"]).reshape(answer["shape"])
        try:
            return attribution_png(
                self.sample(answer["sample"]),
                scores,
                modality=self.modality,
                feature_names=self.feature_names,
            )
        except ValueError as error:
            raise ExplorerError(f"cannot draw this attribution: {error}") from None

    def _probabilities(self, x: Tensor) -> Tensor:
        return self.model(x).softmax(-1)

    # -- serving -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The page's address once started."""
        if self._server is None:
            raise RuntimeError("the explorer is not running; call start() first")
        host = self._server.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._server.server_port}/"

    def start(self, port: int = 8765, host: str = "127.0.0.1") -> str:
        """Serves the page in a background thread (for notebooks and tests); returns the URL.

        Args:
            port: The port; 0 picks a free one.
            host: The interface; anything but loopback exposes the model to the network, so
                it warns.
        """
        from .server import make_server

        if self._server is not None:
            return self.url
        if host not in _LOOPBACK:
            warnings.warn(
                f"serving the explorer on {host}: anyone who can reach this address can run "
                "your model; use 127.0.0.1 unless you mean it",
                stacklevel=2,
            )
        self._server = make_server(self, host, port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="tdlens-explorer-http", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stops serving (the cache is kept; :meth:`start` serves again)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def serve(self, port: int = 8765, host: str = "127.0.0.1") -> None:
        """Serves until interrupted (Ctrl+C)."""
        url = self.start(port=port, host=host)
        print(f"tdlens explorer: open {url} (Ctrl+C stops it)", flush=True)
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
            self._worker.close()
