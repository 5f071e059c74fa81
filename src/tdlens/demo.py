"""``tdlens demo``: train a small CNN on scikit-learn's digits and explain a few predictions.

Trains (or loads from a cache) a CNN on the 8x8 digits bundled with scikit-learn, explains test
digits for the predicted and the runner-up class with Saliency, InputXGradient and
IntegratedGradients (both targets in one call per method), and writes a PNG and index.html.
scikit-learn and matplotlib are imported only when the demo runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .core.errors import InputError

__all__ = ["DemoConfig", "DemoResult", "DigitsCNN", "default_cache_dir", "run_demo"]

_ARCH_VERSION = "digits-cnn-v1"
MAX_EXAMPLES = 50  # rows of the heatmap grids


@dataclass(frozen=True)
class DemoConfig:
    """Architecture and training settings; together they key the weights cache.

    Attributes:
        channels: Output channels of the two convolutions.
        hidden: Width of the hidden fully connected layer.
        epochs: Training epochs.
        batch_size: Training batch size.
        lr: Adam learning rate.
        seed: Seed of the train/test split, the initialisation and the shuffling.
        test_fraction: Share of the 1797 digits held out for testing.
    """

    channels: tuple[int, int] = (16, 32)
    hidden: int = 64
    epochs: int = 6
    batch_size: int = 64
    lr: float = 5e-3
    seed: int = 0
    test_fraction: float = 0.2

    def cache_key(self) -> str:
        """A short hash of the settings and the architecture version."""
        payload = json.dumps({"arch": _ARCH_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class DigitsCNN(nn.Module):
    """A small CNN for 1x8x8 images: two 3x3 convolutions, a max-pool, two linear layers.

    Args:
        channels: Output channels of the two convolutions.
        hidden: Width of the hidden fully connected layer.
    """

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 64) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 4 * 4, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Maps images ``[B, 1, 8, 8]`` in [0, 1] to class logits ``[B, 10]``."""
        return self.classifier(self.features(x))


@dataclass
class DemoResult:
    """What :func:`run_demo` did and produced.

    Attributes:
        out_dir: The output folder.
        accuracy: Test accuracy of the model.
        trained: Whether the model was trained in this run (False: loaded from the cache).
        weights_path: The cached weights file, None with the cache disabled.
        timings: Seconds taken by each method's ``attribute`` call (best of 3).
        model: The model, in eval mode.
        inputs: The explained test digits ``[B, 1, 8, 8]``.
        labels: Their true labels ``[B]``.
        probs: Their predicted class probabilities ``[B, 10]``.
        pred: The predicted classes ``[B]``.
        runner_up: The second most probable classes ``[B]``.
        attributions: Attributions ``[B, 2, 1, 8, 8]`` (predicted, runner-up) by method name.
        comparison: The methods' faithfulness metrics for the predicted class
            (:func:`tdlens.metrics.compare`).
        files: The files written: ``attributions.png`` and ``index.html``.
    """

    out_dir: Path
    accuracy: float
    trained: bool
    weights_path: Path | None
    timings: dict[str, float]
    model: nn.Module
    inputs: Tensor
    labels: Tensor
    probs: Tensor
    pred: Tensor
    runner_up: Tensor
    attributions: dict[str, Tensor]
    comparison: Any = None
    files: list[Path] = field(default_factory=list)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread: 8x8 inputs gain nothing from more, which crawl on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tdlens``, or ``~/.cache/tdlens`` when it is unset or not absolute."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return Path(base if os.path.isabs(base) else Path.home() / ".cache") / "tdlens"


