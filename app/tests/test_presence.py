"""Who is here: each person once however many tabs, across server processes (one frame per change for each
client, whatever the servers' clocks say), and gone when a server dies or a goodbye fails halfway."""

import asyncio
import json
import signal

import pytest
import redis
import websockets

from chat import presence

from .live_server import APP_DIR, ORIGIN, LiveServer, private_redis
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


@pytest.fixture
def two_servers(tmp_path, redis_url):
    """Two chat-daphne servers on one Redis, emptied first."""
    redis.Redis.from_url(redis_url).flushdb()
    first = LiveServer("daphne", tmp_path, redis_url)
    second = LiveServer("daphne", tmp_path, redis_url)
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


def test_presence_spans_server_processes_and_forgets_a_server_that_dies(two_servers):
    first, second = two_servers

    async def run():
        room = "/ws/chat/here/?presence=1"
        async with websockets.connect(second.ws + room, origin=ORIGIN) as watcher:
            until, _ = presence_frames(watcher)
            async with websockets.connect(first.ws + room, origin=ORIGIN) as ann:
                await ann.send(json.dumps({"message": "hello", "user": "ann"}))
                await until(lambda frame: frame["presence"] == [{"user": "ann", "guest": True}], 15)
                # ann's server dies without a word; the watcher's server
                # notices once ann's entry expires (TTL, plus a heartbeat).
                first.process.send_signal(signal.SIGKILL)
                await until(lambda frame: frame["presence"] == [], presence.TTL_SECONDS + 10)

    asyncio.run(run())


def presence_frames(watcher):
    """Two ways to read a websocket's presence frames (others are skipped).

    until(predicate, seconds): the next one that matches; quiet(seconds): every one that comes in that long.
    """

    async def until(predicate, seconds):
        async with asyncio.timeout(seconds):
            while True:
                frame = json.loads(await watcher.recv())
                if "presence" in frame and predicate(frame):
                    return frame

    async def quiet(seconds):
        frames = []
        try:
            async with asyncio.timeout(seconds):
                while True:
                    frame = json.loads(await watcher.recv())
                    if "presence" in frame:
                        frames.append(frame)
        except TimeoutError:
            return frames

    return until, quiet


ANN = {"user": "ann", "guest": True}
# Long enough for every server to have refreshed, and said what it saw, at least once.
EVERY_SERVER_HAS_SPOKEN = 2 * presence.HEARTBEAT_SECONDS + 1


def test_one_change_makes_one_presence_frame_per_client_however_many_servers(two_servers):
    first, second = two_servers

    async def run():
        room = "/ws/chat/here/?presence=1"
        async with (websockets.connect(first.ws + room, origin=ORIGIN) as one,
                    websockets.connect(second.ws + room, origin=ORIGIN) as two):
            watchers = [presence_frames(one), presence_frames(two)]
            for until, _ in watchers:
                await until(lambda frame: frame["anonymous"] == 2, 15)
            for _, quiet in watchers:  # whatever the servers still had to say about the two watchers
                await quiet(presence.HEARTBEAT_SECONDS + 1)
            async with websockets.connect(first.ws + "/ws/chat/here/", origin=ORIGIN):
                said = await asyncio.gather(*(quiet(EVERY_SERVER_HAS_SPOKEN) for _, quiet in watchers))
            assert said == [[{"presence": [], "anonymous": 3}]] * 2  # once each, not once per server

    asyncio.run(run())


def test_servers_whose_clocks_disagree_agree_on_who_is_here(tmp_path, redis_url):
    """Presence expires by Redis's clock: a server a minute ahead of another still sees the other's people."""
    redis.Redis.from_url(redis_url).flushdb()
    skewed = tmp_path / "skewed"
    skewed.mkdir()
    # This server's host clock is a minute ahead (as the rest of its process sees it too).
    (skewed / "sitecustomize.py").write_text(
        "import time\n_real = time.time\ntime.time = lambda: _real() + 60\n"
    )
    ahead = LiveServer("daphne", tmp_path, redis_url, PYTHONPATH=f"{skewed}:{APP_DIR}")
    on_time = LiveServer("daphne", tmp_path, redis_url)
    try:

        async def run():
            room = "/ws/chat/here/?presence=1"
            async with websockets.connect(ahead.ws + room, origin=ORIGIN) as watcher:
                until, quiet = presence_frames(watcher)
                async with websockets.connect(on_time.ws + room, origin=ORIGIN) as ann:
                    await ann.send(json.dumps({"message": "hello", "user": "ann"}))
                    await until(lambda frame: ANN in frame["presence"], 15)
                    # Someone comes in on the watcher's own server: ann is still here.
                    async with websockets.connect(ahead.ws + "/ws/chat/here/", origin=ORIGIN):
                        frame = await until(lambda frame: frame["anonymous"] == 2, 15)
                        assert frame["presence"] == [ANN]
                        assert all(ANN in frame["presence"] for frame in await quiet(EVERY_SERVER_HAS_SPOKEN))

        asyncio.run(run())
    finally:
        ahead.stop()
        on_time.stop()


def test_someone_whose_leaving_fails_halfway_is_gone_within_the_documented_time(tmp_path):
    """Redis is down the moment ann leaves, and hers was the first server's last connection in the room (so
    leaving the room's channel-layer group fails too): once Redis is back, she is gone within the TTL."""
    port, start, stop = private_redis(tmp_path)
    start()
    url = f"redis://127.0.0.1:{port}/0"
    first = LiveServer("daphne", tmp_path, url)
    second = LiveServer("daphne", tmp_path, url)
    try:

        async def run():
            async with websockets.connect(second.ws + "/ws/chat/here/?presence=1", origin=ORIGIN) as watcher:
                until, _ = presence_frames(watcher)
                ann = await websockets.connect(first.ws + "/ws/chat/here/", origin=ORIGIN)
                await ann.send(json.dumps({"message": "hello", "user": "ann"}))
                await until(lambda frame: ANN in frame["presence"], 15)
                stop()
                await ann.close()
                await asyncio.sleep(1)  # the first server has seen her go, and failed to say so
                start()
                await until(lambda frame: ANN not in frame["presence"],
                            presence.TTL_SECONDS + presence.HEARTBEAT_SECONDS + 5)

        asyncio.run(run())
    finally:
        first.stop()
        second.stop()
        stop()
