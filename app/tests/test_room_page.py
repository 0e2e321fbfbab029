"""The room page in real Chromium, with the test playing the server on the page's websocket.

Django's live server serves the page and its scripts; Playwright routes the page's websocket to a handler
here, which sends the frames a server would (README, "The websocket protocol") and records what the page
sends. So a join's backlog, a resync over several pages, "load older", a duplicate ack and a 4403 close are
checked in the browser as a person sees them, without a deployment. Debian's Chromium, as tests/e2e uses.
"""

import json
import os
import re
import time
from datetime import UTC, datetime

import pytest
from playwright.sync_api import expect, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# As tests/e2e/conftest.py: root may not use Chromium's sandbox, and nothing here needs a GPU or the network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: the machine may be busy with other tests; every wait ends as soon as its condition holds.
TIMEOUT = 15_000  # ms
ROOM = "lobby"


@pytest.fixture
def browser(live_server):
    # Started after the live server and its database, and stopped before them: while Playwright's event
    # loop lives in this thread, Django refuses the database work of a test's set-up and tear-down here.
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


class Connection:
    """One websocket the page opened: its query, the frames it sent, and the test's side of it."""

    def __init__(self, route):
        self.route = route
        self.query = dict(re.findall(r"[?&](\w+)=([^&]*)", route.url))
        self.received = []
        route.on_message(lambda text: self.received.append(json.loads(text)))

    def send(self, *frames):
        for frame in frames:
            self.route.send(json.dumps(frame))

    def close(self, code, reason=""):
        self.route.close(code=code, reason=reason)


class FakeServer:
    """Takes every websocket the page opens to /ws/chat/; each is left to the test to answer."""

    def __init__(self, page):
        self.page = page
        self.connections = []
        page.route_web_socket(re.compile(r"/ws/chat/"), lambda route: self.connections.append(Connection(route)))

    def wait(self, condition, what):
        """Waits until condition() holds, letting Playwright deliver the page's frames meanwhile."""
        deadline = time.monotonic() + TIMEOUT / 1000
        while not condition():
            assert time.monotonic() < deadline, f"no {what} within {TIMEOUT / 1000} s"
            self.page.wait_for_timeout(20)

    def connection(self, number):
        """The page's connection `number` (1: the first), once it is open."""
        self.wait(lambda: len(self.connections) >= number, f"connection {number}")
        return self.connections[number - 1]

    def frame(self, connection, predicate, what):
        """The first frame the page sent on `connection` that predicate() accepts."""
        self.wait(lambda: any(predicate(f) for f in connection.received), what)
        return next(f for f in connection.received if predicate(f))


def message(id, text, user="bob", **flags):
    return {"id": id, "seq": id, "room": ROOM, "user": user, "message": text,
            "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z"), **flags}


def history(*ids, more=False):
    """A join's backlog: these messages, then the page frame that ends it (the page joins with pages=1)."""
    frames = [message(id, f"message {id}", history=True) for id in ids]
    return [*frames, {"page": "history", "more": more, "first": ids[0] if ids else None,
                      "last": ids[-1] if ids else None}]


def log_texts(page):
    return page.locator("#chat-log li.message .text")


@pytest.fixture
def room_page(browser, live_server):
    context = browser.new_context(viewport={"width": 720, "height": 640})
    page = context.new_page()
    # A script error in a frame's handler would leave the rest of the page working: each test fails on one.
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    server = FakeServer(page)
    page.goto(f"{live_server.url}/chat/{ROOM}/")
    yield page, server
    context.close()
    assert errors == [], "the page's script failed"


def connected(page):
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=TIMEOUT)


