"""Admission control for websocket handshakes: a process takes on only so many at once.

A handshake costs far more than a message (the session, the restrictions,
the room's history: several trips to Channels' one database thread, a
Redis subscription). When they arrive faster than a process completes
them, they queue, every one of them waits longer, clients give up after
their timeout while the server goes on working for them, and the process
ends up completing none at all while its memory grows (bench churn at 200
joins a second: 631 accepted in 20 s, then none). The usual cure is to
shed load at the door: a handshake that finds CHAT_HANDSHAKES_IN_FLIGHT
others still in progress in this process is refused at once, with HTTP 503
and Retry-After where the server can say so (chat-daphne, uvicorn), a
close (daphne's 403) elsewhere, so that those admitted complete quickly and
the refused ones retry later (the page backs off and reconnects).

Channels has no such limit, daphne and uvicorn only cap open connections,
and nginx's limit_conn counts established websockets too, hence this
middleware; it wraps the whole websocket stack, before the session and the
origin check, so a refusal costs no database call.
"""

from django.conf import settings

from . import metrics
from .dispatch import refuse_handshake

RETRY_AFTER_SECONDS = 2


class HandshakeLimiter:
    """ASGI middleware: at most `limit` websocket handshakes of this process in progress at once."""

    def __init__(self, application, limit=None):
        self.application = application
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.application(scope, receive, send)
        limit = self.limit if self.limit is not None else settings.CHAT_HANDSHAKES_IN_FLIGHT
        if limit and self.in_flight >= limit:
            return await self.refuse(scope, receive, send)
        self.in_flight += 1
        metrics.handshakes_in_flight.inc()
        pending = True

        def done():
            nonlocal pending
            if pending:
                pending = False
                self.in_flight -= 1
                metrics.handshakes_in_flight.dec()

        async def send_and_count(message):
            # The handshake ends with the application's answer: accepted,
            # closed (refused) or its own HTTP response.
            if pending and message["type"] in ("websocket.accept", "websocket.close", "websocket.http.response.start"):
                done()
            await send(message)

        try:
            return await self.application(scope, receive, send_and_count)
        finally:
            done()

    async def refuse(self, scope, receive, send):
        metrics.refused_for_overload.inc()
        await refuse_handshake(scope, receive, send, RETRY_AFTER_SECONDS, "The chat is busy; try again in a few seconds.")
