"""A websocket handshake while the channel layer is down is refused cleanly: 503, one log line, counted.

The consumer needs a channel before it can do anything (chat.dispatch: new_channel()); when Redis is down that
fails, and the client must get an answer it can act on (try again) rather than a 500 and a traceback in the log.
"""

import asyncio
import logging
import urllib.request

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from chat import metrics
from chat.consumers import ChatConsumer

from .conftest import free_port
from .live_server import ORIGIN, LiveServer, private_redis


class DownLayer:
    async def new_channel(self):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


async def handshake(scope_extra, monkeypatch):
    monkeypatch.setattr("chat.dispatch.get_channel_layer", lambda alias: DownLayer())
    sent = []
    inbox = [{"type": "websocket.connect"}]

    async def receive():
        return inbox.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws/chat/lobby/", "headers": [], "query_string": b"",
             "url_route": {"args": (), "kwargs": {"room_name": "lobby"}}, **scope_extra}
    await asyncio.wait_for(ChatConsumer.as_asgi()(scope, receive, send), 5)
    return sent


def refused_count():
    return metrics.refused_for_channel_layer._value.get()


async def test_a_server_with_the_denial_response_gets_503(monkeypatch, caplog):
    before = refused_count()
    with caplog.at_level(logging.INFO):
        sent = await handshake({"extensions": {"websocket.http.response": {}}}, monkeypatch)
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 503
    assert sent[-1]["type"] == "websocket.http.response.body" and not sent[-1].get("more_body")
    assert refused_count() == before + 1
    refusals = [record for record in caplog.records if "channel layer is unavailable" in record.getMessage()]
    assert len(refusals) == 1 and refusals[0].exc_info is None


async def test_a_server_without_it_gets_the_handshake_closed(monkeypatch):
    # plain daphne 4.2 (runserver): websocket.close before accept, which it answers with 403
    assert await handshake({}, monkeypatch) == [{"type": "websocket.close"}]


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_a_real_server_answers_503_and_logs_one_line(kind, tmp_path):
    port, start, stop = private_redis(tmp_path)  # never started: Redis is down
    metrics_port = free_port()
    with LiveServer(kind, tmp_path, f"redis://127.0.0.1:{port}/0", CHAT_METRICS_PORT=metrics_port) as server:

        async def connect():
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(f"{server.ws}/ws/chat/lobby/", origin=ORIGIN, open_timeout=10):
                    pass
            return refused.value.response.status_code

        assert asyncio.run(connect()) == 503
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            exposition = response.read().decode()
        assert 'chat_handshakes_refused_total{reason="channel_layer"} 1.0' in exposition
        log = server.log()
        assert log.count("the channel layer is unavailable") == 1, log
        assert "Traceback" not in log, log
    stop()
