"""The chat's pub/sub layer (chat.layers) when its Redis goes away and comes back.

Against a redis-server of the test's own, restarted on the same port: whatever was published while the layer's
subscriptions were down is lost to pub/sub, so every local channel is told {"type": "chat.resync"} once the
layer has resubscribed, and catches up from the database.
"""

import asyncio
import logging

import pytest
import redis

from chat.layers import LeanRedisPubSubChannelLayer

from .live_server import private_redis


@pytest.fixture
def restartable_redis(tmp_path):
    port, start, stop = private_redis(tmp_path)
    start()
    yield port, start, stop
    stop()


async def receive(layer, channel, seconds=20):
    return await asyncio.wait_for(layer.receive(channel), seconds)


async def publish(send, *args):
    """The layer's send or group_send; once more if the first finds its pooled connection closed by the restart.

    (redis-py's publishing pool learns that a connection is dead on its first use after Redis restarted; the
    chat tells that sender "broadcast_failed", and the message reaches the room through the resync.)
    """
    try:
        await send(*args)
    except redis.ConnectionError:
        await send(*args)


async def test_every_channel_is_told_to_resync_after_the_layer_reconnects(restartable_redis, caplog):
    port, start, stop = restartable_redis
    layer = LeanRedisPubSubChannelLayer(hosts=[{"address": f"redis://127.0.0.1:{port}/0"}])
    try:
        in_room = await layer.new_channel()
        alone = await layer.new_channel()
        await layer.group_add("room", in_room)
        await layer.group_send("room", {"type": "chat.message", "text": "before"})
        assert (await receive(layer, in_room))["text"] == "before"

        stop()
        await asyncio.sleep(1.5)  # the layer's reader notices
        start()
        with caplog.at_level(logging.WARNING, logger="chat.layers"):
            assert await receive(layer, in_room) == {"type": "chat.resync"}
            assert await receive(layer, alone) == {"type": "chat.resync"}
        assert len([r for r in caplog.records if "resync" in r.getMessage()]) == 1

        # Subscribed again: live messages flow, to the group and to the channel itself.
        await publish(layer.group_send, "room", {"type": "chat.message", "text": "after"})
        assert (await receive(layer, in_room))["text"] == "after"
        await publish(layer.send, alone, {"type": "chat.message", "text": "direct"})
        assert (await receive(layer, alone))["text"] == "direct"
    finally:
        await layer.flush()


async def test_the_first_connect_sends_no_resync(restartable_redis):
    port, _, _ = restartable_redis
    layer = LeanRedisPubSubChannelLayer(hosts=[{"address": f"redis://127.0.0.1:{port}/0"}])
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "chat.message", "text": "first"})
        assert (await receive(layer, channel, 5))["text"] == "first"
    finally:
        await layer.flush()


async def test_a_channel_deleted_during_the_outage_is_not_subscribed_again(restartable_redis):
    port, start, stop = restartable_redis
    layer = LeanRedisPubSubChannelLayer(hosts=[{"address": f"redis://127.0.0.1:{port}/0"}])
    try:
        kept = await layer.new_channel()
        gone = await layer.new_channel()
        await layer.group_add("room", gone)
        stop()
        await asyncio.sleep(1.5)
        with pytest.raises(Exception):  # noqa: B017 - whatever redis-py raises for a refused connection
            await layer.delete_channel(gone)
        start()
        assert await receive(layer, kept) == {"type": "chat.resync"}
        channels = {name.decode() for name in redis.Redis(port=port).pubsub_channels("asgi*")}
        assert channels == {kept}
    finally:
        await layer.flush()


async def subscribed(client, pattern, expected, within=5.0):
    """Redis's subscribed channels matching `pattern`, once they are `expected` or `within` seconds have passed.

    The layer sends UNSUBSCRIBE without waiting for Redis's reply, so another
    client may see the old list for a moment (on a loaded machine).
    """
    deadline = asyncio.get_running_loop().time() + within
    while True:
        channels = {name.decode() for name in client.pubsub_channels(pattern)}
        if channels == expected or asyncio.get_running_loop().time() > deadline:
            return channels
        await asyncio.sleep(0.05)


async def test_delete_channel_releases_the_subscription_and_the_groups(redis_url):
    layer = LeanRedisPubSubChannelLayer(hosts=[{"address": redis_url}], prefix="deltest")
    client = redis.Redis.from_url(redis_url)
    try:
        first = await layer.new_channel()
        second = await layer.new_channel()
        for channel in (first, second):
            await layer.group_add("room", channel)
        await layer.group_add("other", first)
        await layer.delete_channel(first)
        await layer.delete_channel(first)  # idempotent
        assert await subscribed(client, "deltest*", {second, "deltest__group__room"}) == {
            second, "deltest__group__room",
        }
        await layer.delete_channel(second)
        assert await subscribed(client, "deltest*", set()) == set()
    finally:
        await layer.flush()