def load_digits_data(seed: int = 0, test_fraction: float = 0.2) -> tuple[Tensor, ...]:
    """Loads scikit-learn's bundled digits (no download) and splits them reproducibly.

    Args:
        seed: Seed of the random split.
        test_fraction: Share of the examples held out for testing.

    Returns:
        ``x_train, y_train, x_test, y_test``: images ``[N, 1, 8, 8]`` in [0, 1], labels ``[N]``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def train_model(config: DemoConfig, x: Tensor, y: Tensor) -> DigitsCNN:
    """Trains a :class:`DigitsCNN` with Adam and cross-entropy, reproducibly.

    Args:
        config: Architecture and training settings.
        x: Training images ``[N, 1, 8, 8]``.
        y: Training labels ``[N]``.

    Returns:
        The trained model, in eval mode.
    """
    torch.manual_seed(config.seed)
    model = DigitsCNN(config.channels, config.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def load_or_train(
    config: DemoConfig, x: Tensor, y: Tensor, cache_dir: Path | None
) -> tuple[DigitsCNN, bool, Path | None]:
    """Loads cached weights for ``config``, or trains a model and caches its weights.

    Args:
        config: Architecture and training settings; their hash names the cache file.
        x: Training images.
        y: Training labels.
        cache_dir: The cache folder; None neither reads nor writes a cache.

    Returns:
        The model in eval mode, whether it was trained, and the weights file (or None).
    """
    if cache_dir is None:
        return train_model(config, x, y), True, None
    path = cache_dir / f"digits-cnn-{config.cache_key()}.pt"
    if path.is_file():
        model = DigitsCNN(config.channels, config.hidden)
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval(), False, path
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError):
            pass  # an unreadable file (e.g. truncated): train again and overwrite it
    model = train_model(config, x, y)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), partial)
    os.replace(partial, path)  # atomic: a concurrent run never reads a half-written file
    return model, True, path


def pick_examples(labels: Tensor, n: int) -> Tensor:
    """Indices of ``n`` examples in dataset order, one per class before any repeated class."""
    seen: set[int] = set()
    first: list[int] = []
    rest: list[int] = []
    for index, label in enumerate(labels.tolist()):
        (rest if label in seen else first).append(index)
        seen.add(label)
    return torch.tensor([*first, *rest][:n], dtype=torch.long)


def explain(
    model: nn.Module, x: Tensor, targets: list[Tensor], ig_steps: int = 50, repeats: int = 3
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Attributes ``x`` for K targets per example with three gradient methods.

    Each call of a method explains all the targets: ``attribute(x, targets=targets)``.

    Args:
        model: The classifier.
        x: Inputs ``[B, 1, 8, 8]``.
        targets: K per-example targets, each a LongTensor ``[B]``.
        ig_steps: Integration steps of Integrated Gradients.
        repeats: Calls per method; the fastest is reported.

    Returns:
        The attributions ``[B, K, 1, 8, 8]`` and the best time in seconds, by method name.
    """
    import tdlens

    methods: dict[str, Any] = {
        "Saliency": tdlens.Saliency(model),
        "InputXGradient": tdlens.InputXGradient(model),
        "IntegratedGradients": tdlens.IntegratedGradients(model, n_steps=ig_steps),
    }
    # Best of `repeats`: the first call pays one-off costs (torch imports sympy), noise varies.
    attributions, timings = {}, {}
    for name, method in methods.items():
        timings[name] = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            attributions[name] = method.attribute(x, targets=targets)
            timings[name] = min(timings[name], time.perf_counter() - start)
    return attributions, timings


def evaluate(model: nn.Module, x: Tensor, pred: Tensor, ig_steps: int) -> Any:
    """Deletion, insertion and infidelity of each method for the predicted class, as a
    :class:`tdlens.metrics.Comparison` table."""
    import tdlens
    from tdlens.metrics import compare, gaussian_noise

    methods = {
        "Saliency": tdlens.Saliency(model),
        "InputXGradient": tdlens.InputXGradient(model),
        "IntegratedGradients": tdlens.IntegratedGradients(model, n_steps=ig_steps),
    }
    torch.manual_seed(0)  # infidelity draws its perturbations from torch's generator
    return compare(
        model,
        x,
        methods,
        metrics=("deletion", "insertion", "infidelity"),
        target=pred,
        metric_options={"infidelity": {"perturb_func": gaussian_noise(0.1)}},
        warmup=False,
    )


def write_report(result: DemoResult, ig_steps: int) -> list[Path]:
    """Writes ``attributions.png`` and ``index.html`` into ``result.out_dir``.

    Args:
        result: The demo's model outputs and attributions.
        ig_steps: Integration steps used by Integrated Gradients (shown in the report).

    Returns:
        The files written.
    """
    from tdlens.viz import HtmlImage, HtmlTable, save_attribution_grid, write_html_page

    targets = ("predicted", "runner-up")
    png = save_attribution_grid(
        result.out_dir / "attributions.png",
        result.inputs,
        {
            f"{name}\n{which}": attr[:, k]
            for name, attr in result.attributions.items()
            for k, which in enumerate(targets)
        },
        row_labels=[
            f"label {int(t)}\npred {int(p)}\nrunner-up {int(r)}"
            for t, p, r in zip(result.labels, result.pred, result.runner_up)
        ],
        title="Saliency: |gradient|. Signed maps: red raises the class logit, blue lowers it. "
        "Each map is scaled to its own max |value|.",
    )

    def class_cell(cls: Tensor, row: int) -> str:
        p = float(result.probs[row, cls[row]])
        return f"{int(cls[row])} (p = {p:.3f})" if p >= 1e-3 else f"{int(cls[row])} (p = {p:.1e})"

    examples = HtmlTable(
        ["row", "true label", "predicted", "runner-up"],
        [
            [str(i), str(int(label)), class_cell(result.pred, i), class_cell(result.runner_up, i)]
            for i, label in enumerate(result.labels)
        ],
        caption="Explained test digits (the rows of the figure)",
    )
    timings = HtmlTable(
        ["method", "one attribute(x, targets=[pred, runner_up]) call", "per digit and target"],
        [
            [name, f"{secs * 1e3:.1f} ms", f"{secs * 1e3 / (2 * len(result.labels)):.2f} ms"]
            for name, secs in result.timings.items()
        ],
        caption=f"Time per method ({len(result.labels)} digits x 2 targets; best of 3 calls)",
    )
    where = "trained in this run" if result.trained else f"loaded from {result.weights_path}"
    html = write_html_page(
        result.out_dir / "index.html",
        "tdlens demo: explaining a digits CNN",
        [
            examples,
            timings,
            *_comparison_table(result),
            HtmlTable(["heatmaps"], [[HtmlImage(png, "attribution heatmaps")]]),
        ],
        paragraphs=[
            f"A small CNN on scikit-learn's 8x8 digits ({where}); test accuracy "
            f"{result.accuracy:.1%}. Each test digit is explained for its predicted class and "
            "for the runner-up class, both in one call per method.",
            f"Integrated Gradients: {ig_steps} steps from a blank (all-zero) baseline. Saliency "
            "shows |gradient|; the signed maps show what raises (red) or lowers (blue) a logit.",
        ],
    )
    return [png, html]