def test_the_join_backlog_is_shown_in_order_as_history_with_load_older_offered(room_page):
    page, server = room_page
    first = server.connection(1)
    # A fresh join: presence and pages asked for, no cursor.
    assert first.query == {"presence": "1", "pages": "1"}
    first.send(*history(11, 12, 13, more=True))
    expect(log_texts(page)).to_have_text(["message 11", "message 12", "message 13"], timeout=TIMEOUT)
    expect(page.locator("#chat-log li.message").first).to_have_class("message history")
    expect(page.locator("#chat-load-older")).to_be_visible()
    connected(page)

    # The page frame ended the backlog: a reconnect asks for what came after it, not for history again.
    first.close(1012)
    second = server.connection(2)
    assert second.query == {"presence": "1", "pages": "1", "since": "13"}


def test_load_older_puts_the_older_page_on_top_and_hides_the_button_at_the_start(room_page):
    page, server = room_page
    first = server.connection(1)
    first.send(*history(11, 12, more=True))
    expect(log_texts(page)).to_have_count(2, timeout=TIMEOUT)

    page.click("#chat-load-older")
    assert server.frame(first, lambda f: "before" in f, "load older request") == {"before": 11}
    expect(page.locator("#chat-load-older")).to_be_disabled()
    # One of the page's messages again (the server's pages may overlap): shown once.
    older = [message(id, f"message {id}", history=True) for id in (9, 10, 11)]
    first.send(*older, {"page": "older", "more": False, "first": 9, "last": 11})
    expect(log_texts(page)).to_have_text(["message 9", "message 10", "message 11", "message 12"], timeout=TIMEOUT)
    expect(page.locator("#chat-older")).to_be_hidden()

    # A live message still goes at the bottom.
    first.send(message(14, "live one"))
    expect(log_texts(page).last).to_have_text("live one", timeout=TIMEOUT)


def test_a_resync_is_paged_to_the_end_and_each_message_shown_once(room_page):
    page, server = room_page
    first = server.connection(1)
    first.send(*history(1, 2))
    expect(log_texts(page)).to_have_count(2, timeout=TIMEOUT)

    first.close(1012)  # the server restarts
    second = server.connection(2)
    assert second.query["since"] == "2"
    second.send(message(3, "message 3", resync=True), message(4, "message 4", resync=True),
                {"page": "resync", "more": True, "first": 3, "last": 4})
    server.frame(second, lambda f: f.get("since") == 4, "request for the page after 4")
    # Asked too fast: the server says when to ask again, and the page does, on its own.
    second.send({"error": "Too many page requests.", "code": "page_rate_limited", "retry_after": 0.05, "since": 4})
    server.wait(lambda: [f for f in second.received if "since" in f] == [{"since": 4}, {"since": 4}],
                "second request for the page after 4")
    # An overlap with what the page has (4) and then the rest: each once.
    second.send(message(4, "message 4", resync=True), message(5, "message 5", resync=True),
                {"page": "resync", "more": False, "first": 4, "last": 5})
    second.send(message(6, "live after the resync"))
    expect(log_texts(page)).to_have_text(
        ["message 1", "message 2", "message 3", "message 4", "message 5", "live after the resync"], timeout=TIMEOUT
    )
    # Caught up messages look like live ones (only the join's backlog is dimmed).
    expect(page.locator("#chat-log li.message[data-id='3']")).to_have_class("message")
    assert [f for f in second.received if "since" in f] == [{"since": 4}, {"since": 4}], "no page asked twice more"
    connected(page)


