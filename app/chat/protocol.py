"""The websocket protocol's rules, as plain functions the consumer and the tests share.

A client sends {"message": "<text>", "user": "<nickname>"}; everyone in the
room receives {"id", "room", "user", "message", "ts"}, with "history": true on
messages replayed at join. Anything else gets {"error": "...", "code": "..."}:
the text is for people and may change, the code is for programs and does not.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qs

ROOM_NAME = re.compile(r"[\w-]{1,64}")
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
)


class ProtocolError(ValueError):
    """A client frame the chat refuses; str(error) is what the client is told, error.code which refusal it is."""

    def __init__(self, text, code):
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class IncomingMessage:
    user: str
    text: str


def is_valid_room_name(name):
    return bool(ROOM_NAME.fullmatch(name))


def group_name(room):
    """The channel-layer group of a room.

    Group names may only hold ASCII letters, digits, '-', '_' and '.', and room
    names are any Unicode word characters, so the room is hashed: distinct
    rooms get distinct groups and every name is valid and the same length.
    """
    return "chat." + hashlib.sha256(room.encode()).hexdigest()


def parse_incoming(text_data, max_length):
    """Validate one text frame from a client; raises ProtocolError."""
    try:
        data = json.loads(text_data)
    except ValueError:
        raise ProtocolError('Malformed JSON: send an object like {"message": "hello"}.', MALFORMED_JSON) from None
    if not isinstance(data, dict):
        raise ProtocolError('Expected a JSON object like {"message": "hello"}.', NOT_AN_OBJECT)
    text = data.get("message")
    if not isinstance(text, str):
        raise ProtocolError('"message" is required and must be a string.', INVALID_MESSAGE)
    if not text.strip():
        raise ProtocolError("The message is empty.", EMPTY_MESSAGE)
    if len(text) > max_length:
        raise ProtocolError(
            f"The message is {len(text)} characters long; the limit is {max_length}.", MESSAGE_TOO_LONG
        )
    user = data.get("user")
    if user is None:
        user = ANONYMOUS
    elif not isinstance(user, str):
        raise ProtocolError('"user" must be a string.', INVALID_USER)
    elif len(user.strip()) > USER_MAX_LENGTH:
        raise ProtocolError(f'"user" is limited to {USER_MAX_LENGTH} characters.', USER_TOO_LONG)
    return IncomingMessage(user=user.strip() or ANONYMOUS, text=text)


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


def outgoing(message, history=False):
    """The JSON text every client in the room receives for a stored message."""
    payload = {
        "id": message.id,
        "room": message.room,
        "user": message.user,
        "message": message.text,
        "ts": message.created.isoformat().replace("+00:00", "Z"),
    }
    if history:
        payload["history"] = True
    return json.dumps(payload, ensure_ascii=False)


def error(text, code):
    """The frame that tells one client why the chat refused something: a text for people, a code for programs."""
    return json.dumps({"error": text, "code": code})
