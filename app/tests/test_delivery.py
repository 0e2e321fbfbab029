"""Delivery guarantees: acknowledged, idempotent sends, and every message to every client once, in order.

Like test_consumer.py, every test runs once per channel layer (in-memory and
both Redis layers against a real Redis).
"""

import asyncio
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import connection

from chat import consumers, protocol
from chat.models import Message

from .test_consumer import joined, receive, store, stored_count

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_message_with_a_client_id_is_acknowledged_to_its_sender_only(channel_layer):
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/lobby/") as bob:
        await ann.send_json_to({"message": "hello", "user": "ann", "client_id": "c-1"})
        ack = await receive(ann)
        live = await receive(ann)
        assert ack == {"ack": "c-1", "id": live["id"], "seq": live["seq"]}
        assert (await receive(bob))["id"] == live["id"]
        assert await bob.receive_nothing(timeout=0.3)  # no ack for bob


async def test_a_resent_message_is_stored_and_broadcast_once(channel_layer):
    client_id = str(uuid.uuid4())
    frame = {"message": "only once", "user": "ann", "client_id": client_id}
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/lobby/") as _bob:
        await ann.send_json_to(frame)
        first = await receive(ann)
        assert (await receive(ann))["message"] == "only once"
    # The ack was lost with the connection, say: the client sends again, from a new one.
    async with joined(f"/ws/chat/lobby/?since={first['id']}") as ann:
        await ann.send_json_to(frame)
        assert await receive(ann) == {**first, "duplicate": True}
        assert await ann.receive_nothing(timeout=0.3)
    assert await stored_count() == 1
    # The same client_id from another sender is another message.
    async with joined(f"/ws/chat/lobby/?since={first['id']}") as cat:
        await cat.send_json_to({**frame, "user": "cat"})
        assert (await receive(cat))["id"] != first["id"]
    assert await stored_count() == 2


async def test_a_resend_broadcasts_a_stored_message_that_never_was(channel_layer):
    """Stored, then its server stopped before broadcasting it (a restart): the sender's resend relays it.

    The resend is a duplicate (acknowledged as one, stored once); clients that have the message already
    drop the second broadcast by its id.
    """
    client_id = str(uuid.uuid4())
    async with joined("/ws/chat/lobby/") as bob:
        stored = await database_sync_to_async(Message.objects.post)("lobby", "ann", "stored, not sent", client_id)
        stored = stored[0]
        async with joined(f"/ws/chat/lobby/?since={stored.id}") as ann:
            await ann.send_json_to({"message": "stored, not sent", "user": "ann", "client_id": client_id})
            assert (await receive(ann))["duplicate"] is True
            assert (await receive(bob))["id"] == stored.id
            assert await ann.receive_nothing(timeout=0.3)  # it has it: the broadcast is dropped
    assert await stored_count() == 1


async def test_a_refusal_names_the_client_id_it_is_about(channel_layer, settings):
    settings.CHAT_RATE_PER_SECOND = 0.01
    settings.CHAT_RATE_BURST = 1
    async with joined("/ws/chat/lobby/") as ann:
        await ann.send_json_to({"message": "one", "client_id": "a"})
        assert "ack" in await receive(ann)
        await receive(ann)
        await ann.send_json_to({"message": "two", "client_id": "b"})
        refused = await receive(ann)
        assert refused["code"] == "rate_limited" and refused["client_id"] == "b"
        await ann.send_json_to({"message": "x" * 5000, "client_id": "c"})
        refused = await receive(ann)
        assert refused["code"] == "message_too_long" and refused["client_id"] == "c"


