"""The chat against a Redis that closes idle clients (redis.conf's timeout, the redis role's redis_timeout).

The deployed Redis closes a client that has sent nothing for redis_timeout seconds, so that the connections a
burst of traffic opened in the app's redis-py pools do not stay for ever. Pub/sub subscribers are exempt, so a
room's subscription stays; a pooled connection Redis closed must be replaced without the caller seeing an error
(a broadcast that failed would tell its sender "broadcast_failed").
"""

import asyncio

import pytest
import redis

from chat.layers import LeanRedisPubSubChannelLayer
from chat.ratelimit import SharedRateLimiter, redis_from_layer_settings

from .live_server import private_redis

IDLE = 1  # s, Redis's timeout in this test


@pytest.fixture
def idle_closing_redis(tmp_path):
    port, start, stop = private_redis(tmp_path, "--timeout", str(IDLE))
    start()
    yield f"redis://127.0.0.1:{port}/0"
    stop()


def clients(url):
    """Redis's clients other than this probe, as (name or address, flags), from a connection of its own."""
    with redis.Redis.from_url(url, single_connection_client=True) as probe:
        me = probe.client_id()
        return [(client["addr"], client["flags"]) for client in probe.client_list() if int(client["id"]) != me]


async def test_idle_pooled_connections_are_closed_and_replaced_without_an_error(idle_closing_redis, settings):
    url = idle_closing_redis
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "chat.layers.LeanRedisPubSubChannelLayer", "CONFIG": {"hosts": [{"address": url}]}}
    }
    layer = LeanRedisPubSubChannelLayer(hosts=[{"address": url}])
    limiter = SharedRateLimiter(redis_from_layer_settings())  # as the consumers get it (presence too)
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "chat.message", "text": "before"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["text"] == "before"
        assert await limiter.take("someone", rate=1, burst=5) is True
        busy = clients(url)
        assert len([flags for _, flags in busy if "P" in flags]) == 1  # the layer's subscriber
        assert len(busy) >= 3  # and the publishing pool's and the limiter's connections

        await asyncio.sleep(IDLE + 2)  # Redis checks its clients' idle time about once a second

        idle = clients(url)
        assert [flags for _, flags in idle] == ["P"], f"Redis kept idle clients: {idle}"

        # The next broadcast and the next rate check reconnect without the caller seeing an error, and the
        # subscription never broke: no resync, just the message.
        await layer.group_send("room", {"type": "chat.message", "text": "after"})
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "chat.message", "text": "after"}
        assert await limiter.take("someone", rate=1, burst=5) is True
    finally:
        await layer.flush()


async def test_a_subscriber_left_without_subscriptions_and_closed_as_idle_subscribes_again_without_an_error(
    idle_closing_redis,
):
    # A quiet site: the last client left, so the layer's pub/sub connection subscribes to nothing, is no longer
    # exempt from the timeout, and Redis closes it. The next client's join must not fail (its handshake would be
    # refused: "the channel layer is unavailable").
    url = idle_closing_redis
    layer = LeanRedisPubSubChannelLayer(hosts=[{"address": url}])
    try:
        first = await layer.new_channel()
        await layer.group_add("room", first)
        await layer.group_discard("room", first)
        await layer.delete_channel(first)
        await asyncio.sleep(IDLE + 2)
        assert clients(url) == [], "Redis kept the idle subscriber: this test proves nothing"

        second = await layer.new_channel()
        await layer.group_add("room", second)
        await layer.group_send("room", {"type": "chat.message", "text": "after a quiet while"})
        assert (await asyncio.wait_for(layer.receive(second), 5))["text"] == "after a quiet while"
    finally:
        await layer.flush()
