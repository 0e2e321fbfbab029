"""Room names that differ only by case or width are one room: /chat/Lobby/, /chat/lobby/ and /chat/ｌｏｂｂｙ/.

The room's key (protocol.room_key: NFKC, case-folded) is what its messages,
mutes, privacy and channel-layer group go by; it is shown as the spelling it
was first used with. Migration 0006 merges the rooms stored before this.
"""

from urllib.parse import quote

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client

from chat import protocol
from chat.models import Message, Restriction, Room

from .test_consumer import joined, receive, store
from .test_identity import as_user, signed_in_cookie
from .test_private_rooms import make_private, session_cookie, signed_in_client

pytestmark = pytest.mark.django_db(transaction=True)

FULL_WIDTH_LOBBY = "ｌｏｂｂｙ"


def test_names_that_differ_only_by_case_or_width_have_one_key():
    assert {protocol.room_key(name) for name in ("Lobby", "LOBBY", "lobby", FULL_WIDTH_LOBBY, "ＬＯＢＢＹ")} == {"lobby"}
    assert protocol.room_key("大厅") == "大厅" and protocol.room_key("Straße") == protocol.room_key("STRASSE")
    assert protocol.room_key("Lobby") != protocol.room_key("Lobby2")
    # ß folds to ss: 64 of them would key to 128 characters, so the name keeps its NFKC form as its key.
    assert protocol.room_key("ß" * 64) == "ß" * 64
    assert protocol.room_shown_name(FULL_WIDTH_LOBBY) == "lobby"
    assert protocol.room_shown_name("Lobby") == "Lobby"


