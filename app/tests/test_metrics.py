"""The Prometheus metrics (chat.metrics): what moves them, and the HTTP server that exports them.

The consumer's tests run once per channel layer, as in test_consumer.py.
Metrics are counted for the whole process, so each test compares the values
before and after what it does, and asserts every change, not just one.
"""

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import urllib.request

import pytest
import websockets
from channels.layers import get_channel_layer
from prometheus_client import REGISTRY

from chat import consumers, metrics, protocol

from .conftest import free_port
from .test_consumer import communicator, joined, receive, store
from .test_server import APP_DIR, start_server

pytestmark = pytest.mark.django_db(transaction=True)


def sample_key(sample):
    labels = ",".join(f"{name}={value}" for name, value in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}}" if labels else sample.name


def chat_samples():
    """Every chat_ counter, the open-websockets gauge and the delivery histogram's count and sum."""
    return {
        sample_key(sample): sample.value
        for metric in REGISTRY.collect()
        if metric.name.startswith("chat_")
        for sample in metric.samples
        if not sample.name.endswith(("_created", "_bucket"))
    }


def changes_since(before):
    """What moved since `before` (the delivery histogram's sum apart: it is a duration, checked on its own)."""
    after = chat_samples()
    return {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if after[key] != before.get(key, 0.0) and key != "chat_delivery_seconds_sum"
    }


async def test_a_message_is_counted_received_stored_broadcast_and_delivered_to_each_client(channel_layer):
    async with joined("/ws/chat/lobby/") as ann, joined("/ws/chat/lobby/") as bob:
        before = chat_samples()
        await ann.send_json_to({"message": "count me", "user": "ann"})
        for client in (ann, bob):
            assert (await receive(client))["message"] == "count me"
        assert changes_since(before) == {
            "chat_messages_received_total": 1,
            "chat_messages_stored_total": 1,
            "chat_messages_broadcast_total": 1,
            "chat_delivery_seconds_count": 2,  # one per receiving client
        }
        delivery = chat_samples()["chat_delivery_seconds_sum"] - before["chat_delivery_seconds_sum"]
        assert 0 <= delivery < 5


async def test_open_websockets_go_up_on_connect_and_down_on_disconnect(channel_layer):
    before = chat_samples()
    async with joined("/ws/chat/lobby/"):
        assert changes_since(before) == {"chat_websockets_open": 1}
        async with joined("/ws/chat/kitchen/"):
            assert changes_since(before) == {"chat_websockets_open": 2}
        assert changes_since(before) == {"chat_websockets_open": 1}
    assert changes_since(before) == {}


async def test_a_websocket_whose_consumer_fails_stops_counting_as_open(settings, monkeypatch):
    # In memory only: a consumer on the Redis core layer takes up to its 5 s
    # BZPOPMIN to end, and the failure is the consumer's, not the layer's.
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

    async def read_before(room, cursor, connection_access=None):
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(consumers, "read_before", read_before)
    before = chat_samples()
    client = communicator("/ws/chat/lobby/")
    connected, _ = await client.connect(timeout=5)
    assert connected, "accepted before the backlog is read"
    with pytest.raises(RuntimeError, match="the database is gone"):
        await client.wait(timeout=5)
    assert changes_since(before) == {}


@pytest.mark.parametrize(
    ("path", "origin", "reason"),
    [
        ("/ws/chat/a%20b/", b"http://testserver", "room_name"),
        ("/ws/elsewhere/", b"http://testserver", "path"),
        ("/ws/chat/lobby/", b"http://evil.example", "origin"),
        ("/ws/chat/lobby/", None, "origin"),
    ],
    ids=["bad_room", "not_a_chat_path", "foreign_origin", "no_origin"],
)
async def test_a_refused_handshake_is_counted_by_reason(channel_layer, path, origin, reason):
    before = chat_samples()
    client = communicator(path, origin)
    connected, _ = await client.connect(timeout=5)
    assert not connected
    assert changes_since(before) == {f"chat_handshakes_refused_total{{reason={reason}}}": 1}


async def test_a_handshake_refused_for_want_of_the_channel_layer_is_counted(channel_layer, monkeypatch):
    async def group_add(group, channel):
        raise ConnectionError("the channel layer is down")

    monkeypatch.setattr(get_channel_layer(), "group_add", group_add)
    before = chat_samples()
    connected, _ = await communicator("/ws/chat/lobby/").connect(timeout=5)
    assert not connected
    assert changes_since(before) == {"chat_handshakes_refused_total{reason=channel_layer}": 1}


async def test_a_failed_broadcast_is_counted_and_answered_with_its_code(channel_layer, monkeypatch):
    async with joined("/ws/chat/lobby/") as ann:
        async def group_send(group, message):
            raise ConnectionError("the channel layer is down")

        monkeypatch.setattr(get_channel_layer(), "group_send", group_send)
        before = chat_samples()
        await ann.send_json_to({"message": "stored, not delivered"})
        assert (await receive(ann))["code"] == "broadcast_failed"
        assert changes_since(before) == {
            "chat_messages_received_total": 1,
            "chat_messages_stored_total": 1,
            "chat_broadcast_failures_total": 1,
            "chat_error_frames_total{code=broadcast_failed}": 1,
        }


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"text_data": "{not json"}, "malformed_json"),
        ({"text_data": "[1, 2, 3]"}, "not_an_object"),
        ({"text_data": json.dumps({"message": ""})}, "empty_message"),
        ({"bytes_data": b'{"message": "as bytes"}'}, "binary_frame"),
    ],
    ids=["malformed_json", "not_an_object", "empty_message", "binary_frame"],
)
async def test_an_error_frame_is_counted_by_its_code(channel_layer, frame, code):
    async with joined("/ws/chat/lobby/") as ann:
        before = chat_samples()
        await ann.send_to(**frame)
        assert (await receive(ann))["code"] == code
        assert changes_since(before) == {f"chat_error_frames_total{{code={code}}}": 1}


