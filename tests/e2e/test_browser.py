"""Two people chat in real Chromium through nginx, live through a daphne restart, and lose no typed text.

Runs against the chat that `make demo` deployed (CHAT_URL, CHAT_CONTAINER to point elsewhere).
"""

import uuid

from playwright.sync_api import expect

TIMEOUT = 20_000  # ms


def message(page, text):
    return page.locator("#chat-log li", has_text=text)


def send(page, text):
    page.fill("#chat-message-input", text)
    page.press("#chat-message-input", "Enter")


def test_two_people_chat_and_survive_a_daphne_restart(person, chat_url, server_shell):
    room = f"e2e-{uuid.uuid4().hex[:8]}"

    ann = person("ann")
    ann.goto(f"{chat_url}/chat/")
    ann.fill("#room-name-input", room)
    ann.press("#room-name-input", "Enter")
    ann.wait_for_url(f"{chat_url}/chat/{room}/")
    expect(ann.locator("#room-title")).to_have_text(room)
    expect(ann.locator("#status")).to_have_attribute("data-state", "connected", timeout=TIMEOUT)

    bob = person("bob")
    bob.goto(f"{chat_url}/chat/{room}/")
    expect(bob.locator("#status")).to_have_attribute("data-state", "connected", timeout=TIMEOUT)
    bob.fill("#chat-user-input", "bob")
    send(bob, "hello")
    for page in (ann, bob):
        expect(message(page, "hello")).to_have_count(1, timeout=TIMEOUT)
        expect(message(page, "hello").locator(".user")).to_have_text("bob")

    # History: a reload shows what was said, once.
    ann.reload()
    expect(message(ann, "hello")).to_have_count(1, timeout=TIMEOUT)
    expect(message(ann, "hello")).to_have_class("message history")

    # daphne goes away: both pages notice and say so.
    server_shell("supervisorctl", "stop", "daphne:*")
    try:
        for page in (ann, bob):
            expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting", timeout=TIMEOUT)
    finally:
        server_shell("supervisorctl", "start", "daphne:*")

    # ... and come back by themselves.
    for page in (ann, bob):
        expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=TIMEOUT)
    ann.fill("#chat-user-input", "ann")
    send(ann, "back again")
    for page in (ann, bob):
        expect(message(page, "back again")).to_have_count(1, timeout=TIMEOUT)
        expect(message(page, "hello")).to_have_count(1)


def connected(page):
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=TIMEOUT)


def test_a_message_typed_while_daphne_is_stopped_is_delivered_once(person, chat_url, server_shell, screenshot):
    room = f"e2e-{uuid.uuid4().hex[:8]}"
    text = f"typed while stopped {uuid.uuid4().hex[:6]}"
    ann, bob = person("ann"), person("bob")
    for page in (ann, bob):
        page.goto(f"{chat_url}/chat/{room}/")
        connected(page)
    ann.fill("#chat-user-input", "ann")
    send(bob, "anyone here?")
    for page in (ann, bob):
        expect(message(page, "anyone here?")).to_have_count(1, timeout=TIMEOUT)

    server_shell("supervisorctl", "stop", "daphne:*")
    try:
        expect(ann.locator("#status")).to_have_attribute("data-state", "reconnecting", timeout=TIMEOUT)
        send(ann, text)
        # On the page at once, marked pending; the box keeps the text until the server has it.
        expect(message(ann, text)).to_have_class("message pending")
        expect(message(ann, text).locator(".note")).to_contain_text("sending")
        expect(ann.locator("#chat-message-input")).to_have_value(text)
        ann.press("#chat-message-input", "Enter")  # impatient: Enter again makes no second copy
        expect(message(ann, text)).to_have_count(1)
        screenshot(ann, "pending")
    finally:
        server_shell("supervisorctl", "start", "daphne:*")

    for page in (ann, bob):
        connected(page)
        expect(message(page, text)).to_have_class("message", timeout=TIMEOUT)
        expect(message(page, text)).to_have_count(1)
        expect(message(page, text).locator(".user")).to_have_text("ann")
    expect(ann.locator("#chat-message-input")).to_have_value("")
    # Once, also as the server stored it: a reload shows it once, from history.
    bob.reload()
    expect(message(bob, text)).to_have_class("message history", timeout=TIMEOUT)
    expect(message(bob, text)).to_have_count(1)
    expect(message(ann, text)).to_have_count(1)


def test_a_message_refused_by_the_rate_limit_stays_in_the_box_with_its_reason(person, chat_url, screenshot):
    room = f"e2e-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:6]
    burst = [f"burst {n:02d} {tag}" for n in range(1, 21)]
    ann = person("ann")
    ann.goto(f"{chat_url}/chat/{room}/")
    connected(ann)

    # Twenty messages sent through the form in one go (typing them with the
    # keyboard takes long enough for the rate limit, 5 a second with bursts
    # of 10, to let most through): the first ten go, the last is refused.
    ann.evaluate(
        """(burst) => {
            const box = document.getElementById("chat-message-input");
            const form = document.getElementById("chat-form");
            for (const text of burst) { box.value = text; form.requestSubmit(); }
        }""",
        burst,
    )
    expect(ann.locator("#chat-error")).to_contain_text("Too many messages", timeout=TIMEOUT)
    expect(ann.locator("#chat-message-input")).to_have_value(burst[-1])
    expect(message(ann, burst[-1])).to_have_count(0)  # given back, not sent
    for text in burst[:10]:
        expect(message(ann, text)).to_have_class("message", timeout=TIMEOUT)
    screenshot(ann, "refused")

    # The text was kept, so sending it again is one Enter away, once the
    # limit lets a message through again.
    ann.wait_for_timeout(1000)
    ann.press("#chat-message-input", "Enter")
    expect(message(ann, burst[-1])).to_have_class("message", timeout=TIMEOUT)
    expect(message(ann, burst[-1])).to_have_count(1)
    expect(ann.locator("#chat-message-input")).to_have_value("")


def test_room_picker_refuses_a_bad_room_name(person, chat_url):
    page = person("picker")
    page.goto(f"{chat_url}/chat/")
    page.fill("#room-name-input", "no spaces allowed")
    page.press("#room-name-input", "Enter")
    expect(page.locator("#room-error")).to_be_visible()
    assert page.url == f"{chat_url}/chat/"


def test_room_names_are_escaped_and_unicode_works(person, chat_url):
    page = person("unicode")
    page.goto(f"{chat_url}/chat/%E5%A4%A7%E5%8E%85/")
    expect(page.locator("#room-title")).to_have_text("大厅")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=TIMEOUT)
    text = f"你好 👋 {uuid.uuid4().hex[:6]}"
    send(page, text)
    expect(message(page, text)).to_have_count(1, timeout=TIMEOUT)
