"""The websocket consumer, through Channels' WebsocketCommunicator.

Every test runs once per channel layer: in-memory, and the two Redis layers
against a real Redis server (see conftest.py).
"""

import json
from contextlib import asynccontextmanager
from datetime import datetime

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chat.models import Message, Room
from chatsite.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = b"http://testserver"


def communicator(path, origin=ORIGIN):
    headers = [(b"origin", origin)] if origin is not None else []
    return WebsocketCommunicator(application, path, headers=headers)


@asynccontextmanager
async def joined(path, origin=ORIGIN):
    client = communicator(path, origin)
    connected, code = await client.connect(timeout=5)
    assert connected, f"handshake refused with {code}"
    try:
        yield client
    finally:
        await client.disconnect()


@database_sync_to_async
def store(room, *texts, user="earlier"):
    """Stores messages as the chat does, but broadcasts nothing: as if each sender's broadcast failed."""
    return [Message.objects.post(room, user, text)[0].id for text in texts]


@database_sync_to_async
def store_many(room, count):
    """Stores `count` numbered messages in one go (the ids and seqs post() would give them)."""
    room_row, _ = Room.objects.get_or_create(name=room)
    first = room_row.last_seq
    messages = Message.objects.bulk_create(
        Message(room=room, seq=first + n + 1, user="earlier", text=f"m{n}") for n in range(count)
    )
    room_row.last_seq = first + count
    room_row.save()
    return sorted(message.id for message in messages)


@database_sync_to_async
def stored_count():
    return Message.objects.count()


async def receive(client):
    return await client.receive_json_from(timeout=5)


async def test_two_clients_in_a_room_both_get_a_message(channel_layer):
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/lobby/") as bob:
        await ann.send_json_to({"message": "hello", "user": "ann"})
        for client in (ann, bob):
            got = await receive(client)
            assert got["message"] == "hello"
            assert got["user"] == "ann"
            assert got["room"] == "lobby"
            assert isinstance(got["id"], int)
            assert datetime.fromisoformat(got["ts"]).utcoffset().total_seconds() == 0
            assert "history" not in got


async def test_clients_in_another_room_do_not_get_the_message(channel_layer):
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/kitchen/") as cook:
        await ann.send_json_to({"message": "only for the lobby"})
        assert (await receive(ann))["message"] == "only for the lobby"
        assert await cook.receive_nothing(timeout=0.5)


async def test_ids_increase_within_a_room(channel_layer):
    async with joined("/ws/chat/lobby/") as ann:
        ids = []
        for text in ("one", "two", "three"):
            await ann.send_json_to({"message": text})
            ids.append((await receive(ann))["id"])
        assert ids == sorted(ids) and len(set(ids)) == 3


async def test_message_without_user_is_anonymous(channel_layer):
    async with joined("/ws/chat/lobby/") as ann:
        await ann.send_json_to({"message": "who am I"})
        assert (await receive(ann))["user"] == "anonymous"


async def test_joining_client_gets_recent_history_oldest_first(channel_layer, settings):
    settings.CHAT_HISTORY_LIMIT = 50
    await store("lobby", *[f"old {n}" for n in range(60)])
    await store("kitchen", "elsewhere")
    async with joined("/ws/chat/lobby/") as ann:
        history = [await receive(ann) for _ in range(50)]
        assert [m["message"] for m in history] == [f"old {n}" for n in range(10, 60)]
        assert all(m["history"] is True for m in history)
        # Older messages wait: the page may offer them ({"before": <id>}).
        assert await receive(ann) == {
            "page": "history",
            "more": True,
            "first": history[0]["id"],
            "last": history[-1]["id"],
        }
        assert await ann.receive_nothing(timeout=0.3)
        # Live messages follow the history, without the marker.
        await ann.send_json_to({"message": "now"})
        live = await receive(ann)
        assert live["message"] == "now" and "history" not in live
        assert live["id"] > history[-1]["id"]


