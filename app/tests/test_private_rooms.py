"""Private rooms: only members, the creator and staff see them; to anyone else they do not exist."""

import json

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from chat import consumers, protocol
from chat.models import Room
from chatsite.asgi import application

from .test_consumer import ORIGIN, receive, store
from .test_identity import as_user, signed_in_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def signed_in_client(username):
    user = get_user_model().objects.get_or_create(username=username)[0]
    client = Client()
    client.force_login(user)
    return client


def make_private(owner, room, *members):
    client = signed_in_client(owner)
    answer = client.post(f"/chat/{room}/settings/", {"private": "on", "members": "\n".join(members)})
    assert answer.status_code == 302, answer.content[:500]
    return client


async def test_a_private_room_is_refused_to_a_non_member_and_its_history_never_sent(channel_layer):
    await database_sync_to_async(signed_in_client)("bob")
    await database_sync_to_async(make_private)("ann", "secret", "Bob")
    await store("secret", "for members only")
    carol = as_user("/ws/chat/secret/", await signed_in_cookie("carol"))
    guest = WebsocketCommunicator(application, "/ws/chat/secret/", headers=[(b"origin", ORIGIN)])
    for outsider in (carol, guest):
        assert not (await outsider.connect(timeout=5))[0]
    bob = as_user("/ws/chat/secret/", await database_sync_to_async(session_cookie)("bob"))
    assert (await bob.connect(timeout=5))[0]
    assert (await receive(bob))["message"] == "for members only"
    await bob.disconnect()


def session_cookie(username):
    client = signed_in_client(username)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def test_a_private_room_page_is_404_to_others_and_its_settings_only_for_its_creator_and_staff():
    signed_in_client("bob")
    make_private("ann", "secret", "bob")
    assert signed_in_client("bob").get("/chat/secret/").status_code == 200
    assert signed_in_client("ann").get("/chat/secret/").status_code == 200
    carol = signed_in_client("carol")
    assert carol.get("/chat/secret/").status_code == 404
    assert carol.get("/chat/secret/settings/").status_code == 404
    assert signed_in_client("bob").get("/chat/secret/settings/").status_code == 403
    assert Client().get("/chat/secret/").status_code == 404
    staff = get_user_model().objects.create_user("staff", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get("/chat/secret/").status_code == 200
    assert client.post("/chat/secret/settings/", {"members": ""}).status_code == 302
    assert not Room.objects.get(name="secret").private
    assert carol.get("/chat/secret/").status_code == 200  # public again


def test_members_must_be_accounts():
    client = signed_in_client("ann")
    answer = client.post("/chat/secret/settings/", {"private": "on", "members": "nobody"})
    assert answer.status_code == 200 and "No account called nobody" in answer.content.decode()


async def test_a_member_removed_is_disconnected(channel_layer):
    await database_sync_to_async(signed_in_client)("bob")
    owner = await database_sync_to_async(make_private)("ann", "secret", "bob")
    bob = as_user("/ws/chat/secret/", await database_sync_to_async(session_cookie)("bob"))
    assert (await bob.connect(timeout=5))[0]
    await database_sync_to_async(owner.post)("/chat/secret/settings/", {"private": "on", "members": ""})
    frames, code = await closed_for(bob)
    assert code == 4403
    assert [(frame["code"], frame["reason"]) for frame in frames] == [("no_access", "private")]  # why, first


async def closed_for(client):
    """Everything the client gets until its websocket closes: (the frames, the close code)."""
    frames = []
    while True:
        try:
            output = await client.receive_output(timeout=5)
        except TimeoutError:
            raise AssertionError(f"still connected 5 s on, having read {frames}") from None
        if output["type"] == "websocket.close":
            return frames, output.get("code")
        frames.append(json.loads(output["text"]))


async def test_a_member_removed_just_after_the_handshake_checked_membership_is_disconnected(channel_layer, monkeypatch):
    """The removal commits (and its notice goes out) between the membership check and the group join, or after both."""
    await database_sync_to_async(signed_in_client)("bob")
    owner = await database_sync_to_async(make_private)("ann", "secret", "bob")
    checked = consumers.admit

    async def removed_once_checked(*args):
        answer = await checked(*args)
        await database_sync_to_async(owner.post)("/chat/secret/settings/", {"private": "on", "members": ""})
        return answer

    monkeypatch.setattr(consumers, "admit", removed_once_checked)
    bob = as_user("/ws/chat/secret/", await database_sync_to_async(session_cookie)("bob"))
    connected, code = await bob.connect(timeout=5)
    if connected:
        frames, code = await closed_for(bob)
        assert not [frame for frame in frames if "id" in frame], frames  # read nothing
        assert code == 4403


async def test_a_member_removed_just_before_the_handshake_joins_the_room_is_refused(channel_layer, monkeypatch):
    await database_sync_to_async(signed_in_client)("bob")
    owner = await database_sync_to_async(make_private)("ann", "secret", "bob")
    layer = get_channel_layer()
    joining = layer.group_add

    async def removed_then_joined(group, channel):
        if group == protocol.group_name("secret"):
            await database_sync_to_async(owner.post)("/chat/secret/settings/", {"private": "on", "members": ""})
        await joining(group, channel)

    monkeypatch.setattr(layer, "group_add", removed_then_joined)
    bob = as_user("/ws/chat/secret/", await database_sync_to_async(session_cookie)("bob"))
    connected, code = await bob.connect(timeout=5)
    if connected:
        frames, code = await closed_for(bob)
        assert not [frame for frame in frames if "id" in frame], frames
        assert code == 4403
