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
from unittest import mock

import pytest
import redis
import websockets
from channels.generic.websocket import AsyncWebsocketConsumer

from chat.dispatch import RelayDispatchMixin, dispatch_from

from .live_server import ORIGIN, LiveServer, private_redis

CLIENTS = 120  # before the fix, about half of them left a subscription behind
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
        # Unbounded: with websockets' default of 16 unread frames (the join's history fills it), the client
        # stops reading, never sees the server's closing frame, and close() waits out close_timeout (10 s).
        ws = await websockets.connect(room + "?since=0" * (number % 3 == 0), origin=ORIGIN, max_queue=None)
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


# The same, in one process: what dispatch_from and RelayDispatchMixin promise.


def waits_forever_after(*messages):
    pending = list(messages)

    async def source():
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()

    return source


async def test_a_running_handler_finishes_when_the_other_source_fails():
    finished = []
    started = asyncio.Event()

    async def handler(message):
        started.set()
        await asyncio.sleep(0.05)
        finished.append(message)

    async def failing():
        await started.wait()
        raise ConnectionError("layer gone")

    for sources in ([waits_forever_after("slow"), failing], [failing, waits_forever_after("slow")]):
        finished.clear()
        started.clear()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(dispatch_from(sources, handler), 5)
        assert finished == ["slow"]  # Channels lets it finish too; only then does the failure end the loop


class Layer:
    """A channel layer that records what a consumer leaves behind it."""

    def __init__(self):
        self.inbox = asyncio.Queue()
        self.calls = []

    async def new_channel(self):
        return "specific.1"

    async def receive(self, channel):
        return await self.inbox.get()

    async def group_add(self, group, channel):
        pass

    async def group_discard(self, group, channel):
        self.calls.append(("group_discard", group, channel))

    async def delete_channel(self, channel):
        self.calls.append(("delete_channel", channel))


class Consumer(RelayDispatchMixin, AsyncWebsocketConsumer):
    groups = ["room"]

    async def connect(self):
        await self.accept()

    async def disconnect(self, code):
        self.channel_layer.calls.append(("disconnect", code))

    async def chat_message(self, event):
        raise ConnectionResetError("the client is gone")  # as uvicorn's ClientDisconnected


async def run_consumer(layer, events, monkeypatch):
    """Runs Consumer on `layer` with these websocket events.

    Channels' dispatch closes old database connections before each handler;
    the tests that run it are marked django_db, or a connection an earlier
    test left in the worker thread would count as database access.
    """
    monkeypatch.setattr("chat.dispatch.get_channel_layer", lambda alias: layer)
    # No database here: Channels' per-handler close_old_connections() would meet another test's connection.
    monkeypatch.setattr("channels.consumer.aclose_old_connections", mock.AsyncMock())
    inbox = asyncio.Queue()
    for event in events:
        inbox.put_nowait(event)

    async def send(message):
        pass

    return Consumer.as_asgi()({"type": "websocket", "path": "/"}, inbox.get, send)


@pytest.mark.django_db
async def test_a_consumer_ended_by_a_failing_handler_leaves_its_groups_and_its_channel(monkeypatch):
    layer = Layer()
    consumer = await run_consumer(layer, [{"type": "websocket.connect"}], monkeypatch)
    task = asyncio.ensure_future(consumer)
    await asyncio.sleep(0.01)
    layer.inbox.put_nowait({"type": "chat.message"})
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(task, 5)
    assert layer.calls == [("group_discard", "room", "specific.1"), ("disconnect", 1006),
                           ("delete_channel", "specific.1")]


@pytest.mark.django_db
async def test_a_consumer_that_said_goodbye_is_cleaned_up_once(monkeypatch):
    layer = Layer()
    events = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    await asyncio.wait_for(await run_consumer(layer, events, monkeypatch), 5)
    assert layer.calls == [("group_discard", "room", "specific.1"), ("disconnect", 1000),
                           ("delete_channel", "specific.1")]


@pytest.mark.django_db
async def test_a_cancelled_consumer_is_cleaned_up_too(monkeypatch):
    layer = Layer()
    task = asyncio.ensure_future(await run_consumer(layer, [{"type": "websocket.connect"}], monkeypatch))
    await asyncio.sleep(0.01)
    task.cancel()  # daphne's application_close_timeout, or a server shutting down
    with pytest.raises(asyncio.CancelledError):
        await task
    assert layer.calls == [("group_discard", "room", "specific.1"), ("disconnect", 1006),
                           ("delete_channel", "specific.1")]
