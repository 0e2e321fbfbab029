"""A Redis that stops answering with its connections open holds each caller up for one timeout, not a queue of them.

A power cut, a partition or a stopped container (here: SIGSTOP) leaves
every connection to Redis open and silent. Each caller must hear of it
within about CHAT_REDIS_SOCKET_TIMEOUT: a publish does not wait behind
another stuck publish, a join is refused (the handshake's refusal, as when
Redis is down) instead of queueing behind them, and the shared rate limit
falls back to the client's own bucket on this process. Once Redis answers again, so
does the chat. (Measured before the fix, with redis-py 8's default 5 s
timeouts: publishes failed at 5, 10, 15, 20 and 25 s, one behind another,
rate checks at 10 s, and the join waited 25 s behind them all, then was
accepted.)
"""

import asyncio
import os
import signal
import time

import pytest
import redis
from channels.layers import get_channel_layer

from chat import layers, ratelimit
from chatsite.settings import channel_layer_from_env

from .live_server import private_redis
from .test_consumer import communicator, joined
from .test_layer_outage import frames_until

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 1.0  # CHAT_REDIS_CONNECT_TIMEOUT and CHAT_REDIS_SOCKET_TIMEOUT for this test
# One timeout, with room for a busy test machine; five publishes queued one behind another take 5 timeouts.
WITHIN = 2.5
PUBLISHES = 5


@pytest.fixture
def frozen_redis(tmp_path, settings):
    """A Redis of the test's own, the chat configured on it; yields freeze() and thaw()."""
    port, start, stop = private_redis(tmp_path)
    start()
    url = f"redis://127.0.0.1:{port}/0"
    # As the settings build it from REDIS_URL, CHAT_REDIS_CONNECT_TIMEOUT and CHAT_REDIS_SOCKET_TIMEOUT.
    settings.CHANNEL_LAYERS = {
        "default": channel_layer_from_env([url], "pubsub", connect_timeout=TIMEOUT, socket_timeout=TIMEOUT)
    }
    pid = redis.Redis.from_url(url).info("server")["process_id"]
    try:
        yield lambda: os.kill(pid, signal.SIGSTOP), lambda: os.kill(pid, signal.SIGCONT)
    finally:
        os.kill(pid, signal.SIGCONT)
        stop()


async def timed(awaitable):
    """(seconds it took, its result or the exception it raised)."""
    started = time.monotonic()
    try:
        outcome = await awaitable
    except Exception as error:
        outcome = error
    return round(time.monotonic() - started, 2), outcome


async def join(path):
    """Whether a handshake is accepted; the client is let go of either way."""
    client = communicator(path)
    try:
        accepted, _ = await client.connect(timeout=60)
        return accepted
    finally:
        await client.disconnect()


async def eventually(attempt, seconds):
    """Calls attempt() until it returns something true (an exception counts as not yet), for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = await attempt()
            if result:
                return result
        except Exception:
            if time.monotonic() > deadline:
                raise
        assert time.monotonic() < deadline, f"{attempt} gave nothing for {seconds} s"
        await asyncio.sleep(0.2)


async def test_a_frozen_redis_fails_each_publish_join_and_rate_check_within_one_timeout(frozen_redis):
    freeze, thaw = frozen_redis
    layer = get_channel_layer()
    limiter = ratelimit.shared_limiter()

    async def publish():
        await layer.group_send("frozen", {"type": "chat.message"})
        return True

    async with joined("/ws/chat/lobby/") as ann:
        # Every client the chat has is connected before the freeze: the pub/sub reader, the publishers' pool,
        # the rate limiter's.
        await ann.send_json_to({"message": "before", "user": "ann"})
        assert (await ann.receive_json_from(timeout=5))["message"] == "before"

        freeze()
        *published, joining = await asyncio.gather(
            *(timed(publish()) for _ in range(PUBLISHES)),
            *(timed(limiter.take(f"frozen-{n}", 5.0, 10)) for n in range(3)),
            timed(join("/ws/chat/lobby/")),
        )
        published, checked = published[:PUBLISHES], published[PUBLISHES:]
        print("publishes:", published, "rate checks:", checked, "join:", joining)
        assert all(isinstance(outcome, redis.RedisError) for _, outcome in published), published
        assert max(seconds for seconds, _ in published) < WITHIN, f"a publish waited behind another: {published}"
        # The shared count could not say: each client's own bucket on this process decides (each is in its burst).
        assert [outcome for _, outcome in checked] == [True] * 3, checked
        assert max(seconds for seconds, _ in checked) < WITHIN, f"a rate check waited too long: {checked}"
        assert joining[1] is False, f"a join was not refused while Redis answered nothing: {joining}"
        assert joining[0] < WITHIN, f"the join's refusal took {joining[0]} s"

        # Well into the freeze the pub/sub reader has found its connection dead and reconnects, each attempt
        # waiting out a timeout: joins are refused at once rather than each reconnecting it in turn.
        await asyncio.sleep(layers.HEALTH_SECONDS + layers.SILENT_SECONDS + TIMEOUT)
        later = await asyncio.gather(*(timed(join("/ws/chat/lobby/")) for _ in range(3)),
                                     *(timed(publish()) for _ in range(3)))
        print("later joins and publishes:", later)
        assert [outcome for _, outcome in later[:3]] == [False] * 3, later
        assert all(isinstance(outcome, redis.RedisError) for _, outcome in later[3:]), later
        assert max(seconds for seconds, _ in later) < WITHIN, f"joins or publishes waited in turn: {later}"

        thaw()
        await eventually(publish, 15)
        # The rate limiter asks Redis again after its pause, and counts there.
        assert await eventually(lambda: limiter.take("thawed", 5.0, 10), ratelimit.PAUSE_SECONDS + 10) is True
        # Joins are refused until the reader has its connection back, a second or so (the page tries again).
        await eventually(lambda: join("/ws/chat/lobby/"), 15)
        async with joined("/ws/chat/lobby/") as bob:
            await ann.send_json_to({"message": "after", "user": "ann"})
            for client in (ann, bob):
                await frames_until(client, lambda frame: frame.get("message") == "after", 20)
