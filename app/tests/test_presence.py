"""Who is here: each person once however many tabs, across server processes, and gone when a server dies."""

import asyncio
import json
import signal

import pytest
import redis
import websockets

from chat import presence

from .live_server import ORIGIN, LiveServer
from .test_consumer import joined, receive
from .test_identity import as_user, signed_in_cookie

pytestmark = pytest.mark.django_db(transaction=True)


async def next_presence(client, seconds=10):
    """The next presence frame this client gets (other frames are skipped)."""
    async with asyncio.timeout(seconds):
        while True:
            frame = await client.receive_json_from(timeout=seconds)
            if "presence" in frame:
                return frame


async def test_a_client_that_asks_sees_who_is_here_and_who_comes_and_goes(channel_layer):
    async with joined("/ws/chat/lobby/?presence=1") as watcher:
        assert await next_presence(watcher) == {"presence": [], "anonymous": 1}
        cookie = await signed_in_cookie("ann")
        tabs = [as_user("/ws/chat/lobby/", cookie) for _ in range(2)]
        for tab in tabs:
            assert (await tab.connect(timeout=5))[0]
        frame = await next_presence(watcher)
        while frame["presence"] != [{"user": "ann"}]:
            frame = await next_presence(watcher)
        assert frame == {"presence": [{"user": "ann"}], "anonymous": 1}  # once, for two tabs
        async with joined("/ws/chat/lobby/") as guest:
            await guest.send_json_to({"message": "hi", "user": "bob"})
            frame = await next_presence(watcher)
            while len(frame["presence"]) < 2:
                frame = await next_presence(watcher)
            assert frame["presence"] == [{"user": "ann"}, {"user": "bob", "guest": True}]
        for tab in tabs:
            await tab.disconnect()
        frame = await next_presence(watcher)
        while frame["presence"]:
            frame = await next_presence(watcher)
        assert frame == {"presence": [], "anonymous": 1}


async def test_a_client_that_does_not_ask_never_gets_a_presence_frame(channel_layer):
    async with joined("/ws/chat/lobby/") as plain, joined("/ws/chat/lobby/?presence=1") as watcher:
        await next_presence(watcher)
        await watcher.send_json_to({"message": "hi", "user": "carol"})
        await next_presence(watcher)
        assert (await receive(plain))["message"] == "hi"
        assert await plain.receive_nothing(timeout=presence.SOON_SECONDS + 0.5)


def test_presence_spans_server_processes_and_forgets_a_server_that_dies(tmp_path, redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    first = LiveServer("daphne", tmp_path, redis_url)
    second = LiveServer("daphne", tmp_path, redis_url)
    try:

        async def run():
            room = "/ws/chat/here/?presence=1"
            async with websockets.connect(second.ws + room, origin=ORIGIN) as watcher:
                async def until(predicate, seconds):
                    async with asyncio.timeout(seconds):
                        while True:
                            frame = json.loads(await watcher.recv())
                            if "presence" in frame and predicate(frame):
                                return frame

                async with websockets.connect(first.ws + room, origin=ORIGIN) as ann:
                    await ann.send(json.dumps({"message": "hello", "user": "ann"}))
                    await until(lambda frame: frame["presence"] == [{"user": "ann", "guest": True}], 15)
                    # ann's server dies without a word; the watcher's server
                    # notices once ann's entry expires (TTL, plus a heartbeat).
                    first.process.send_signal(signal.SIGKILL)
                    await until(lambda frame: frame["presence"] == [], presence.TTL_SECONDS + 10)

        asyncio.run(run())
    finally:
        first.stop()
        second.stop()
