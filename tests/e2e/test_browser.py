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


# ---- who is talking: accounts, guests, moderation, private rooms, Chinese ----

PASSWORD = f"e2e-{uuid.uuid4().hex}"  # long and random enough for Django's validators


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def sign_up(page, chat_url, username, next_path="/chat/"):
    """Signs up through the sign-up page (which signs in too) and lands on next_path."""
    page.goto(f"{chat_url}/accounts/signup/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click(".account-form button[type=submit]")
    page.wait_for_url(f"{chat_url}{next_path}")


def test_two_people_sign_up_and_chat_under_their_account_names(person, chat_url):
    room = f"e2e-{uuid.uuid4().hex[:8]}"
    names = {"ann": unique("ann"), "bob": unique("bob")}
    pages = {}
    for who, name in names.items():
        pages[who] = person(who)
        sign_up(pages[who], chat_url, name, f"/chat/{room}/")
        connected(pages[who])
        # An account's name is fixed: the nickname box holds it and cannot change.
        expect(pages[who].locator("#chat-user-input")).to_have_value(name)
        expect(pages[who].locator("#chat-user-input")).not_to_be_editable()
    ann, bob = pages["ann"], pages["bob"]
    send(ann, "hello from ann")
    expect(message(bob, "hello from ann")).to_have_count(1, timeout=TIMEOUT)
    send(bob, "hello from bob")
    for page in (ann, bob):
        expect(message(page, "hello from bob").locator(".user")).to_have_text(names["bob"], timeout=TIMEOUT)
        expect(message(page, "hello from ann").locator(".user")).to_have_text(names["ann"])
        expect(page.locator("#chat-log .user.guest")).to_have_count(0)
        # Who is here: both accounts, on both pages.
        for name in names.values():
            expect(page.locator("#presence-list")).to_contain_text(name, timeout=TIMEOUT)


def test_a_guest_cannot_take_a_registered_name(person, chat_url):
    room = f"e2e-{uuid.uuid4().hex[:8]}"
    owner_name = unique("owner")
    sign_up(person("owner"), chat_url, owner_name)

    guest = person("guest")
    guest.goto(f"{chat_url}/chat/{room}/")
    connected(guest)
    guest.fill("#chat-user-input", owner_name)
    send(guest, "it is me, honest")
    expect(guest.locator("#chat-error")).to_contain_text("belongs to a registered account", timeout=TIMEOUT)
    expect(message(guest, "it is me, honest")).to_have_count(0)  # given back, not sent
    expect(guest.locator("#chat-message-input")).to_have_value("it is me, honest")

    # Under a name of its own the guest posts, marked as a guest.
    guest_name = unique("guest")
    guest.fill("#chat-user-input", guest_name)
    guest.press("#chat-message-input", "Enter")
    expect(message(guest, "it is me, honest").locator(".user.guest")).to_have_text(guest_name, timeout=TIMEOUT)


def test_a_moderator_deletes_a_message_and_mutes_its_author(person, chat_url, server_shell):
    room = f"e2e-{uuid.uuid4().hex[:8]}"
    moderator_name = unique("mod")
    moderator = person("moderator")
    sign_up(moderator, chat_url, moderator_name)
    # Moderators are made in the admin; here, with Django's shell on the server.
    server_shell(
        "chat-manage",
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; "
        "from django.contrib.auth.models import Permission; "
        f"get_user_model().objects.get(username={moderator_name!r}).user_permissions.add("
        "Permission.objects.get(codename='moderate', content_type__app_label='chat'))",
    )

    author = person("guest")
    author.goto(f"{chat_url}/chat/{room}/")
    connected(author)
    author.fill("#chat-user-input", unique("guest"))
    send(author, "a message to delete")
    send(author, "a message to keep")
    expect(message(author, "a message to keep")).to_have_class("message", timeout=TIMEOUT)
    # A guest deletes nothing, not even its own: a nickname is no proof.
    expect(author.locator("#chat-log button.delete")).to_have_count(0)

    moderator.goto(f"{chat_url}/chat/{room}/")
    connected(moderator)
    expect(message(moderator, "a message to delete")).to_have_count(1, timeout=TIMEOUT)
    moderator.once("dialog", lambda dialog: dialog.accept())  # "Delete this message for everyone?"
    message(moderator, "a message to delete").locator("button.delete").click()
    for page in (moderator, author):
        expect(message(page, "a message to delete")).to_have_count(0, timeout=TIMEOUT)
        expect(message(page, "a message to keep")).to_have_count(1)
    # Gone from the history too.
    author.reload()
    expect(message(author, "a message to keep")).to_have_count(1, timeout=TIMEOUT)
    expect(message(author, "a message to delete")).to_have_count(0)

    # Then mutes its author in the room for ten minutes: the guest's next
    # message is refused with the reason, and its text stays in the box.
    moderator.once("dialog", lambda dialog: dialog.accept())  # "Mute ... for 10 minutes?"
    message(moderator, "a message to keep").locator("button.mute").click()
    expect(moderator.locator("#chat-error")).to_contain_text("is muted in this room until", timeout=TIMEOUT)
    connected(author)
    send(author, "can I still talk?")
    expect(author.locator("#chat-error")).to_contain_text("muted in this room", timeout=TIMEOUT)
    expect(author.locator("#chat-message-input")).to_have_value("can I still talk?")


def test_a_private_room_is_refused_to_a_third_person(person, chat_url):
    room = f"e2e-{uuid.uuid4().hex[:8]}"
    member_name = unique("member")
    member = person("member")
    sign_up(member, chat_url, member_name)

    owner = person("owner")
    sign_up(owner, chat_url, unique("owner"), f"/chat/{room}/settings/")  # the first to open it: its creator
    owner.check("#id_private")
    owner.fill("#id_members", member_name)
    owner.click(".account-form button[type=submit]")
    owner.wait_for_url(f"{chat_url}/chat/{room}/")
    connected(owner)
    send(owner, "members only")

    answer = member.goto(f"{chat_url}/chat/{room}/")
    assert answer.status == 200
    expect(message(member, "members only")).to_have_count(1, timeout=TIMEOUT)

    stranger = person("stranger")
    sign_up(stranger, chat_url, unique("stranger"))
    answer = stranger.goto(f"{chat_url}/chat/{room}/")
    assert answer.status == 404
    expect(stranger.locator("#chat-log")).to_have_count(0)


def test_a_chinese_browser_gets_the_chinese_room_page(person, chat_url):
    room = f"e2e-{uuid.uuid4().hex[:8]}"
    owner_name = unique("owner")
    sign_up(person("owner"), chat_url, owner_name)

    page = person("zh", locale="zh-CN")
    page.goto(f"{chat_url}/chat/{room}/")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(page.locator("#status")).to_have_text("已连接", timeout=TIMEOUT)
    expect(page.locator("#chat-message-input")).to_have_attribute("placeholder", "输入消息，按回车发送")
    expect(page.locator("#chat-message-submit")).to_have_text("发送")
    expect(page.locator("#presence")).to_contain_text("在线：", timeout=TIMEOUT)
    page.fill("#chat-user-input", unique("访客"))
    send(page, "你好")
    expect(message(page, "你好")).to_have_class("message", timeout=TIMEOUT)
    expect(page.locator("#chat-log .day")).to_have_text("今天")
    # An error frame's code, translated by the page.
    page.fill("#chat-user-input", owner_name)
    send(page, "冒名顶替")
    expect(page.locator("#chat-error")).to_contain_text("这个昵称属于一个已注册的账号", timeout=TIMEOUT)
