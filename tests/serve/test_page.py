"""The page at /, in a real headless Chromium (Debian's package) driven by Playwright.

Playwright's own browser download is never used: ``executable_path`` points at the
distribution's Chromium, which `.ci/run` installs. A screenshot of the finished page is kept in
the test's output folder (tmp_path) for a person to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.llama, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: the flags this machine's closed network needs (no background fetches, no sandbox as root)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page(tmp_path: Path) -> Any:
    if CHROMIUM is None:
        pytest.fail("no chromium on PATH: install Debian's chromium package (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 900})
        finally:
            browser.close()


def test_page_streams_every_stage_and_the_answer(
    page: Any, start_server: Any, tmp_path: Path
) -> None:
    server = start_server()
    page.goto(server.url + "/")
    page.wait_for_selector("#model option[value='word-problems']", state="attached")
    page.select_option("#model", "word-problems")
    page.fill("#question", "Sam has 23 stamps and buys 18 more. How many stamps does Sam have?")
    page.click("#go")
    page.wait_for_selector("#answer:not(.hidden)", timeout=60_000)
    assert page.inner_text("#answer") == "The number of stamps Sam has now is 41"
    panels = page.query_selector_all(".stage")
    assert [p.get_attribute("data-stage") for p in panels] == ["extract", "compute", "answer"]
    assert all("done" in (p.get_attribute("class") or "") for p in panels)
    outputs = [p.query_selector(".output").inner_text() for p in panels]
    assert outputs == ["23 + 18", "41", "The number of stamps Sam has now is 41"]
    assert "tokens" in panels[0].query_selector(".meta").inner_text()
    # the run just made appears in the recent-runs table
    page.wait_for_function("document.querySelectorAll('#runs tbody tr').length > 0")
    row = page.inner_text("#runs tbody")
    assert "Sam has 23 stamps" in row and "Invalid" not in row
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_page_asks_for_the_api_key_and_then_works(page: Any, start_server: Any) -> None:
    server = start_server(api_key="page-test-key-1")
    page.goto(server.url + "/")
    page.wait_for_selector("#key:not(.hidden)")
    assert "API key" in page.inner_text("#error")
    page.fill("#key", "page-test-key-1")
    page.evaluate("loadModels()")
    page.wait_for_selector("#model option[value='word-problems']", state="attached")
    page.select_option("#model", "word-problems")
    page.fill("#question", "What is 15 plus 28?")
    page.click("#go")
    page.wait_for_selector("#answer:not(.hidden)", timeout=60_000)
    assert page.inner_text("#answer") == "15 plus 28 is 43"
