"""Moderation: deleting messages (one's own, or any with the moderate permission), mutes, bans, and their log."""

from datetime import datetime, timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from chat.models import Message, ModerationLog, Restriction
from chatsite.asgi import application

from .test_access import closed_for
from .test_consumer import ORIGIN, joined, receive
from .test_identity import as_user, signed_in_cookie

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def make_moderator(username):
    user = get_user_model().objects.get(username=username)
    user.user_permissions.add(Permission.objects.get(codename="moderate"))


@database_sync_to_async
def restrict(kind, **fields):
    return Restriction.objects.create(kind=kind, **fields)


@database_sync_to_async
def user(username):
    return get_user_model().objects.get(username=username)


async def connect(path, cookie=None):
    client = as_user(path, cookie) if cookie else WebsocketCommunicator(application, path, headers=[(b"origin", ORIGIN)])
    connected, _ = await client.connect(timeout=5)
    return client if connected else None


async def test_an_author_deletes_their_message_and_it_leaves_every_page_and_every_resync(channel_layer):
    ann = await connect("/ws/chat/lobby/", await signed_in_cookie("ann"))
    async with joined("/ws/chat/lobby/") as bob:
        await ann.send_json_to({"message": "oops"})
        sent = await receive(ann)
        assert (await receive(bob))["id"] == sent["id"]
        await ann.send_json_to({"delete": sent["id"]})
        assert await receive(ann) == {"deleted": sent["id"]}
        assert await receive(bob) == {"deleted": sent["id"]}
    await ann.disconnect()
    async with joined("/ws/chat/lobby/") as late, joined(f"/ws/chat/lobby/?since={sent['id'] - 1}") as resyncing:
        assert await late.receive_nothing(timeout=0.3)
        assert await resyncing.receive_nothing(timeout=0.3)
    entry = await database_sync_to_async(ModerationLog.objects.select_related("actor").get)()
    assert (entry.actor.username, entry.action, entry.detail) == ("ann", "delete own message", "oops")


async def test_nobody_else_may_delete_a_message_but_a_moderator(channel_layer):
    ann = await connect("/ws/chat/lobby/", await signed_in_cookie("ann"))
    bob = await connect("/ws/chat/lobby/", await signed_in_cookie("bob"))
    mod = await connect("/ws/chat/lobby/", await signed_in_cookie("mod"))
    await make_moderator("mod")
    async with joined("/ws/chat/lobby/") as guest:
        await ann.send_json_to({"message": "mine"})
        sent = await receive(ann)
        for client in (bob, mod, guest):
            await receive(client)
        for client in (bob, guest):
            await client.send_json_to({"delete": sent["id"]})
            assert (await receive(client))["code"] == "not_allowed"
        await mod.send_json_to({"delete": sent["id"] + 1000})
        assert (await receive(mod))["code"] == "not_found"
        await mod.send_json_to({"delete": sent["id"]})
        for client in (ann, bob, mod, guest):
            assert await receive(client) == {"deleted": sent["id"]}
    for client in (ann, bob, mod):
        await client.disconnect()
    message = await database_sync_to_async(Message.objects.get)(id=sent["id"])
    assert message.deleted is not None


async def test_staff_may_delete_any_message(channel_layer):
    ann = await connect("/ws/chat/lobby/", await signed_in_cookie("ann"))
    staff = await connect("/ws/chat/lobby/", await signed_in_cookie("staffer"))
    await database_sync_to_async(get_user_model().objects.filter(username="staffer").update)(is_staff=True)
    await ann.send_json_to({"message": "mine"})
    sent = await receive(ann)
    await receive(staff)
    await staff.send_json_to({"delete": sent["id"]})
    assert await receive(staff) == {"deleted": sent["id"]}
    for client in (ann, staff):
        await client.disconnect()


