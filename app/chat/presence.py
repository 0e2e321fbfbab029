"""Who is in each room now, across app processes and hosts.

Each process keeps, per room, who its own connections are (a person counts
once however many tabs). Every HEARTBEAT_SECONDS, and soon after someone
comes or goes, it writes that list to Redis under a key of its own that
expires after TTL_SECONDS, reads the lists of every process with people in
the room, and when the union differs from what it last saw, broadcasts it
to the room's connections that asked for it ({"type": "chat.presence"} to
the group subscribers(group)), which each sends on as {"presence": [...],
"anonymous": n}. A process that dies without saying
goodbye stops refreshing its key: within TTL_SECONDS plus a heartbeat the
others see its people gone and say so. Without Redis (the in-memory layer,
one process) the lists are this process's alone.

Written here rather than taken from a library: Channels has no presence,
and the packages that add it (channels-presence) keep a database row per
connection and need a periodic prune; this costs a few Redis commands per
room and process every few seconds.
"""

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter

from .ratelimit import redis_from_layer_settings

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 3.0
TTL_SECONDS = 10
SOON_SECONDS = 0.2  # how long a change waits, so that a burst of joins makes one broadcast
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
KEY_PREFIX = "chat:presence:"


class Presence:
    """This event loop's share of the rooms' presence (one per process in practice)."""

    def __init__(self, redis_client, channel_layer):
        self.redis = redis_client
        self.channel_layer = channel_layer
        self.local = {}  # group -> Counter of people (name, guest) here; name None: a guest without one
        self.seen = {}  # group -> the presence frame's content last broadcast or received
        self.changed = asyncio.Event()
        self.task = None

    def join(self, group, person):
        self.local.setdefault(group, Counter())[person] += 1
        self.wake()

    def leave(self, group, person):
        people = self.local.get(group)
        if people is None:
            return
        people[person] -= 1
        if people[person] <= 0:
            del people[person]
        self.wake()

    def wake(self):
        self.changed.set()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.run())

    async def run(self):
        """Refreshes this process's rooms until it has none left."""
        while self.local:
            try:
                await asyncio.wait_for(self.changed.wait(), HEARTBEAT_SECONDS)
                await asyncio.sleep(SOON_SECONDS)
            except asyncio.TimeoutError:
                pass
            self.changed.clear()
            for group in list(self.local):
                try:
                    await self.refresh(group)
                except Exception as error:  # Redis down: try again at the next heartbeat
                    logger.warning("Could not refresh who is in %s: %r", group, error)
                if not self.local.get(group):
                    self.local.pop(group, None)
                    self.seen.pop(group, None)

    async def refresh(self, group):
        mine = self.local.get(group) or Counter()
        if self.redis is not None:
            await self.publish(group, mine)
            everyone = await self.gather(group)
        else:
            everyone = {}
        everyone[PROCESS_ID] = mine
        frame = summary(everyone.values())
        if mine and frame != self.seen.get(group):
            self.seen[group] = frame
            await self.channel_layer.group_send(subscribers(group), {"type": "chat.presence", **frame})

    async def publish(self, group, mine):
        key = KEY_PREFIX + group
        if mine:
            people = [[name, guest, count] for (name, guest), count in mine.items()]
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(f"{key}:{PROCESS_ID}", json.dumps(people), ex=TTL_SECONDS)
                pipe.zadd(key, {PROCESS_ID: time.time() + TTL_SECONDS})
                pipe.expire(key, TTL_SECONDS * 2)
                await pipe.execute()
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(f"{key}:{PROCESS_ID}")
                pipe.zrem(key, PROCESS_ID)
                await pipe.execute()

    async def gather(self, group):
        key = KEY_PREFIX + group
        await self.redis.zremrangebyscore(key, "-inf", time.time())
        processes = [process.decode() for process in await self.redis.zrange(key, 0, -1)]
        if not processes:
            return {}
        lists = await self.redis.mget([f"{key}:{process}" for process in processes])
        return {
            process: Counter({(name, guest): count for name, guest, count in json.loads(raw)})
            for process, raw in zip(processes, lists)
            if raw is not None
        }

    async def now(self, group):
        """The room's presence frame content as it stands (for a client that just joined)."""
        everyone = {}
        if self.redis is not None:
            try:
                everyone = await self.gather(group)
            except Exception as error:
                logger.warning("Could not read who is in %s: %r", group, error)
        # This process's own people as they are now, not as last written.
        everyone[PROCESS_ID] = self.local.get(group) or Counter()
        return summary(everyone.values())


def subscribers(group):
    """The group of a room's connections that asked for presence frames: the others never see the traffic."""
    return group + ".presence"


def summary(lists):
    """{"presence": [{"user", "guest"?}, ...] sorted, each person once, "anonymous": guests without a name}."""
    people, anonymous = set(), 0
    for counter in lists:
        for (name, guest), count in counter.items():
            if name is None:
                anonymous += count
            else:
                people.add((name, bool(guest)))
    listed = [{"user": name, **({"guest": True} if guest else {})} for name, guest in sorted(people)]
    return {"presence": listed, "anonymous": anonymous}


_presences = {}


def for_this_loop(channel_layer):
    loop = asyncio.get_running_loop()
    presence = _presences.get(loop)
    if presence is None:
        for old in [old for old in _presences if old.is_closed()]:
            del _presences[old]
        presence = _presences[loop] = Presence(redis_from_layer_settings(), channel_layer)
    return presence
