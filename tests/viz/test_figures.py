"""tdlens.viz: every figure renders to PNG without a display, at the expected size, and larger
values never get earlier colours of the colour map."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

import matplotlib
from matplotlib.image import imread

import tdlens
import tdlens.viz as viz


def pixels(png: bytes) -> np.ndarray:
    """The PNG as an ``[H, W, 4]`` float array."""
    return imread(io.BytesIO(png), format="png")


def colormap_positions(rgb: np.ndarray, cmap: str) -> np.ndarray:
    """For each colour, the position (0..255) of the nearest entry of the colour map."""
    table = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]
    distance = ((rgb[..., None, :3] - table) ** 2).sum(-1)
    return distance.argmin(-1)


@pytest.fixture
def image_and_map() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.rand(3, 12, 10), torch.randn(3, 12, 10)


@pytest.mark.parametrize(
    ("options", "size_in"),
    [
        ({}, (3.6, 3.0)),
        ({"colorbar": False}, (3.0, 3.0)),
        ({"overlay": False}, (6.6, 3.0)),
        ({"title": "IG $x$", "sign": "absolute"}, (3.6, 3.3)),
    ],
)
def test_heatmap_sizes(
    image_and_map: tuple[torch.Tensor, torch.Tensor], options: dict, size_in: tuple[float, float]
) -> None:
    image, attr = image_and_map
    plot = viz.heatmap(attr, image, dpi=50, **options)
    height, width = pixels(plot.png()).shape[:2]
    assert (width, height) == (round(size_in[0] * 50), round(size_in[1] * 50))


def test_heatmap_alone_with_a_batch_of_one_and_errors(
    image_and_map: tuple[torch.Tensor, torch.Tensor],
) -> None:
    _, attr = image_and_map
    assert pixels(viz.heatmap(attr[None], reduce="norm", dpi=40).png()).shape[:2] == (120, 144)
    with pytest.raises(ValueError, match="comparison_grid"):
        viz.heatmap(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="sign must be one of"):
        viz.heatmap(attr, sign="both")
    with pytest.raises(ValueError, match="reduce must be one of"):
        viz.heatmap(attr, reduce="median")
    with pytest.raises(ValueError, match="give the image the attributions were computed for"):
        viz.heatmap(attr, torch.zeros(3, 5, 5))


@pytest.mark.parametrize(
    ("signed", "cmap"), [(True, "RdBu_r"), (False, "Reds"), (True, "coolwarm")]
)
def test_colorize_is_monotone(signed: bool, cmap: str) -> None:
    values = np.linspace(-2.0 if signed else 0.0, 2.0, 101)
    positions = colormap_positions(viz.colorize(values, signed=signed, cmap=cmap), cmap)
    assert (np.diff(positions) >= 0).all()
    assert positions[0] <= 1 and positions[-1] >= 254
    if signed:
        assert abs(int(positions[50]) - 128) <= 1  # zero is the middle colour


@pytest.mark.parametrize("sign", ["signed", "absolute"])
def test_rendered_heatmap_is_monotone(sign: str) -> None:
    """A ramp drawn to PNG: sampling each cell's pixel gives colours in colour-map order."""
    ramp = torch.linspace(-1.0 if sign == "signed" else 0.0, 1.0, 16).reshape(1, 16)
    plot = viz.heatmap(ramp, sign=sign, colorbar=False, dpi=100, size=2.0)
    image = pixels(plot.png())
    box = plot.axes.get_window_extent()
    height = image.shape[0]
    row = int(height - (box.y0 + box.y1) / 2)
    columns = [int(box.x0 + (i + 0.5) * box.width / 16) for i in range(16)]
    cmap = "RdBu_r" if sign == "signed" else "Reds"
    positions = colormap_positions(image[row, columns], cmap)
    assert (np.diff(positions) > 0).all(), positions


def test_overlay_shows_the_image_under_the_map() -> None:
    """A zero map over a white/black image: the two halves differ with overlay, not alone."""
    image = torch.zeros(1, 8, 8)
    image[:, :, 4:] = 1.0

    def halves(plot: viz.Plot) -> tuple[np.ndarray, np.ndarray]:
        picture, box = pixels(plot.png()), plot.axes.get_window_extent()
        row = int(picture.shape[0] - (box.y0 + box.y1) / 2)
        left, right = int(box.x0 + box.width / 4), int(box.x0 + 3 * box.width / 4)
        return picture[row, left, :3], picture[row, right, :3]

    left, right = halves(viz.heatmap(torch.zeros(8, 8), image, colorbar=False, dpi=40))
    assert left.mean() > right.mean() + 0.15  # white digit background left, black stroke right
    left, right = halves(viz.heatmap(torch.zeros(8, 8), colorbar=False, dpi=40))
    assert np.allclose(left, right)


