"""chat-daphne: daphne's own command line and server, with less memory per connection.

daphne hands each connection's events (connect, every frame, disconnect) to
the application through an asyncio.Queue, made per connection and kept as
long as it lives: about 3.5 KiB of an idle websocket's cost, for a queue
that daphne only fills with put_nowait() and the application reads from one
task. ChatServer gives the application a Mailbox (chat.mailbox) instead;
everything else is daphne's, options included, plus one: --proxy-trusted
(below; with --proxy-headers it sets CHAT_PROXY_TRUSTED, which the
application's middleware, chat.proxy, reads). And four things daphne 4.2
does not do:

- Bounded memory per connection. Twisted keeps whatever a websocket could
  not write yet in its transport, without limit: a client that never reads
  made the server hold every message of its room. A connection with more
  than CHAT_SEND_BUFFER_LIMIT bytes unsent is closed with 1008 (policy
  violation) and logged; if the client does not read that close frame
  either, the connection is dropped CLOSE_TIMEOUT seconds later and its
  buffer with it.
- A close with any code the websocket protocol allows (1008, 1011, 1012,
  1013 included: daphne passes the application's code to autobahn's
  sendClose(), which raises for anything but 1000 and 3000-4999).
- A send to a websocket that is already closing (the client's close frame
  arrived, the application has not read websocket.disconnect yet) is
  dropped, as daphne drops one to a closed connection, instead of raising
  autobahn's Disconnected into the application.
- The ASGI websocket denial response ("websocket.http.response"): an
  application can refuse a handshake with its own status (the chat: 503
  when the channel layer is down) instead of daphne's 403. autobahn writes
  the response, so the status is the application's, the body autobahn's.

    chat-daphne --fd 0 --proxy-headers --proxy-trusted 10.0.0.10 chatsite.asgi:application
    python -m chat.server -b 127.0.0.1 -p 8001 chatsite.asgi:application
"""

import argparse
import asyncio
import collections
import ctypes
import ctypes.util
import http
import logging
import os
import pprint
import sys
import time
from functools import partial

from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.types import ConnectionDeny
from daphne import ws_protocol
from daphne.cli import CommandLineInterface
from daphne.server import Server
from twisted.internet import task
from twisted.logger import globalLogPublisher

from .mailbox import Mailbox
from .proxy import EVERYONE, ProxyHeadersMiddleware, parse_networks

logger = logging.getLogger(__name__)

# How often chat-daphne looks for websocket applications daphne has lost track
# of (ChatServer.reap_orphans).
ORPHAN_CHECK_SECONDS = 10

# How often chat-daphne gives the C heap's free memory back to the system
# (release_free_memory).
TRIM_SECONDS = 60

# Seconds a websocket closed for its unsent data has to read the close frame
# before it is dropped (autobahn's close handshake timeout, 1 s by default, is
# for clients that read).
CLOSE_TIMEOUT = 5


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


MALLOC_TRIM = _malloc_trim()


def release_free_memory():
    """Returns the C heap's free pages to the system; True when it could.

    A burst of connections (the churn soak's, a reconnect storm) leaves the
    process's heap as large as the burst needed: Python frees the objects,
    glibc keeps the pages, and RSS stays at the high-water mark, which looks
    like a leak and is memory the host cannot use. glibc only gives back
    the top of the heap by itself; malloc_trim(0) also releases the free
    pages in the middle. Python has no call for it, hence ctypes.
    """
    if MALLOC_TRIM is None:
        return False
    MALLOC_TRIM(0)
    return True


class LazyPformat:
    """pprint.pformat(value), computed only when a log line is written."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __str__(self):
        return pprint.pformat(self.value)

    __repr__ = __str__


# autobahn formats its ~40 settings with pformat for a debug line on every
# connection, whether debug logging is on or not: py-spy under the churn soak
# found the server's event loop in that pformat more often than anywhere
# else. The same line, formatted only when written.
if getattr(autobahn_protocol, "pformat", None) is not pprint.pformat:
    raise ImportError("chat.server: autobahn.websocket.protocol no longer uses pprint.pformat; "
                      "drop or update the LazyPformat hook for this autobahn")
autobahn_protocol.pformat = LazyPformat


def unsent_bytes(transport):
    """What a Twisted TCP transport holds that the kernel has not taken yet (0 for a transport it cannot tell)."""
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except AttributeError:
        return 0


def configured_send_buffer_limit():
    """CHAT_SEND_BUFFER_LIMIT from the chat's settings; None when the application is not the chat (no Django)."""
    from django.conf import settings

    # Configured by the time the server runs, when the application is the chat (chatsite.asgi sets Django up).
    return getattr(settings, "CHAT_SEND_BUFFER_LIMIT", None) if settings.configured else None


