"""The explorer's page in headless Chromium (selenium): pick a sample and a method, see the
heatmaps with the Python API's values, filter misclassified digits, show a hostile class name
as text, and show a bad request's error. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import tdlens
from tests.app.conftest import XSS

ARTIFACTS = Path(
    os.environ.get("TDLENS_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)
WAIT_S = 60


def _browser_paths() -> tuple[str, str]:
    """Chromium and its driver, or a skip naming the missing package."""
    pytest.importorskip("selenium", reason="browser tests need selenium (pip install selenium)")
    browser = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    if browser is None:
        pytest.skip("browser tests need Chromium: apt-get install chromium chromium-driver")
    driver = shutil.which("chromedriver")
    if driver is None:
        pytest.skip("browser tests need chromedriver: apt-get install chromium-driver")
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    browser_path, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any, served: Any) -> Any:
    """The page freshly loaded and initialised."""
    browser.get(served.url)
    wait(
        browser, lambda d: d.find_element("css selector", "body").get_attribute("data-ready") == "1"
    )
    return browser


def wait(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition)


def css(driver: Any, selector: str) -> list[Any]:
    return driver.find_elements("css selector", selector)


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def choose(driver: Any, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def ready_panel(driver: Any, kind: str) -> Any:
    selector = f'.panel[data-kind="{kind}"][data-ready="1"]'
    wait(driver, lambda d: css(d, selector))
    return css(driver, selector)[0]


def test_pick_sample_and_method_shows_the_python_values(page: Any, served: Any) -> None:
    """Sample #5 with IntegratedGradients (n_steps 8), for the predicted class and class 2."""
    choose(page, "method", "IntegratedGradients")
    steps = page.find_element("css selector", 'input[data-name="n_steps"]')
    steps.clear()
    steps.send_keys("8")
    choose(page, "compare-class", "2")
    css(page, '.card[data-id="5"]')[0].click()
    predicted = ready_panel(page, "predicted")
    chosen = ready_panel(page, "chosen")
    pred = int(served._prediction_table()[0][5])
    x = served.sample(5)[None]
    ig = tdlens.IntegratedGradients(served.model)
    for panel, target in ((predicted, pred), (chosen, 2)):
        assert int(panel.get_attribute("data-target")) == target
        picture = panel.find_element("css selector", "img.heatmap")
        assert picture.get_property("naturalWidth") > 100  # the PNG loaded and was decoded
        scores = json.loads(picture.get_attribute("data-scores"))
        shape = json.loads(picture.get_attribute("data-shape"))
        expected = ig.attribute(x, target=target, n_steps=8)[0]
        assert torch.equal(torch.tensor(scores, dtype=expected.dtype).reshape(shape), expected)
        assert "deletion AUC" in panel.text and " ms" in panel.text
    path = screenshot(page, "explorer.png")
    assert path.stat().st_size > 10_000


def test_misclassified_filter(page: Any, served: Any) -> None:
    pred, _ = served._prediction_table()
    wrong = set((served._labels != pred).nonzero().flatten().tolist())
    page.find_element("id", "filter-misclassified").click()
    wait(
        page,
        lambda d: (
            len(css(d, ".card")) == len(wrong)
            and all("misclassified" in c.get_attribute("class") for c in css(d, ".card"))
        ),
    )
    assert {int(c.get_attribute("data-id")) for c in css(page, ".card")} == wrong
    assert page.find_element("id", "sample-count").text == f"{len(wrong)} samples match"
    screenshot(page, "explorer-misclassified.png")


def test_hostile_class_name_is_shown_as_text(page: Any, served: Any) -> None:
    """Class 7 is named <img src=x onerror=alert(1)>: it shows literally, nothing runs."""
    from selenium.common.exceptions import NoAlertPresentException

    choose(page, "filter-label", "7")
    wait(page, lambda d: css(d, ".card") and all(XSS in c.text for c in css(d, ".card")))
    first = css(page, ".card")[0]
    first.click()
    ready_panel(page, "predicted")
    options = [o.text for o in css(page, "#filter-label option")]
    assert f"7: {XSS}" in options
    assert not css(page, 'img[src="x"]')  # no element was made from the name
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text  # noqa: B018  (reading it raises when there is none)
    assert XSS in page.find_element("id", "grid").text


def test_bad_request_shows_an_error_on_the_page(page: Any) -> None:
    choose(page, "method", "IntegratedGradients")
    css(page, '.card[data-id="3"]')[0].click()
    ready_panel(page, "predicted")
    steps = page.find_element("css selector", 'input[data-name="n_steps"]')
    steps.clear()
    steps.send_keys("abc")
    page.find_element("id", "explain").click()
    error = page.find_element("id", "error")
    wait(page, lambda d: error.is_displayed() and "must be an integer" in error.text)
    assert "n_steps" in error.text and "Traceback" not in error.text
    screenshot(page, "explorer-error.png")
