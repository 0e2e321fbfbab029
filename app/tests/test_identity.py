"""Who is talking: accounts from the session, guests who cannot impersonate them, names safe to show."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from chat.models import Message
from chatsite.asgi import application

from .test_consumer import ORIGIN, joined, receive, stored_count

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def signed_in_cookie(username):
    """The session cookie of a browser signed in as a new user called `username`."""
    user = get_user_model().objects.create_user(username, password="a long enough password")
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def as_user(path, cookie):
    return WebsocketCommunicator(application, path, headers=[(b"origin", ORIGIN), (b"cookie", cookie)])


@database_sync_to_async
def register(username):
    get_user_model().objects.create_user(username, password="a long enough password")


async def test_a_signed_in_user_posts_under_their_own_name_whatever_the_frame_says(channel_layer):
    cookie = await signed_in_cookie("ann")
    ann = as_user("/ws/chat/lobby/", cookie)
    assert (await ann.connect(timeout=5))[0]
    try:
        await ann.send_json_to({"message": "hi", "user": "admin"})
        got = await receive(ann)
        assert got["user"] == "ann" and "guest" not in got
    finally:
        await ann.disconnect()
    message = await database_sync_to_async(Message.objects.select_related("author").get)(id=got["id"])
    assert message.author.username == "ann" and not message.guest


@pytest.mark.parametrize("name", ["ann", "Ann", "ＡＮＮ", " ann "])
async def test_a_guest_cannot_take_a_registered_name_in_any_case_or_width(channel_layer, name):
    await register("ann")
    async with joined("/ws/chat/lobby/") as guest:
        await guest.send_json_to({"message": "I am ann", "user": name, "client_id": "x1"})
        refused = await receive(guest)
        assert refused["code"] == "name_taken" and refused["client_id"] == "x1"
        assert await stored_count() == 0
        await guest.send_json_to({"message": "I am bob", "user": "bob"})
        got = await receive(guest)
        assert (got["user"], got["guest"]) == ("bob", True)


@pytest.mark.parametrize(
    "name", ["ad\u200bmin", "admin\u202e", "\u2066admin", "a\u00addmin"], ids=["zero_width", "rlo", "isolate", "shy"]
)
async def test_names_with_invisible_characters_are_refused(channel_layer, name):
    async with joined("/ws/chat/lobby/") as guest:
        await guest.send_json_to({"message": "hi", "user": name})
        assert (await receive(guest))["code"] == "invalid_user"
        assert await stored_count() == 0


async def test_a_guest_name_is_stored_normalized_and_marked(channel_layer):
    async with joined("/ws/chat/lobby/") as guest, joined("/ws/chat/lobby/") as other:
        await guest.send_json_to({"message": "hi", "user": "ｂｏｂ"})
        for client in (guest, other):
            got = await receive(client)
            assert (got["user"], got["guest"]) == ("bob", True)
        # The nickname is held: a later frame without one is still bob's.
        await guest.send_json_to({"message": "again"})
        assert (await receive(guest))["user"] == "bob"


async def test_when_guests_may_only_read_they_are_told_to_sign_in(channel_layer, settings):
    settings.CHAT_GUESTS = "read"
    async with joined("/ws/chat/lobby/") as guest:
        await guest.send_json_to({"message": "hi", "user": "bob", "client_id": "r1"})
        refused = await receive(guest)
        assert refused["code"] == "sign_in_required" and refused["client_id"] == "r1"
        cookie = await signed_in_cookie("ann")
        ann = as_user("/ws/chat/lobby/", cookie)
        assert (await ann.connect(timeout=5))[0]
        await ann.send_json_to({"message": "members only"})
        assert (await receive(guest))["user"] == "ann"  # guests still read
        await ann.disconnect()


async def test_when_guests_are_off_only_signed_in_users_enter(channel_layer, settings):
    settings.CHAT_GUESTS = "off"
    guest = WebsocketCommunicator(application, "/ws/chat/lobby/", headers=[(b"origin", ORIGIN)])
    assert not (await guest.connect(timeout=5))[0]
    cookie = await signed_in_cookie("ann")
    ann = as_user("/ws/chat/lobby/", cookie)
    assert (await ann.connect(timeout=5))[0]
    await ann.disconnect()


def test_sign_up_signs_in_and_refuses_a_name_that_is_taken_in_another_case(client):
    answer = client.post(
        "/accounts/signup/",
        {"username": "Ann", "password1": "a long enough password", "password2": "a long enough password"},
    )
    assert answer.status_code == 302 and answer["Location"] == "/chat/"
    assert client.get("/chat/lobby/").context["chat_config"]["nickname"] == "Ann"
    client.post("/accounts/logout/")
    for taken in ("ann", "ＡＮＮ", "anonymous", "an\u200bn"):
        answer = client.post(
            "/accounts/signup/",
            {"username": taken, "password1": "a long enough password", "password2": "a long enough password"},
        )
        assert answer.status_code == 200 and answer.context["form"].errors["username"], taken
    assert get_user_model().objects.count() == 1


def test_sign_up_can_be_closed(client, settings):
    settings.CHAT_OPEN_SIGNUP = False
    assert client.get("/accounts/signup/").status_code == 404
    assert b"Sign up" not in client.get("/accounts/login/").content


def test_the_room_page_sends_guests_to_sign_in_when_guests_are_off(client, settings):
    settings.CHAT_GUESTS = "off"
    answer = client.get("/chat/lobby/")
    assert answer.status_code == 302 and answer["Location"].startswith("/accounts/login/?next=/chat/lobby/")


async def test_a_guest_nickname_is_kept_in_the_session_for_the_next_page(channel_layer):
    client = Client()
    await database_sync_to_async(client.get)("/chat/lobby/")  # the page gives the guest a session
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    guest = as_user("/ws/chat/lobby/", cookie)
    assert (await guest.connect(timeout=5))[0]
    await guest.send_json_to({"message": "hi", "user": "carol"})
    await receive(guest)
    await guest.disconnect()
    page = await database_sync_to_async(client.get)("/chat/lobby/")
    assert page.context["chat_config"]["nickname"] == "carol"