class TwistedErrors:
    """Logs the exceptions Twisted catches in its callbacks, which daphne sends nowhere.

    daphne points Twisted's log at nothing unless run with -v 2, so an
    exception raised in a protocol callback (onClose, a read) vanishes, and
    whatever it cut short (an application never told its websocket closed)
    with it. This observer logs the first of each kind (exception type and
    where it was raised) with its traceback, then one in every thousand with
    the count, so a storm of them costs little log.
    """

    EVERY = 1000

    def __init__(self):
        self.counts = collections.Counter()

    def __call__(self, event):
        failure = event.get("log_failure")
        if failure is None:
            return
        frames = failure.frames
        where = f"{frames[-1][1]}:{frames[-1][2]}" if frames else "?"
        kind = (failure.type.__name__, where)
        self.counts[kind] += 1
        count = self.counts[kind]
        if count == 1:
            logger.error("Twisted caught %s in %s: %s", kind[0], where, failure.getTraceback())
        elif count % self.EVERY == 0:
            logger.error("Twisted caught %s in %s %d times so far", kind[0], where, count)


class ChatServer(Server):
    send_buffer_limit = None  # bytes; from the settings when the server runs

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # application task -> {"protocol", "inbox", "orphaned": when first found}
        self.websocket_applications = {}
        # The chat's application resolves the client itself (chatsite.asgi); any other gets the middleware here.
        if not isinstance(self.application, ProxyHeadersMiddleware):
            self.application = ProxyHeadersMiddleware(self.application, os.environ.get("CHAT_PROXY_TRUSTED", ""))

    def run(self):
        # The application (and with it Django's settings) is loaded by now.
        self.send_buffer_limit = configured_send_buffer_limit()
        # On the reactor daphne.server installed (asyncio's); each runs first one period from now.
        task.LoopingCall(self.orphan_checker).start(ORPHAN_CHECK_SECONDS, now=False)
        task.LoopingCall(release_free_memory).start(TRIM_SECONDS, now=False)
        globalLogPublisher.addObserver(TwistedErrors())
        super().run()

    def kill_all_applications(self):
        # daphne's reads every connection's application; a connection still in
        # its handshake has none yet, and the KeyError ended the clean-up at
        # shutdown (a restart under load logged it). Those are left out while
        # daphne's runs: they have nothing to cancel.
        handshaking = {protocol: details for protocol, details in self.connections.items()
                       if "application_instance" not in details}
        for protocol in handshaking:
            del self.connections[protocol]
        try:
            return super().kill_all_applications()
        finally:
            self.connections.update(handshaking)

    # --- Websocket applications whose connection daphne lost track of ---
    #
    # daphne tells an application its websocket is gone (websocket.disconnect)
    # from the protocol's onClose, and cancels one that outlives its closed
    # connection from application_checker, which walks self.connections. The
    # churn soak (bench churn) left consumers running, counted open, with no
    # TCP connection and no "took too long to shut down" line: daphne no
    # longer had a live record of their connection, so nothing would ever end
    # them, and their Redis subscriptions stayed. chat-daphne keeps its own
    # list of websocket applications and, every ORPHAN_CHECK_SECONDS, ends
    # those whose connection is gone while daphne has not said so: a
    # websocket.disconnect first, so that their clean-up runs, then a cancel
    # after application_close_timeout. Each one is logged with what was
    # missing, so the path that loses them can be found.

    def forget_application(self, instance):
        self.websocket_applications.pop(instance, None)

    def orphan_checker(self):
        # Caught here: an exception would end the LoopingCall.
        try:
            self.reap_orphans()
        except Exception:
            logger.exception("Looking for orphaned websocket applications failed")

    def reap_orphans(self, now=None):
        """Ends the websocket applications whose connection is gone without daphne having told them; returns how many it found."""
        now = time.monotonic() if now is None else now
        found = 0
        for instance, entry in list(self.websocket_applications.items()):
            if instance.done():
                del self.websocket_applications[instance]
                continue
            protocol, inbox = entry["protocol"], entry["inbox"]
            why = self.orphaned(protocol)
            if why is None:
                continue
            found += 1
            if "orphaned" not in entry:
                entry["orphaned"] = now
                logger.warning("Ending the websocket application of %s (%s): %s",
                               "%s:%s" % tuple(protocol.client_addr) if getattr(protocol, "client_addr", None) else "?",
                               getattr(protocol, "path", b"?").decode("ascii", "replace"), why)
                inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})
            elif now - entry["orphaned"] > self.application_close_timeout:
                instance.cancel()
        return found

    def orphaned(self, protocol):
        """Why `protocol`'s application will never hear its websocket is gone, or None when it will."""
        details = self.connections.get(protocol)
        if details is None:
            return "daphne no longer tracks its connection"
        if "disconnected" in details:
            return None  # daphne's application_checker ends it
        transport = getattr(protocol, "transport", None)
        if transport is None or getattr(transport, "disconnected", False):
            return "its connection is closed but daphne never marked it disconnected"
        return None

    def create_application(self, protocol, scope):
        # daphne logs the client from the protocol's client_addr, a handshake
        # (WSCONNECTING) before the application has run: the middleware
        # resolves the client first, so that the log names the one the
        # application sees. (When it runs, it finds the client resolved.)
        if self.application.trusted and scope.get("client"):
            self.application.trusted.resolve(scope)
            protocol.client_addr = list(scope["client"])
        if scope["type"] == "websocket":
            scope["extensions"] = {"websocket.http.response": {}}
        inbox = self.create_application_with_mailbox(protocol, scope)
        if inbox is not None and scope["type"] == "websocket":
            instance = self.connections[protocol]["application_instance"]
            self.websocket_applications[instance] = {"protocol": protocol, "inbox": inbox}
            instance.add_done_callback(self.forget_application)
        return inbox

    async def handle_reply(self, protocol, message):
        kind = message.get("type")
        if isinstance(protocol, ws_protocol.WebSocketProtocol):
            if protocol.state == protocol.STATE_CLOSED:
                # autobahn dropped the connection (its opening handshake
                # timed out while the application worked on it) and is only
                # waiting for the socket to close. An accept now would set it
                # open again, autobahn's connectionLost would then fail
                # (AlreadyCalledError) before daphne's onClose, and the
                # application would never hear websocket.disconnect: the
                # orphans of the churn soak. It hears it when the socket closes.
                return
            if kind == "websocket.send" and protocol.state not in (protocol.STATE_OPEN, protocol.STATE_CONNECTING):
                return  # closing: the application hears websocket.disconnect next
            if kind in ("websocket.http.response.start", "websocket.http.response.body"):
                self.deny(protocol, message)
                return
            if kind == "websocket.close" and protocol.state == protocol.STATE_OPEN:
                self.close(protocol, message)
                return
        await super().handle_reply(protocol, message)
        if kind == "websocket.send" and self.send_buffer_limit:
            self.check_send_buffer(protocol)

    def check_send_buffer(self, protocol):
        unsent = unsent_bytes(protocol.transport)
        if unsent <= self.send_buffer_limit or protocol.state != protocol.STATE_OPEN:
            return
        logger.warning(
            "Closing the websocket of %s (%s) with 1008: %d bytes unsent, over CHAT_SEND_BUFFER_LIMIT (%d); "
            "the client does not read",
            "%s:%s" % tuple(protocol.client_addr) if protocol.client_addr else "?",
            protocol.path.decode("ascii", "replace"), unsent, self.send_buffer_limit,
        )
        protocol.closeHandshakeTimeout = CLOSE_TIMEOUT
        protocol.sendCloseFrame(code=1008, reasonUtf8=b"Too much unsent data: reconnect with since")

    def close(self, protocol, message):
        """Sends the application's close frame with any code RFC 6455 lets an endpoint send.

        daphne closes through autobahn's sendClose(), which refuses every code
        but 1000 and 3000-4999 with an exception into the application: 1008,
        1011, 1012 (restart) and 1013 (try again later) included.
        """
        code = message.get("code") or 1000
        if not (1000 <= code <= 1014 and code not in (1004, 1005, 1006) or 3000 <= code <= 4999):
            code = 1000
        reason = (message.get("reason") or "").encode("utf-8")[:123]
        protocol.sendCloseFrame(code=code, reasonUtf8=reason or None)

    def deny(self, protocol, message):
        """The websocket denial response, as daphne's serverReject() with the application's status."""
        if protocol not in self.connections or self.connections[protocol].get("disconnected"):
            return
        if message["type"] == "websocket.http.response.start":
            protocol.denial_status = message["status"]
            return
        if message.get("more_body") or not hasattr(protocol, "handshake_deferred"):
            return
        status = getattr(protocol, "denial_status", 403)
        protocol.handshake_deferred.errback(ConnectionDeny(code=status, reason=http.HTTPStatus(status).phrase))
        del protocol.handshake_deferred
        self.protocol_disconnected(protocol)
        self.log_action("websocket", "rejected", {
            "path": protocol.request.path,
            "client": "%s:%s" % tuple(protocol.client_addr) if protocol.client_addr else None,
        })

    def create_application_with_mailbox(self, protocol, scope):
        """daphne's Server.create_application (daphne 4.2), with a Mailbox as the input queue."""
        assert "application_instance" not in self.connections[protocol]
        input_queue = Mailbox()
        scope.setdefault("asgi", {"version": "3.0"})
        application_instance = self.application(
            scope=scope,
            receive=input_queue.get,
            send=partial(self.handle_reply, protocol),
        )
        if protocol not in self.connections:
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(
            application_instance,
            loop=asyncio.get_event_loop(),
        )
        return input_queue


