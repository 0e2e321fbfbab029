import logging
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from . import metrics, protocol
from .dispatch import RelayDispatchMixin
from .models import Message
from .ratelimit import TokenBucket

logger = logging.getLogger(__name__)


@database_sync_to_async
def load_backlog(room, since):
    """The messages a joining client gets first, oldest first.

    Without `since`, the room's latest CHAT_HISTORY_LIMIT messages. With it,
    the first CHAT_RESYNC_LIMIT messages after `since`: a client that missed
    more reconnects with the last id it got and receives the next ones.
    """
    messages = Message.objects.filter(room=room)
    if since is not None:
        return list(messages.filter(id__gt=since).order_by("id")[: settings.CHAT_RESYNC_LIMIT])
    if settings.CHAT_HISTORY_LIMIT == 0:
        return []
    return list(reversed(messages.order_by("-id")[: settings.CHAT_HISTORY_LIMIT]))


@database_sync_to_async
def store(room, incoming):
    return Message.objects.create(room=room, user=incoming.user, text=incoming.text)


class ChatConsumer(RelayDispatchMixin, AsyncWebsocketConsumer):
    """One websocket in one room: replays the backlog, then relays the room's messages."""

    counted_open = False  # whether chat_websockets_open counts this websocket

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However the consumer ends (closed, failed in a handler, cancelled
            # at shutdown), its websocket stops counting as open.
            if self.counted_open:
                metrics.websockets_open.dec()

    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room_name"]
        if not protocol.is_valid_room_name(self.room):
            metrics.refused_for_room_name.inc()
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        self.group = protocol.group_name(self.room)
        self.bucket = TokenBucket(settings.CHAT_RATE_PER_SECOND, settings.CHAT_RATE_BURST)
        # Join before reading the backlog, so that nothing sent in between is missed.
        try:
            await self.channel_layer.group_add(self.group, self.channel_name)
        except Exception:
            logger.exception("Refused a client of room %r: could not join its channel-layer group", self.room)
            metrics.refused_for_channel_layer.inc()
            del self.group
            await self.close()
            return
        await self.accept()
        metrics.websockets_open.inc()
        self.counted_open = True
        try:
            since = protocol.parse_since(self.scope["query_string"])
        except protocol.ProtocolError as error:
            await self.send_error(str(error), error.code)
            since = None
        if since is not None:
            metrics.resyncs.inc()
        backlog = await load_backlog(self.room, since)
        for message in backlog:
            await self.send(text_data=protocol.outgoing(message, history=True))
        # Messages stored while the backlog was read may also be on their way
        # through the group; these ids let chat_message skip them once.
        # (None when there is nothing to skip: an idle connection stays small.)
        self.replayed = frozenset(message.id for message in backlog) or None
        self.replayed_until = backlog[-1].id if backlog else 0

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            await self.send_error("Binary frames are not accepted: send JSON as text.", protocol.BINARY_FRAME)
            return
        try:
            incoming = protocol.parse_incoming(text_data, settings.CHAT_MESSAGE_MAX_LENGTH)
        except protocol.ProtocolError as error:
            await self.send_error(str(error), error.code)
            return
        metrics.messages_received.inc()
        if not self.bucket.take():
            await self.send_error(
                f"Too many messages: at most {settings.CHAT_RATE_PER_SECOND:g} a second "
                f"(bursts of {settings.CHAT_RATE_BURST}). This one was not sent.",
                protocol.RATE_LIMITED,
            )
            return
        message = await store(self.room, incoming)
        metrics.messages_stored.inc()
        try:
            # Serialized once here rather than once per receiving client.
            # "stored" (wall-clock time, comparable across servers) lets each
            # receiver measure chat_delivery_seconds.
            await self.channel_layer.group_send(
                self.group,
                {"type": "chat.message", "id": message.id, "text": protocol.outgoing(message), "stored": time.time()},
            )
        except Exception:
            logger.exception("Could not broadcast message %s in room %r", message.id, self.room)
            metrics.broadcast_failures.inc()
            await self.send_error(
                "The message was saved but could not be delivered live; it will appear when clients resync.",
                protocol.BROADCAST_FAILED,
            )
        else:
            metrics.messages_broadcast.inc()

    async def send_error(self, text, code):
        """Tells this client alone that the chat refused something; the connection stays open."""
        metrics.error_frames_by_code[code].inc()
        await self.send(text_data=protocol.error(text, code))

    async def dispatch(self, message):
        # Channels runs close_old_connections() in a worker thread before
        # every handler. chat.message, the one sent to every client in the
        # room, never touches the database (store() and load_backlog() close
        # their own connections), and at thousands of deliveries a second
        # those thread hops were most of daphne's CPU time.
        if message["type"] == "chat.message":
            await self.chat_message(message)
        else:
            await super().dispatch(message)

    async def chat_message(self, event):
        if self.replayed:
            if event["id"] in self.replayed:
                return
            if event["id"] > self.replayed_until:
                self.replayed = None
        await self.send(text_data=event["text"])
        # Events from a server still running the previous release, during a
        # rolling deploy, carry no "stored".
        stored = event.get("stored")
        if stored is not None:
            # Another app server's clock may be a little ahead; a negative
            # observation would look like a counter reset to Prometheus.
            metrics.delivery_seconds.observe(max(time.time() - stored, 0.0))


class RefuseConsumer(AsyncWebsocketConsumer):
    """Any websocket path that is not a chat room: refused at the handshake."""

    async def connect(self):
        metrics.refused_for_path.inc()
        await self.close()
