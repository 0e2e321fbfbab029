"""The websocket protocol's rules, as plain functions the consumer and the tests share.

A client sends {"message": "<text>", "user": "<nickname>", "client_id": "<its
own id>"} (client_id optional); everyone in the room receives {"id", "seq",
"room", "user", "message", "ts"}, with "history": true on messages replayed at
join or asked for with {"before": <id>} and "resync": true on those sent after
?since= or {"since": <id>}; each replayed batch ends with a page frame
{"page", "more", "first", "last"}. A sender that gave a client_id gets
{"ack": "<client_id>", "id", "seq"}. Anything refused gets {"error": "...",
"code": "..."} (and the client_id it was about): the text is for people and
may change, the code is for programs and does not. The README lists every
frame.
"""

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import parse_qs

from . import names

ROOM_NAME_MAX_LENGTH = 64
ROOM_NAME = re.compile(rf"[\w-]{{1,{ROOM_NAME_MAX_LENGTH}}}")
USER_MAX_LENGTH = 32
ANONYMOUS = "anonymous"

# The error frames' codes, one per refusal. Clients, tests and the
# chat_error_frames_total metric rely on them: add codes, never rename one.
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
INVALID_MESSAGE = "invalid_message"
EMPTY_MESSAGE = "empty_message"
MESSAGE_TOO_LONG = "message_too_long"
INVALID_USER = "invalid_user"
USER_TOO_LONG = "user_too_long"
BINARY_FRAME = "binary_frame"
RATE_LIMITED = "rate_limited"
INVALID_SINCE = "invalid_since"
BROADCAST_FAILED = "broadcast_failed"
STORE_FAILED = "store_failed"
INVALID_CLIENT_ID = "invalid_client_id"
INVALID_REQUEST = "invalid_request"
SIGN_IN_REQUIRED = "sign_in_required"
NAME_TAKEN = "name_taken"
MUTED = "muted"
BANNED = "banned"
NOT_ALLOWED = "not_allowed"
NOT_FOUND = "not_found"
NO_ACCESS = "no_access"
PAGE_RATE_LIMITED = "page_rate_limited"
MODERATION_RATE_LIMITED = "moderation_rate_limited"
ERROR_CODES = (
    MALFORMED_JSON,
    NOT_AN_OBJECT,
    INVALID_MESSAGE,
    EMPTY_MESSAGE,
    MESSAGE_TOO_LONG,
    INVALID_USER,
    USER_TOO_LONG,
    BINARY_FRAME,
    RATE_LIMITED,
    INVALID_SINCE,
    BROADCAST_FAILED,
    STORE_FAILED,
    INVALID_CLIENT_ID,
    INVALID_REQUEST,
    SIGN_IN_REQUIRED,
    NAME_TAKEN,
    MUTED,
    BANNED,
    NOT_ALLOWED,
    NOT_FOUND,
    NO_ACCESS,
    PAGE_RATE_LIMITED,
    MODERATION_RATE_LIMITED,
)
# The close code of a connection whose user may no longer be in its room; a
# no_access error frame says why just before it.
CLOSE_NO_ACCESS = 4403

CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# What a name or a message may not hold: NUL and the other C0 controls but tab
# and newlines (PostgreSQL refuses NUL outright; the rest garble a page), DEL,
# and the C1 controls.
FORBIDDEN_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
FORBIDDEN_IN_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ProtocolError(ValueError):
    """A client frame the chat refuses; str(error) is what the client is told, error.code which refusal it is."""

    def __init__(self, text, code, client_id=None):
        super().__init__(text)
        self.code = code
        self.client_id = client_id


@dataclass(frozen=True)
class IncomingMessage:
    user: str
    text: str
    client_id: str | None = None
    user_given: bool = True  # False when the frame had no "user" (shown as anonymous)


@dataclass(frozen=True)
class DeleteRequest:
    """{"delete": <id>}: the author, or a moderator, deletes a message."""

    message_id: int


@dataclass(frozen=True)
class RestrictRequest:
    """{"mute": "<name>"} (in this room) or {"ban": "<name>"} (from the site), by a moderator.

    "minutes" (optional) limits it in time; without it, it lasts until lifted
    in the admin. "reason" (optional) is kept in the moderation log.
    """

    kind: str  # "mute" or "ban"
    name: str
    minutes: int | None = None
    reason: str = ""


# A mute or ban for longer than this is one "until lifted".
RESTRICT_MAX_MINUTES = 366 * 24 * 60
REASON_MAX_LENGTH = 200


