"""The chat's channel layer: channels-redis's pub/sub layer, lighter per connection, and honest about outages.

RedisPubSubChannelLayer gives every channel (one per websocket) an
asyncio.Queue, which allocates four deques up front: about 3 KiB for each
idle connection. The layer only ever puts into that queue without waiting
and has one reader, so a Mailbox (chat.mailbox), which allocates nothing
until a message has to wait, does the same job.

What else this layer does that channels-redis does not:

- delete_channel(), the antithesis of new_channel(): drops the channel's
  mailbox, its Redis subscription and its group memberships, whatever state
  its reader is in. channels-redis only unsubscribes when receive() is
  cancelled while it waits, so a consumer that ended any other way (its
  reader busy with a message, an exception) left its subscription in Redis
  for as long as the process lived. chat.dispatch calls it when a consumer
  ends.
- After a shard's pub/sub connection comes back from a failure (redis-py
  resubscribes on every reconnect), every local channel gets a
  {"type": "chat.resync"} message: whatever was published while the
  connection was down is lost to pub/sub, so each consumer catches up from
  the database.
- A publish whose pooled connection Redis closed while it sat idle (the
  deployed Redis closes clients idle for redis_timeout seconds, so that a
  burst's connections do not stay for ever) is sent again once on a new
  connection, instead of failing the broadcast: redis-py's async pool only
  finds out that such a connection is gone when a command fails on it.
- A Redis that falls silent is left. A host that is gone without closing
  its connections (a stopped container, a power cut, a partition) leaves
  the pub/sub connection open and quiet for as long as TCP takes to give up
  (up to fifteen minutes with unacknowledged data): every subscription on it
  is dead while the reader sees nothing wrong. The reader's connection is
  pinged after HEALTH_SECONDS without a word from Redis (redis-py's health
  check), and given up after SILENT_SECONDS more without an answer: it
  reconnects (through Sentinel, to whichever server is master now) and the
  channels resync.
- A silent Redis holds each caller up for one timeout (the connection's
  socket_timeout, CHAT_REDIS_SOCKET_TIMEOUT), never for a queue of them.
  channels-redis publishes under the shard's lock, so each publish to a
  silent Redis waited for every one before it to time out, and a join (whose
  subscription needs the lock) for all of them: publishes go out here on
  their pooled connections without it. A subscription is sent without
  waiting for Redis's confirmation, so a join would be accepted by a Redis
  that answers nothing: here new_channel() and group_add() wait for the
  confirmation, one timeout at most, and fail (the handshake is refused).
  While the reader knows the pub/sub connection is down, a subscription fails
  at once instead of each join reconnecting it in turn.
- A bound on what waits for a consumer. A consumer that cannot send (uvicorn
  makes a send wait while the client does not read) lets its channel's
  messages pile up without limit. Past CHAT_SEND_BUFFER_LIMIT bytes the
  waiting chat.message events are dropped for one chat.resync: they are in
  the database, and the consumer catches up from there, a page at a time,
  when its client reads again (other events are kept).
"""

import asyncio
import logging
from urllib.parse import urlsplit

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .mailbox import Mailbox

logger = logging.getLogger(__name__)

RESYNC = {"type": "chat.resync"}
SWEEP_SECONDS = 10.0
HEALTH_SECONDS = 1.0
SILENT_SECONDS = 3.0


class _ChannelMailbox(Mailbox):
    """A channel's Mailbox, which holds at most the layer's mailbox_limit bytes of messages waiting to be read."""

    __slots__ = ("queued", "layer")

    def __init__(self, layer):
        super().__init__()
        self.queued = 0  # bytes waiting (items handed straight to a waiting reader are not counted)
        self.layer = layer

    def put_nowait(self, item):
        waits = self._waiter is None or self._waiter.done()  # no reader waiting: the item is queued
        super().put_nowait(item)
        if waits:
            self.queued += len(item)
            if self.layer.mailbox_limit is not None and self.queued > self.layer.mailbox_limit:
                self.collapse()

    async def get(self):
        if self._items:
            item = await super().get()
            self.queued -= len(item)
            return item
        return await super().get()

    def collapse(self):
        """Replaces the waiting chat.message events by one chat.resync; the other events stay, in order."""
        deserialize = self.layer.channel_layer.deserialize
        kept = [item for item in self._items if deserialize(item).get("type") not in ("chat.message", "chat.resync")]
        dropped = len(self._items) - len(kept)
        kept.append(self.layer.channel_layer.serialize(RESYNC))
        self._items.clear()
        self._items.extend(kept)
        before, self.queued = self.queued, sum(map(len, kept))
        logger.warning("A consumer fell %d bytes behind its channel (over CHAT_SEND_BUFFER_LIMIT): %d waiting "
                       "chat messages replaced by a resync", before, dropped)


