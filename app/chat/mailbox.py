"""The part of asyncio.Queue that a single reader needs, without its up-front cost.

An asyncio.Queue allocates four deques when it is made (about 3 KiB on
CPython 3.11), and a websocket connection under Channels gets two of them:
daphne's queue of events for the application, and the channel layer's queue
of messages for the consumer. Both are filled with put_nowait() and read by
one task, so a mailbox that keeps its items in a deque only while some wait
to be read does the same job in well under a hundred bytes.
"""

import asyncio
import collections


class Mailbox:
    """put_nowait() from anywhere on the loop, get() by one reader at a time; unbounded."""

    __slots__ = ("_items", "_waiter")

    def __init__(self):
        self._items = None  # a deque while items wait to be read
        self._waiter = None  # the reader's future while it waits

    def put_nowait(self, item):
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(item)
            return
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)

    async def get(self):
        items = self._items
        if items:
            item = items.popleft()
            if not items:
                self._items = None
            return item
        self._waiter = asyncio.get_running_loop().create_future()
        return await self._waiter

    def qsize(self):
        return len(self._items) if self._items else 0
