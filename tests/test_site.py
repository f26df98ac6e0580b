"""The committed report site in a real browser: headless Chromium opens reports/index.html and every report it
links; every image must decode, every local link must resolve, no page may carry a stderr box; a screenshot of
each page is saved under build/screenshots/.

Chromium and ChromeDriver come from Debian (`make browser`, which `make test` runs first). Without them the test
is skipped, unless TINYCLIP_REQUIRE_BROWSER=1 (set by `make test`), where their absence is a failure.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
SHOTS = ROOT / "build" / "screenshots"


def _driver():
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        chromium = None
    if not (chromium and chromedriver):
        message = "headless Chromium + ChromeDriver + selenium are needed (make browser installs them)"
        if os.environ.get("TINYCLIP_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def _local_links(driver, page: Path) -> list[Path]:
    hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))")
    out = []
    for href in hrefs:
        parsed = urlparse(href)
        if parsed.scheme or href.startswith("#") or not parsed.path:
            continue
        out.append((page.parent / unquote(parsed.path)).resolve())
    return out


def test_index_and_every_report_render_with_decoded_images_and_live_links():
    index = REPORTS / "index.html"
    assert index.is_file(), "reports/index.html is missing: render the reports (make report NB=table2)"
    driver = _driver()
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        pages, seen = [index], set()
        while pages:
            page = pages.pop()
            if page in seen:
                continue
            seen.add(page)
            driver.get(page.as_uri())
            assert driver.title, f"{page.name}: the page has no title"
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            broken = [i for i, (done, w, h) in enumerate(images) if not (done and w > 0 and h > 0)]
            assert not broken, f"{page.name}: images {broken} of {len(images)} do not decode"
            stderr_boxes = driver.execute_script(
                "return document.querySelectorAll('[data-mime-type=\"application/vnd.jupyter.stderr\"]').length")
            assert stderr_boxes == 0, f"{page.name}: {stderr_boxes} stderr output(s) in the report"
            for target in _local_links(driver, page):
                assert target.exists(), f"{page.name} links {target.relative_to(ROOT)}, which does not exist"
                if target.suffix == ".html":
                    pages.append(target)
            assert driver.save_screenshot(str(SHOTS / f"{page.stem}.png"))
        assert len(seen) >= 2, "the index links no report"
    finally:
        driver.quit()
