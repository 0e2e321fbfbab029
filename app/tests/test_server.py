"""chat-daphne (chat.server): daphne's server with a Mailbox as each connection's input queue."""

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import websockets

from chat import server as chat_server
from chat.mailbox import Mailbox
from chat.server import ChatServer

from .conftest import free_port
from .live_server import server_env

APP_DIR = Path(__file__).resolve().parent.parent


async def test_the_application_reads_its_events_from_a_mailbox():
    events = []

    async def application(scope, receive, send):
        events.append(scope["type"])
        events.append(await receive())
        events.append(await receive())

    server = ChatServer(application=application, endpoints=["tcp:port=0"])
    server.connections = {}  # as Server.run() sets it up
    connection = object()  # stands for daphne's protocol instance
    server.connections[connection] = {}
    inbox = server.create_application(connection, {"type": "websocket"})
    assert isinstance(inbox, Mailbox)
    inbox.put_nowait({"type": "websocket.connect"})
    inbox.put_nowait({"type": "websocket.receive", "text": "hi"})
    await asyncio.wait_for(server.connections[connection]["application_instance"], 5)
    assert events == ["websocket", {"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hi"}]


class Connection:
    """Stands for daphne's WebSocketProtocol: a transport that is open or closed."""

    client_addr = ["192.0.2.7", 50000]
    path = b"/ws/chat/lobby/"

    def __init__(self, open_=True):
        self.transport = SimpleNamespace(disconnected=not open_)


async def waiting_application(scope, receive, send):
    """A websocket application that ends when it hears websocket.disconnect, as a consumer does."""
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def deaf_application(scope, receive, send):
    await asyncio.sleep(3600)


def websocket_server(application, *connections):
    server = ChatServer(application=application, endpoints=["tcp:port=0"])
    server.connections = {}  # as Server.run() sets it up
    inboxes = []
    for connection in connections:
        server.connections[connection] = {}
        inboxes.append(server.create_application(connection, {"type": "websocket"}))
    return server, inboxes


async def test_an_application_daphne_lost_track_of_is_told_its_websocket_is_gone():
    forgotten, closed, alive, disconnected = Connection(), Connection(open_=False), Connection(), Connection(open_=False)
    server, _ = websocket_server(waiting_application, forgotten, closed, alive, disconnected)
    instances = {c: server.connections[c]["application_instance"] for c in (forgotten, closed, alive, disconnected)}
    del server.connections[forgotten]  # daphne dropped its record, the application still runs
    server.connections[disconnected]["disconnected"] = time.time()  # daphne's own checker ends this one
    assert server.reap_orphans() == 2
    await asyncio.wait_for(asyncio.gather(instances[forgotten], instances[closed]), 5)
    await asyncio.sleep(0)
    assert not instances[alive].done() and not instances[disconnected].done()
    assert set(server.websocket_applications) == {instances[alive], instances[disconnected]}  # the ended are forgotten
    for instance in instances.values():
        instance.cancel()


async def test_an_orphan_that_does_not_end_is_cancelled_after_the_close_timeout():
    lost = Connection(open_=False)
    server, _ = websocket_server(deaf_application, lost)
    instance = server.connections[lost]["application_instance"]
    start = time.monotonic()
    assert server.reap_orphans(now=start) == 1
    await asyncio.sleep(0.01)
    server.reap_orphans(now=start + server.application_close_timeout / 2)
    await asyncio.sleep(0.01)
    assert not instance.done()
    server.reap_orphans(now=start + server.application_close_timeout + 1)
    await asyncio.sleep(0.01)
    assert instance.cancelled()