def _comparison_table(result: DemoResult) -> list[Any]:
    from tdlens.viz import HtmlTable

    if result.comparison is None:
        return []
    metrics = list(result.comparison.metrics)
    arrows = {"deletion": "lower is better", "insertion": "higher is better"}
    return [
        HtmlTable(
            ["method", *(f"{m} ({arrows.get(m, 'lower is better')})" for m in metrics)],
            [[row["method"], *(f"{row[m]:.4g}" for m in metrics)] for row in result.comparison],
            caption="Faithfulness for the predicted class (tdlens.metrics.compare; mean over "
            "the digits)",
        )
    ]


def check_folder(path: Path, option: str) -> None:
    """Raise unless ``path`` is a folder or can be made one (no file on it or above it)."""
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                what = "is" if part == path else f"lies under {str(part)!r}, which is"
                raise InputError(
                    f"{option} {str(path)!r} {what} a file, not a folder; give a folder path "
                    "(it is created if missing)"
                )
            return


def run_demo(
    out_dir: str | os.PathLike[str] = "tdlens-demo",
    cache_dir: str | os.PathLike[str] | None = None,
    n_examples: int = 6,
    use_cache: bool = True,
    *,
    config: DemoConfig | None = None,
    ig_steps: int = 50,
    log: Callable[[str], None] | None = print,
) -> DemoResult:
    """Trains or loads the digits CNN, explains ``n_examples`` test digits, writes a report.

    Args:
        out_dir: Folder for ``attributions.png`` and ``index.html``; created if missing.
        cache_dir: Folder of the weights cache; :func:`default_cache_dir` when None.
        n_examples: How many test digits to explain.
        use_cache: Whether to read and write the weights cache.
        config: Architecture and training settings; :class:`DemoConfig` defaults when None.
        ig_steps: Integration steps of Integrated Gradients.
        log: Where progress lines go; None is silent.

    Returns:
        A :class:`DemoResult`.

    Raises:
        ValueError: If ``n_examples`` is not between 1 and :data:`MAX_EXAMPLES`.
    """
    if not 1 <= n_examples <= MAX_EXAMPLES:
        raise ValueError(f"n_examples must be between 1 and {MAX_EXAMPLES}, got {n_examples}")
    say = log or (lambda _line: None)
    config = config or DemoConfig()
    cache = Path(cache_dir or default_cache_dir()) if use_cache else None
    # before any work: a path that cannot be a folder would fail only after the whole demo
    check_folder(Path(out_dir), "out_dir")
    if cache is not None:
        check_folder(cache, "cache_dir")
    x_train, y_train, x_test, y_test = load_digits_data(config.seed, config.test_fraction)

    with single_thread():  # restored on exit
        start = time.perf_counter()
        model, trained, weights_path = load_or_train(config, x_train, y_train, cache)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            test_probs = model(x_test).softmax(-1)
        accuracy = (test_probs.argmax(1) == y_test).float().mean().item()
        trained_text = f"trained DigitsCNN for {config.epochs} epochs in {seconds:.2f} s"
        say(trained_text if trained else f"loaded cached weights from {weights_path}")
        say(f"test accuracy: {accuracy:.1%} ({len(y_test)} test digits)")
        rows = pick_examples(y_test, n_examples)
        x, labels, probs = x_test[rows], y_test[rows], test_probs[rows]
        pred, runner_up = probs.topk(2, dim=-1).indices.T.contiguous()  # two LongTensors [B]

        attributions, timings = explain(model, x, [pred, runner_up], ig_steps)
        comparison = evaluate(model, x, pred, ig_steps)
    for name, secs in timings.items():
        say(f"{name:<20} {secs * 1e3:8.1f} ms  (one call: 2 targets x {len(rows)} digits)")
    say("how faithful each method is for the predicted class (tdlens.metrics.compare):")
    say(str(comparison))

    result = DemoResult(
        out_dir=Path(out_dir),
        accuracy=accuracy,
        trained=trained,
        weights_path=weights_path,
        timings=timings,
        model=model,
        inputs=x,
        labels=labels,
        probs=probs,
        pred=pred,
        runner_up=runner_up,
        attributions=attributions,
        comparison=comparison,
    )
    result.files = write_report(result, ig_steps=ig_steps)
    say(f"wrote {len(result.files)} files to {result.out_dir.resolve()}:")
    for path in result.files:
        say(f"  {path}")
    say("explore the model interactively: tdlens explore --demo  (needs pip install 'tdlens[app]')")
    return result