def test_a_message_acknowledged_twice_after_a_lost_ack_shows_once_and_leaves_the_box(room_page):
    page, server = room_page
    first = server.connection(1)
    first.send(*history(1))
    expect(log_texts(page)).to_have_count(1, timeout=TIMEOUT)
    connected(page)

    page.fill("#chat-message-input", "hello there")
    page.press("#chat-message-input", "Enter")
    sent = server.frame(first, lambda f: "message" in f, "the message")
    assert sent["message"] == "hello there" and sent["client_id"]
    expect(page.locator("#chat-log li.pending .text")).to_have_text("hello there")
    # Stored, but the server restarts before the ack leaves it.
    first.close(1012)

    second = server.connection(2)
    assert second.query["since"] == "1"
    resent = server.frame(second, lambda f: "message" in f, "the resend")
    assert resent["client_id"] == sent["client_id"], "the resend is the same message, for the server to store once"
    # The resync brings the stored message before the resend's ack names it ...
    second.send(message(2, "hello there", user="ann", resync=True), {"page": "resync", "more": False,
                                                                       "first": 2, "last": 2})
    # ... then the duplicate ack, and the same ack again (the first send's, late), and the rebroadcast.
    ack = {"ack": sent["client_id"], "id": 2, "seq": 2, "duplicate": True}
    second.send(ack, ack, message(2, "hello there", user="ann"))
    second.send(message(3, "after it"))
    expect(log_texts(page)).to_have_text(["message 1", "hello there", "after it"], timeout=TIMEOUT)
    expect(page.locator("#chat-log li.pending")).to_have_count(0)
    expect(page.locator("#chat-log li.message", has_text="hello there")).to_have_class("message")
    expect(page.locator("#chat-message-input")).to_have_value("")
    expect(page.locator("#chat-error")).to_be_hidden()
    assert page.evaluate(f"sessionStorage.getItem('chat.outbox.{ROOM}')") is None, "the outbox is empty"


def test_access_taken_away_closes_with_4403_and_the_page_stops_trying(room_page):
    page, server = room_page
    first = server.connection(1)
    first.send(*history(1), {"presence": [{"user": "ann"}], "anonymous": 0})
    expect(page.locator("#presence")).to_be_visible(timeout=TIMEOUT)
    connected(page)

    first.send({"error": "You no longer have access to this room.", "code": "no_access", "reason": "private"})
    first.close(4403)
    expect(page.locator("#status")).to_have_attribute("data-state", "closed", timeout=TIMEOUT)
    expect(page.locator("#status")).to_have_text("no access")
    expect(page.locator("#chat-error")).to_have_text("You no longer have access to this room.")
    expect(page.locator("#chat-message-input")).to_be_disabled()
    expect(page.locator("#chat-message-submit")).to_be_disabled()
    expect(page.locator("#presence")).to_be_hidden()
    # A reconnect would come within the first backoff (at most 0.5 s); none does, nor after the network's return.
    page.evaluate("window.dispatchEvent(new Event('online'))")
    page.wait_for_timeout(1500)
    assert len(server.connections) == 1


def test_a_refused_message_comes_back_to_the_box_and_one_the_database_refused_is_sent_again(room_page):
    page, server = room_page
    first = server.connection(1)
    first.send(*history(1))
    connected(page)

    page.fill("#chat-message-input", "one too many")
    page.press("#chat-message-input", "Enter")
    refused = server.frame(first, lambda f: f.get("message") == "one too many", "the message")
    first.send({"error": "Rate limit exceeded.", "code": "rate_limited", "client_id": refused["client_id"]})
    expect(page.locator("#chat-error")).to_have_text(
        "Not sent: Too many messages: wait a moment. This one was not sent.", timeout=TIMEOUT
    )
    expect(page.locator("#chat-message-input")).to_have_value("one too many")
    expect(page.locator("#chat-log li.pending")).to_have_count(0)

    page.fill("#chat-message-input", "saved on the second try")
    page.press("#chat-message-input", "Enter")
    sent = server.frame(first, lambda f: f.get("message") == "saved on the second try", "the message")
    first.send({"error": "Could not save.", "code": "store_failed", "client_id": sent["client_id"]})
    pending = page.locator("#chat-log li.pending", has_text="saved on the second try")
    expect(pending.locator(".note")).to_contain_text("not stored yet; trying again in", timeout=TIMEOUT)
    server.wait(lambda: [f.get("client_id") for f in first.received].count(sent["client_id"]) == 2, "the resend")
    first.send({"ack": sent["client_id"], "id": 2, "seq": 2}, message(2, "saved on the second try", user="ann"))
    expect(log_texts(page)).to_have_text(["message 1", "saved on the second try"], timeout=TIMEOUT)
    expect(page.locator("#chat-log li.pending")).to_have_count(0)
    expect(page.locator("#chat-message-input")).to_have_value("")
