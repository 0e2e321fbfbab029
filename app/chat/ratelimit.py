import logging
import time

logger = logging.getLogger(__name__)


class TokenBucket:
    """Allows `rate` events a second on average, and bursts of up to `burst`."""

    __slots__ = ("rate", "burst", "tokens", "updated", "clock")

    def __init__(self, rate, burst, clock=time.monotonic):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.clock = clock
        self.updated = clock()

    def take(self):
        """Spend one token if there is one; False means the caller is over the rate."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def seconds_to_next(self):
        """How long after the last take() until the next one succeeds (0: now)."""
        return max(0.0, (1 - self.tokens) / self.rate)


# GCRA (the generic cell rate algorithm) in one Lua script, so that every app
# process and host shares a client's budget through the Redis the channel
# layer already uses: a key per client holds the "theoretical arrival time"
# of its next message. Same behaviour as TokenBucket (`burst` at once, then
# `rate` a second). Written here rather than taken from a library: it is the
# one script, on a connection the chat already has, and the libraries that
# offer it (limits, redis-cell) bring their own storage layers or a Redis
# module.
GCRA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > interval * (burst - 1) then return 0 end
tat = tat + interval
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return 1
"""
KEY_PREFIX = "chat:rate:"
# After Redis fails a check, this process's own count decides this long before Redis is asked again: while
# a master is down (until Sentinel promotes a replica) each attempt would hold a message up for a timeout.
PAUSE_SECONDS = 5.0


class SharedRateLimiter:
    """Allows each client `rate` messages a second and bursts of `burst`, across all its connections.

    Kept in Redis (the channel layer's first server) when the site has one,
    so every app process and host counts the same budget; in this process
    only otherwise (runserver, one process). If Redis fails, this process
    counts each client's budget by itself meanwhile (for PAUSE_SECONDS
    before Redis is tried again): a limit is not worth refusing, or holding
    up, every message over, and a client with K connections to the process
    still has one budget there, not K.
    """

    def __init__(self, redis_client=None, local_keys=100_000, clock=time.monotonic):
        self.redis = redis_client
        self.script = redis_client.register_script(GCRA) if redis_client is not None else None
        self.local = {}
        self.local_keys = local_keys
        self.clock = clock
        self.paused_until = None  # while Redis fails: when to ask it again

    async def take(self, key, rate, burst):
        """True when the client under `key` may send one more message now."""
        if self.script is None:
            return self.take_locally(key, rate, burst)
        if self.paused_until is not None and self.clock() < self.paused_until:
            return self.take_locally(key, rate, burst)
        try:
            # The limits are part of the key: a budget counted under other limits
            # (a site that changed them, another test's server) is not this one.
            bucket = f"{KEY_PREFIX}{rate:g}:{burst}:{key}"
            allowed = bool(await self.script(keys=[bucket], args=[1.0 / rate, burst]))
        except Exception as error:  # Redis down or refusing: this process counts by itself
            if self.paused_until is None:
                logger.warning("Shared rate limit unavailable (%s); counting per client in this process "
                               "meanwhile, and trying Redis again every %g s", error, PAUSE_SECONDS)
            self.paused_until = self.clock() + PAUSE_SECONDS
            return self.take_locally(key, rate, burst)
        if self.paused_until is not None:
            logger.warning("Shared rate limit available again")
            self.paused_until = None
        return allowed

    def take_locally(self, key, rate, burst):
        bucket = self.local.get(key)
        if bucket is None:
            if len(self.local) >= self.local_keys:
                self.local.pop(next(iter(self.local)))  # the oldest client: its bucket is most likely full again
            bucket = self.local[key] = TokenBucket(rate, burst, self.clock)
        return bucket.take()


_limiters = {}


def shared_limiter():
    """This event loop's SharedRateLimiter, on the Redis the channel layer is configured with."""
    import asyncio

    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        for old in [old for old in _limiters if old.is_closed()]:
            del _limiters[old]
        limiter = _limiters[loop] = SharedRateLimiter(redis_from_layer_settings())
    return limiter


def redis_from_layer_settings():
    """A client of the channel layer's first Redis server (or Sentinel master); None for the in-memory layer."""
    from django.conf import settings
    from redis import asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    hosts = settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts") or []
    if not hosts:
        return None
    # The host's other options (password, timeouts, TLS) are the connection's, as for the layer.
    host = {key: value for key, value in hosts[0].items() if key != "max_connections"}
    # A command whose pooled connection Redis closed while it sat idle (redis.conf's timeout) is sent once
    # more on a new connection: redis-py's async pool only finds out when a command fails on it. Not one
    # that timed out: a Redis that answers nothing would hold the message up for a second timeout.
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    if "sentinels" in host:
        sentinel = Sentinel(host.pop("sentinels"), sentinel_kwargs=host.pop("sentinel_kwargs", None) or {})
        return sentinel.master_for(host.pop("master_name"), retry=retry, **host)
    return aioredis.Redis.from_url(host.pop("address"), retry=retry, **host)
