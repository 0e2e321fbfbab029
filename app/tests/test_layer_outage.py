"""Clients that stay connected through a Redis outage end up with every message, once.

During the outage a message is stored and its sender told that it could not
be broadcast; the clients that stayed connected must still get it, without
reconnecting, once Redis is back: the pub/sub layer tells every local
channel to catch up from the database when its connection comes back
(chat.layers), and the sender's process reminds the room once the layer
takes messages again (chat.consumers.resync_group_later).
"""

import asyncio

import pytest

from .live_server import private_redis
from .test_consumer import joined, stored_count

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def restartable_redis(tmp_path, settings):
    port, start, stop = private_redis(tmp_path)
    start()
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chat.layers.LeanRedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": f"redis://127.0.0.1:{port}/0"}]},
        }
    }
    yield start, stop
    stop()


async def frames_until(client, predicate, seconds):
    """Every frame the client gets until one matches (bounded)."""
    got = []
    async with asyncio.timeout(seconds):
        while not got or not predicate(got[-1]):
            got.append(await client.receive_json_from(timeout=seconds))
    return got


async def test_clients_that_stay_connected_through_a_redis_restart_get_every_message_once(restartable_redis):
    start, stop = restartable_redis
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/lobby/") as bob:
        await ann.send_json_to({"message": "before", "user": "ann"})
        for client in (ann, bob):
            assert (await client.receive_json_from(timeout=5))["message"] == "before"

        stop()
        await ann.send_json_to({"message": "during", "user": "ann", "client_id": "during-1"})
        told = await frames_until(ann, lambda frame: "error" in frame, 10)
        # Stored but not broadcast: no ack, so the sender's outbox will send it again.
        assert [(frame["code"], frame["client_id"]) for frame in told] == [("broadcast_failed", "during-1")]
        assert await bob.receive_nothing(timeout=0.5)

        start()
        # Without reconnecting, both get it once Redis is back.
        for client in (ann, bob):
            got = await frames_until(client, lambda frame: frame.get("message") == "during", 20)
            assert [frame["message"] for frame in got] == ["during"]
        await ann.send_json_to({"message": "after", "user": "ann"})
        for client in (ann, bob):
            got = await frames_until(client, lambda frame: frame.get("message") == "after", 20)
            assert [frame["message"] for frame in got] == ["after"], "a message came twice"
            assert await client.receive_nothing(timeout=1.5)
    assert await stored_count() == 3
