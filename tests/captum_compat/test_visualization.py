"""tdlens.captum.visualization against captum's visualization, on the drawn arrays."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
captum_viz = pytest.importorskip("captum.attr._utils.visualization")

from tdlens.captum import visualization as viz  # noqa: E402


@pytest.fixture
def attr_image() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 7, 3)), rng.uniform(size=(8, 7, 3))


def _arrays(axis) -> list[np.ndarray]:
    return [np.asarray(image.get_array()) for image in axis.get_images()]


@pytest.mark.parametrize("sign", ["positive", "negative", "absolute_value", "all"])
@pytest.mark.parametrize(
    "method", ["heat_map", "blended_heat_map", "original_image", "masked_image", "alpha_scaling"]
)
def test_image_matches_captum(attr_image, method, sign):
    attr, image = attr_image
    if sign == "all" and method in ("masked_image", "alpha_scaling"):
        with pytest.raises(ValueError, match="one sign"):
            viz.visualize_image_attr(attr, image, method, sign, use_pyplot=False)
        return
    _, ours = viz.visualize_image_attr(attr, image, method, sign, use_pyplot=False, title="t")
    _, theirs = captum_viz.visualize_image_attr(
        attr, image, method, sign, use_pyplot=False, title="t"
    )
    for a, b in zip(_arrays(ours), _arrays(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert ours.get_title() == "t"


def test_outlier_percent_and_colorbar(attr_image):
    attr, _ = attr_image
    _, ours = viz.visualize_image_attr(
        attr, outlier_perc=10, show_colorbar=True, use_pyplot=False, sign="all"
    )
    _, theirs = captum_viz.visualize_image_attr(
        attr, outlier_perc=10, show_colorbar=True, use_pyplot=False, sign="all"
    )
    np.testing.assert_allclose(_arrays(ours)[0], _arrays(theirs)[0])


def test_multiple_matches_captum(attr_image):
    attr, image = attr_image
    methods, signs = ["original_image", "heat_map", "blended_heat_map"], ["all", "positive", "all"]
    _, axes = viz.visualize_image_attr_multiple(attr, image, methods, signs, use_pyplot=False)
    _, their_axes = captum_viz.visualize_image_attr_multiple(
        attr, image, methods, signs, use_pyplot=False
    )
    assert len(axes) == 3
    for ours, theirs in zip(axes, their_axes):
        for a, b in zip(_arrays(ours), _arrays(theirs), strict=True):
            np.testing.assert_allclose(a, b)


def test_bad_arguments_are_named(attr_image):
    attr, image = attr_image
    with pytest.raises(ValueError, match="original_image"):
        viz.visualize_image_attr(attr, None, "blended_heat_map", use_pyplot=False)
    with pytest.raises(ValueError, match="method="):
        viz.visualize_image_attr(attr, image, "heatmap", use_pyplot=False)
    with pytest.raises(ValueError, match="2 signs"):
        viz.visualize_image_attr_multiple(attr, image, ["heat_map"], ["all", "all"])


def test_text_is_escaped_and_complete():
    record = viz.VisualizationDataRecord(
        [0.5, -0.2, 0.0], 0.9, "pos", "pos", "pos", 0.3, ["<script>", "good", "&"], 0.01
    )
    page = viz.visualize_text([record]).data
    assert "<script>" not in page and "&lt;script&gt;" in page and "&amp;" in page
    assert page.count("<mark") == 3 + 0 and "Legend" in page
    with pytest.raises(ValueError, match="one attribution per token"):
        viz.visualize_text([viz.VisualizationDataRecord([1.0], 1, 0, 0, 0, 0, ["a", "b"], 0)])
