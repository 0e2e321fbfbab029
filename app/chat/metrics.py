"""The chat's Prometheus metrics, and the HTTP server each process exports them on.

Every server process (a daphne or uvicorn process under supervisord) counts
for itself and serves its own figures on its own port, CHAT_METRICS_PORT +
CHAT_PROCESS_NUM; Prometheus scrapes each one and adds them up.

Labelled metrics are bound to their labels once, here: a labels() call per
event looks the label values up and takes a lock, and the consumer counts on
paths that run thousands of times a second.
"""

import functools
import logging

from django.conf import settings
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from . import protocol

logger = logging.getLogger(__name__)

websockets_open = Gauge("chat_websockets_open", "Websockets accepted and not yet closed, in this process.")

handshakes_refused = Counter(
    "chat_handshakes_refused_total", "Websocket handshakes refused, by reason.", ["reason"]
)
refused_for_origin = handshakes_refused.labels(reason="origin")  # foreign or missing Origin
refused_for_path = handshakes_refused.labels(reason="path")  # not /ws/chat/<room>/
refused_for_room_name = handshakes_refused.labels(reason="room_name")  # not a valid room name
refused_for_channel_layer = handshakes_refused.labels(reason="channel_layer")  # group_add failed
refused_for_sign_in = handshakes_refused.labels(reason="sign_in")  # a guest, and CHAT_GUESTS is off
refused_for_ban = handshakes_refused.labels(reason="banned")  # banned from the site
refused_for_private_room = handshakes_refused.labels(reason="private")  # not a member of a private room
refused_for_account = handshakes_refused.labels(reason="account")  # the account was deactivated or deleted
refused_for_overload = handshakes_refused.labels(reason="busy")  # CHAT_HANDSHAKES_IN_FLIGHT others in progress
handshakes_in_flight = Gauge("chat_handshakes_in_flight", "Websocket handshakes in progress in this process.")

messages_received = Counter("chat_messages_received_total", "Valid message frames received from clients.")
messages_stored = Counter("chat_messages_stored_total", "Messages stored in the database.")
messages_broadcast = Counter("chat_messages_broadcast_total", "Messages handed to the channel layer for the room.")
broadcast_failures = Counter(
    "chat_broadcast_failures_total", "Messages stored but not broadcast: the channel layer refused them."
)
resyncs = Counter("chat_resyncs_total", "Joins that resynced from a message id (?since=).")
catch_ups = Counter(
    "chat_catch_ups_total",
    "Times a connection fetched missed messages from the database itself, by reason.",
    ["reason"],
)
# A message numbered past the next one arrived and the missing ones did not follow in time.
catch_ups_for_gap = catch_ups.labels(reason="gap")
# The channel layer lost messages: its connection came back, or a broadcast failed.
catch_ups_for_layer = catch_ups.labels(reason="layer")
store_failures = Counter("chat_store_failures_total", "Messages the database refused to store.")

error_frames = Counter("chat_error_frames_total", "Error frames sent to clients, by code.", ["code"])
error_frames_by_code = {code: error_frames.labels(code=code) for code in protocol.ERROR_CODES}

delivery_seconds = Histogram(
    "chat_delivery_seconds",
    "Time from a message being stored to its being sent to a client in the room.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


@functools.cache  # once per process: a second server would find the port taken
def start_exposition_server():
    """Serves this process's metrics over HTTP when CHAT_METRICS_PORT is set.

    Listens on CHAT_METRICS_ADDRESS, port CHAT_METRICS_PORT + CHAT_PROCESS_NUM
    (the settings validate them). Returns prometheus_client's (server, thread),
    or None when there is no port or it cannot be bound: the metrics are worth
    an error in the log, not the chat.
    """
    if not settings.CHAT_METRICS_PORT:
        return None
    address = settings.CHAT_METRICS_ADDRESS
    port = settings.CHAT_METRICS_PORT + settings.CHAT_PROCESS_NUM
    try:
        served = start_http_server(port, addr=address)
    except OSError as error:
        logger.error("Not serving metrics: could not listen on %s port %s: %s", address, port, error)
        return None
    logger.info("Serving metrics on http://%s:%s/metrics", address, port)
    return served
