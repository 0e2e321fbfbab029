import os
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

# Debian's Chromium, never a browser Playwright downloads.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "e2e"


@pytest.fixture(scope="session")
def chat_url():
    """The deployed chat to test, through nginx (make demo's by default)."""
    return os.environ.get("CHAT_URL", "http://127.0.0.1:8080/").rstrip("/")


@pytest.fixture(scope="session")
def server_shell():
    """Runs a command on the server that holds daphne (the demo container by default)."""
    container = os.environ.get("CHAT_CONTAINER", "chat-demo")

    def run(*command):
        return subprocess.run(["podman", "exec", container, *command], check=True, capture_output=True, text=True)

    return run


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def person(browser, request):
    """A person with a browser of their own; each page gets a screenshot when the test ends."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    contexts = []

    def open_browser(name, **options):
        # options: more of Playwright's context options, such as locale="zh-CN".
        context = browser.new_context(viewport={"width": 720, "height": 640}, **options)
        context.name = name
        contexts.append(context)
        return context.new_page()

    yield open_browser
    for context in contexts:
        for index, page in enumerate(context.pages):
            page.screenshot(path=ARTIFACTS / f"{request.node.name}-{context.name}-{index}.png")
        context.close()


@pytest.fixture
def screenshot(request):
    """Saves a page as it is now, for a state the end-of-test screenshots would miss."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def take(page, label):
        page.screenshot(path=ARTIFACTS / f"{request.node.name}-{label}.png")

    return take