@dataclass(frozen=True)
class PageRequest:
    """{"since": <id>} (the next resync page) or {"before": <id>} (older messages)."""

    direction: str  # "since" or "before"
    cursor: int


def is_valid_room_name(name):
    return bool(ROOM_NAME.fullmatch(name))


def room_key(name):
    """Which room a (valid) room name names: names that differ only by case or width are one room.

    It is the name's key (names.key: NFKC, case-folded), so "Lobby", "LOBBY"
    and "ｌｏｂｂｙ" are the room "lobby": its Room.key, its messages'
    Message.room, its channel-layer group. A few letters fold to two (ß is
    ss): a name whose key would be longer than a room name may be is keyed
    by its NFKC form instead, so that every name that was valid stays a room.
    """
    key = names.key(name)
    if len(key) <= ROOM_NAME_MAX_LENGTH:
        return key
    normalized = unicodedata.normalize("NFKC", name)
    return normalized if len(normalized) <= ROOM_NAME_MAX_LENGTH else name


def room_shown_name(name):
    """How a new room is shown: the name it is first used with, NFKC-normalized when that is still a room name."""
    normalized = unicodedata.normalize("NFKC", name)
    return normalized if is_valid_room_name(normalized) else name


def group_name(room):
    """The channel-layer group of a room, by its key (room_key).

    Group names may only hold ASCII letters, digits, '-', '_' and '.', and room
    names are any Unicode word characters, so the room is hashed: distinct
    rooms get distinct groups and every name is valid and the same length.
    """
    return "chat." + hashlib.sha256(room.encode()).hexdigest()


def has_lone_surrogate(text):
    """True when text holds half of a UTF-16 pair ("\\ud800" in JSON), which no database stores."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_incoming(text_data, max_length):
    """Validate one text frame from a client: an IncomingMessage or a PageRequest; raises ProtocolError."""
    try:
        data = json.loads(text_data)
    except RecursionError:
        raise ProtocolError("The JSON is nested too deeply.", MALFORMED_JSON) from None
    except ValueError:
        raise ProtocolError('Malformed JSON: send an object like {"message": "hello"}.', MALFORMED_JSON) from None
    if not isinstance(data, dict):
        raise ProtocolError('Expected a JSON object like {"message": "hello"}.', NOT_AN_OBJECT)
    if "message" not in data:
        for direction in ("since", "before"):
            if direction in data:
                return PageRequest(direction, parse_cursor(data[direction], direction))
        if "delete" in data:
            return DeleteRequest(parse_cursor(data["delete"], "delete"))
        for kind in ("mute", "ban"):
            if kind in data:
                return parse_restrict(kind, data)
    client_id = data.get("client_id")
    if client_id is not None and not (isinstance(client_id, str) and CLIENT_ID.fullmatch(client_id)):
        raise ProtocolError(
            '"client_id" must be 1 to 64 letters, digits, "-" or "_" (a UUID, say).', INVALID_CLIENT_ID
        )
    text = data.get("message")
    if not isinstance(text, str):
        raise ProtocolError('"message" is required and must be a string.', INVALID_MESSAGE, client_id)
    if not text.strip():
        raise ProtocolError("The message is empty.", EMPTY_MESSAGE, client_id)
    if len(text) > max_length:
        raise ProtocolError(
            f"The message is {len(text)} characters long; the limit is {max_length}.", MESSAGE_TOO_LONG, client_id
        )
    if has_lone_surrogate(text) or FORBIDDEN_IN_TEXT.search(text):
        raise ProtocolError(
            "The message holds a control character or half of a UTF-16 pair.", INVALID_MESSAGE, client_id
        )
    user = data.get("user")
    if user is None:
        user = ""
    elif not isinstance(user, str):
        raise ProtocolError('"user" must be a string.', INVALID_USER, client_id)
    elif len(user.strip()) > USER_MAX_LENGTH:
        raise ProtocolError(f'"user" is limited to {USER_MAX_LENGTH} characters.', USER_TOO_LONG, client_id)
    elif has_lone_surrogate(user) or FORBIDDEN_IN_NAME.search(user):
        raise ProtocolError(
            '"user" holds a control character or half of a UTF-16 pair.', INVALID_USER, client_id
        )
    name = user.strip()
    return IncomingMessage(user=name or ANONYMOUS, text=text, client_id=client_id, user_given=bool(name))


def parse_restrict(kind, data):
    """A moderator's {"mute" | "ban": "<name>", "minutes": <n>, "reason": "..."}; raises ProtocolError."""
    name = data[kind]
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > USER_MAX_LENGTH:
        raise ProtocolError(f'"{kind}" must name a user: 1 to {USER_MAX_LENGTH} characters.', INVALID_REQUEST)
    minutes = data.get("minutes")
    if minutes is not None and (
        isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= RESTRICT_MAX_MINUTES
    ):
        raise ProtocolError(
            f'"minutes" must be a whole number from 1 to {RESTRICT_MAX_MINUTES}, or left out (until lifted).',
            INVALID_REQUEST,
        )
    reason = data.get("reason") or ""
    if (not isinstance(reason, str) or len(reason) > REASON_MAX_LENGTH or FORBIDDEN_IN_TEXT.search(reason)
            or has_lone_surrogate(reason)):
        raise ProtocolError(f'"reason" must be text of at most {REASON_MAX_LENGTH} characters.', INVALID_REQUEST)
    return RestrictRequest(kind, name.strip(), minutes, reason.strip())