async def test_reconnecting_with_since_gets_exactly_what_was_missed(channel_layer):
    first, second, third = await store("lobby", "seen", "missed 1", "missed 2")
    async with joined(f"/ws/chat/lobby/?since={first}") as ann:
        got = [await receive(ann), await receive(ann)]
        assert [m["id"] for m in got] == [second, third]
        assert [m["message"] for m in got] == ["missed 1", "missed 2"]
        # Marked as resynced, not as history: the page shows them as it shows live ones.
        assert all(m["resync"] is True and "history" not in m for m in got)
        # All there was: no page frame, exactly the frames clients always got.
        assert await ann.receive_nothing(timeout=0.3)
    async with joined(f"/ws/chat/lobby/?since={third}") as bob:
        assert await bob.receive_nothing(timeout=0.3)


async def test_resync_is_paged_to_the_end_and_live_messages_wait_for_it(channel_layer, settings):
    settings.CHAT_RESYNC_LIMIT = 3
    ids = await store("lobby", *[f"m{n}" for n in range(8)])
    async with joined(f"/ws/chat/lobby/?since={ids[0]}") as ann, joined("/ws/chat/lobby/") as bob:
        got = [await receive(ann) for _ in range(3)]
        assert [m["id"] for m in got] == ids[1:4]
        assert await receive(ann) == {"page": "resync", "more": True, "first": ids[1], "last": ids[3]}
        # While ann is behind, a live message is not sent out of order...
        assert [(await receive(bob))["id"] for _ in range(8)] == ids  # bob's history
        await bob.send_json_to({"message": "live"})
        live = await receive(bob)
        assert await ann.receive_nothing(timeout=0.3)
        # ...but comes, in its place, with the pages ann asks for.
        await ann.send_json_to({"since": ids[3]})
        assert [(await receive(ann))["id"] for _ in range(3)] == ids[4:7]
        assert (await receive(ann))["more"] is True
        await ann.send_json_to({"since": ids[6]})
        last_page = [await receive(ann) for _ in range(2)]
        assert [m["id"] for m in last_page] == [ids[7], live["id"]]
        assert await receive(ann) == {"page": "resync", "more": False, "first": ids[7], "last": live["id"]}
        # Caught up: live again, once each.
        await bob.send_json_to({"message": "after"})
        assert (await receive(ann))["message"] == "after"
        assert await ann.receive_nothing(timeout=0.3)


async def test_a_resync_of_1500_missed_messages_delivers_all_of_them_once(channel_layer):
    ids = await store_many("lobby", 1501)
    received = []
    async with joined(f"/ws/chat/lobby/?since={ids[0]}") as ann:
        while True:
            frame = await receive(ann)
            if "page" in frame:
                if not frame["more"]:
                    break
                await ann.send_json_to({"since": frame["last"]})
            else:
                received.append(frame["id"])
        assert await ann.receive_nothing(timeout=0.2)  # the first page had no closing frame: the last did
    assert received == ids[1:]


async def test_load_older_pages_backwards_to_the_first_message(channel_layer, settings):
    settings.CHAT_HISTORY_LIMIT = 4
    ids = await store("lobby", *[f"m{n}" for n in range(10)])
    async with joined("/ws/chat/lobby/") as ann:
        shown = [(await receive(ann))["id"] for _ in range(4)]
        page = await receive(ann)
        while page["more"]:
            await ann.send_json_to({"before": shown[0]})
            older = [await receive(ann) for _ in range(len(ids[: ids.index(shown[0])][-4:]))]
            assert all(m["history"] for m in older)
            page = await receive(ann)
            assert page["page"] == "older" and page["last"] == older[-1]["id"]
            shown = [m["id"] for m in older] + shown
        assert shown == ids
        await ann.send_json_to({"before": ids[0]})
        assert await receive(ann) == {"page": "older", "more": False, "first": None, "last": None}


async def test_invalid_since_gets_an_error_and_the_default_history(channel_layer):
    await store("lobby", "hello")
    async with joined("/ws/chat/lobby/?since=yesterday") as ann:
        answer = await receive(ann)
        assert "since" in answer["error"] and answer["code"] == "invalid_since"
        assert (await receive(ann))["message"] == "hello"


