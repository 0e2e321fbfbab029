"""Bounded memory per connection: chat-daphne closes a websocket whose unsent data passes CHAT_SEND_BUFFER_LIMIT.

A room with big messages, and clients that join with ?since=0 (the server sends them a whole resync page) on a
raw socket with a small receive buffer: one that never reads is closed with 1008 and dropped, and the server
does not keep what it could not send; one that reads late finds the 1008 close frame after what it was sent.
"""

import asyncio
import base64
import json
import os
import socket
import struct
import time

import pytest
import websockets

from .live_server import ORIGIN, LiveServer

LIMIT = 256 * 1024
MESSAGES = 120
MESSAGE_LENGTH = 100_000  # 120 of them: a 12 MB resync page, well past what the kernel's buffers take


@pytest.fixture(scope="module")
def big_room(tmp_path_factory, redis_url):
    """A chat-daphne whose room "big" holds MESSAGES messages of MESSAGE_LENGTH characters."""
    directory = tmp_path_factory.mktemp("send-buffer")
    server = LiveServer("daphne", directory, redis_url, CHAT_SEND_BUFFER_LIMIT=LIMIT,
                        CHAT_MESSAGE_MAX_LENGTH=MESSAGE_LENGTH, CHAT_RATE_PER_SECOND=1000, CHAT_RATE_BURST=1000)

    async def fill():
        async with websockets.connect(f"{server.ws}/ws/chat/big/", origin=ORIGIN, max_size=None) as ws:
            for n in range(MESSAGES):
                await ws.send(json.dumps({"message": f"{n:05d}" + "x" * (MESSAGE_LENGTH - 5), "user": "filler"}))
                while "message" not in json.loads(await asyncio.wait_for(ws.recv(), 30)):
                    pass

    try:
        asyncio.run(fill())
        yield server
    finally:
        server.stop()


def stalled_client(server, path="/ws/chat/big/?since=0"):
    """A websocket handshake on a raw socket with a 4 KiB receive buffer; nothing is read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n\r\n".encode()
    )
    return sock


def read_frames(sock, seconds=20):
    """Reads the handshake answer, then frames until the close frame or the end: (texts, close code or None)."""
    sock.settimeout(seconds)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, data = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    texts = []

    def need(n):
        nonlocal data
        while len(data) < n:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            data += chunk

    try:
        while True:
            need(2)
            opcode, length = data[0] & 0x0F, data[1] & 0x7F
            offset = 2
            if length == 126:
                need(4)
                length, offset = struct.unpack("!H", data[2:4])[0], 4
            elif length == 127:
                need(10)
                length, offset = struct.unpack("!Q", data[2:10])[0], 10
            need(offset + length)
            payload, data = data[offset:offset + length], data[offset + length:]
            if opcode == 8:
                return texts, struct.unpack("!H", payload[:2])[0]
            if opcode == 1:
                texts.append(payload)
    except (EOFError, ConnectionResetError, TimeoutError, socket.timeout):
        return texts, None


def test_a_client_that_reads_late_finds_1008_after_what_it_was_sent(big_room):
    sock = stalled_client(big_room)
    try:
        time.sleep(1.5)  # the server fills its buffer for us and gives up
        texts, code = read_frames(sock)
    finally:
        sock.close()
    assert code == 1008
    assert 0 < len(texts) < MESSAGES


def test_clients_that_never_read_are_dropped_and_their_data_not_kept(big_room):
    rss_before = big_room.rss_bytes()
    clients = []
    try:
        for _ in range(8):
            clients.append(stalled_client(big_room))
            time.sleep(1.0)
        time.sleep(7)  # the close handshake's time (chat.server.CLOSE_TIMEOUT) is up
        grown = big_room.rss_bytes() - rss_before
        for sock in clients:  # each was closed under it: nothing more will come
            sock.setblocking(False)
            with pytest.raises((ConnectionResetError, BlockingIOError, OSError)):
                while sock.recv(1 << 20):
                    pass
                raise ConnectionResetError  # an orderly end counts too
    finally:
        for sock in clients:
            sock.close()
    # Unbounded, each would hold the ~12 MB page less what the kernel took: 8 of them, far past 40 MB.
    assert grown < 40 * 1024 * 1024, f"the server grew by {grown / 2**20:.0f} MiB for 8 clients that never read"
    assert big_room.log().count("with 1008") >= 8


class FakeWebSocket:
    """Stands for daphne's WebSocketProtocol where chat.server.ChatServer.close() meets it."""

    def __init__(self):
        self.frames = []

    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):  # noqa: N802 - autobahn's name
        self.frames.append((code, reasonUtf8))


