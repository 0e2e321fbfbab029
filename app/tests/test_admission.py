"""Admission control (chat.admission): past CHAT_HANDSHAKES_IN_FLIGHT handshakes in progress, one more is refused at once."""

import asyncio

from chat import metrics
from chat.admission import HandshakeLimiter
from chatsite.asgi import application as site_application

DENIAL = {"websocket.http.response": {}}


class Handshakes:
    """An application whose handshakes wait until the test lets each one accept, refuse or fail."""

    def __init__(self):
        self.started = asyncio.Queue()

    async def __call__(self, scope, receive, send):
        await receive()  # websocket.connect
        answer = asyncio.get_running_loop().create_future()
        await self.started.put(answer)
        outcome = await answer
        if outcome == "fail":
            raise RuntimeError("a handshake that fails")
        await send({"type": "websocket.accept" if outcome == "accept" else "websocket.close"})
        await asyncio.sleep(3600)  # an open connection, until the test cancels it


async def handshake(limiter, extensions=None):
    """Starts a handshake through `limiter`; returns (the task, what the server was sent)."""
    inbox, sent = asyncio.Queue(), []
    await inbox.put({"type": "websocket.connect"})

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws/chat/lobby/", "extensions": extensions or {}}
    task = asyncio.create_task(limiter(scope, inbox.get, send))
    await asyncio.sleep(0.01)
    return task, sent


async def test_one_more_than_the_limit_is_refused_with_503_and_retry_after():
    app = Handshakes()
    limiter = HandshakeLimiter(app, limit=2)
    first, _ = await handshake(limiter, DENIAL)
    second, _ = await handshake(limiter, DENIAL)
    refused_before = metrics.refused_for_overload._value.get()
    third, sent = await handshake(limiter, DENIAL)
    await asyncio.wait_for(third, 1)  # refused at once, without waiting for the others
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"2") in sent[0]["headers"]
    assert sent[1]["type"] == "websocket.http.response.body"
    assert metrics.refused_for_overload._value.get() == refused_before + 1
    assert app.started.qsize() == 2  # the refused one never reached the application
    for task in (first, second):
        task.cancel()


async def test_without_the_denial_extension_the_handshake_is_closed():
    limiter = HandshakeLimiter(Handshakes(), limit=1)
    first, _ = await handshake(limiter)
    second, sent = await handshake(limiter)
    await asyncio.wait_for(second, 1)
    assert sent == [{"type": "websocket.close"}]  # daphne answers 403
    first.cancel()


async def test_an_answered_handshake_frees_its_place_and_its_connection_does_not_hold_it():
    app = Handshakes()
    limiter = HandshakeLimiter(app, limit=1)
    first, first_sent = await handshake(limiter, DENIAL)
    (await app.started.get()).set_result("accept")
    await asyncio.sleep(0.01)
    assert first_sent == [{"type": "websocket.accept"}]
    assert limiter.in_flight == 0  # the websocket stays open; its handshake is over
    second, _ = await handshake(limiter, DENIAL)
    (await app.started.get()).set_result("refuse")  # the application's own refusal ends it too
    await asyncio.sleep(0.01)
    assert limiter.in_flight == 0
    third, _ = await handshake(limiter, DENIAL)
    (await app.started.get()).set_result("fail")
    await asyncio.gather(third, return_exceptions=True)
    assert limiter.in_flight == 0  # a failing handshake gives its place back
    fourth, _ = await handshake(limiter, DENIAL)
    fourth.cancel()  # and so does one the server cancels
    await asyncio.gather(fourth, return_exceptions=True)
    assert limiter.in_flight == 0
    for task in (first, second):
        task.cancel()
    await asyncio.gather(first, second, return_exceptions=True)


async def test_no_limit_when_set_to_zero():
    app = Handshakes()
    limiter = HandshakeLimiter(app, limit=0)
    tasks = [(await handshake(limiter))[0] for _ in range(5)]
    assert app.started.qsize() == 5
    for task in tasks:
        task.cancel()


async def test_http_requests_are_not_counted():
    async def page(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    limiter = HandshakeLimiter(page, limit=1)
    sent = []

    async def send(message):
        sent.append(message)

    await limiter({"type": "http"}, None, send)
    assert limiter.in_flight == 0 and sent[0]["status"] == 200


def test_the_site_limits_its_websocket_handshakes_before_anything_else():
    assert isinstance(site_application.application.application_mapping["websocket"], HandshakeLimiter)