def test_the_room_page_is_one_room_in_any_case_or_width_shown_as_first_written():
    Message.objects.post("Lobby", "ann", "hello")
    client = Client()
    for path in ("/chat/Lobby/", "/chat/lobby/", "/chat/LOBBY/", f"/chat/{quote(FULL_WIDTH_LOBBY)}/"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert answer.context["chat_config"]["room"] == "Lobby", path
    # A room nobody has used yet is shown as asked, NFKC-normalized.
    assert client.get(f"/chat/{quote('ＨＡＬＬ')}/").context["chat_config"]["room"] == "HALL"
    assert Room.objects.get().key == "lobby"
    assert list(Message.objects.values_list("room", flat=True)) == ["lobby"]


async def test_websockets_in_any_case_or_width_are_in_one_room(channel_layer):
    async with (
        joined("/ws/chat/Lobby/") as ann,
        joined("/ws/chat/lobby/") as bob,
        joined(f"/ws/chat/{quote(FULL_WIDTH_LOBBY)}/") as cat,
    ):
        await ann.send_json_to({"message": "one room", "user": "ann"})
        for client in (ann, bob, cat):
            got = await receive(client)
            assert got["message"] == "one room" and got["room"] == "Lobby"
        await bob.send_json_to({"message": "from lower case", "user": "bob"})
        for client in (ann, bob, cat):
            got = await receive(client)
            assert got["message"] == "from lower case" and got["room"] == "Lobby", "shown as first written"
    assert await database_sync_to_async(lambda: list(Room.objects.values_list("name", "key", "last_seq")))() == [
        ("Lobby", "lobby", 2)
    ]


async def test_history_and_resync_read_the_room_whatever_spelling_wrote_or_reads_it(channel_layer):
    first = await store("Lobby", "one")
    await store("lobby", "two")
    await store(FULL_WIDTH_LOBBY, "three")
    async with joined("/ws/chat/LOBBY/") as ann:
        history = [await receive(ann) for _ in range(3)]
        assert [m["message"] for m in history] == ["one", "two", "three"]
        assert [m["seq"] for m in history] == [1, 2, 3] and {m["room"] for m in history} == {"Lobby"}
    async with joined(f"/ws/chat/lobby/?since={first[0]}") as bob:
        resync = [await receive(bob) for _ in range(2)]
        assert [m["message"] for m in resync] == ["two", "three"] and all(m["resync"] for m in resync)
        assert await bob.receive_nothing(timeout=0.3)


async def test_a_private_room_is_private_in_every_spelling(channel_layer):
    await database_sync_to_async(signed_in_client)("bob")
    await database_sync_to_async(make_private)("ann", "Team", "bob")
    await store("Team", "members only")

    def pages():
        carol = signed_in_client("carol")
        assert [carol.get(f"/chat/{name}/").status_code for name in ("Team", "team", quote("ＴＥＡＭ"))] == [404] * 3
        assert carol.get("/chat/team/settings/").status_code == 404, "not a new room for carol to claim"
        assert signed_in_client("bob").get("/chat/team/").status_code == 200
        assert Room.objects.get().private

    await database_sync_to_async(pages)()
    carol = as_user("/ws/chat/team/", await signed_in_cookie("dan"))
    assert not (await carol.connect(timeout=5))[0]
    bob = as_user(f"/ws/chat/{quote('ｔｅａｍ')}/", await database_sync_to_async(session_cookie)("bob"))
    assert (await bob.connect(timeout=5))[0]
    got = await receive(bob)
    assert got["message"] == "members only" and got["room"] == "Team"
    await bob.disconnect()


def test_a_mute_in_one_spelling_mutes_in_every_spelling():
    Restriction.objects.create(kind=Restriction.MUTE, guest_name="spammer", room="LOBBY")
    assert Restriction.objects.get().room == "lobby"
    for name in ("Lobby", FULL_WIDTH_LOBBY):
        assert Restriction.applying(guest_name="spammer", room=protocol.room_key(name)) is not None
    assert Restriction.applying(guest_name="spammer", room=protocol.room_key("kitchen")) is None


# The migration that folds the rooms stored before names were folded.

BEFORE = [("chat", "0005_private_rooms")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def colliding_rooms(apps):
    """Rooms as they could be before folding: three spellings of the lobby, a private Team and a public team, ..."""
    User = apps.get_model(*django_settings.AUTH_USER_MODEL.split("."))
    Room = apps.get_model("chat", "Room")
    Message = apps.get_model("chat", "Message")
    Restriction = apps.get_model("chat", "Restriction")
    ann, bob, carol = (User.objects.create(username=name) for name in ("ann", "bob", "carol"))
    rooms = {name: Room.objects.create(name=name) for name in ("Lobby", "lobby", FULL_WIDTH_LOBBY, "Hall")}
    ids = []

    def post(room, text, client_id=None, seq=None):
        row = rooms.get(room)
        if row is not None and seq is None:
            row.last_seq += 1
            row.save()
            seq = row.last_seq
        ids.append(Message.objects.create(room=room, seq=seq, user="ann", text=text, client_id=client_id).id)

    # The first lobby message is in "lobby": its spelling is the one kept.
    post("lobby", "l1", client_id="same")
    post("Lobby", "L1", client_id="same")
    post(FULL_WIDTH_LOBBY, "w1")
    post("lobby", "l2")
    post("Lobby", "L2")
    post("Hall", "h1")
    post("Hall", "h2")
    post("Old", "from before rooms had rows", seq=None)  # no Room row, no seq
    team = Room.objects.create(name="team", created_by=carol)
    secret = Room.objects.create(name="Team", created_by=ann, private=True)
    secret.members.add(bob)
    rooms["team"], rooms["Team"] = team, secret
    post("team", "public")
    post("Team", "private")
    Restriction.objects.create(kind="mute", guest_name="spammer", room="LOBBY")
    Restriction.objects.create(kind="mute", guest_name="spammer", room="")
    return ids, {"ann": ann.pk, "bob": bob.pk, "carol": carol.pk}


def folded_state():
    return (
        sorted(Room.objects.values_list("key", "name", "last_seq", "private")),
        list(Message.objects.order_by("id").values_list("id", "room", "seq", "client_id")),
        sorted(Restriction.objects.values_list("room", flat=True)),
    )


def test_the_migration_merges_rooms_that_differ_only_by_case_or_width():
    try:
        ids, users = colliding_rooms(migrate(BEFORE))
        migrate_to_latest()  # 0006 and 0007 fold; the later ones too, which today's models need
        rooms = {room.key: room for room in Room.objects.all()}
        assert sorted(rooms) == ["hall", "lobby", "old", "team"]
        assert [rooms[key].name for key in ("lobby", "hall", "old", "team")] == ["lobby", "Hall", "Old", "team"]
        # The lobby's five messages, in their original order, numbered 1-5; the older "same" client id is dropped.
        lobby = list(Message.objects.filter(room="lobby").values_list("id", "text", "seq", "client_id"))
        assert lobby == [
            (ids[0], "l1", 1, None),
            (ids[1], "L1", 2, "same"),
            (ids[2], "w1", 3, None),
            (ids[3], "l2", 4, None),
            (ids[4], "L2", 5, None),
        ]
        assert rooms["lobby"].last_seq == 5
        # A room alone in its key keeps its numbering; one without a row gets one.
        assert list(Message.objects.filter(room="hall").values_list("seq", flat=True)) == [1, 2]
        assert rooms["hall"].last_seq == 2
        assert list(Message.objects.filter(room="old").values_list("seq", flat=True)) == [None]
        # Private if either was: the private one's creator keeps it, the public one's creator is a member.
        team = rooms["team"]
        assert team.private and team.created_by_id == users["ann"]
        assert set(team.members.values_list("pk", flat=True)) == {users["bob"], users["carol"]}
        assert list(Message.objects.filter(room="team").values_list("text", "seq")) == [("public", 1), ("private", 2)]
        assert sorted(Restriction.objects.values_list("room", flat=True)) == ["", "lobby"]
        # The chat goes on numbering after the merged messages, in any spelling.
        assert Message.objects.post("LOBBY", "bob", "after")[0].seq == 6
        # Going back, rooms go by their shown names again (merged ones stay merged); forward again changes nothing.
        state = folded_state()
        old = migrate(BEFORE)
        assert list(old.get_model("chat", "Message").objects.filter(room="Hall").values_list("text", flat=True)) == [
            "h1",
            "h2",
        ]
        migrate_to_latest()
        assert folded_state() == state
    finally:
        migrate_to_latest()


def migrate_to_latest():
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


async def test_resync_on_a_merged_room_sends_its_messages_once_in_order(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    try:
        ids, _ = await sync_to_async(lambda: colliding_rooms(migrate(BEFORE)))()
        await sync_to_async(migrate_to_latest)()
        async with joined(f"/ws/chat/Lobby/?since={ids[0]}") as ann:
            got = [await receive(ann) for _ in range(4)]
            assert [m["id"] for m in got] == ids[1:5]
            assert [m["seq"] for m in got] == [2, 3, 4, 5] and {m["room"] for m in got} == {"lobby"}
            assert await ann.receive_nothing(timeout=0.3)
    finally:
        await sync_to_async(migrate_to_latest)()


def test_staff_may_change_a_rooms_case_or_width_in_the_admin_not_make_it_another_room():
    room = Room.objects.create(name="lobby")
    assert room.key == "lobby"
    room.name = "Lobby"
    room.full_clean()
    for name, other in (("Hall", room), ("LOBBY", Room(name="LOBBY"))):
        other.name = name
        with pytest.raises(ValidationError):
            other.full_clean()
