"""The message rate is per client, across all its connections, app processes and hosts (kept in Redis)."""

import asyncio
import json

import pytest
import redis
import websockets

from chat import ratelimit

from .live_server import ORIGIN, LiveServer
from .test_consumer import joined, receive, stored_count
from .test_layer_outage import restartable_redis  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_client_with_several_connections_shares_one_budget(channel_layer, settings):
    settings.CHAT_RATE_PER_SECOND = 0.01  # no refill during the test
    settings.CHAT_RATE_BURST = 3
    async with joined("/ws/chat/r1/") as one, joined("/ws/chat/r2/") as two, joined("/ws/chat/r3/") as three:
        codes = []
        for client in (one, two, three):
            for n in range(2):
                await client.send_json_to({"message": f"m{n}", "client_id": f"c{n}"})
                answer = await receive(client)
                codes.append(answer.get("code", "ack" if "ack" in answer else None))
                if "ack" in answer:
                    await receive(client)  # its broadcast
        assert codes == ["ack", "ack", "ack", "rate_limited", "rate_limited", "rate_limited"]
    assert await stored_count() == 3


def test_the_shared_bucket_allows_a_burst_then_the_rate(redis_url):
    """The Lua script against a real Redis, with the rate fast enough to watch it refill."""
    client = redis.Redis.from_url(redis_url)
    key = ratelimit.KEY_PREFIX + "20:2:refill-test"
    client.delete(key)

    async def take(limiter):
        return await limiter.take("refill-test", 20.0, 2)

    async def run():
        from redis import asyncio as aioredis

        limiter = ratelimit.SharedRateLimiter(aioredis.Redis.from_url(redis_url))
        burst = [await take(limiter) for _ in range(3)]
        await asyncio.sleep(0.06)  # one token back at 20 a second
        later = [await take(limiter), await take(limiter)]
        return burst, later

    assert asyncio.run(run()) == ([True, True, False], [True, False])
    assert 0 < client.pttl(key) <= 2000  # the key goes when it would be full again


def test_without_redis_the_shared_limiter_counts_in_this_process():
    limiter = ratelimit.SharedRateLimiter(None, local_keys=2)
    results = [asyncio.run(limiter.take("a", 0.01, 1)) for _ in range(2)]
    assert results == [True, False]
    for key in ("b", "c"):
        asyncio.run(limiter.take(key, 0.01, 1))
    assert list(limiter.local) == ["b", "c"]  # bounded: the oldest client went


def test_one_client_on_two_server_processes_gets_one_budget(tmp_path, redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    settings = {"CHAT_RATE_PER_SECOND": "0.01", "CHAT_RATE_BURST": "4"}
    with LiveServer("daphne", tmp_path, redis_url, **settings) as first, LiveServer(
        "uvicorn", tmp_path, redis_url, **settings
    ) as second:

        async def run():
            answers = []
            async with websockets.connect(f"{first.ws}/ws/chat/lobby/", origin=ORIGIN) as a, websockets.connect(
                f"{second.ws}/ws/chat/lobby/", origin=ORIGIN
            ) as b:
                for n in range(4):
                    for socket in (a, b):
                        await socket.send(json.dumps({"message": f"m{n}", "client_id": f"c{n}-{id(socket)}"}))
                        while True:
                            frame = json.loads(await asyncio.wait_for(socket.recv(), 10))
                            if "ack" in frame or "error" in frame:
                                answers.append(frame)
                                break
            return answers

        answers = asyncio.run(run())
    assert sum("ack" in answer for answer in answers) == 4
    assert sum(answer.get("code") == "rate_limited" for answer in answers) == 4


def test_after_redis_fails_the_limiter_counts_in_this_process_for_a_while(caplog):
    """While a Redis master is down, each check would hold a message up for a timeout: one failure pauses them."""
    from redis import asyncio as aioredis

    from .conftest import free_port

    now = [100.0]
    limiter = ratelimit.SharedRateLimiter(aioredis.Redis(port=free_port(), retry=None), clock=lambda: now[0])
    tried = []
    script = limiter.script

    async def counted(*args, **kwargs):
        tried.append(now[0])
        return await script(*args, **kwargs)

    limiter.script = counted

    async def take():
        return await limiter.take("paused", 1.0, 5)

    assert [asyncio.run(take()) for _ in range(6)] == [True] * 5 + [False]  # the burst, counted here
    assert tried == [100.0]  # nothing listens there: one try, then the pause
    now[0] += ratelimit.PAUSE_SECONDS
    assert asyncio.run(take()) is True  # refilled meanwhile (1 a second)
    assert tried == [100.0, 100.0 + ratelimit.PAUSE_SECONDS]
    assert len([r for r in caplog.records if "Shared rate limit unavailable" in r.getMessage()]) == 1


async def test_while_redis_fails_a_client_with_several_connections_still_shares_one_budget(
    restartable_redis, settings  # noqa: F811 (the fixture imported above)
):
    """The fallback counts per client on this process, not per connection: K tabs do not get K bursts."""
    start, stop = restartable_redis
    settings.CHAT_RATE_PER_SECOND = 0.01  # no refill during the test
    settings.CHAT_RATE_BURST = 3
    async with joined("/ws/chat/r1/") as one, joined("/ws/chat/r1/") as two:
        stop()
        codes = []
        for client in (one, two):
            for n in range(3):
                await client.send_json_to({"message": f"m{n}", "client_id": f"c{n}"})
                codes.append((await receive(client))["code"])
        # Stored, and refused by the layer that is down; then refused by the rate limit.
        assert codes == ["broadcast_failed"] * 3 + ["rate_limited"] * 3
        start()
        # Once the layer is back, both tabs read what was stored: the three the budget allowed.
        for client in (one, two):
            assert [(await client.receive_json_from(timeout=20))["message"] for _ in range(3)] == ["m0", "m1", "m2"]