async def test_a_message_the_database_refuses_gets_an_error_and_the_connection_stays_open(channel_layer):
    async with joined("/ws/chat/lobby/") as ann:
        # A real refusal: the table the message needs is gone for a moment.
        await database_sync_to_async(rename_table)("chat_room", "chat_room_away")
        try:
            await ann.send_json_to({"message": "not now", "client_id": "c-1"})
            refused = await receive(ann)
        finally:
            await database_sync_to_async(rename_table)("chat_room_away", "chat_room")
        assert refused["code"] == "store_failed" and refused["client_id"] == "c-1"
        assert await stored_count() == 0
        # Sent again, it goes through on the same connection.
        await ann.send_json_to({"message": "not now", "client_id": "c-1"})
        assert (await receive(ann))["ack"] == "c-1"
        assert (await receive(ann))["message"] == "not now"


def rename_table(old, new):
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {old} RENAME TO {new}")


async def test_a_message_whose_broadcast_never_came_is_read_from_the_database_in_its_place(channel_layer):
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/lobby/") as bob:
        # Stored, but its sender's broadcast failed (store() broadcasts nothing)...
        (lost,) = await store("lobby", "lost on the way")
        # ...and the next message is broadcast: every client notices the gap.
        await bob.send_json_to({"message": "next"})
        for client in (ann, bob):
            got = [await receive(client), await receive(client)]
            assert [m["id"] for m in got] == [lost, got[1]["id"]] and lost < got[1]["id"]
            assert [m["message"] for m in got] == ["lost on the way", "next"]
            assert await client.receive_nothing(timeout=consumers.GAP_WAIT_SECONDS + 0.2)


async def test_messages_that_arrive_out_of_order_go_out_in_order(channel_layer):
    layer = get_channel_layer()
    async with joined("/ws/chat/lobby/") as ann:
        # Two messages broadcast by two app processes, the second arriving first.
        first, second = await database_sync_to_async(post_pair)("lobby")
        gaps_before = metric_value(consumers.metrics.catch_ups_for_gap)
        for message in (second, first):
            await layer.group_send(protocol.group_name("lobby"), event(message))
        got = [await receive(ann), await receive(ann)]
        assert [m["id"] for m in got] == [first.id, second.id]
        assert await ann.receive_nothing(timeout=consumers.GAP_WAIT_SECONDS + 0.2)
        # The first one came in time: nothing was read from the database.
        assert metric_value(consumers.metrics.catch_ups_for_gap) == gaps_before


def metric_value(counter):
    return counter._value.get()


def post_pair(room):
    return [Message.objects.post(room, "writer", text)[0] for text in ("a", "b")]


def event(message):
    return {"type": "chat.message", "id": message.id, "seq": message.seq, "text": protocol.outgoing(message)}


async def test_a_resync_event_makes_connections_read_what_the_layer_lost(channel_layer):
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/kitchen/") as cook:
        (lost,) = await store("lobby", "published while the layer was down")
        await get_channel_layer().group_send(protocol.group_name("lobby"), {"type": "chat.resync"})
        got = await receive(ann)
        assert got["id"] == lost and "resync" not in got and "history" not in got
        assert await ann.receive_nothing(timeout=0.3)
        assert await cook.receive_nothing(timeout=0.1)


async def test_a_connection_over_a_page_behind_after_a_layer_loss_pages_through(channel_layer, settings):
    settings.CHAT_RESYNC_LIMIT = 2
    async with joined("/ws/chat/lobby/") as ann:
        lost = await store("lobby", "l1", "l2", "l3")
        await get_channel_layer().group_send(protocol.group_name("lobby"), {"type": "chat.resync"})
        assert [(await receive(ann))["id"] for _ in range(2)] == lost[:2]
        assert await receive(ann) == {"page": "resync", "more": True, "first": lost[0], "last": lost[1]}
        await ann.send_json_to({"since": lost[1]})
        assert (await receive(ann))["id"] == lost[2]
        assert (await receive(ann))["more"] is False


async def test_a_broadcast_failure_tells_the_room_to_resync_once_the_layer_works(channel_layer, monkeypatch):
    monkeypatch.setattr(consumers, "RESYNC_RETRY_SECONDS", 0.05)
    async with joined("/ws/chat/lobby/") as ann:
        layer = get_channel_layer()
        (lost,) = await store("lobby", "stored, never broadcast")
        consumers.resync_group_later(layer, protocol.group_name("lobby"))
        assert (await receive(ann))["id"] == lost
        await asyncio.sleep(0.1)
        assert not consumers._pending_resyncs