def send_buffer_limit():
    """CHAT_SEND_BUFFER_LIMIT, or None outside the chat (no Django settings)."""
    from django.conf import settings

    return getattr(settings, "CHAT_SEND_BUFFER_LIMIT", None) if settings.configured else None


def _name(key):
    return key.decode() if isinstance(key, bytes) else key


class _ResubscribingPubSub(PubSub):
    """redis-py's PubSub, which tells its shard when it has resubscribed after a reconnect.

    redis-py calls on_connect() on every connect after the first and
    resubscribes there. Redis answers the SUBSCRIBE commands in order, before
    anything published after them, so the shard is told when the last
    confirmation has been read: a message published after that arrives
    live, anything earlier is in the database by the time a consumer reads it.
    """

    def __init__(self, *args, shard, **kwargs):
        super().__init__(*args, **kwargs)
        self.shard = shard
        self.confirmations_awaited = 0

    async def on_connect(self, connection):
        # Names unsubscribed while the connection was down (their UNSUBSCRIBE
        # never confirmed) would be subscribed again: only what the layer
        # still has is.
        wanted = self.shard.wanted()
        for name in [name for name in self.channels if _name(name) not in wanted]:
            del self.channels[name]
        self.shard._subscribed_to &= wanted
        self.shard.forget_unconfirmed(wanted)
        self.confirmations_awaited = 0
        await super().on_connect(connection)
        # With nothing to subscribe again (the connection was closed while it subscribed to nothing),
        # nothing published was missed: no one is told to resync.
        self.confirmations_awaited = len(self.channels)

    async def check_health(self):
        # redis-py's health check sends its PING with send_command(), which reconnects a dropped connection
        # to the address it had; through Sentinel that is the old master. connect() asks Sentinel again.
        if self.connection is not None and not self.connection.is_connected:
            await self.connection.connect()
        await super().check_health()

    def silent_for(self, now):
        """Seconds the connection has left a health check unanswered (0 when it has not)."""
        connection = self.connection
        if connection is None or not connection.is_connected or not connection.health_check_interval:
            return 0
        # redis-py moves next_health_check on after every reply it reads.
        return max(0.0, now - connection.next_health_check)

    async def handle_message(self, response, ignore_subscribe_messages=False):
        if response is not None and not isinstance(response, bytes) and response[0] in (b"subscribe", "subscribe"):
            self.shard.confirmed(_name(response[1]))
            if self.confirmations_awaited:
                self.confirmations_awaited -= 1
                if not self.confirmations_awaited:
                    self.shard.resubscribed()
        return await super().handle_message(response, ignore_subscribe_messages)