def until(restriction):
    """When a mute or ban ends, for a frame's "until": ISO 8601 in UTC, or None (until lifted)."""
    return restriction.until.isoformat() if restriction.until else None


def restricted(restriction, name, guest):
    """The frame that confirms a mute or ban to the moderator who asked for it."""
    return json.dumps(
        {"restricted": restriction.kind, "user": name, "guest": guest, "room": restriction.room or None,
         "until": until(restriction)},
        ensure_ascii=False,
    )


def parse_cursor(value, direction):
    # bool is an int to Python, and True is not a message id.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f'"{direction}" must be a message id (a whole number, 0 or more).', INVALID_REQUEST)
    return value


def parse_since(query_string):
    """The message id a reconnecting client last saw (?since=<id>), or None.

    Raises ProtocolError when since is given but is not a non-negative integer.
    """
    values = parse_qs(query_string.decode("latin-1")).get("since")
    if not values:
        return None
    try:
        since = int(values[-1])
    except ValueError:
        since = -1
    if since < 0:
        raise ProtocolError("since must be the id of the last message received (a whole number).", INVALID_SINCE)
    return since


def wants_presence(query_string):
    """Whether the client asked for presence frames (?presence=1): clients written before them never get one."""
    return parse_qs(query_string.decode("latin-1")).get("presence", ["0"])[-1] in ("1", "true", "yes")


def wants_pages(query_string):
    """Whether the client asked (?pages=1) for a page frame at the end of every backlog, and to ask for every
    next page itself: a client that does not may have been written before pages, and is sent them unasked."""
    return parse_qs(query_string.decode("latin-1")).get("pages", ["0"])[-1] in ("1", "true", "yes")


def outgoing(message, history=False, resync=False, room=None):
    """The JSON text every client in the room receives for a stored message.

    "room" is the room's shown name (Room.name, the spelling it was first
    used with) when given, else the message's room key.
    """
    payload = {
        "id": message.id,
        "room": room or message.room,
        "user": message.user,
        "message": message.text,
        "ts": message.created.isoformat().replace("+00:00", "Z"),
    }
    if message.seq is not None:  # None: stored before rooms numbered their messages
        payload["seq"] = message.seq
    if message.guest:
        payload["guest"] = True
    if history:
        payload["history"] = True
    if resync:
        payload["resync"] = True
    return json.dumps(payload, ensure_ascii=False)


def ack(client_id, message, duplicate=False):
    """The frame that tells a sender its message is stored (and under which id)."""
    payload = {"ack": client_id, "id": message.id, "seq": message.seq}
    if duplicate:
        payload["duplicate"] = True
    return json.dumps(payload)


def page_end(kind, messages, more):
    """Ends a replayed batch: kind is "history", "resync" or "older"; more says whether another page waits."""
    return json.dumps(
        {
            "page": kind,
            "more": more,
            "first": messages[0].id if messages else None,
            "last": messages[-1].id if messages else None,
        }
    )


def deleted(message_id):
    """Tells everyone in the room to take a deleted message off their page."""
    return json.dumps({"deleted": message_id})


def error(text, code, client_id=None, **fields):
    """The frame that tells one client why the chat refused something: a text for people, a code for programs."""
    payload = {"error": text, "code": code, **fields}
    if client_id is not None:
        payload["client_id"] = client_id
    return json.dumps(payload)