async def test_a_muted_user_reads_but_may_not_post_in_that_room_until_the_mute_ends(channel_layer):
    cookie = await signed_in_cookie("ann")
    mute = await restrict(Restriction.MUTE, account=await user("ann"), room="lobby",
                          until=timezone.now() + timedelta(hours=1))
    ann = await connect("/ws/chat/lobby/", cookie)
    await ann.send_json_to({"message": "let me speak", "client_id": "m1"})
    refused = await receive(ann)
    assert refused["code"] == "muted" and refused["client_id"] == "m1" and "until" in refused["error"]
    # The end as a field (ISO 8601, UTC) for programs; the text, for people, names it too.
    assert datetime.fromisoformat(refused["until"]) == mute.until
    elsewhere = await connect("/ws/chat/kitchen/", cookie)
    await elsewhere.send_json_to({"message": "fine here"})
    assert (await receive(elsewhere))["message"] == "fine here"
    mute.until = timezone.now() - timedelta(seconds=1)
    await database_sync_to_async(mute.save)()
    await ann.send_json_to({"message": "let me speak"})
    assert (await receive(ann))["message"] == "let me speak"
    await ann.disconnect()
    await elsewhere.disconnect()


async def test_a_muted_guest_cannot_post_under_that_nickname(channel_layer):
    await restrict(Restriction.MUTE, guest_name="troll")
    async with joined("/ws/chat/lobby/") as guest:
        await guest.send_json_to({"message": "hello", "user": "troll"})
        assert (await receive(guest))["code"] == "muted"


async def test_a_banned_user_is_refused_at_the_handshake_and_a_banned_guest_by_address(channel_layer):
    cookie = await signed_in_cookie("ann")
    await restrict(Restriction.BAN, account=await user("ann"))
    assert await connect("/ws/chat/lobby/", cookie) is None
    await restrict(Restriction.BAN, address="127.0.0.1")
    guest = WebsocketCommunicator(application, "/ws/chat/lobby/", headers=[(b"origin", ORIGIN)])
    guest.scope["client"] = ("127.0.0.1", 50000)
    assert not (await guest.connect(timeout=5))[0]
    other = WebsocketCommunicator(application, "/ws/chat/lobby/", headers=[(b"origin", ORIGIN)])
    other.scope["client"] = ("192.0.2.7", 50000)
    assert (await other.connect(timeout=5))[0]
    await other.disconnect()


async def test_a_moderator_mutes_from_the_chat_for_a_time_and_it_is_logged(channel_layer):
    mod = await connect("/ws/chat/lobby/", await signed_in_cookie("mod"))
    ann_cookie = await signed_in_cookie("ann")
    ann = await connect("/ws/chat/lobby/", ann_cookie)
    await make_moderator("mod")
    await mod.send_json_to({"mute": "ＡＮＮ", "minutes": 10, "reason": "shouting"})  # the name as any width or case
    confirmed = await receive(mod)
    assert (confirmed["restricted"], confirmed["user"], confirmed["guest"], confirmed["room"]) == (
        "mute", "ann", False, "lobby")
    assert timedelta(minutes=9) < datetime.fromisoformat(confirmed["until"]) - timezone.now() <= timedelta(minutes=10)
    await ann.send_json_to({"message": "LET ME SPEAK", "client_id": "m1"})
    assert (await receive(ann))["code"] == "muted"
    elsewhere = await connect("/ws/chat/kitchen/", ann_cookie)
    await elsewhere.send_json_to({"message": "fine here"})
    assert (await receive(elsewhere))["message"] == "fine here"  # a mute is for its room
    entry = await database_sync_to_async(ModerationLog.objects.select_related("actor").get)()
    assert (entry.actor.username, entry.action, entry.room, entry.target) == ("mod", "add mute", "lobby", "ann")
    assert entry.detail.endswith("UTC. shouting")
    for client in (mod, ann, elsewhere):
        await client.disconnect()


