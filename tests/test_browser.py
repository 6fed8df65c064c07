"""The web page of `grefel serve`, driven in headless Chromium: upload a photo, see a face card.

Uses Debian's chromium (CI installs it with `apt-get install -y chromium`), not a
browser downloaded by `playwright install`: nothing is fetched at test time. Without
it the tests are skipped with the reason, unless GREFEL_REQUIRE_BROWSER=1 (set by
`.ci/run`, which installs it) makes a missing browser a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from conftest import PHOTOS_DIR
from grefel.labels import CANONICAL_CLASSES
from video_helpers import clip

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def served_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`grefel serve --port 0` in a subprocess; the URL it prints, once /health answers."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "grefel", "serve", "--port", "0"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (match := re.search(r"(http://127\.0\.0\.1:\d+)/", log.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("grefel serve did not start:\n" + log.read_text())
            time.sleep(0.1)
        url = match.group(1)
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("grefel serve did not answer /health within 60 s:\n" + log.read_text())
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Browser:
    if not CHROMIUM.is_file():
        reason = (f"{CHROMIUM} not found: the browser tests need Debian's chromium "
                  "(`apt-get install -y chromium`; .ci/run installs it)")
        if os.environ.get("GREFEL_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_upload_shows_face_card_with_bars(browser: Browser, served_url: str) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(served_url + "/")
    page.set_input_files("#file-input", str(PHOTOS_DIR / "astronaut.png"))
    card = page.locator(".face-card").first
    card.wait_for(timeout=60_000)
    assert page.locator(".face-card").count() == 1
    assert card.locator(".face-label").inner_text().strip().lower() in CANONICAL_CLASSES
    bars = card.locator("[data-testid=bar]")
    assert bars.count() == len(CANONICAL_CLASSES)
    widths = [bars.nth(i).locator(".bar-fill").evaluate("e => parseFloat(e.style.width)") for i in range(bars.count())]
    assert sum(widths) == pytest.approx(100, abs=0.5)
    assert page.locator("#error").is_hidden()
    assert page.locator("#preview").evaluate("c => c.width") == 512
    if os.environ.get("GREFEL_SCREENSHOT"):
        page.screenshot(path=os.environ["GREFEL_SCREENSHOT"], full_page=True)
    page.close()


def test_video_upload_shows_each_person_and_a_timeline(browser: Browser, served_url: str, tmp_path: Path) -> None:
    video = tmp_path / "walk.mp4"
    clip(video, 2.0, 10)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(served_url + "/")
    page.set_input_files("#file-input", str(video))
    card = page.locator("[data-testid=track-card]").first
    card.wait_for(timeout=120_000)
    assert page.locator("[data-testid=track-card]").count() == 1
    assert card.locator("h2").inner_text().startswith("Person #1: ")
    assert card.locator(".face-label").inner_text().strip().lower() in CANONICAL_CLASSES
    timeline = page.locator("#timeline")
    assert timeline.is_visible() and timeline.evaluate("img => img.naturalWidth") > 0
    assert page.locator("#preview").is_hidden() and page.locator("#error").is_hidden()
    page.set_input_files("#file-input", str(PHOTOS_DIR / "astronaut.png"))   # a photo after it: no timeline
    page.locator(".face-card[data-testid=face-card]").first.wait_for(timeout=60_000)
    assert timeline.is_hidden() and page.locator("#preview").is_visible()
    page.close()


def test_api_error_is_shown(browser: Browser, served_url: str, tmp_path: Path) -> None:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a photo\n")
    page = browser.new_page()
    page.goto(served_url + "/")
    page.set_input_files("#file-input", str(not_an_image))
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=30_000)
    assert "not a decodable image" in error.inner_text()
    page.close()


def test_result_panel_follows_each_upload(browser: Browser, served_url: str, tmp_path: Path) -> None:
    """A photo, then a file that is no image, then a photo, in one page: the error never sits beside the
    previous photo's result, and the empty page shows no blank result box."""
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a photo\n")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(served_url + "/")
    result, error = page.locator("#result"), page.locator("#error")
    assert result.is_hidden() and error.is_hidden()
    assert result.bounding_box() is None                       # not laid out at all before the first photo
    page.set_input_files("#file-input", str(PHOTOS_DIR / "astronaut.png"))
    page.locator(".face-card").first.wait_for(timeout=60_000)
    assert result.is_visible() and error.is_hidden()
    page.set_input_files("#file-input", str(not_an_image))
    error.wait_for(state="visible", timeout=30_000)
    assert result.is_hidden() and page.locator(".face-card").first.is_hidden()
    page.set_input_files("#file-input", str(PHOTOS_DIR / "chelsea.png"))
    page.locator("#no-faces").wait_for(timeout=60_000)
    assert result.is_visible() and error.is_hidden() and page.locator(".face-card").count() == 0
    page.close()