def start_server(port, env):
    """python -m chat.server as supervisord runs chat-daphne, on a TCP port; waits until it answers."""
    process = subprocess.Popen(
        [sys.executable, "-m", "chat.server", "-b", "127.0.0.1", "-p", str(port), "--proxy-headers",
         "chatsite.asgi:application"],
        env=env, cwd=APP_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                assert json.loads(response.read())["status"] == "ok"
                return process
        except OSError:
            if process.poll() is not None:
                raise AssertionError(process.stdout.read()) from None
            assert time.monotonic() < deadline, "chat-daphne did not answer within 30 s"
            time.sleep(0.2)


def test_two_servers_chat_through_redis(tmp_path, redis_url):
    """Two chat-daphne processes on one Redis: a client of each, one room, every message at both."""
    env = server_env(tmp_path, redis_url)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], env=env, cwd=APP_DIR, check=True,
                   capture_output=True, timeout=60)
    ports = [free_port(), free_port()]
    servers = []
    try:
        servers = [start_server(port, env) for port in ports]

        async def chat():
            origin = "http://127.0.0.1"
            headers = {"X-Forwarded-For": "203.0.113.7"}
            ann_url, bob_url = (f"ws://127.0.0.1:{port}/ws/chat/lobby/" for port in ports)
            async with websockets.connect(ann_url, origin=origin, additional_headers=headers) as ann, \
                    websockets.connect(bob_url, origin=origin, additional_headers=headers) as bob:
                await ann.send(json.dumps({"message": "from the first server", "user": "ann"}))
                got = [json.loads(await asyncio.wait_for(client.recv(), 5)) for client in (ann, bob)]
                await bob.send("not json")
                error = json.loads(await asyncio.wait_for(bob.recv(), 5))
                await bob.send(json.dumps({"message": "and back", "user": "bob"}))
                got += [json.loads(await asyncio.wait_for(client.recv(), 5)) for client in (ann, bob)]
                return got, error

        got, error = asyncio.run(chat())
        assert [(m["user"], m["message"]) for m in got] == [
            ("ann", "from the first server"), ("ann", "from the first server"), ("bob", "and back"), ("bob", "and back"),
        ]
        assert got[0]["id"] < got[2]["id"]
        assert "error" in error and error["code"] == "malformed_json"
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=15)


def test_exceptions_twisted_catches_reach_the_log_the_first_and_then_one_in_a_thousand(caplog):
    from twisted.logger import Logger, LogPublisher
    from twisted.python.failure import Failure

    from chat.server import TwistedErrors

    publisher = LogPublisher(TwistedErrors())
    log = Logger(observer=publisher)

    def fail():
        try:
            {}["gone"]
        except KeyError:
            log.failure("in a callback", Failure())

    with caplog.at_level("ERROR", logger="chat.server"):
        for _ in range(TwistedErrors.EVERY):
            fail()
        log.info("not a failure")
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("Twisted caught KeyError in ") and "Traceback" in messages[0]
    assert messages[1].endswith(f"{TwistedErrors.EVERY} times so far")


async def test_nothing_is_sent_on_a_websocket_autobahn_has_already_dropped():
    from daphne.ws_protocol import WebSocketProtocol

    server = ChatServer(application=waiting_application, endpoints=["tcp:port=0"])
    server.connections = {}
    protocol = WebSocketProtocol.__new__(WebSocketProtocol)  # daphne's protocol, without a connection
    handled = []
    protocol.handle_reply = handled.append
    server.connections[protocol] = {}
    protocol.state = WebSocketProtocol.STATE_CLOSED  # its opening handshake timed out: autobahn dropped it
    for message in ({"type": "websocket.accept"}, {"type": "websocket.send", "text": "hi"}, {"type": "websocket.close"}):
        await server.handle_reply(protocol, message)
    # An accept would have set it open again, and its close would never have reached the application.
    assert handled == []
    protocol.state = WebSocketProtocol.STATE_CONNECTING
    await server.handle_reply(protocol, {"type": "websocket.accept"})
    assert handled == [{"type": "websocket.accept"}]


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(chat_server.MALLOC_TRIM is None, reason="the C library has no malloc_trim (not glibc)")
def test_free_memory_in_the_middle_of_the_heap_goes_back_to_the_system():
    """What a burst of connections leaves: freed blocks under one that is still in use, which glibc keeps."""
    blocks = [bytes(4096) for _ in range(12_000)]  # ~48 MiB from malloc (Python's own allocator stops at 512 bytes)
    kept = blocks[-1]
    del blocks
    before = rss_bytes()
    assert chat_server.release_free_memory()
    released = before - rss_bytes()
    assert released > 24 * 2**20, f"RSS went down by {released / 2**20:.1f} MiB only"
    assert len(kept) == 4096


async def test_shutting_down_with_a_handshake_still_in_progress_cancels_the_others():
    """daphne's kill_all_applications read every connection's application: one still in its handshake has none.

    (A restart under load logged KeyError: 'application_instance' from the reactor's shutdown.)
    """
    server, _ = websocket_server(waiting_application, Connection())
    server.connections[Connection()] = {}  # connected, its application not made yet
    running = [details["application_instance"] for details in server.connections.values() if details]
    server.kill_all_applications()
    await asyncio.sleep(0)
    assert all(instance.cancelled() for instance in running)
