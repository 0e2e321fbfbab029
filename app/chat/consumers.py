import asyncio
import json
import logging
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import DatabaseError

from accounts.models import NameKey

from . import access, metrics, names, presence, protocol
from .delivery import START, STOP, Delivery, Page
from .dispatch import RelayDispatchMixin
from .models import Message, Restriction, Room, is_moderator
from .ratelimit import TokenBucket, shared_limiter

logger = logging.getLogger(__name__)

# How long a message numbered past the next one waits for the ones before it
# (published by another app process, they are usually a few milliseconds
# behind) before the connection reads them from the database.
GAP_WAIT_SECONDS = 0.5
# How long a connection that is paging through a resync waits for the client to ask for the next page
# before sending it unasked. A client written before pages never asks, and would otherwise get no live
# message again; one that asks does so as soon as it has read the page. A client that joined with ?pages=1
# always asks, and is never sent one unasked.
PAGE_WAIT_SECONDS = 3.0


def room_seq_and_name(room, connection_access=None):
    """The room's last seq and its shown name, by its key, once the connection (when given) still has access."""
    seq, name, version = (
        Room.objects.filter(key=room).values_list("last_seq", "name", "access_version").first() or (0, None, None)
    )
    if connection_access is not None:
        connection_access.still_allowed(version)
    return seq, name


def latest_id(room):
    return Message.objects.filter(room=room).order_by("-id").values_list("id", flat=True).first() or 0


@database_sync_to_async
def read_after(room, cursor, connection_access=None):
    """The room's next CHAT_RESYNC_LIMIT messages after id `cursor`, oldest first.

    The room's seq is read first: every message numbered up to it was
    committed before the messages are read, so none of them is missed.
    Raises access.Lost when the connection may no longer read the room.
    """
    seq, name = room_seq_and_name(room, connection_access)
    latest = latest_id(room)  # before the rows too: see Page.latest
    limit = settings.CHAT_RESYNC_LIMIT
    rows = list(Message.objects.filter(room=room, id__gt=cursor, deleted=None).order_by("id")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, more, seq, rows[-1].id if rows else latest, name)


@database_sync_to_async
def read_before(room, cursor, connection_access=None):
    """The CHAT_HISTORY_LIMIT messages before id `cursor` (None: the latest), oldest first; may raise access.Lost."""
    seq, name = room_seq_and_name(room, connection_access)
    latest = latest_id(room) if cursor is None else 0  # before the rows: see Page.latest
    limit = settings.CHAT_HISTORY_LIMIT
    messages = Message.objects.filter(room=room, deleted=None)
    if cursor is not None:
        messages = messages.filter(id__lt=cursor)
    rows = list(messages.order_by("-id")[: limit + 1]) if limit else []
    more = len(rows) > limit if limit else messages.exists()
    rows = list(reversed(rows[:limit]))
    return Page(rows, more, seq, latest, name)


@database_sync_to_async
def store(room, incoming, name, account, address, connection_access):
    """Stores the message in `room` (a room name) unless a mute or ban stops its sender.

    Returns (message, created, None) or (None, False, restriction); raises
    access.Lost when the sender may no longer be in the room (checked under
    the room's lock, when its access version moved). One call to the
    database thread for all: Channels runs every database call of a process
    on one thread, and a post is the chat's commonest one.
    """
    found = Restriction.applying(account, name, address, protocol.room_key(room))
    if found is not None:
        return None, False, found
    message, created = Message.objects.post(
        room, name, incoming.text, incoming.client_id, author=account, guest=account is None,
        admits=connection_access.admits,
    )
    return message, created, None


@database_sync_to_async
def is_registered(name):
    return NameKey.objects.filter(key=names.key(name)).exists()


@database_sync_to_async
def session_set(session, key, value):
    """Keeps a value in the client's session, when it has one (the room page makes sure a guest's does)."""
    if session is not None and session.session_key:
        session[key] = value
        session.save()


GUEST_NAME_KEY = "chat_guest_name"


@database_sync_to_async
def admit(connection_access, session):
    """A handshake's checks, in one call to the database thread: an access.Refusal, or None.

    A guest's nickname held in the session is the connection's from here on.
    """
    if not connection_access.user.is_authenticated and session is not None:
        connection_access.guest_name = session.get(GUEST_NAME_KEY)
    return connection_access.check()


