"""The protocol's plain functions: room names, group names, frame validation, the token bucket."""

import json
import re

import pytest

from chat import protocol
from chat.ratelimit import TokenBucket

GROUP_NAME = re.compile(r"^[A-Za-z0-9._-]{1,99}$")  # what channel layers accept


@pytest.mark.parametrize("name", ["lobby", "a", "r" * 64, "大厅", "café", "room_1-b", "Ελληνικά", "١٢٣"])
def test_valid_room_names(name):
    assert protocol.is_valid_room_name(name)


@pytest.mark.parametrize("name", ["", "r" * 65, "a b", "a/b", "<script>", "a.b", "lobby\n", "😀"])
def test_invalid_room_names(name):
    assert not protocol.is_valid_room_name(name)


def test_group_names_are_valid_for_channel_layers_and_distinct():
    rooms = ["lobby", "Lobby", "大厅", "大堂", "r" * 64, "a-b", "a_b", "ab"]
    groups = [protocol.group_name(room) for room in rooms]
    assert all(GROUP_NAME.match(group) for group in groups)
    assert len(set(groups)) == len(rooms)
    assert protocol.group_name("大厅") == protocol.group_name("大厅")


def test_parse_incoming_keeps_the_text_as_sent_and_trims_the_nickname():
    incoming = protocol.parse_incoming(json.dumps({"message": "  spaced  ", "user": " ann "}), 2000)
    assert incoming == protocol.IncomingMessage(user="ann", text="  spaced  ")


@pytest.mark.parametrize("user", [None, "", "   "])
def test_missing_or_blank_nickname_is_anonymous(user):
    frame = {"message": "hi"} if user is None else {"message": "hi", "user": user}
    assert protocol.parse_incoming(json.dumps(frame), 2000).user == "anonymous"


def test_length_limit_counts_characters_not_bytes():
    assert protocol.parse_incoming(json.dumps({"message": "字" * 10}), 10).text == "字" * 10
    with pytest.raises(protocol.ProtocolError, match="limit is 10") as refused:
        protocol.parse_incoming(json.dumps({"message": "字" * 11}), 10)
    assert refused.value.code == protocol.MESSAGE_TOO_LONG


REFUSED_FRAMES = [
    ("{not json", "malformed_json"),
    ("[1]", "not_an_object"),
    ("null", "not_an_object"),
    (json.dumps({"user": "ann"}), "invalid_message"),
    (json.dumps({"message": 1}), "invalid_message"),
    (json.dumps({"message": "  "}), "empty_message"),
    (json.dumps({"message": "x" * 11}), "message_too_long"),
    (json.dumps({"message": "hi", "user": 7}), "invalid_user"),
    (json.dumps({"message": "hi", "user": "u" * 33}), "user_too_long"),
]


@pytest.mark.parametrize(("frame", "code"), REFUSED_FRAMES)
def test_each_refusal_carries_its_stable_code(frame, code):
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.parse_incoming(frame, 10)
    assert refused.value.code == code
    assert code in protocol.ERROR_CODES
    assert str(refused.value) and code not in str(refused.value), "the text is for people, the code apart"


def test_error_codes_are_distinct_identifiers():
    assert len(set(protocol.ERROR_CODES)) == len(protocol.ERROR_CODES)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", code) for code in protocol.ERROR_CODES)


def test_error_frame_keeps_the_text_and_adds_the_code():
    assert json.loads(protocol.error("Slow down.", protocol.RATE_LIMITED)) == {
        "error": "Slow down.",
        "code": "rate_limited",
    }


@pytest.mark.parametrize(
    ("query", "since"),
    [(b"", None), (b"since=", None), (b"since=0", 0), (b"since=42", 42), (b"other=1&since=7", 7)],
)
def test_parse_since(query, since):
    assert protocol.parse_since(query) == since


@pytest.mark.parametrize("query", [b"since=abc", b"since=-1", b"since=1.5"])
def test_parse_since_refuses_what_is_not_an_id(query):
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.parse_since(query)
    assert refused.value.code == "invalid_since"


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=5, burst=10, clock=clock)
    assert [bucket.take() for _ in range(11)] == [True] * 10 + [False]
    clock.now += 0.2  # one token back at 5 a second
    assert bucket.take() is True
    assert bucket.take() is False
    clock.now += 60  # refills to the burst, no further
    assert sum(bucket.take() for _ in range(20)) == 10