class _Shard(RedisSingleShardConnection):
    def __init__(self, host, channel_layer):
        super().__init__(host, channel_layer)
        self._sweeper = None
        self._unconfirmed = {}  # name -> a future, done when Redis confirms the SUBSCRIBE sent for it
        self.failing = False  # whether the reader found the pub/sub connection down (and is reconnecting)

    async def publish(self, channel, message):
        # Not under the shard's lock, as channels-redis publishes: a publish has a pooled connection of its own,
        # and the lock orders the pub/sub connection's commands. Under it, each publish to a silent Redis waited
        # for every one before it to time out.
        self._ensure_redis()
        try:
            await self._redis.publish(channel, message)
        except RedisConnectionError:
            # The connection failed before Redis answered; redis-py has dropped it. Once more on a
            # new one: if Redis is down this fails too, and the caller hears it as before.
            await self._redis.publish(channel, message)

    async def subscribe(self, channel):
        """channels-redis's subscribe(), which returns once Redis has confirmed the subscription (or raises)."""
        async with self._lock:
            if channel not in self._subscribed_to:
                if self.failing:
                    # Each join would otherwise reconnect in turn, under the lock: the reader is at it already.
                    raise RedisConnectionError(f"the pub/sub connection to {self.describe()} is down")
                self._ensure_redis()
                self._ensure_receiver()
                # Before it is sent: the reader may read the confirmation before this task runs again.
                self._unconfirmed[channel] = asyncio.get_running_loop().create_future()
                try:
                    try:
                        await self._pubsub.subscribe(channel)
                    except RedisConnectionError:
                        # As for publish: the pub/sub connection may be one Redis closed as idle (redis.conf's
                        # timeout spares a connection only while it subscribes to something, so a quiet
                        # process's is closed). redis-py has dropped it; once more on a new one.
                        await self._pubsub.subscribe(channel)
                except BaseException:
                    self._unconfirmed.pop(channel, None)
                    raise
                self._subscribed_to.add(channel)
            confirmation = self._unconfirmed.get(channel)  # another caller's SUBSCRIBE may still be on its way
        if confirmation is not None:
            timeout = self._pubsub.connection.socket_timeout
            # asyncio.wait() leaves the confirmation be when it times out (or is cancelled): others may wait for it.
            done, _ = await asyncio.wait((confirmation,), timeout=timeout)
            if not done:
                raise RedisTimeoutError(f"Redis at {self.describe()} did not confirm a subscription within {timeout:g} s")

    async def unsubscribe(self, channel):
        """channels-redis's unsubscribe(), which lets go of a name the reconnect it caused let go of already."""
        async with self._lock:
            if channel in self._subscribed_to:
                self._ensure_redis()
                self._ensure_receiver()
                await self._pubsub.unsubscribe(channel)
                # Sending it may have reconnected: on_connect then dropped the name (no longer wanted).
                self._subscribed_to.discard(channel)
                self._unconfirmed.pop(channel, None)

    def confirmed(self, name):
        confirmation = self._unconfirmed.pop(name, None)
        if confirmation is not None and not confirmation.done():
            confirmation.set_result(None)

    def forget_unconfirmed(self, wanted):
        """Drops the confirmations awaited for names a reconnect does not subscribe again (they never come)."""
        for name in [name for name in self._unconfirmed if name not in wanted]:
            del self._unconfirmed[name]

    def _ensure_redis(self):
        if self._redis is None:
            super()._ensure_redis()
            self._pubsub = _ResubscribingPubSub(self._redis.connection_pool, shard=self)

    async def _do_receiving(self):
        """channels-redis's reader loop, which logs an outage once instead of a traceback every second.

        Every SWEEP_SECONDS it also unsubscribes what this process subscribed
        to and no longer has a channel or a group for: an unsubscribe cut
        short (a consumer cancelled twice while it waited for the shard's
        lock, as daphne does to an application slow to close) would otherwise
        stay in Redis as long as the process lives.
        """
        self.failing = False
        next_sweep = asyncio.get_running_loop().time() + SWEEP_SECONDS
        while True:
            try:
                if asyncio.get_running_loop().time() >= next_sweep:
                    next_sweep += SWEEP_SECONDS
                    # In a task of its own: the sweep waits for the shard's lock, and the reader must go on
                    # reading meanwhile (a subscription to a failing Redis may hold the lock for a timeout,
                    # and its confirmation is the reader's to read).
                    if self._sweeper is None or self._sweeper.done():
                        self._sweeper = asyncio.ensure_future(self.sweep())
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    if message is None:
                        # Nothing to read for 0.1 s: a reply held up by a busy event loop would have been read.
                        await self.leave_if_silent()
                    self.failing = False
                    self._receive_message(message)
                else:
                    self.failing = False  # no reader, nothing known: a subscription connects for itself
                    await asyncio.sleep(0.1)
            except (asyncio.CancelledError, asyncio.TimeoutError, GeneratorExit):
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                if not self.failing:
                    logger.warning("Redis pub/sub connection to %s lost (%s); reconnecting every second",
                                   self.describe(), error)
                self.failing = True
                await asyncio.sleep(1)
            except Exception:
                logger.exception("Unexpected exception in the Redis pub/sub reader")
                await asyncio.sleep(1)

    async def leave_if_silent(self):
        silent = self._pubsub.silent_for(asyncio.get_running_loop().time())
        if silent > SILENT_SECONDS:
            await self._pubsub.connection.disconnect(nowait=True)
            raise RedisConnectionError(f"no answer to a health check for {silent:.1f} s")

    async def flush(self):
        self._unconfirmed.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await super().flush()

    async def sweep(self):
        try:
            for name in self._subscribed_to - self.wanted():
                # channels-redis's unsubscribe(), but asking again under the lock whether the name is still
                # unwanted: a consumer may have joined the group (or taken the name) while the sweep waited,
                # and finding it subscribed already, not subscribed it again.
                async with self._lock:
                    if name in self._subscribed_to and name not in self.wanted():
                        self._ensure_redis()
                        self._ensure_receiver()
                        await self._pubsub.unsubscribe(name)
                        self._subscribed_to.discard(name)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            pass  # Redis is failing: the reader says so, and the next sweep tries again

    def wanted(self):
        """The names this process still subscribes to: its channels and its groups."""
        layer = self.channel_layer
        return set(layer.channels) | set(layer.groups)

    def describe(self):
        """host:port (or the Sentinel master's name), never the password an address may carry."""
        host = self.host
        if "address" in host:
            address = urlsplit(host["address"])
            return f"{address.hostname}:{address.port or 6379}"
        return host.get("master_name") or f"{host.get('host')}:{host.get('port')}"

    def resubscribed(self):
        """Every local channel is told to catch up: what was published while we were away is lost to pub/sub."""
        layer = self.channel_layer
        data = layer.channel_layer.serialize(RESYNC)
        for mailbox in list(layer.channels.values()):
            mailbox.put_nowait(data)
        logger.warning("Redis pub/sub connection to %s is back: resubscribed, and told %d local channels "
                       "to resync from the database", self.describe(), len(layer.channels))


