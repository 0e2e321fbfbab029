"""Clean-up always runs: no channel-layer subscription or group membership outlives its websocket.

Clients join and leave a busy room against a real server (chat-daphne, uvicorn) on loopback, leaving every way
a client leaves: a closing handshake, a dropped TCP connection, a close right after sending. Afterwards, with
nobody connected, Redis must hold no pub/sub channel of the chat's (PUBSUB CHANNELS): a leftover specific
channel is a subscription that was never released, a leftover group channel a membership never discarded
(the pub/sub layer unsubscribes a group when its last local member leaves).
"""

import asyncio
import json
import time

import pytest
import redis
import websockets

from .live_server import ORIGIN, LiveServer, private_redis

CLIENTS = 200
AT_ONCE = 20


@pytest.fixture
def redis_port(tmp_path):
    port, start, stop = private_redis(tmp_path)
    start()
    yield port
    stop()


async def churn(ws_url, clients=CLIENTS, at_once=AT_ONCE):
    """A sender keeps the room busy while `clients` others join, read a little and leave, `at_once` at a time."""
    room = f"{ws_url}/ws/chat/busy/"
    stop = asyncio.Event()

    async def sender():
        async with websockets.connect(room, origin=ORIGIN) as ws:

            async def drain():  # its own frames come back too: read them all
                async for _ in ws:
                    pass

            reader = asyncio.create_task(drain())
            n = 0
            while not stop.is_set():
                await ws.send(json.dumps({"message": f"busy {n}", "user": "sender"}))
                n += 1
                await asyncio.sleep(0.02)
            reader.cancel()

    async def visitor(number):
        ws = await websockets.connect(room + "?since=0" * (number % 3 == 0), origin=ORIGIN)
        try:
            for _ in range(number % 5):
                await asyncio.wait_for(ws.recv(), 5)
            if number % 4 == 1:
                await ws.send(json.dumps({"message": f"bye from {number}", "user": "visitor"}))
        finally:
            if number % 2:
                ws.transport.abort()  # gone without a closing handshake, as a dropped network
            else:
                await ws.close()

    busy = asyncio.create_task(sender())
    await asyncio.sleep(0.3)
    slots = asyncio.Semaphore(at_once)

    async def limited(number):
        async with slots:
            try:
                await visitor(number)
            except (OSError, websockets.WebSocketException, asyncio.TimeoutError, TimeoutError):
                pass  # a refused or cut visitor still left; only what it leaves behind matters

    try:
        await asyncio.wait_for(asyncio.gather(*(limited(n) for n in range(clients))), 120)
    finally:
        stop.set()
        await asyncio.wait_for(busy, 30)


def leftover_channels(redis_port, seconds=12):
    """The chat's pub/sub channels still in Redis once the server has had `seconds` to let go of them."""
    client = redis.Redis(port=redis_port)
    deadline = time.monotonic() + seconds
    while True:
        channels = sorted(name.decode() for name in client.pubsub_channels("asgi*"))
        if not channels or time.monotonic() > deadline:
            return channels
        time.sleep(0.2)


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_no_subscription_or_membership_is_left_after_clients_leave_a_busy_room(kind, tmp_path, redis_port):
    with LiveServer(kind, tmp_path, f"redis://127.0.0.1:{redis_port}/0",
                    CHAT_RATE_PER_SECOND=1000, CHAT_RATE_BURST=1000) as server:
        asyncio.run(churn(server.ws))
        left = leftover_channels(redis_port)
        specific = [name for name in left if "specific" in name]
        assert not left, (
            f"{len(specific)} subscriptions of {CLIENTS + 1} gone clients left in Redis under {kind} "
            f"(and {len(left) - len(specific)} group channels): {left[:5]}"
        )
        assert "Traceback" not in server.log(), server.log()[-3000:]