@database_sync_to_async
def check_access(connection_access):
    return connection_access.check()


def as_now(account):
    """The account as it is now (made staff or given the permission since it connected); None stays None."""
    return get_user_model().objects.get(pk=account.pk) if account is not None else None


@database_sync_to_async
def delete_message(room, message_id, account):
    """Deletes a message of the room for its author or a moderator; returns an error (text, code) or None."""
    message = Message.objects.filter(room=room, id=message_id, deleted=None).first()
    if message is None:
        return "There is no such message in this room.", protocol.NOT_FOUND
    account = as_now(account)
    own = account is not None and message.author_id == account.pk
    if not own and not (account is not None and is_moderator(account)):
        return "Only its author or a moderator may delete a message.", protocol.NOT_ALLOWED
    message.delete_for_everyone(account, own)
    return None


@database_sync_to_async
def restrict_user(room, request, name, account):
    """Mutes or bans `name` (an account when registered, else a guest's nickname): (restriction, whom, guest).

    Raises ProtocolError when the asker is no moderator, or the name a moderator's.
    """
    account = as_now(account)
    if account is None or not is_moderator(account):
        raise protocol.ProtocolError("Only a moderator may mute or ban.", protocol.NOT_ALLOWED)
    found = NameKey.objects.filter(key=names.key(name)).select_related("user").first()
    target = found.user if found is not None else None
    if target is not None and is_moderator(target):
        raise protocol.ProtocolError(
            "Moderators cannot be muted or banned from the chat; staff can change that in the admin.",
            protocol.NOT_ALLOWED,
        )
    kind = Restriction.MUTE if request.kind == "mute" else Restriction.BAN
    restriction = Restriction.impose(
        account, kind, account=target, guest_name=name if target is None else "", room=room,
        minutes=request.minutes, reason=request.reason,
    )
    return restriction, target.get_username() if target is not None else name, target is None


def until_text(restriction):
    return f" until {restriction.until:%Y-%m-%d %H:%M} UTC" if restriction.until else ""


# Rooms whose broadcast failed, each with the task that tells the room's
# connections, once the channel layer takes messages again, to read what they
# missed from the database. Kept here so that a sender that leaves does not
# take the reminder with it.
_pending_resyncs = {}
RESYNC_RETRY_SECONDS = 1.0
RESYNC_RETRY_ATTEMPTS = 600


def resync_group_later(channel_layer, group):
    if group not in _pending_resyncs:
        _pending_resyncs[group] = asyncio.create_task(_resync_group(channel_layer, group))


async def _resync_group(channel_layer, group):
    try:
        for _ in range(RESYNC_RETRY_ATTEMPTS):
            await asyncio.sleep(RESYNC_RETRY_SECONDS)
            try:
                await channel_layer.group_send(group, {"type": "chat.resync"})
            except Exception:
                continue
            return
        logger.error("Gave up telling group %s to resync; its clients catch up when they reconnect", group)
    finally:
        del _pending_resyncs[group]