# Each bad frame, and the code of the error frame it gets.
BAD_FRAMES = {
    "malformed_json": ("{not json", "malformed_json"),
    "json_that_is_not_an_object": ("[1, 2, 3]", "not_an_object"),
    "json_string": ('"hello"', "not_an_object"),
    "missing_message": (json.dumps({"user": "ann"}), "invalid_message"),
    "non_string_message": (json.dumps({"message": 42}), "invalid_message"),
    "null_message": (json.dumps({"message": None}), "invalid_message"),
    "empty_message": (json.dumps({"message": ""}), "empty_message"),
    "whitespace_only_message": (json.dumps({"message": " \n\t "}), "empty_message"),
    "message_over_the_length_limit": (json.dumps({"message": "x" * 2001}), "message_too_long"),
    "non_string_user": (json.dumps({"message": "hi", "user": ["ann"]}), "invalid_user"),
    "user_over_32_characters": (json.dumps({"message": "hi", "user": "u" * 33}), "user_too_long"),
    # These used to end the connection with a traceback.
    "deeply_nested_json": ("[" * 100000, "malformed_json"),
    "lone_surrogate_in_message": (json.dumps({"message": "half \ud800 a pair"}), "invalid_message"),
    "nul_in_message": (json.dumps({"message": "nul \u0000 here"}), "invalid_message"),
    "lone_surrogate_in_user": (json.dumps({"message": "hi", "user": "\udfff"}), "invalid_user"),
    "nul_in_user": (json.dumps({"message": "hi", "user": "system \u0000"}), "invalid_user"),
    "client_id_with_spaces": (json.dumps({"message": "hi", "client_id": "a b"}), "invalid_client_id"),
    "client_id_not_a_string": (json.dumps({"message": "hi", "client_id": 7}), "invalid_client_id"),
    "since_not_a_number": (json.dumps({"since": "yesterday"}), "invalid_request"),
    "before_negative": (json.dumps({"before": -1}), "invalid_request"),
    "since_true": (json.dumps({"since": True}), "invalid_request"),
}


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
async def test_bad_input_gets_an_error_and_the_connection_stays_open(channel_layer, frame, code):
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/lobby/") as bob:
        await ann.send_to(text_data=frame)
        answer = await receive(ann)
        assert set(answer) == {"error", "code"} and isinstance(answer["error"], str) and answer["error"]
        assert answer["code"] == code
        # Only the sender hears about it; nothing is broadcast or stored.
        assert await bob.receive_nothing(timeout=0.3)
        assert await stored_count() == 0
        # The connection still works.
        await ann.send_json_to({"message": "still here"})
        assert (await receive(ann))["message"] == "still here"
        assert (await receive(bob))["message"] == "still here"


async def test_binary_frame_gets_an_error_and_the_connection_stays_open(channel_layer):
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/lobby/") as bob:
        await ann.send_to(bytes_data=json.dumps({"message": "as bytes"}).encode())
        answer = await receive(ann)
        assert "Binary" in answer["error"] and answer["code"] == "binary_frame"
        assert await bob.receive_nothing(timeout=0.3)
        assert await stored_count() == 0
        await ann.send_json_to({"message": "as text"})
        assert (await receive(bob))["message"] == "as text"


async def test_message_at_the_length_limit_is_accepted(channel_layer):
    async with joined("/ws/chat/lobby/") as ann:
        await ann.send_json_to({"message": "x" * 2000})
        assert (await receive(ann))["message"] == "x" * 2000


async def test_length_limit_is_configurable(channel_layer, settings):
    settings.CHAT_MESSAGE_MAX_LENGTH = 5
    async with joined("/ws/chat/lobby/") as ann:
        await ann.send_json_to({"message": "123456"})
        answer = await receive(ann)
        assert "limit is 5" in answer["error"] and answer["code"] == "message_too_long"
        await ann.send_json_to({"message": "12345"})
        assert (await receive(ann))["message"] == "12345"


async def test_sending_faster_than_the_rate_gets_errors_for_the_excess(channel_layer, settings):
    settings.CHAT_RATE_PER_SECOND = 0.01  # no refill during the test
    settings.CHAT_RATE_BURST = 3
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/lobby/") as bob:
        for n in range(5):
            await ann.send_json_to({"message": f"m{n}"})
        answers = [await receive(ann) for _ in range(5)]
        assert [a.get("message") for a in answers if "message" in a] == ["m0", "m1", "m2"]
        errors = [a for a in answers if "error" in a]
        assert len(errors) == 2 and all("Too many messages" in e["error"] for e in errors)
        assert [e["code"] for e in errors] == ["rate_limited", "rate_limited"]
        assert [(await receive(bob))["message"] for _ in range(3)] == ["m0", "m1", "m2"]
        assert await bob.receive_nothing(timeout=0.3)
        assert await stored_count() == 3


