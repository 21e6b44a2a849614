"""The playground in a real browser: Debian's headless Chromium driven by Playwright.

The test types a prompt, waits for the streamed tokens, clicks one and waits for its attention
heatmap, then chats one turn. It saves a screenshot; docs/playground.png is made by this test with

    MINIGPT_PLAYGROUND_RUN=out/shakespeare_char MINIGPT_SCREENSHOT=docs/playground.png \
        python -m pytest tests/test_serve_browser.py
"""

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from serve_helpers import serve_run, tiny_run  # noqa: E402

from minigpt.serve import background_server as live_server  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.mark.slow
def test_the_playground_streams_tokens_and_draws_attention(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    run = os.environ.get("MINIGPT_PLAYGROUND_RUN") or tiny_run(tmp_path / "run", block_size=128)
    screenshot = Path(os.environ.get("MINIGPT_SCREENSHOT") or tmp_path / "playground.png")
    _, app = serve_run(run)
    with live_server(app) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=[*CHROMIUM_ARGS, "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(url)
        page.wait_for_selector("#layer option", state="attached")
        page.fill("#input", "ROMEO:\nO, she doth teach the torches to burn bright!\n")
        page.fill("#max_tokens", "60")
        page.fill("#seed", "7")
        page.fill("#temperature", "0")  # greedy: an untrained model samples its end-of-text early
        page.click("#go")
        page.wait_for_function("document.querySelectorAll('#output .tok').length >= 20")  # streamed in
        page.wait_for_selector("#go:not([disabled])")
        tokens = page.locator("#output .tok")
        count = tokens.count()
        assert count == 60 or "stop" in page.inner_text("#status")
        clicked = tokens.nth(min(count - 1, 40))
        position = int(clicked.get_attribute("data-position"))
        clicked.dispatch_event("click")  # an untrained model may write newlines, which have no box to click on
        page.wait_for_selector("#heatmap[data-ready=true]")
        assert page.locator("#context .ctx").count() == position  # the whole context of that token
        assert page.inner_text("#attn-title").startswith("Layer 1, head 0")  # the last layer by default
        page.screenshot(path=str(screenshot))

        page.click("#tab-chat")
        page.fill("#input", "Hello there")
        page.click("#go")
        page.wait_for_selector("#go:not([disabled])")
        assert page.locator("#output .role").count() == 2 and page.locator("#output .tok").count() >= 1
        assert "finished" in page.inner_text("#status")
        browser.close()
    assert screenshot.stat().st_size > 10_000
