"""The chat's channel layer: channels-redis's pub/sub layer, lighter per connection.

RedisPubSubChannelLayer gives every channel (one per websocket) an
asyncio.Queue, which allocates four deques up front: about 2.9 KB for each
idle connection, most of the difference between the chat's memory per
connection and a bare websockets server's. The layer only ever puts into
that queue without waiting and has one reader, so a mailbox that allocates
nothing until a message has to wait does the same job.
"""

import asyncio
import collections

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer
from channels_redis.utils import _wrap_close


class Mailbox:
    """The part of asyncio.Queue the pub/sub layer uses: put_nowait() and one reader's get()."""

    __slots__ = ("_items", "_waiter")

    def __init__(self):
        self._items = None
        self._waiter = None

    def put_nowait(self, item):
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(item)
            return
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)

    async def get(self):
        if self._items:
            return self._items.popleft()
        self._waiter = asyncio.get_running_loop().create_future()
        return await self._waiter

    def qsize(self):
        return len(self._items) if self._items else 0


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