async def test_a_moderator_bans_a_guest_by_nickname_until_lifted(channel_layer):
    mod = await connect("/ws/chat/lobby/", await signed_in_cookie("mod"))
    await make_moderator("mod")
    async with joined("/ws/chat/lobby/") as guest:
        await guest.send_json_to({"message": "spam", "user": "troll"})
        await receive(guest)
        await receive(mod)
        await mod.send_json_to({"ban": "troll"})
        assert await receive(mod) == {"restricted": "ban", "user": "troll", "guest": True, "room": None, "until": None}
        assert (await closed_for(guest))[1] == 4403  # at once (test_access.py)
    async with joined("/ws/chat/kitchen/") as again:  # a ban is from every room
        await again.send_json_to({"message": "more spam", "user": "troll"})
        refused = await receive(again)
        assert (refused["code"], refused["until"]) == ("banned", None)  # until lifted
        assert (await again.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4403}
    await mod.disconnect()
    restriction = await database_sync_to_async(Restriction.objects.get)()
    assert (restriction.kind, restriction.guest_name, restriction.room, restriction.until) == ("ban", "troll", "", None)


async def test_only_moderators_mute_or_ban_and_never_a_moderator(channel_layer):
    ann = await connect("/ws/chat/lobby/", await signed_in_cookie("ann"))
    mod = await connect("/ws/chat/lobby/", await signed_in_cookie("mod"))
    await make_moderator("mod")
    await database_sync_to_async(get_user_model().objects.create_user)("boss", is_staff=True)
    async with joined("/ws/chat/lobby/") as guest:
        for client in (ann, guest):
            await client.send_json_to({"mute": "mod"})
            assert (await receive(client))["code"] == "not_allowed"
        await mod.send_json_to({"ban": "boss"})
        assert (await receive(mod))["code"] == "not_allowed"
        for bad in ({"mute": ""}, {"mute": "x" * 33}, {"mute": 7}, {"mute": "ann", "minutes": 0},
                    {"mute": "ann", "minutes": True}, {"mute": "ann", "minutes": "10"},
                    {"ban": "ann", "reason": "r" * 201}, {"ban": "ann", "reason": "\u0000"}):
            await mod.send_json_to(bad)
            assert (await receive(mod))["code"] == "invalid_request", bad
        await mod.send_json_to({"mute": "a\u200bnn"})
        assert (await receive(mod))["code"] == "invalid_user"
    assert not await database_sync_to_async(Restriction.objects.exists)()
    for client in (ann, mod):
        await client.disconnect()


def test_mutes_and_bans_made_in_the_admin_are_logged(admin_client):
    answer = admin_client.post(
        "/admin/chat/restriction/add/",
        {"kind": "mute", "guest_name": "troll", "room": "lobby", "reason": "spam", "address": ""},
    )
    assert answer.status_code == 302, answer.content[:2000]
    restriction = Restriction.objects.get()
    assert restriction.created_by.username == "admin"
    admin_client.post(f"/admin/chat/restriction/{restriction.pk}/delete/", {"post": "yes"})
    assert [entry.action for entry in ModerationLog.objects.order_by("created")] == ["add mute", "lift mute"]
    assert admin_client.get("/admin/chat/moderationlog/").status_code == 200


def test_the_admin_deletes_messages_for_everyone_and_logs_it(admin_client):
    message, _ = Message.objects.post("lobby", "ann", "spam")
    answer = admin_client.post(
        "/admin/chat/message/", {"action": "delete_for_everyone", "_selected_action": [message.pk]}
    )
    assert answer.status_code == 302
    message.refresh_from_db()
    assert message.deleted is not None
    entry = ModerationLog.objects.get()
    assert (entry.actor.username, entry.action, entry.target) == ("admin", "delete message", f"#{message.pk} by ann")


async def test_a_guest_banned_for_a_time_is_told_its_end_as_a_field(channel_layer):
    ban = await restrict(Restriction.BAN, guest_name="troll", until=timezone.now() + timedelta(minutes=30))
    async with joined("/ws/chat/lobby/") as guest:
        await guest.send_json_to({"message": "hello", "user": "troll", "client_id": "b1"})
        refused = await receive(guest)
    assert (refused["code"], refused["client_id"]) == ("banned", "b1")
    assert datetime.fromisoformat(refused["until"]) == ban.until
    assert f"until {ban.until:%Y-%m-%d %H:%M} UTC" in refused["error"]  # for first-version clients, as before
