"""Access taken away is gone at once: every way of taking it closes the person's open websockets (4403, after a
frame saying why), and no later store or page trusts the handshake alone.

Every test runs once per channel layer (in-memory and both Redis layers against a real Redis).
"""


import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from chat.models import Message, Restriction, Room

from .test_consumer import joined, receive
from .test_identity import as_user
from .test_private_rooms import closed_for, make_private, session_cookie, signed_in_client

pytestmark = pytest.mark.django_db(transaction=True)


async def connect_as(username, room):
    client = as_user(f"/ws/chat/{room}/", await database_sync_to_async(session_cookie)(username))
    connected, code = await client.connect(timeout=5)
    assert connected, f"{username}'s handshake to {room} refused ({code})"
    return client


async def assert_shut_out(client, reason):
    frames, code = await closed_for(client)
    assert code == 4403, (frames, code)
    assert frames and frames[-1]["code"] == "no_access" and frames[-1]["reason"] == reason, frames
    assert frames[-1]["error"]  # for people: why


def staff_client():
    staff = get_user_model().objects.get_or_create(username="boss", is_staff=True, is_superuser=True)[0]
    client = Client()
    client.force_login(staff)
    return client


def admin_saves_room(room, **changes):
    row = Room.objects.get(key=room)
    data = {
        "name": row.name,
        "created_by": row.created_by_id or "",
        "private": "on" if row.private else "",
        "members": list(row.members.values_list("pk", flat=True)),
    }
    data.update(changes)
    data = {key: value for key, value in data.items() if value != ""}
    answer = staff_client().post(f"/admin/chat/room/{row.pk}/change/", data)
    assert answer.status_code == 302, answer.content[:3000]


async def test_a_member_removed_in_the_admin_is_disconnected(channel_layer):
    await database_sync_to_async(signed_in_client)("bob")
    await database_sync_to_async(signed_in_client)("cat")
    await database_sync_to_async(make_private)("ann", "secret", "bob", "cat")
    bob = await connect_as("bob", "secret")
    cat = await connect_as("cat", "secret")
    cat_pk = await database_sync_to_async(lambda: get_user_model().objects.get(username="cat").pk)()
    await database_sync_to_async(admin_saves_room)("secret", members=[cat_pk])
    await assert_shut_out(bob, "private")
    await cat.send_json_to({"message": "still here"})
    assert (await receive(cat))["message"] == "still here"
    await cat.disconnect()


async def test_a_room_made_private_in_the_admin_disconnects_those_outside_it(channel_layer):
    await database_sync_to_async(signed_in_client)("ann")
    await database_sync_to_async(signed_in_client)("bob")
    owner = await database_sync_to_async(signed_in_client)("ann")
    await database_sync_to_async(owner.get)("/chat/open/settings/")  # ann opens it first: its creator
    ann = await connect_as("ann", "open")
    bob = await connect_as("bob", "open")
    async with joined("/ws/chat/open/") as guest:
        await database_sync_to_async(admin_saves_room)("open", private="on")
        await assert_shut_out(bob, "private")
        await assert_shut_out(guest, "private")
    await ann.send_json_to({"message": "mine now"})
    assert (await receive(ann))["message"] == "mine now"
    await ann.disconnect()


@database_sync_to_async
def make_moderator(username):
    user = get_user_model().objects.get_or_create(username=username)[0]
    user.user_permissions.add(Permission.objects.get(codename="moderate"))


async def test_a_ban_from_the_chat_disconnects_every_websocket_of_the_banned(channel_layer):
    await make_moderator("mod")
    mod = await connect_as("mod", "lobby")
    ann_lobby = await connect_as("ann", "lobby")
    ann_kitchen = await connect_as("ann", "kitchen")
    bob = await connect_as("bob", "lobby")
    await mod.send_json_to({"ban": "ann"})
    assert (await receive(mod))["restricted"] == "ban"
    await assert_shut_out(ann_lobby, "banned")
    await assert_shut_out(ann_kitchen, "banned")
    assert await bob.receive_nothing(timeout=0.3)
    for client in (mod, bob):
        await client.disconnect()


async def test_a_guest_banned_from_the_chat_by_nickname_is_disconnected(channel_layer):
    await make_moderator("mod")
    mod = await connect_as("mod", "lobby")
    async with joined("/ws/chat/lobby/") as troll, joined("/ws/chat/lobby/") as other:
        await troll.send_json_to({"message": "spam", "user": "troll"})
        for client in (troll, mod, other):
            await receive(client)
        await mod.send_json_to({"ban": "troll"})
        assert (await receive(mod))["restricted"] == "ban"
        await assert_shut_out(troll, "banned")
        assert await other.receive_nothing(timeout=0.3)
    await mod.disconnect()


async def test_a_ban_made_in_the_admin_disconnects(channel_layer):
    ann = await connect_as("ann", "lobby")
    ann_pk = await database_sync_to_async(lambda: get_user_model().objects.get(username="ann").pk)()
    client = await database_sync_to_async(staff_client)()
    answer = await database_sync_to_async(client.post)(
        "/admin/chat/restriction/add/", {"kind": "ban", "account": ann_pk, "reason": "spam"}
    )
    assert answer.status_code == 302, answer.content[:2000]
    await assert_shut_out(ann, "banned")