def test_feature_bars_order_colours_and_size() -> None:
    attr = torch.tensor([0.1, -2.0, 0.5, 3.0, -0.2])
    plot = viz.feature_bars(
        attr, ["a", "b$", "c", "d", "e"], top_k=3, values=torch.arange(5.0), dpi=50
    )
    labels = [t.get_text() for t in plot.axes.get_yticklabels()]
    assert labels == [r"c = 2", r"b\$ = 1", "d = 3"]  # bottom-up: largest |attribution| on top
    widths = [patch.get_width() for patch in plot.axes.patches]
    assert widths == pytest.approx([0.5, -2.0, 3.0])
    colours = [matplotlib.colors.to_hex(p.get_facecolor()) for p in plot.axes.patches]
    assert colours == ["#c0392b", "#2e6da4", "#c0392b"]
    height, width = pixels(plot.png()).shape[:2]
    assert width == 250 and height == round((0.8 + 0.28 * 3) * 50)
    with pytest.raises(ValueError, match="2 feature names for 5"):
        viz.feature_bars(attr, ["a", "b"])


def test_curve_plot_from_deletion_results() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 3)).eval()
    x = torch.randn(4, 6)
    results = {
        name: tdlens.metrics.deletion(
            model, x, getattr(tdlens, name)(model).attribute(x, target=1), target=1, n_steps=6
        )
        for name in ("Saliency", "InputXGradient")
    }
    plot = viz.curve_plot(results, dpi=50)
    legend = [t.get_text() for t in plot.axes.get_legend().get_texts()]
    assert legend == [f"{n}: AUC {float(r.score.mean()):.3f}" for n, r in results.items()]
    line = plot.axes.get_lines()[0].get_ydata()
    assert line == pytest.approx(results["Saliency"].curve.mean(0).numpy())
    assert pixels(plot.png()).shape[:2] == (175, 245)
    one = viz.curve_plot(results["Saliency"], kind="insertion", example=2, dpi=50)
    assert one.axes.get_lines()[0].get_ydata() == pytest.approx(
        results["Saliency"].curve[2].numpy()
    )
    assert results["Saliency"]._repr_png_()[:4] == b"\x89PNG"


def test_comparison_grid_and_demo_wrapper(tmp_path: Path) -> None:
    x = torch.rand(3, 1, 8, 8)
    columns = {"IG": torch.randn(3, 1, 8, 8), "Saliency": torch.rand(3, 1, 8, 8)}
    plot = viz.comparison_grid(x, columns, row_labels=["a", "b", "c"], title="t", dpi=40)
    assert pixels(plot.png()).shape[:2] == (
        round((1.5 * 3 + 0.9) * 40),
        round((1.5 * 3 + 0.6) * 40),
    )
    path = viz.save_attribution_grid(tmp_path / "sub" / "grid.png", x, columns, dpi=40)
    assert path.read_bytes() == plot.png() or path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="column 'IG' has shape"):
        viz.comparison_grid(x, {"IG": torch.zeros(2, 1, 8, 8)})


def test_notebook_representations() -> None:
    plot = viz.heatmap(torch.randn(4, 4), dpi=30)
    assert plot._repr_png_()[:4] == b"\x89PNG"
    assert plot._repr_html_().startswith('<img src="data:image/png;base64,')
    assert repr(plot) == "Plot(108x90 px)"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    table = tdlens.metrics.compare(
        model,
        torch.randn(3, 4),
        {"<b>Saliency</b>": tdlens.Saliency(model)},
        metrics=("deletion",),
        target=0,
        warmup=False,
    )
    html = table._repr_html_()
    assert (
        "&lt;b&gt;Saliency&lt;/b&gt;" in html and "<b>" not in html and html.startswith("<table>")
    )


def test_reduce_channels() -> None:
    a = np.array([[[1.0, -2.0]], [[-3.0, 4.0]]])  # [C=2, 1, 2]
    assert viz.reduce_channels(a, "sum").tolist() == [[-2.0, 2.0]]
    assert viz.reduce_channels(a, "abs").tolist() == [[4.0, 6.0]]
    assert viz.reduce_channels(a, "max").tolist() == [[3.0, 4.0]]
    assert viz.reduce_channels(a, "mean").tolist() == [[-1.0, 1.0]]
    assert viz.reduce_channels(a, "norm") == pytest.approx(np.array([[10**0.5, 20**0.5]]))


def test_figures_need_no_display_and_no_pyplot(tmp_path: Path) -> None:
    code = (
        "import sys, torch, tdlens.viz as v; "
        "v.heatmap(torch.randn(3, 8, 8), torch.rand(3, 8, 8)).save(sys.argv[1]); "
        "v.feature_bars(torch.randn(4)).png(); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")
    }
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "h.png")], check=True, timeout=120, env=env
    )
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