class ChatConsumer(RelayDispatchMixin, AsyncWebsocketConsumer):
    """One websocket in one room: replays the backlog, then relays the room's messages.

    Each message once and in order: which to send, hold or read from the
    database is decided by its delivery state (delivery.Delivery); the
    consumer reads, sends, and runs the waits it asks for.
    """

    counted_open = False  # whether chat_websockets_open counts this websocket
    shut_out = False  # closed for a loss of access: nothing more is sent or done
    access = None  # access.Access: who this connection is, and when its access was last checked
    gap_task = None
    account = None  # the signed-in user (from the session), or None for a guest
    present_as = None  # (name, guest) this connection counts as in the room's presence
    presence_group = None  # the room's group it counts in (self.group goes when the connection leaves it)
    presence_subscriber = False  # whether the client asked for presence frames (?presence=1)
    page_wait_task = None
    room = None  # the room's key (protocol.room_key): /ws/chat/Lobby/ and /ws/chat/lobby/ are one room
    room_name = None  # the room's shown name, its frames' "room"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.delivery = Delivery()

    @property
    def last_id(self):
        """The id of the last message sent to this client (its delivery state's)."""
        return self.delivery.last_id

    @last_id.setter
    def last_id(self, value):
        self.delivery.last_id = value

    @property
    def last_seq(self):
        """The room seq this client has every message up to (its delivery state's)."""
        return self.delivery.last_seq

    @last_seq.setter
    def last_seq(self, value):
        self.delivery.last_seq = value

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However the consumer ends (closed, failed in a handler, cancelled
            # at shutdown), its websocket stops counting as open.
            if self.counted_open:
                metrics.websockets_open.dec()
            if self.gap_task is not None:
                self.gap_task.cancel()
            if self.page_wait_task is not None:
                self.page_wait_task.cancel()
            # Channels' websocket_disconnect leaves the channel-layer groups before it calls disconnect(), and
            # a failure there (Redis down, and this connection the process's last in the room) skips it: this
            # connection must still stop counting as here, or its process would show it until a restart.
            self.leave_presence()

    @property
    def guest_name(self):
        """A guest's nickname, held for the connection and its session (and checked against bans)."""
        return self.access.guest_name if self.access is not None else None

    @guest_name.setter
    def guest_name(self, name):
        self.access.guest_name = name

    async def connect(self):
        asked = self.scope["url_route"]["kwargs"]["room_name"]
        if not protocol.is_valid_room_name(asked):
            metrics.refused_for_room_name.inc()
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        # /ws/chat/Lobby/ and /ws/chat/lobby/ are one room: its key is what
        # the database and the group go by; its frames show the room's own
        # spelling, read with every page (until it has one: as asked).
        self.room = protocol.room_key(asked)
        self.room_name = protocol.room_shown_name(asked)
        self.user = user = self.scope.get("user") or AnonymousUser()
        if user.is_authenticated:
            self.account = user
        elif settings.CHAT_GUESTS == "off":
            metrics.refused_for_sign_in.inc()
            await self.close()  # sign in to enter
            return
        self.address = (self.scope.get("client") or [None])[0]
        self.access = access.Access(self.room, user, self.address)
        self.group = protocol.group_name(self.room)
        # Page and moderation requests read the database too, on the process's one database thread: each
        # connection has a budget of its own for them. Handlers run one at a time per connection
        # (dispatch.py), so a connection also has at most one such read in flight; the rest of its frames wait.
        self.page_bucket = TokenBucket(settings.CHAT_PAGE_RATE_PER_SECOND, settings.CHAT_PAGE_BURST)
        self.moderation_bucket = TokenBucket(settings.CHAT_MODERATION_RATE_PER_SECOND, settings.CHAT_MODERATION_BURST)
        # Join before checking who may enter, and before reading the backlog:
        # a removal or a ban that commits after the check is then announced
        # to this connection too (chat.access), and nothing sent in between
        # is missed.
        try:
            await self.channel_layer.group_add(self.group, self.channel_name)
            await self.channel_layer.group_add(access.ACCESS_GROUP, self.channel_name)
        except Exception:
            logger.exception("Refused a client of room %r: could not join its channel-layer group", self.room)
            metrics.refused_for_channel_layer.inc()
            del self.group  # the layer is failing: the channel's clean-up (chat.dispatch) lets go of what it holds
            await self.close()
            return
        # Channels' websocket_disconnect (or chat.dispatch's clean-up) leaves it.
        self.groups = [*self.groups, access.ACCESS_GROUP]
        refusal = await admit(self.access, self.scope.get("session"))
        if refusal is not None:
            refusal.count_at_handshake()
            await self.leave_groups_quietly()
            await self.close()  # as for a room that does not exist: HTTP 403, nothing sent
            return
        await self.accept()
        metrics.websockets_open.inc()
        self.counted_open = True
        self.delivery.pages = protocol.wants_pages(self.scope["query_string"])
        try:
            since = protocol.parse_since(self.scope["query_string"])
        except protocol.ProtocolError as error:
            await self.send_error(str(error), error.code)
            since = None
        # A client that joined with ?pages=1 gets a page frame at the end of the backlog whatever its size:
        # it knows then that it has the room, without waiting to see whether more comes.
        if since is None:
            page = await read_before(self.room, None, self.access)
            await self.send_page(page, "history", asked=self.delivery.pages)
            self.delivery.history_sent(page)
        else:
            metrics.resyncs.inc()
            await self.resync(since, asked=self.delivery.pages)
        self.presence = presence.for_this_loop(self.channel_layer)
        self.show_as(self.account.get_username() if self.account else self.guest_name, self.account is None)
        if protocol.wants_presence(self.scope["query_string"]):
            subscribers = self.presence.local_subscribers(self.group)
            try:
                await self.channel_layer.group_add(subscribers, self.channel_name)
            except Exception as error:  # the chat works without it: no presence frames for this client
                logger.warning("Could not subscribe a client of room %r to its presence: %r", self.room, error)
            else:
                # Channels' websocket_disconnect (or chat.dispatch's clean-up) leaves it.
                self.groups = [*self.groups, subscribers]
                self.presence_subscriber = True
                await self.send_presence()

    def show_as(self, name, guest):
        """Counts this connection in the room's presence as `name` (None: a guest without a nickname)."""
        person = (name, guest)
        if person == self.present_as:
            return
        if self.present_as is not None:
            self.presence.leave(self.presence_group, self.present_as)
        self.present_as = person
        self.presence_group = self.group
        self.presence.join(self.group, person)

    async def disconnect(self, code):
        self.leave_presence()
        await self.leave_groups()

    def leave_presence(self):
        if self.present_as is not None:
            self.presence.leave(self.presence_group, self.present_as)
            self.present_as = None

    async def leave_groups(self):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            del self.group

    async def leave_groups_quietly(self):
        """Leaves the groups of a handshake that was refused; a failure is only logged (a group forgets with time)."""
        try:
            for group in {*self.groups, access.ACCESS_GROUP}:
                await self.channel_layer.group_discard(group, self.channel_name)
            self.groups = []
            await self.leave_groups()
        except Exception as error:
            logger.warning("Could not leave room %r's groups after a refusal: %r", self.room, error)

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            await self.send_error("Binary frames are not accepted: send JSON as text.", protocol.BINARY_FRAME)
            return
        try:
            incoming = protocol.parse_incoming(text_data, settings.CHAT_MESSAGE_MAX_LENGTH)
        except protocol.ProtocolError as error:
            await self.send_error(str(error), error.code, error.client_id)
            return
        if isinstance(incoming, protocol.PageRequest):
            if not self.page_bucket.take():
                # Nothing read; the frame says which request to send again, and when.
                await self.refuse_over_budget(
                    self.page_bucket, "page requests", settings.CHAT_PAGE_RATE_PER_SECOND,
                    settings.CHAT_PAGE_BURST, protocol.PAGE_RATE_LIMITED, **{incoming.direction: incoming.cursor},
                )
            elif incoming.direction == "since":
                await self.resync(self.delivery.since_asked(incoming.cursor))
            else:
                await self.send_page(await read_before(self.room, incoming.cursor, self.access), "older")
            return
        if isinstance(incoming, (protocol.DeleteRequest, protocol.RestrictRequest)):
            if not self.moderation_bucket.take():
                await self.refuse_over_budget(
                    self.moderation_bucket, "deletions, mutes and bans", settings.CHAT_MODERATION_RATE_PER_SECOND,
                    settings.CHAT_MODERATION_BURST, protocol.MODERATION_RATE_LIMITED,
                )
            elif isinstance(incoming, protocol.DeleteRequest):
                await self.delete(incoming.message_id)
            else:
                await self.restrict(incoming)
            return
        metrics.messages_received.inc()
        # The budget first: everything after it reads the database.
        allowed = await shared_limiter().take(self.rate_key(), settings.CHAT_RATE_PER_SECOND, settings.CHAT_RATE_BURST)
        if not allowed:
            await self.send_error(
                f"Too many messages: at most {settings.CHAT_RATE_PER_SECOND:g} a second "
                f"(bursts of {settings.CHAT_RATE_BURST}). This one was not sent.",
                protocol.RATE_LIMITED,
                incoming.client_id,
            )
            return
        try:
            name = await self.sender_name(incoming)
        except protocol.ProtocolError as error:
            await self.send_error(str(error), error.code, incoming.client_id)
            return
        try:
            message, created, found = await store(
                self.room_name, incoming, name, self.account, self.address, self.access
            )
        except access.Lost as lost:
            await self.close_for(lost.refusal, incoming.client_id)
            return
        except DatabaseError as error:
            logger.error("Could not store a message in room %r: %s", self.room, error)
            metrics.store_failures.inc()
            await self.send_error(
                "The chat could not save the message; it was not sent. Try again in a moment.",
                protocol.STORE_FAILED,
                incoming.client_id,
            )
            return
        if found is not None:
            banned = found.kind == Restriction.BAN
            await self.send_error(
                f"You are {'banned from this chat' if banned else 'muted in this room'}"
                f"{until_text(found)}; the message was not sent.",
                protocol.BANNED if banned else protocol.MUTED,
                incoming.client_id,
                until=protocol.until(found),  # the page shows it from here, in local time; the text is as before
            )
            if banned:  # the banned frame says why
                self.shut_out = True
                await self.close(code=protocol.CLOSE_NO_ACCESS)
            return
        # A resend of a message already stored is broadcast again: the server
        # that stored it may have stopped before broadcasting it (a restart),
        # and clients that have it drop the second copy by its id. The ack
        # comes after the broadcast, so that a message acknowledged is one the
        # room got: stopped in between, the sender resends and that resend
        # broadcasts it.
        if created:
            self.room_name = message.room_name
            metrics.messages_stored.inc()
        try:
            # Serialized once here rather than once per receiving client.
            # "stored" (wall-clock time, comparable across servers) lets each
            # receiver measure chat_delivery_seconds; "access_version" lets a
            # receiver whose access notice was lost find out before it relays.
            await self.channel_layer.group_send(
                self.group,
                {
                    "type": "chat.message",
                    "id": message.id,
                    "seq": message.seq,
                    "text": protocol.outgoing(message, room=self.room_name),
                    "stored": time.time(),
                    "access_version": message.access_version,
                },
            )
        except Exception:
            logger.exception("Could not broadcast message %s in room %r", message.id, self.room)
            metrics.broadcast_failures.inc()
            # No ack: the sender sends it again later (stored once), and that broadcasts it.
            await self.send_error(
                "The message was saved but could not be delivered live; it will appear when clients resync.",
                protocol.BROADCAST_FAILED,
                incoming.client_id,
            )
            resync_group_later(self.channel_layer, self.group)
            return
        metrics.messages_broadcast.inc()
        if incoming.client_id is not None:
            await self.send(text_data=protocol.ack(incoming.client_id, message, duplicate=not created))

    async def refuse_over_budget(self, bucket, what, rate, burst, code, **request):
        """Refuses a request over its budget, saying when the next one may come ("retry_after", in seconds)."""
        retry_after = max(round(bucket.seconds_to_next(), 2), 0.01)
        await self.send_error(
            f"Too many {what}: at most {rate:g} a second (bursts of {burst}). Ask again in {retry_after:g} s.",
            code, retry_after=retry_after, **request,
        )

    def rate_key(self):
        """Whose budget a message comes out of: the account's, the guest session's, or the address's."""
        if self.account is not None:
            return f"user:{self.account.pk}"
        session = self.scope.get("session")
        if session is not None and session.session_key:
            return f"session:{session.session_key}"
        return f"address:{self.address}"

    async def sender_name(self, incoming):
        """Who is posting: the account, whatever the frame says; else the guest's held nickname.

        A guest names itself with the frame's "user" (the page sends its
        nickname box): the name is normalized, may not be a registered
        user's, and is held for the connection and the session, so it is
        checked once and not on every message.
        """
        if self.account is not None:
            return self.account.get_username()
        if settings.CHAT_GUESTS != "post":
            raise protocol.ProtocolError("Sign in to post in this chat: guests may only read.", protocol.SIGN_IN_REQUIRED)
        requested = incoming.user
        if not incoming.user_given:
            return self.guest_name or protocol.ANONYMOUS
        if requested == self.guest_name:
            return requested
        try:
            name = names.normalize(requested)
        except names.InvalidName as error:
            raise protocol.ProtocolError(str(error), protocol.INVALID_USER) from None
        if name != self.guest_name:
            if names.key(name) != names.key(protocol.ANONYMOUS) and await is_registered(name):
                raise protocol.ProtocolError(
                    f"{name!r} is a registered user's name: sign in as them, or pick another nickname.",
                    protocol.NAME_TAKEN,
                )
            self.guest_name = name
            self.show_as(name, True)
            await session_set(self.scope.get("session"), GUEST_NAME_KEY, name)
        return name

    async def delete(self, message_id):
        refused = await delete_message(self.room, message_id, self.account)
        if refused is not None:
            await self.send_error(*refused)
            return
        try:
            await self.channel_layer.group_send(self.group, {"type": "chat.deleted", "id": message_id})
        except Exception:
            # Deleted for every later history and resync; pages open now keep it until they reload.
            logger.exception("Could not broadcast the deletion of message %s in room %r", message_id, self.room)

    async def restrict(self, request):
        """A moderator mutes someone in this room, or bans them from the site; confirmed to the moderator alone."""
        try:
            name = names.normalize(request.name)
        except names.InvalidName as error:
            await self.send_error(str(error), protocol.INVALID_USER)
            return
        try:
            restriction, name, guest = await restrict_user(self.room, request, name, self.account)
        except protocol.ProtocolError as error:
            await self.send_error(str(error), error.code)
            return
        await self.send(text_data=protocol.restricted(restriction, name, guest))

    async def chat_access(self, event):
        """Access was taken away from someone: in this room (a member removed, made private), or from one person
        (a ban, an account closed; ACCESS_GROUP). Leaves, saying why, if this client may no longer be here."""
        if any(key in event for key in ("account", "guest_name", "address")) and not self.access.concerned_by(event):
            return
        refusal = await check_access(self.access)
        if refusal is not None:
            await self.close_for(refusal)

    async def access_lost_before(self, version):
        """Whether a live message, stored at room access version `version`, finds this connection's access gone.

        A connection that only reads never stores or pages, where a lost access notice would be caught: a
        version other than the one this connection was last checked at is its sign to check once more (one
        database read per change, not per message; compared here, without a hop to the database thread) and
        to close unless it may still be here. Events from an app server of the release before (a rolling
        deploy) carry no version and are relayed as before.
        """
        if version is None or self.access is None or version == self.access.version:
            return False
        refusal = await check_access(self.access)
        if refusal is None:
            return False
        await self.close_for(refusal)
        return True

    async def close_for(self, refusal, client_id=None):
        """Closes with 4403 a connection whose access is gone, after a no_access frame saying why."""
        self.shut_out = True
        await self.send_error(refusal.text, protocol.NO_ACCESS, client_id, reason=refusal.reason)
        await self.close(code=protocol.CLOSE_NO_ACCESS)

    async def chat_presence(self, event):
        await self.send(text_data=json.dumps({"presence": event["presence"], "anonymous": event["anonymous"]}))

    async def send_presence(self):
        """Tells this client who is in the room now."""
        await self.send(text_data=json.dumps(await self.presence.now(self.group)))

    async def chat_deleted(self, event):
        await self.send(text_data=protocol.deleted(event["id"]))

    async def send_error(self, text, code, client_id=None, **fields):
        """Tells this client alone that the chat refused something; the connection stays open (but for no_access)."""
        metrics.error_frames_by_code[code].inc()
        await self.send(text_data=protocol.error(text, code, client_id, **fields))

    async def send_page(self, page, kind, asked=True):
        """Sends a page of messages and the frame that ends it.

        The join's own backlog (asked=False) ends with that frame only when
        more messages wait, so that a client written before pages existed
        sees, in a small room, exactly the frames it always did.
        """
        history = kind != "resync"
        self.room_name = page.room_name or self.room_name
        for message in page.messages:
            frame = protocol.outgoing(message, history=history, resync=not history, room=self.room_name)
            await self.send(text_data=frame)
        if asked or page.more:
            await self.send(text_data=protocol.page_end(kind, page.messages, page.more))

    async def resync(self, since, asked=True):
        """Sends the page after `since`; live messages wait while more pages follow."""
        page = await read_after(self.room, since, self.access)
        await self.send_page(page, "resync", asked)
        await self.follow(self.delivery.resync_sent(page))

    async def follow(self, steps):
        """Does what the delivery state answered: sends the live messages it let go, starts or stops its waits.

        A catch-up it asks for is the caller's to read (counted as a gap's or a layer loss's).
        """
        for event in steps.deliver:
            await self.send(text_data=event["text"])
            # Events from a server still running an older release, during a
            # rolling deploy, carry no "stored".
            stored = event.get("stored")
            if stored is not None:
                # Another app server's clock may be a little ahead; a negative
                # observation would look like a counter reset to Prometheus.
                metrics.delivery_seconds.observe(max(time.time() - stored, 0.0))
        if steps.gap_wait == START and self.gap_task is None:
            # When the layer is down, chat.resync does the same once it is back.
            self.gap_task = asyncio.create_task(self.wake_later(GAP_WAIT_SECONDS, "chat.gap", "gap_task", "fill a gap"))
        elif steps.gap_wait == STOP and self.gap_task is not None:
            self.gap_task.cancel()
            self.gap_task = None
        if steps.page_wait is not None:
            if self.page_wait_task is not None:
                self.page_wait_task.cancel()
                self.page_wait_task = None
            if steps.page_wait == START:
                # When the layer is down, the client pages, or reconnects with its cursor.
                self.page_wait_task = asyncio.create_task(
                    self.wake_later(PAGE_WAIT_SECONDS, "chat.next_page", "page_wait_task", "send the next page"))

    async def wake_later(self, seconds, event_type, task_attribute, why):
        """After `seconds`, sends this consumer `event_type` through its own channel (the gap and page waits).

        The wait is the task held in `task_attribute`. Cancelled (no longer
        needed), it may already have been followed by a newer one: that one
        stays.
        """
        await asyncio.sleep(seconds)
        try:
            await self.channel_layer.send(self.channel_name, {"type": event_type})
        except Exception as error:
            logger.warning("Could not wake connection %s to %s: %s", self.channel_name, why, error)
        finally:
            if getattr(self, task_attribute) is asyncio.current_task():
                setattr(self, task_attribute, None)

    async def chat_next_page(self, event):
        """The client did not ask for the next page (a client written before pages never does): sent unasked."""
        if hasattr(self, "group"):
            cursor = self.delivery.next_page_unasked()
            if cursor is not None:
                await self.resync(cursor, asked=False)

    async def dispatch(self, message):
        if self.shut_out and message["type"] != "websocket.disconnect":
            return  # closed for a loss of access: not one more frame
        try:
            await self.dispatch_to_handler(message)
        except access.Lost as lost:  # found by a page read: the backlog, since, before, a catch-up
            await self.close_for(lost.refusal)

    async def dispatch_to_handler(self, message):
        # Channels runs close_old_connections() in a worker thread before
        # every handler. chat.message, the one sent to every client in the
        # room, never touches the database (store() and the reads close
        # their own connections), and at thousands of deliveries a second
        # those thread hops were most of daphne's CPU time.
        if message["type"] == "chat.message":
            await self.chat_message(message)
        elif message["type"] == "chat.deleted":
            await self.chat_deleted(message)
        elif message["type"] == "chat.presence":
            await self.chat_presence(message)
        else:
            await super().dispatch(message)

    async def chat_message(self, event):
        if self.delivery.behind:
            return  # the client is paging through a resync and gets this one from the database
        if await self.access_lost_before(event.get("access_version")):
            return
        steps = self.delivery.arrived(event)
        await self.follow(steps)
        if steps.catch_up:
            await self.catch_up(metrics.catch_ups_for_gap)

    async def chat_gap(self, event):
        if self.delivery.gap_wait_over():
            await self.catch_up(metrics.catch_ups_for_gap)

    async def chat_resync(self, event):
        """The channel layer may have lost messages for this room: read them from the database."""
        if hasattr(self, "group") and self.delivery.layer_lost():
            await self.catch_up(metrics.catch_ups_for_layer)
        if self.presence_subscriber and hasattr(self, "group"):
            # What this process said about who is here while the layer was away is lost with it.
            await self.send(text_data=json.dumps(await self.presence.latest(self.group)))

    async def catch_up(self, counter):
        counter.inc()
        page = await read_after(self.room, self.delivery.last_id, self.access)
        self.room_name = page.room_name or self.room_name
        for message in page.messages:
            await self.send(text_data=protocol.outgoing(message, room=self.room_name))
        steps = self.delivery.caught_up(page)
        if page.more:
            # Over a page behind: the client pages through the rest.
            await self.send(text_data=protocol.page_end("resync", page.messages, True))
        await self.follow(steps)


class RefuseConsumer(AsyncWebsocketConsumer):
    """Any websocket path that is not a chat room: refused at the handshake."""

    # It refuses at once: it needs no channel, so it holds no Redis
    # subscription and still answers 403 while Redis is down.
    channel_layer_alias = None

    async def connect(self):
        metrics.refused_for_path.inc()
        await self.close()
