"""A cheaper dispatch loop for consumers that relay many messages, and the clean-up that always follows it.

Channels' AsyncConsumer waits on its two sources (the websocket and the
channel layer) with asyncio.wait and creates a new task for every message it
dispatches. A room's broadcast is dispatched once per client, so at
thousands of deliveries a second that bookkeeping is a large share of the
server's CPU. Here the consumer's own task reads the websocket and one
long-lived helper task reads the channel layer; a lock runs their handlers
one at a time, as Channels does. No task per message, no queue per
connection: the benchmark measured a third less CPU per delivery (daphne:
about 135 µs down to 85 µs) and less memory per idle connection.

However a consumer ends (the client's websocket.disconnect, a send to a
client that is already gone, which uvicorn raises as ClientDisconnected, a
failing handler, the server cancelling it), RelayDispatchMixin releases what
it holds in the channel layer: its groups, through the consumer's own
disconnect() when no websocket.disconnect reached it, and its channel's
subscription. Channels leaves both to the websocket.disconnect handler and to
channels-redis's receive() being cancelled while it waits, so either could
be skipped, and the subscriptions piled up in Redis until a restart.
"""

import asyncio
import functools
import logging

from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer

from . import metrics

logger = logging.getLogger(__name__)


async def dispatch_from(sources, dispatch):
    """Dispatches every message of every source, one handler at a time, until one raises.

    The first source is read by the calling task; each other source by a
    helper task. A lock keeps handlers from running at the same time, as in
    Channels. An exception in a helper is raised in the calling task; the
    helpers always end with it. As in Channels, a handler that is running
    when another source or handler fails is left to finish; only a helper
    that is waiting (for its source or for the lock) is cancelled. Cancelling
    the calling task from outside cancels everything, running handlers too.
    """
    lock = asyncio.Lock()
    caller = asyncio.current_task()
    failures = []
    handling = set()  # the tasks running a handler right now
    cancelled_by_helper = False
    stopping = False

    async def relay(source):
        nonlocal cancelled_by_helper
        me = asyncio.current_task()
        try:
            while not stopping:
                message = await source()
                async with lock:
                    if stopping:
                        return
                    handling.add(me)
                    try:
                        await dispatch(message)
                    finally:
                        handling.discard(me)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            failures.append(error)
            # The caller sees the failure when its own handler is done; if it
            # is only waiting, it is woken now.
            if caller not in handling and not cancelled_by_helper:
                cancelled_by_helper = True
                caller.cancel()

    helpers = [asyncio.create_task(relay(source)) for source in sources[1:]]
    from_outside = False
    try:
        while not failures:
            message = await sources[0]()
            async with lock:
                handling.add(caller)
                try:
                    await dispatch(message)
                finally:
                    handling.discard(caller)
        raise failures[0]
    except asyncio.CancelledError:
        if cancelled_by_helper and failures:
            caller.uncancel()
            raise failures[0] from None
        from_outside = True
        raise
    finally:
        stopping = True
        for helper in helpers:
            if from_outside or helper not in handling:
                helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)


class RelayDispatchMixin:
    """AsyncConsumer.__call__ with dispatch_from() as its loop and a clean-up that always runs.

    Everything else as Channels does it. For AsyncWebsocketConsumer
    subclasses (listed first, before the consumer class).
    """

    disconnect_handled = False  # whether websocket_disconnect (the consumer's own clean-up) has run

    async def __call__(self, scope, receive, send):
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        sources = [receive]
        if self.channel_layer is not None:
            try:
                self.channel_name = await self.channel_layer.new_channel()
            except Exception as error:
                await self.refuse_for_channel_layer(error, receive, send)
                return
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            sources.append(self.channel_receive)
        try:
            await dispatch_from(sources, self.dispatch)
        except StopConsumer:
            pass
        finally:
            if self.channel_layer is not None:
                # A second cancellation (a server that gives up waiting) must
                # not cut the clean-up short: it goes on in its own task.
                await asyncio.shield(asyncio.ensure_future(self.release_channel()))

    async def websocket_disconnect(self, message):
        self.disconnect_handled = True
        await super().websocket_disconnect(message)

    async def release_channel(self):
        """Leaves the consumer's groups (unless websocket_disconnect did) and lets go of its channel."""
        if not self.disconnect_handled:
            # The client never said goodbye (uvicorn raised ClientDisconnected
            # into a handler, a handler failed, the server cancelled us): the
            # same clean-up as Channels' websocket_disconnect, with 1006, the
            # code for a connection that ended without a close frame.
            self.disconnect_handled = True
            try:
                for group in self.groups or ():
                    await self.channel_layer.group_discard(group, self.channel_name)
                await self.disconnect(1006)
            except Exception as error:
                logger.warning("Clean-up of channel %s: disconnect() failed: %r", self.channel_name, error)
        delete_channel = getattr(self.channel_layer, "delete_channel", None)
        if delete_channel is not None:
            try:
                await delete_channel(self.channel_name)
            except Exception as error:
                logger.warning("Clean-up of channel %s: the channel layer failed: %r", self.channel_name, error)

    async def refuse_for_channel_layer(self, error, receive, send):
        """Refuses the handshake of a consumer that could not get a channel: HTTP 503 where the server can say so."""
        metrics.refused_for_channel_layer.inc()
        logger.warning("Refused a websocket handshake for %s: the channel layer is unavailable (%s: %s)",
                       self.scope.get("path"), type(error).__name__, error)
        if self.scope["type"] != "websocket":
            return
        await refuse_handshake(self.scope, receive, send, 5,
                               "The chat cannot take connections right now; try again in a few seconds.")


async def refuse_handshake(scope, receive, send, retry_after, text):
    """Refuses a websocket handshake with HTTP 503 and Retry-After where the server can say so.

    The ASGI websocket denial response ("websocket.http.response"), which
    uvicorn and chat-daphne (chat.server) support; plain daphne 4.2 does not,
    and there the handshake is closed instead, which daphne answers with 403.
    """
    await receive()  # websocket.connect
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": 503,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"retry-after", str(retry_after).encode())]})
        await send({"type": "websocket.http.response.body", "body": f"{text}\n".encode()})
    else:
        await send({"type": "websocket.close"})