@pytest.mark.parametrize("origin", [b"http://evil.example", None], ids=["foreign_origin", "no_origin"])
async def test_handshake_from_a_foreign_or_missing_origin_is_refused(channel_layer, origin):
    client = communicator("/ws/chat/lobby/", origin=origin)
    connected, code = await client.connect(timeout=5)
    assert not connected


@pytest.mark.parametrize(
    "path",
    ["/ws/chat/a%20b/", "/ws/chat/%3Cscript%3E/", f"/ws/chat/{'r' * 65}/", "/ws/chat/", "/ws/elsewhere/", "/ws/"],
    ids=["space", "markup", "65_characters", "no_room", "not_chat", "bare_ws"],
)
async def test_paths_that_are_not_chat_rooms_are_refused(channel_layer, path):
    client = communicator(path)
    connected, code = await client.connect(timeout=5)
    assert not connected


async def test_room_name_of_64_characters_is_accepted(channel_layer):
    async with joined(f"/ws/chat/{'r' * 64}/") as ann:
        await ann.send_json_to({"message": "long room"})
        assert (await receive(ann))["room"] == "r" * 64


async def test_unicode_room_names_work_and_stay_apart(channel_layer):
    # 大厅 ("lobby") and 大堂 differ in one character; each gets its own group.
    async with joined("/ws/chat/%E5%A4%A7%E5%8E%85/") as ann, joined("/ws/chat/%E5%A4%A7%E5%A0%82/") as bob:
        await ann.send_json_to({"message": "hi", "user": "安"})
        got = await receive(ann)
        assert got["room"] == "大厅" and got["user"] == "安"
        assert await bob.receive_nothing(timeout=0.5)


async def test_cjk_text_and_emoji_round_trip_unchanged(channel_layer):
    text = "你好，世界！ こんにちは 안녕 👋🏽 🇫🇷 e\u0301 — fin"
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/lobby/") as bob:
        await ann.send_json_to({"message": text, "user": "小明"})
        for client in (ann, bob):
            got = await receive(client)
            assert got["message"] == text and got["user"] == "小明"
    async with joined("/ws/chat/lobby/") as late:
        assert (await receive(late))["message"] == text


async def test_message_is_stored(channel_layer):
    async with joined("/ws/chat/lobby/") as ann:
        await ann.send_json_to({"message": "keep me", "user": "ann"})
        got = await receive(ann)
    message = await database_sync_to_async(Message.objects.get)(id=got["id"])
    assert (message.room, message.user, message.text) == ("lobby", "ann", "keep me")


async def test_a_client_that_asks_gets_its_join_backlog_ended_by_a_page_frame(channel_layer):
    """?pages=1: the backlog always ends with a page frame, so the client knows when it has the room, even a
    small or empty one, without waiting to see whether more comes."""
    ids = await store("lobby", "a", "b")
    async with joined("/ws/chat/lobby/?pages=1") as ann:
        assert [(await receive(ann))["id"] for _ in range(2)] == ids
        assert await receive(ann) == {"page": "history", "more": False, "first": ids[0], "last": ids[1]}
    async with joined(f"/ws/chat/lobby/?since={ids[0]}&pages=1") as bob:
        assert (await receive(bob))["id"] == ids[1]
        assert await receive(bob) == {"page": "resync", "more": False, "first": ids[1], "last": ids[1]}
    async with joined(f"/ws/chat/lobby/?since={ids[1]}&pages=1") as cat:
        assert await receive(cat) == {"page": "resync", "more": False, "first": None, "last": None}
    async with joined("/ws/chat/empty/?pages=1") as dan:
        assert await receive(dan) == {"page": "history", "more": False, "first": None, "last": None}
        assert await dan.receive_nothing(timeout=0.3)