@pytest.mark.parametrize(("asked", "sent"), [(None, 1000), (1008, 1008), (1011, 1011), (1012, 1012), (1013, 1013),
                                             (4000, 4000), (1006, 1000), (1015, 1000), (2000, 1000)])
def test_chat_daphne_closes_with_every_code_an_endpoint_may_send(asked, sent):
    # daphne's own path, autobahn's sendClose(), raises for all but 1000 and 3000-4999.
    from chat.server import ChatServer

    websocket = FakeWebSocket()
    ChatServer.close(None, websocket, {"type": "websocket.close", "code": asked, "reason": "restarting"})
    assert websocket.frames == [(sent, b"restarting")]


# Under uvicorn a send waits while the client does not read (its transport pauses the writer past 64 KiB), so
# what piles up is the channel's mailbox in the layer: bounded by the same limit.


async def test_a_consumer_that_cannot_keep_up_gets_a_resync_instead_of_an_unbounded_mailbox(redis_url, settings):
    from chat.layers import LeanRedisPubSubChannelLayer

    settings.CHAT_SEND_BUFFER_LIMIT = 65536
    layer = LeanRedisPubSubChannelLayer(hosts=[{"address": redis_url}], prefix="slowpoke")
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        mailbox = layer._get_layer().channels[channel]
        for n in range(200):  # 200 KiB for a reader that reads nothing
            await layer.group_send("room", {"type": "chat.message", "id": n, "text": "x" * 1024})
            if n == 100:
                await layer.send(channel, {"type": "chat.deleted", "id": 7})
        await layer.send(channel, {"type": "chat.message", "id": "last", "text": ""})
        deadline = asyncio.get_running_loop().time() + 10
        while not any(b"last" in item for item in (mailbox._items or ())):
            assert asyncio.get_running_loop().time() < deadline, "the messages did not arrive"
            await asyncio.sleep(0.05)
        assert mailbox.queued <= 65536
        got = []
        while mailbox.qsize():
            got.append(await layer.receive(channel))
        types = [event["type"] for event in got]
        assert "chat.deleted" in types, "only chat messages, which the database holds, may be dropped"
        assert "chat.resync" in types
        assert types.index("chat.deleted") < types.index("chat.resync")
        assert got[-1]["id"] == "last"
        assert types.count("chat.resync") == 1
        after = [event["id"] for event in got[types.index("chat.resync") + 1:-1]]
        assert after == list(range(after[0], 200)) if after else True  # what came after it: all, in order
        assert mailbox.queued == 0
    finally:
        await layer.flush()


async def test_what_a_waiting_consumer_takes_at_once_is_not_counted_as_waiting(redis_url, settings):
    from chat.layers import LeanRedisPubSubChannelLayer

    settings.CHAT_SEND_BUFFER_LIMIT = 65536
    layer = LeanRedisPubSubChannelLayer(hosts=[{"address": redis_url}], prefix="keepsup")
    try:
        channel = await layer.new_channel()
        mailbox = layer._get_layer().channels[channel]
        for n in range(100):  # 100 KiB in all, each read as it comes
            reader = asyncio.ensure_future(layer.receive(channel))
            await asyncio.sleep(0)
            await layer.send(channel, {"type": "chat.message", "id": n, "text": "x" * 1024})
            assert (await asyncio.wait_for(reader, 5))["id"] == n
        assert mailbox.queued == 0
    finally:
        await layer.flush()
