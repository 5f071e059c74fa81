"""Takes docs/img/explorer.png: the explorer on the demo's digits CNN in headless Chromium.

Needs the app extra, selenium and Debian's chromium + chromium-driver.
Run: .venv/bin/python scripts/explorer_screenshot.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import Select, WebDriverWait

from tdlens.app.demo import digits_explorer

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "explorer.png"


def main() -> None:
    app = digits_explorer()
    wrong = app.samples(misclassified=True, limit=1)["samples"]
    sample = wrong[0] if wrong else app.samples(limit=1)["samples"][0]
    url = app.start(port=0)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,760"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element("css selector", "body").get_attribute("data-ready"))
        driver.find_element("id", "filter-misclassified").click()
        card = f'.card[data-id="{sample["id"]}"]'
        wait.until(lambda d: d.find_elements("css selector", card))
        Select(driver.find_element("id", "method")).select_by_value("IntegratedGradients")
        Select(driver.find_element("id", "compare-class")).select_by_value(str(sample["label"]))
        driver.find_element("css selector", card).click()
        wait.until(lambda d: len(d.find_elements("css selector", '.panel[data-ready="1"]')) == 2)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(OUT))
        print(f"wrote {OUT}")
    finally:
        driver.quit()
        app.stop()


if __name__ == "__main__":
    main()