async def test_messages_over_the_rate_are_received_but_not_stored(channel_layer, settings):
    settings.CHAT_RATE_PER_SECOND = 0.01  # no refill during the test
    settings.CHAT_RATE_BURST = 1
    async with joined("/ws/chat/lobby/") as ann:
        before = chat_samples()
        await ann.send_json_to({"message": "first"})
        await ann.send_json_to({"message": "too soon"})
        answers = [await receive(ann), await receive(ann)]
        # The refusal may overtake the broadcast, which goes through the channel layer.
        assert sorted(answer.get("code", "") for answer in answers) == ["", "rate_limited"]
        assert changes_since(before) == {
            "chat_messages_received_total": 2,
            "chat_messages_stored_total": 1,
            "chat_messages_broadcast_total": 1,
            "chat_delivery_seconds_count": 1,
            "chat_error_frames_total{code=rate_limited}": 1,
        }


async def test_a_join_with_since_is_counted_as_a_resync_and_a_bad_since_as_an_error(channel_layer):
    (first, _) = await store("lobby", "seen", "missed")
    before = chat_samples()
    async with joined(f"/ws/chat/lobby/?since={first}") as ann:
        assert (await receive(ann))["message"] == "missed"
    assert changes_since(before) == {"chat_resyncs_total": 1}
    before = chat_samples()
    async with joined("/ws/chat/lobby/?since=yesterday") as bob:
        assert (await receive(bob))["code"] == "invalid_since"
    assert changes_since(before) == {"chat_error_frames_total{code=invalid_since}": 1}


def test_every_error_code_is_exported_before_it_first_happens():
    # Bound up front, so that an alert on rate() sees 0 rather than no series.
    codes = {key for key in chat_samples() if key.startswith("chat_error_frames_total{")}
    assert codes == {f"chat_error_frames_total{{code={code}}}" for code in protocol.ERROR_CODES}


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def exported_value(exposition, name):
    values = [float(line.split()[-1]) for line in exposition.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} not exported once in:\n{exposition}"
    return values[0]


@pytest.fixture
def exposition_server():
    """start_exposition_server() as if for a fresh process; the server it started is shut down after."""
    metrics.start_exposition_server.cache_clear()
    started = []

    def start():
        served = metrics.start_exposition_server()
        started.append(served)
        return served

    yield start
    for served in started:
        if served is not None:
            server, thread = served
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
    metrics.start_exposition_server.cache_clear()


def test_the_exposition_server_serves_on_the_port_plus_the_process_number(settings, exposition_server):
    port = free_port()
    settings.CHAT_METRICS_PORT = port - 3
    settings.CHAT_PROCESS_NUM = 3
    settings.CHAT_METRICS_ADDRESS = "127.0.0.1"
    served = exposition_server()
    assert served is not None
    stored = exported_value(scrape(port), "chat_messages_stored_total")
    metrics.messages_stored.inc()
    assert exported_value(scrape(port), "chat_messages_stored_total") == stored + 1
    assert metrics.start_exposition_server() is served, "a second call starts nothing"


def test_without_a_port_there_is_no_exposition_server(settings, exposition_server):
    settings.CHAT_METRICS_PORT = 0
    assert exposition_server() is None


def test_a_port_that_cannot_be_bound_is_logged_and_the_process_goes_on(settings, exposition_server, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings.CHAT_METRICS_PORT = taken.getsockname()[1]
        settings.CHAT_PROCESS_NUM = 0
        settings.CHAT_METRICS_ADDRESS = "127.0.0.1"
        with caplog.at_level(logging.ERROR, logger="chat.metrics"):
            assert exposition_server() is None
    assert f"could not listen on 127.0.0.1 port {settings.CHAT_METRICS_PORT}" in caplog.text


def test_chat_daphne_exports_its_metrics_on_its_own_port(tmp_path):
    """A real server process: asgi.py starts the exposition server, on CHAT_METRICS_PORT + CHAT_PROCESS_NUM."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "REDIS_", "CHAT_"))}
    metrics_port = free_port()
    env.update(
        DJANGO_SECRET_KEY="s" * 50,
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        DJANGO_SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        CHAT_METRICS_PORT=str(metrics_port - 2),
        CHAT_PROCESS_NUM="2",
        PYTHONPATH=str(APP_DIR),
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], env=env, cwd=APP_DIR, check=True,
                   capture_output=True, timeout=60)
    port = free_port()
    server = start_server(port, env)
    try:
        async def chat():
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/lobby/", origin="http://127.0.0.1") as ann:
                await ann.send(json.dumps({"message": "hello"}))
                assert json.loads(await asyncio.wait_for(ann.recv(), 5))["message"] == "hello"
                return scrape(metrics_port)

        while_open = asyncio.run(chat())
        assert exported_value(while_open, "chat_messages_stored_total") == 1
        assert exported_value(while_open, "chat_websockets_open") == 1
        assert exported_value(while_open, "chat_delivery_seconds_count") == 1
    finally:
        server.terminate()
        server.wait(timeout=15)
