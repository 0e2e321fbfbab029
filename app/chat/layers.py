"""The chat's channel layer: channels-redis's pub/sub layer, lighter per connection.

RedisPubSubChannelLayer gives every channel (one per websocket) an
asyncio.Queue, which allocates four deques up front: about 3 KiB for each
idle connection. The layer only ever puts into that queue without waiting
and has one reader, so a Mailbox (chat.mailbox), which allocates nothing
until a message has to wait, does the same job.
"""

import asyncio

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer
from channels_redis.utils import _wrap_close

from .mailbox import Mailbox


class _LoopLayer(RedisPubSubLoopLayer):
    async def _subscribe_to_channel(self, channel):
        self.channels[channel] = Mailbox()
        await self._get_shard(channel).subscribe(channel)


class LeanRedisPubSubChannelLayer(RedisPubSubChannelLayer):
    """RedisPubSubChannelLayer whose channels use a Mailbox instead of an asyncio.Queue."""

    def _get_layer(self):
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
            return layer