class _LoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Every connection PINGs before it is used after HEALTH_SECONDS without a reply from Redis; the
        # reader's pings tell a silent Redis from a quiet one.
        self._shards = [_Shard({**shard.host, "health_check_interval": HEALTH_SECONDS}, self)
                        for shard in self._shards]
        self._memberships = {}  # channel -> the group channels it is in (a tuple: most are in one)
        self.mailbox_limit = send_buffer_limit()

    async def receive(self, channel):
        """channels-redis's receive(), without its clean-up when cancelled.

        channels-redis unsubscribes there, awaiting the shard's lock while
        being cancelled: a second cancellation (daphne's, for an application
        slow to close) cuts it short and logs a traceback, one per departing
        websocket under churn (12,880 in a five-minute soak), which cost CPU
        the joins needed. Here the mailbox goes at once and the subscription
        is released by delete_channel(), which chat.dispatch always calls,
        or by the shard's sweep.
        """
        if channel not in self.channels:
            await self._subscribe_to_channel(channel)
        mailbox = self.channels[channel]
        try:
            message = await mailbox.get()
        except (asyncio.CancelledError, asyncio.TimeoutError, GeneratorExit):
            if self.channels.get(channel) is mailbox:
                del self.channels[channel]
            raise
        return self.channel_layer.deserialize(message)

    async def _subscribe_to_channel(self, channel):
        self.channels[channel] = _ChannelMailbox(self)
        try:
            await self._get_shard(channel).subscribe(channel)
        except BaseException:
            del self.channels[channel]  # new_channel() failed: nothing of it stays
            raise

    async def group_add(self, group, channel):
        group_channel = self._get_group_channel_name(group)
        try:
            await super().group_add(group, channel)
        finally:
            # Recorded even when subscribing failed: the channel is in the
            # group's set, and delete_channel() must take it out.
            if channel in self.groups.get(group_channel, ()):
                memberships = self._memberships.get(channel, ())
                if group_channel not in memberships:
                    self._memberships[channel] = (*memberships, group_channel)

    async def group_discard(self, group, channel):
        group_channel = self._get_group_channel_name(group)
        memberships = self._memberships.get(channel, ())
        if group_channel in memberships:
            remaining = tuple(name for name in memberships if name != group_channel)
            if remaining:
                self._memberships[channel] = remaining
            else:
                del self._memberships[channel]
        await self._leave_group(group_channel, channel)

    async def _leave_group(self, group_channel, channel):
        members = self.groups.get(group_channel)
        if members is None or channel not in members:
            return
        members.discard(channel)
        if members:
            return
        del self.groups[group_channel]
        await self._get_shard(group_channel).unsubscribe(group_channel)

    async def delete_channel(self, channel):
        """Lets go of a channel made by new_channel(): its groups, its mailbox, its subscription. Idempotent.

        The local state goes first and whole; if Redis cannot be told (it is
        down), the first error is raised after, and the names are left out
        when the connection resubscribes.
        """
        self.channels.pop(channel, None)
        unsubscribes = [self._leave_group(name, channel) for name in self._memberships.pop(channel, ())]
        # Whether or not the mailbox was still there: channels-redis's receive()
        # drops it before it unsubscribes, and can be cancelled in between.
        # (The shard's unsubscribe does nothing for a name it does not hold.)
        unsubscribes.append(self._get_shard(channel).unsubscribe(channel))
        errors = [error for error in await asyncio.gather(*unsubscribes, return_exceptions=True) if error]
        if errors:
            raise errors[0]


class LeanRedisPubSubChannelLayer(RedisPubSubChannelLayer):
    """RedisPubSubChannelLayer with Mailbox channels, delete_channel() and a resync after a reconnect."""

    def _get_layer(self):
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
            return layer

    async def delete_channel(self, channel):
        await self._get_layer().delete_channel(channel)