async def test_the_ack_goes_out_only_once_the_message_is_broadcast(channel_layer, monkeypatch):
    """The broadcast fails (or its process stops there): the sender gets no ack, so it sends again, and the resend
    (stored once) is broadcast to the room and acknowledged then."""
    monkeypatch.setattr(consumers, "RESYNC_RETRY_SECONDS", 0.05)
    layer = get_channel_layer()
    broadcast = layer.group_send
    frame = {"message": "everyone gets it", "user": "ann", "client_id": "c-1"}
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/lobby/") as bob:

        async def fails_for_messages(group, message):
            if message["type"] == "chat.message":
                raise ConnectionError("the channel layer is gone")
            await broadcast(group, message)

        monkeypatch.setattr(layer, "group_send", fails_for_messages)
        await ann.send_json_to(frame)
        refused = await receive(ann)
        assert "ack" not in refused, "acknowledged, yet nobody got it"
        assert (refused["code"], refused["client_id"]) == ("broadcast_failed", "c-1")
        monkeypatch.setattr(layer, "group_send", broadcast)
        # The outbox resends it (session.js: broadcast_failed is retried later).
        await ann.send_json_to(frame)
        # The room's resync (after the failure) and the resend race: the message comes once, by either.
        got = [await receive(ann), await receive(ann)]
        (ack,) = [frame for frame in got if "ack" in frame]
        assert ack["ack"] == "c-1" and ack["duplicate"] is True
        assert [frame["id"] for frame in got if "message" in frame] == [ack["id"]]
        assert (await receive(bob))["id"] == ack["id"]
        for client in (ann, bob):
            assert await client.receive_nothing(timeout=0.3)  # once each, the room's resync included
    assert await stored_count() == 1


async def test_a_message_stored_but_never_broadcast_reaches_the_others_at_their_next_join_or_resync(channel_layer):
    """Its sender's process stopped between storing and broadcasting, in a quiet room: no later message reveals it."""
    async with joined("/ws/chat/lobby/") as bob:
        await bob.send_json_to({"message": "before"})
        seen = (await receive(bob))["id"]
        (lost,) = await store("lobby", "stored, never broadcast")
        assert await bob.receive_nothing(timeout=0.3)
        # Bob's page asks for the next resync page (after a reconnect it is ?since=): it comes.
        await bob.send_json_to({"since": seen})
        assert (await receive(bob))["id"] == lost
        assert (await receive(bob))["page"] == "resync"
    async with joined(f"/ws/chat/lobby/?since={seen}") as back, joined("/ws/chat/lobby/") as new:
        assert (await receive(back))["id"] == lost
        assert [(await receive(new))["id"] for _ in range(2)] == [seen, lost]



async def test_a_cancelled_gap_wait_does_not_clear_the_one_started_after_it(monkeypatch):
    """A gap filled while its wait is waking the connection cancels that wait; the cancelled wait's clean-up
    must leave the wait started after it in place.

    Otherwise the next gap starts a second wait beside the one still running (a stray timer), and each of
    them wakes the connection to read the database. The layer's send is held open here, as a slow Redis
    holds it, so that the first wait is cancelled in it.
    """
    monkeypatch.setattr(consumers, "GAP_WAIT_SECONDS", 0.01)
    consumer = consumers.ChatConsumer()
    layer = consumer.channel_layer = InMemoryChannelLayer()
    consumer.channel_name = await layer.new_channel()
    layer_answers = asyncio.Event()
    real_send = layer.send

    async def slow_send(channel, message):
        await layer_answers.wait()
        await real_send(channel, message)

    layer.send = slow_send
    sent = []

    async def base_send(message):
        sent.append(message)

    consumer.base_send = base_send
    consumer.last_id = consumer.last_seq = 1
    frame = {"type": "chat.message", "text": "{}"}
    await consumer.chat_message({**frame, "id": 3, "seq": 3})  # 2 is missing: a wait starts
    first_wait = consumer.gap_task
    await asyncio.sleep(0.1)  # it is waking the connection, in the layer's send
    await consumer.chat_message({**frame, "id": 2, "seq": 2})  # 2 came after all: the wait is cancelled
    assert first_wait.cancelling()
    await consumer.chat_message({**frame, "id": 5, "seq": 5})  # 4 is missing: a new wait
    second_wait = consumer.gap_task
    assert second_wait is not None and second_wait is not first_wait
    await asyncio.sleep(0)  # the cancelled wait runs its clean-up
    assert first_wait.done()
    assert consumer.gap_task is second_wait
    await consumer.chat_message({**frame, "id": 7, "seq": 7})  # a further gap: still the one wait
    assert consumer.gap_task is second_wait
    second_wait.cancel()
    assert len(sent) == 2  # 2 and 3 went out; 5 and 7 are held


