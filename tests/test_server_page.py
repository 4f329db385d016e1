"""The page at `/` in headless Chromium (Debian's chromium, `make browser`), on a phone-sized screen.

Types messages like a person: a review gets a sentiment badge and a streamed reply, a follow-up in
chat mode uses the conversation. A screenshot is saved to tests/artifacts/server_page.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="the test extra installs playwright: pip install -e '.[test]'")
pytest.importorskip("starlette", reason="the serve extra: pip install -e '.[serve]'")

from edgeqwen.server.launch import ServerProcess  # noqa: E402

from conftest import REPO  # noqa: E402
from test_server import write_test_prompts  # noqa: E402

ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    path = os.environ.get("EDGEQWEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail("the page test needs Debian's chromium: run `make browser` (apt-get install -y chromium) or set "
                    "$EDGEQWEN_CHROMIUM")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_path):
    prompts = write_test_prompts(tmp_path_factory.mktemp("prompts"))
    with ServerProcess("--model", str(model_path), "--prompts", str(prompts), "--threads", "1", "--log-level",
                       "warning") as running:
        yield running


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                      has_touch=True)
        page = context.new_page()
        page.set_default_timeout(240_000)
        page.requests = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.console_errors = []
        page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
        page.on("pageerror", lambda error: page.console_errors.append(str(error)))
        yield page
        browser.close()


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_selector("body[data-state=busy]")
    page.wait_for_selector("body[data-state=idle]")


def test_page_shows_a_label_and_a_streamed_reply_and_keeps_the_conversation(server, page):
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelector('#model').textContent.includes('qwen')")
    page.check("input[name=task][value=both]", force=True)
    # Count how many times the reply's text changes while it arrives: a streamed reply changes many times.
    page.evaluate(
        """() => {
        window.replyUpdates = 0;
        new MutationObserver((changes) => {
          for (const c of changes)
            if (c.target.closest && c.target.closest('.reply') || c.target.parentElement?.closest('.reply'))
              window.replyUpdates++;
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
    }"""
    )
    send(page, "这家餐厅的服务太差了，菜也是凉的。")
    turn = page.locator(".turn").last
    badge = turn.locator(".badge")
    assert badge.get_attribute("data-label") == "negative"
    assert "负面" in badge.inner_text()
    reply = turn.locator(".reply")
    assert reply.inner_text().strip()
    assert page.evaluate("window.replyUpdates") >= 3, "the reply arrived in pieces"
    assert not turn.locator(".error").count()

    # Switch to chat: the follow-up is answered with the conversation so far.
    page.check("input[name=task][value=chat]", force=True)
    send(page, "My name is Mei. Please remember it.")
    send(page, "What is my name?")
    last = page.locator(".turn").last
    assert last.locator(".badge").count() == 0
    assert "Mei" in last.locator(".reply").inner_text()
    assert page.locator(".turn").count() == 3

    # Phone-sized: nothing wider than the screen, the composer stays visible.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.locator("#send").is_visible() and page.locator("#input").is_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "server_page.png"))

    # Offline-safe: every request went to this server, and the page logged no errors.
    assert all(url.startswith(server.url) for url in page.requests), page.requests
    assert page.console_errors == []
