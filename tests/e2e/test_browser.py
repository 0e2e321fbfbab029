"""Two people chat in real Chromium through nginx, and live through a daphne restart.

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