# --- Trusting X-Forwarded-* only from the load balancers ---
#
# The application's middleware (chat.proxy, in chatsite.asgi) decides which
# peers name the client, under every server; daphne itself is not asked to
# read the headers (it would believe them from anyone). chat-daphne keeps
# daphne's --proxy-headers and adds --proxy-trusted, and maps both onto the
# middleware's setting, CHAT_PROXY_TRUSTED, before the application loads.


def proxy_networks(value):
    """One --proxy-trusted value, for argparse: chat.proxy.parse_networks, with argparse's error."""
    try:
        return parse_networks(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class ChatCommandLine(CommandLineInterface):
    server_class = ChatServer

    def __init__(self):
        super().__init__()
        self.arg_proxy_trusted = self.parser.add_argument(
            "--proxy-trusted",
            dest="proxy_trusted",
            metavar="ADDRESS_OR_CIDR",
            action="append",
            type=proxy_networks,
            default=[],
            help="Believe the --proxy-headers only from this peer: an IPv4 or IPv6 address or network "
            "(CIDR). Repeatable, or comma-separated. From other peers the headers are ignored and the "
            "peer's own address is the client. Without it, CHAT_PROXY_TRUSTED from the environment, "
            "else every peer is believed (daphne's behaviour).",
        )

    def run(self, args):
        # Parsed here once before daphne parses them: the setting must be in
        # the environment before daphne loads the application (and, with the
        # chat, its settings).
        os.environ["CHAT_PROXY_TRUSTED"] = self.proxy_trusted(self.parser.parse_args(args))
        super().run(args)

    def proxy_trusted(self, args):
        """CHAT_PROXY_TRUSTED as the options say: --proxy-trusted's list, else the environment's, else
        "*" (every peer) with --proxy-headers, as daphne; else no one."""
        if args.proxy_headers_host or args.proxy_headers_port:
            self.parser.error("chat-daphne reads X-Forwarded-For, -Port and -Proto (chat/proxy.py): "
                              "--proxy-headers-host and --proxy-headers-port are not supported")
        if args.proxy_trusted:
            if not args.proxy_headers:
                self.parser.error("--proxy-trusted needs --proxy-headers")
            return ",".join(str(network) for value in args.proxy_trusted for network in value)
        # The deployment passes the list in the environment rather than on
        # the command line: supervisord's command is rendered for the newest
        # code, and a release rolled back to that predates the option would
        # refuse an unknown argument (it ignores the variable).
        value = os.environ.get("CHAT_PROXY_TRUSTED", "").strip()
        if value:
            try:
                parse_networks(value)
            except ValueError as error:
                self.parser.error(f"CHAT_PROXY_TRUSTED: {error}")
            return value
        return EVERYONE if args.proxy_headers else ""

    # daphne reads X-Forwarded-* itself when these name a header, from every
    # peer: never, the application's middleware does.
    def _get_forwarded_host(self, args):
        return None

    def _get_forwarded_port(self, args):
        return None


def main():
    # daphne writes its access log (--access-log -) to stdout and never
    # flushes it: under supervisord, a pipe, lines would wait for a full
    # buffer. One line at a time, as a log should.
    sys.stdout.reconfigure(line_buffering=True)
    ChatCommandLine.entrypoint()


if __name__ == "__main__":
    main()