@database_sync_to_async
def deactivate(username):
    user = get_user_model().objects.get(username=username)
    user.is_active = False
    user.save()


@database_sync_to_async
def delete_account(username):
    get_user_model().objects.get(username=username).delete()


@pytest.mark.parametrize("take_away", [deactivate, delete_account], ids=["deactivated", "deleted"])
async def test_an_account_deactivated_or_deleted_is_disconnected(channel_layer, take_away):
    ann = await connect_as("ann", "lobby")
    async with joined("/ws/chat/lobby/") as guest:
        await take_away("ann")
        await assert_shut_out(ann, "account")
        assert await guest.receive_nothing(timeout=0.3)


async def test_staff_made_staff_no_more_leave_the_private_rooms_they_are_not_members_of(channel_layer):
    await database_sync_to_async(make_private)("ann", "secret")
    await database_sync_to_async(get_user_model().objects.create_user)("boss2", is_staff=True)
    boss = await connect_as("boss2", "secret")
    user = await database_sync_to_async(get_user_model().objects.get)(username="boss2")
    user.is_staff = False
    await database_sync_to_async(user.save)()
    await assert_shut_out(boss, "private")


@pytest.fixture
def notices_lost(monkeypatch):
    """Every access notice is lost on its way (the channel layer failed it, a process stopped before sending it)."""
    monkeypatch.setattr("chat.access.send_notice", lambda group, event: None)


@database_sync_to_async
def remove_member(room, username):
    Room.objects.get(key=room).members.remove(get_user_model().objects.get(username=username))


@database_sync_to_async
def ban(username):
    Restriction.objects.create(kind=Restriction.BAN, account=get_user_model().objects.get(username=username))


@database_sync_to_async
def stored_in(room):
    return list(Message.objects.filter(room=room).values_list("text", flat=True))


@pytest.mark.parametrize(
    "frame", [{"message": "still here?", "client_id": "p1"}, {"since": 0}, {"before": 10**9}],
    ids=["post", "since", "before"],
)
@pytest.mark.parametrize("take_away", ["removed", "banned"])
async def test_access_lost_without_its_notice_is_refused_at_the_next_post_or_page(
    channel_layer, notices_lost, take_away, frame
):
    await database_sync_to_async(signed_in_client)("bob")
    await database_sync_to_async(make_private)("ann", "secret", "bob")
    await database_sync_to_async(Message.objects.post)("secret", "ann", "for members only")
    bob = await connect_as("bob", "secret")
    assert (await receive(bob))["message"] == "for members only"
    await (remove_member("secret", "bob") if take_away == "removed" else ban("bob"))
    assert await bob.receive_nothing(timeout=0.3)  # no notice came
    await bob.send_json_to(frame)
    frames, code = await closed_for(bob)
    assert code == 4403, frames
    assert not [got for got in frames if "id" in got or "page" in got], frames  # read nothing more
    why = frames[-1]  # a post refused for a ban gets the usual banned frame, for its client_id
    assert why["code"] in ("no_access", "banned") and why.get("client_id") == frame.get("client_id"), frames
    assert await stored_in("secret") == ["for members only"]  # wrote nothing


@pytest.mark.parametrize("take_away", ["removed", "banned", "deactivated"])
async def test_a_reader_whose_access_notice_was_lost_is_closed_at_the_next_live_message(
    channel_layer, notices_lost, take_away
):
    """A connection that only reads never posts or pages: the room's next message must not reach it."""
    for member in ("bob", "cat"):
        await database_sync_to_async(signed_in_client)(member)
    await database_sync_to_async(make_private)("ann", "secret", "bob", "cat")
    bob = await connect_as("bob", "secret")
    cat = await connect_as("cat", "secret")
    await {"removed": lambda: remove_member("secret", "bob"), "banned": lambda: ban("bob"),
           "deactivated": lambda: deactivate("bob")}[take_away]()
    assert await bob.receive_nothing(timeout=0.3)  # no notice came
    await cat.send_json_to({"message": "members only, from now on", "client_id": "c1"})
    got = [await receive(cat), await receive(cat)]  # the message and its ack, in either order
    assert {frame.get("message") for frame in got} >= {"members only, from now on"}, got
    frames, code = await closed_for(bob)
    assert code == 4403, frames
    assert not [got for got in frames if "message" in got], frames
    assert frames and frames[-1]["code"] == "no_access", frames
    assert frames[-1]["reason"] == {"removed": "private", "banned": "banned", "deactivated": "account"}[take_away]
    await cat.disconnect()


def test_a_room_created_by_an_app_server_of_the_release_before_gets_an_access_version():
    """During a rolling deploy the servers not yet upgraded insert rooms without the column the migration added."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO chat_room (name, key, last_seq, private) VALUES ('hall', 'hall', 0, false)")
    assert Room.objects.get(key="hall").access_version == 0
