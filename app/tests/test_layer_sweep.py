"""The pub/sub layer lets go of every subscription it no longer needs, however its unsubscribe was cut short."""

import asyncio

import redis

from chat import layers


def layer_for(redis_url):
    return layers.LeanRedisPubSubChannelLayer(hosts=[{"address": redis_url}])


def chat_channels(redis_url):
    return sorted(name.decode() for name in redis.Redis.from_url(redis_url).pubsub_channels("asgi*"))


def test_a_channel_whose_mailbox_went_first_is_still_unsubscribed_by_delete_channel(redis_url):
    async def run():
        layer = layer_for(redis_url)
        channel = await layer.new_channel()
        # What channels-redis's receive() does when cancelled: the mailbox goes,
        # and a second cancellation can stop the unsubscribe that follows.
        del layer._get_layer().channels[channel]
        await layer.delete_channel(channel)
        left = chat_channels(redis_url)
        await layer.flush()
        return channel, left

    channel, left = asyncio.run(run())
    assert channel not in left


def test_a_subscription_nobody_holds_is_swept(redis_url, monkeypatch):
    monkeypatch.setattr(layers, "SWEEP_SECONDS", 0.2)

    async def run():
        layer = layer_for(redis_url)
        channel = await layer.new_channel()
        await layer.group_add("swept", channel)
        loop_layer = layer._get_layer()
        # Both forgotten locally, as when the consumer holding them was cancelled mid-clean-up.
        del loop_layer.channels[channel]
        del loop_layer.groups[loop_layer._get_group_channel_name("swept")]
        before = chat_channels(redis_url)
        await asyncio.sleep(1)
        after = chat_channels(redis_url)
        await layer.flush()
        return channel, before, after

    channel, before, after = asyncio.run(run())
    assert channel in before and channel not in after
    assert not [name for name in after if name.endswith("swept")]
