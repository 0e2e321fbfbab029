"""Who is in each room now, across app processes and hosts.

Each process keeps, per room, who its own connections are (a person counts
once however many tabs). Every HEARTBEAT_SECONDS, and soon after someone
comes or goes, it writes that list to Redis under a key of its own that
expires after TTL_SECONDS and reads the lists of every process with people
in the room, in one script (REFRESH); when the union differs from what it
last told its own connections, it tells them again ({"type":
"chat.presence"} to its own group, local_subscribers(group)), and each
sends it on as {"presence": [...], "anonymous": n}. So a change makes one
frame per client, from the client's own process, however many processes
see it.

A process that dies without saying goodbye stops refreshing its key: within
TTL_SECONDS plus a heartbeat the others see its people gone and say so. So
does a process whose goodbye failed (Redis down when someone left): the
person left its list whether or not Redis heard of it. Every expiry is by
Redis's clock (its TTLs, and TIME in the script), so app hosts whose clocks
disagree still agree on who is here. Without Redis (the in-memory layer, one
process) the lists are this process's alone.

Written here rather than taken from a library: Channels has no presence,
and the packages that add it (channels-presence) keep a database row per
connection and need a periodic prune; this costs one Redis script per room
and process every few seconds.
"""

import asyncio
import json
import logging
import os
import socket
import uuid
from collections import Counter

from .ratelimit import redis_from_layer_settings

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 3.0
TTL_SECONDS = 10
SOON_SECONDS = 0.2  # how long a change waits, so that a burst of joins makes one broadcast
KEY_PREFIX = "chat:presence:"

# KEYS[1]: the room's index, a sorted set of the processes with people in the room, each scored with when its
# list expires (by Redis's clock); its list is under KEYS[1]:<process>. ARGV: this process's id, its list as
# JSON ("": nobody here any more), the TTL. Returns [process, list, process, list, ...] of every live list.
# Keys and scores are those of the release before it (which scored by the app host's clock), so that both
# see each other's people during a rolling deploy.
REFRESH = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local ttl = tonumber(ARGV[3])
local mine = KEYS[1] .. ':' .. ARGV[1]
if ARGV[2] == '' then
  redis.call('DEL', mine)
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('SET', mine, ARGV[2], 'EX', ttl)
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('EXPIRE', KEYS[1], ttl * 2)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local processes = redis.call('ZRANGE', KEYS[1], 0, -1)
local found = {}
for _, process in ipairs(processes) do
  local list = redis.call('GET', KEYS[1] .. ':' .. process)
  if list then
    found[#found + 1] = process
    found[#found + 1] = list
  end
end
return found
"""


class Presence:
    """This event loop's share of the rooms' presence (one per process in practice)."""

    def __init__(self, redis_client, channel_layer):
        self.script = redis_client.register_script(REFRESH) if redis_client is not None else None
        self.channel_layer = channel_layer
        token = uuid.uuid4().hex[:12]
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{token}"
        self.token = token  # names this process's own group of subscribers (group names are ASCII)
        self.local = {}  # group -> Counter of people (name, guest) here; name None: a guest without one
        self.seen = {}  # group -> the presence frame's content last sent to this process's subscribers
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
        frame = await self.everyone(group, mine)
        if mine and frame != self.seen.get(group):
            self.seen[group] = frame
            await self.channel_layer.group_send(self.local_subscribers(group), {"type": "chat.presence", **frame})

    async def everyone(self, group, mine):
        """The room's presence frame content, once this process's list (`mine`) is written; raises if Redis fails."""
        everyone = {}
        if self.script is not None:
            people = json.dumps([[name, guest, count] for (name, guest), count in mine.items()]) if mine else ""
            found = await self.script(keys=[KEY_PREFIX + group], args=[self.process_id, people, TTL_SECONDS])
            for process, raw in zip(found[::2], found[1::2]):
                everyone[process.decode()] = Counter({(name, guest): count for name, guest, count in json.loads(raw)})
        everyone[self.process_id] = mine
        return summary(everyone.values())

    async def now(self, group):
        """The room's presence frame content as it stands (for a client that just joined)."""
        # This process's own people as they are now, not as last written.
        mine = self.local.get(group) or Counter()
        try:
            return await self.everyone(group, mine)
        except Exception as error:
            logger.warning("Could not read who is in %s: %r", group, error)
            return summary([mine])

    async def latest(self, group):
        """What this process last told its subscribers in the room (for one whose channel layer lost it while it
        reconnected), else the room as it stands: no Redis command per subscriber when a layer comes back."""
        return self.seen.get(group) or await self.now(group)

    def local_subscribers(self, group):
        """The group of this process's connections in the room that asked for presence frames.

        Each process tells its own: a change seen by every process makes one frame per client, not one per
        process. The others never see the traffic.
        """
        return f"{group}.presence.{self.token}"


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
    """This event loop's Presence for the channel layer: one per process in practice (tests run two layers
    in one process as two processes)."""
    loop = asyncio.get_running_loop()
    presence = _presences.get((loop, channel_layer))
    if presence is None:
        for old in [old for old in _presences if old[0].is_closed()]:
            del _presences[old]
        presence = _presences[loop, channel_layer] = Presence(redis_from_layer_settings(), channel_layer)
    return presence
