"""Draws the pictures of docs/viz.md into docs/img/ with the demo's digits CNN.

Run: .venv/bin/python scripts/viz_gallery.py   (trains or loads the demo model; ~10 s)
"""

from __future__ import annotations

from pathlib import Path

import torch

import tdlens
import tdlens.viz as viz
from tdlens.demo import DemoConfig, default_cache_dir, load_digits_data, load_or_train

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"


def main() -> None:
    torch.set_num_threads(1)
    config = DemoConfig()
    x_train, y_train, x_test, y_test = load_digits_data(config.seed, config.test_fraction)
    model, _, _ = load_or_train(config, x_train, y_train, default_cache_dir())
    x = x_test[:4]
    pred = model(x).argmax(-1)
    ig = tdlens.IntegratedGradients(model).attribute(x, target=pred, n_steps=32)
    saliency = tdlens.Saliency(model).attribute(x, target=pred)
    occlusion = tdlens.Occlusion(model).attribute(x, target=pred, sliding_window_shapes=(1, 2, 2))

    viz.heatmap(ig[0], x[0], title=f"IG, class {int(pred[0])}", dpi=80).save(
        OUT / "viz-overlay.png"
    )
    viz.heatmap(ig[0], x[0], overlay=False, dpi=80).save(OUT / "viz-side-by-side.png")
    viz.heatmap(ig[0], sign="absolute", dpi=80).save(OUT / "viz-absolute.png")
    viz.comparison_grid(
        x,
        {"Saliency": saliency, "IntegratedGradients": ig, "Occlusion": occlusion},
        row_labels=[f"label {int(y)}" for y in y_test[:4]],
        dpi=80,
    ).save(OUT / "viz-grid.png")
    def probabilities(inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs).softmax(-1)

    curves = {
        name: tdlens.metrics.deletion(probabilities, x, attr, target=pred, feature_mask="pixels")
        for name, attr in (
            ("Saliency", saliency),
            ("IntegratedGradients", ig),
            ("Occlusion", occlusion),
        )
    }
    viz.curve_plot(curves, dpi=80).save(OUT / "viz-deletion.png")

    torch.manual_seed(0)
    names = ["age", "income", "debt", "tenure", "cards", "late payments"]
    tab = torch.nn.Sequential(torch.nn.Linear(6, 2)).eval()
    row = torch.tensor([[41.0, 3.2, 1.1, 7.0, 2.0, 0.0]])
    attr = tdlens.IntegratedGradients(tab).attribute(row, target=1)
    viz.feature_bars(attr[0], names, values=row[0], dpi=80).save(OUT / "viz-bars.png")
    print(f"wrote the pictures to {OUT}")


if __name__ == "__main__":
    main()