async def messages_until(client, text, seconds):
    """The ids of the messages a first-version client shows until the one saying `text`: it shows every frame
    with an "id" and skips the rest (page frames), and never asks for a page."""
    ids = []
    async with asyncio.timeout(seconds):
        while True:
            frame = await client.receive_json_from(timeout=seconds)
            if isinstance(frame.get("id"), int):
                ids.append(frame["id"])
                if frame.get("message") == text:
                    return ids


@pytest.mark.parametrize("behind", ["after a layer loss", "at a join with ?since="])
async def test_a_first_version_client_keeps_getting_live_messages_after_an_unasked_resync_page(
    channel_layer, settings, behind
):
    settings.CHAT_RESYNC_LIMIT = 2
    path, lost = "/ws/chat/lobby/", []
    if behind == "at a join with ?since=":
        seen, *lost = await store("lobby", "seen", "l1", "l2", "l3")
        path += f"?since={seen}"
    async with joined(path) as old, joined("/ws/chat/lobby/") as bob:
        if behind == "after a layer loss":
            lost = await store("lobby", "l1", "l2", "l3")
            await get_channel_layer().group_send(protocol.group_name("lobby"), {"type": "chat.resync"})
        await bob.send_json_to({"message": "live", "client_id": "live"})
        live = (await receive_ack(bob))["id"]
        # Every message once, in order, the missed ones paged to it unasked, and live messages after them.
        assert await messages_until(old, "live", 20) == [*lost, live]
        await bob.send_json_to({"message": "later", "client_id": "later"})
        later = (await receive_ack(bob))["id"]
        assert await messages_until(old, "later", 5) == [later]


async def receive_ack(client):
    async with asyncio.timeout(10):
        while True:
            frame = await client.receive_json_from(timeout=10)
            if "ack" in frame:
                return frame


async def test_a_client_that_asks_for_a_page_after_it_came_unasked_gets_no_message_twice(channel_layer, settings):
    settings.CHAT_RESYNC_LIMIT = 2
    async with joined("/ws/chat/lobby/") as ann:
        lost = await store("lobby", *[f"l{n}" for n in range(5)])
        await get_channel_layer().group_send(protocol.group_name("lobby"), {"type": "chat.resync"})
        assert [(await receive(ann))["id"] for _ in range(2)] == lost[:2]
        assert (await receive(ann))["more"] is True
        # ann is slow to ask: the next page comes first, unasked.
        async with asyncio.timeout(consumers.PAGE_WAIT_SECONDS + 5):
            unasked = [(await ann.receive_json_from(timeout=10))["id"] for _ in range(2)]
        assert unasked == lost[2:4]
        assert (await receive(ann))["more"] is True
        await ann.send_json_to({"since": lost[1]})  # the page ann was sent already
        assert (await receive(ann))["id"] == lost[4]
        assert await receive(ann) == {"page": "resync", "more": False, "first": lost[4], "last": lost[4]}
        assert await ann.receive_nothing(timeout=consumers.PAGE_WAIT_SECONDS + 0.5)
