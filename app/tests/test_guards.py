"""Guards for the project's own machinery: undoing any of it, or an upgrade that changes what it copies, fails here.

The benchmark's gains (README, "What each lever bought") rest on code that nothing else would miss if it went:
the pub/sub layer's Mailbox channels, the consumer skipping Channels' per-message database clean-up for
chat.message, and chat-daphne's copy of daphne's create_application.

And the app copies, overrides or reads the private state of upstream code (RELIED_ON): an upgrade that
changes any of it fails here, naming the app file to revisit, before it fails in production.
"""

import ast
import hashlib
import importlib
import importlib.metadata
import inspect
import pprint
import textwrap
import tomllib
from pathlib import Path
from unittest import mock

import pytest
from daphne.server import Server
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from twisted.internet.abstract import FileDescriptor

from chat import server as chat_server
from chat.consumers import ChatConsumer
from chat.layers import LeanRedisPubSubChannelLayer
from chat.mailbox import Mailbox
from chatsite.settings import channel_layer_from_env


async def test_the_lean_layer_gives_every_channel_a_mailbox(redis_url):
    layer = LeanRedisPubSubChannelLayer(hosts=[{"address": redis_url}], prefix="guard")
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        mailbox = layer._get_layer().channels[channel]
        assert type(mailbox) is Mailbox or isinstance(mailbox, Mailbox)
        await layer.group_send("room", {"type": "chat.message", "text": "hi"})
        assert (await layer.receive(channel))["text"] == "hi"
    finally:
        await layer.flush()


def test_the_deployment_uses_the_lean_layer():
    assert channel_layer_from_env(["redis://127.0.0.1:6379/0"], "pubsub")["BACKEND"] == (
        "chat.layers.LeanRedisPubSubChannelLayer"
    )


async def test_chat_message_skips_channels_per_message_database_clean_up():
    consumer = ChatConsumer()
    consumer.chat_message = mock.AsyncMock()
    consumer.chat_other = mock.AsyncMock()
    with mock.patch("channels.consumer.aclose_old_connections", new=mock.AsyncMock()) as clean_up:
        await consumer.dispatch({"type": "chat.message", "id": 1, "text": "{}"})
        assert consumer.chat_message.await_count == 1
        assert clean_up.await_count == 0
        # The patch is where Channels calls it: any other event still pays for it.
        await consumer.dispatch({"type": "chat.other"})
        assert consumer.chat_other.await_count == 1
        assert clean_up.await_count == 1


def function_body(function):
    """A function's code without its docstring and comments, as ast.unparse writes it."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    body = tree.body[0].body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return "\n".join(ast.unparse(statement) for statement in body)


def test_chat_daphnes_create_application_is_daphnes_with_a_mailbox():
    """The installed daphne's Server.create_application, with asyncio.Queue() as Mailbox(), is chat-daphne's copy.

    When this fails after a daphne upgrade, copy the new function into chat/server.py
    (ChatServer.create_application_with_mailbox) and change the queue again.
    """
    daphnes = function_body(Server.create_application)
    assert daphnes.count("asyncio.Queue()") == 1
    assert function_body(chat_server.ChatServer.create_application_with_mailbox) == daphnes.replace(
        "asyncio.Queue()", "Mailbox()"
    )


def test_twisted_still_keeps_unsent_data_where_chat_daphne_counts_it():
    # chat.server.unsent_bytes() reads dataBuffer, offset and _tempDataLen; without them it would count nothing, and the limit never bites.
    transport = FileDescriptor()
    transport.connected = True
    transport.startWriting = lambda: None  # no reactor: the data stays where Twisted keeps it until it can write
    transport.write(b"x" * 1000)
    assert chat_server.unsent_bytes(transport) == 1000


def test_autobahn_formats_its_settings_only_when_it_logs_them():
    from autobahn.websocket import protocol as autobahn_protocol

    assert autobahn_protocol.pformat is chat_server.LazyPformat
    # Still where autobahn calls it, once per connection.
    assert "pformat(configAttrLog)" in inspect.getsource(autobahn_protocol.WebSocketProtocol._connectionMade)
    settings = [("autoPingInterval", 20, "WebSocketServerFactory")]
    assert str(chat_server.LazyPformat(settings)) == pprint.pformat(settings)


# Upstream code the app copies, overrides, hooks into or reads the private fields of: where it is, the
# fingerprint of its source in the versions of GUARDED_AT (fingerprint()), the app file to revisit when it
# changes, and what there relies on it.
LAYERS, DISPATCH, CONSUMERS, SERVER = "app/chat/layers.py", "app/chat/dispatch.py", "app/chat/consumers.py", "app/chat/server.py"
RELIED_ON = {
    # channels-redis: the lean layer replaces parts of its pub/sub layer and reads its fields.
    "channels_redis.pubsub:RedisPubSubChannelLayer.__init__": (
        "94a3624264cce646", LAYERS, "LeanRedisPubSubChannelLayer._get_layer reads _args, _kwargs and _layers"),
    "channels_redis.pubsub:RedisPubSubChannelLayer._get_layer": (
        "7a28a489b1a5210e", LAYERS, "LeanRedisPubSubChannelLayer._get_layer is a copy that makes a _LoopLayer"),
    "channels_redis.utils:_wrap_close": ("440aec7dfb64c12c", LAYERS, "LeanRedisPubSubChannelLayer._get_layer calls it"),
    "channels_redis.pubsub:RedisPubSubLoopLayer.__init__": (
        "d30764ad2530326c", LAYERS, "_LoopLayer rebuilds _shards and reads channels, groups and channel_layer"),
    "channels_redis.pubsub:RedisPubSubLoopLayer._get_shard": ("2f28d14e3497e3f6", LAYERS, "_LoopLayer calls it"),
    "channels_redis.pubsub:RedisPubSubLoopLayer._get_group_channel_name": (
        "d8c906ff82ab691d", LAYERS, "_LoopLayer.group_add and group_discard call it"),
    "channels_redis.pubsub:RedisPubSubLoopLayer._subscribe_to_channel": (
        "e98b168d787b867b", LAYERS, "_LoopLayer._subscribe_to_channel replaces it (a _ChannelMailbox per channel)"),
    "channels_redis.pubsub:RedisPubSubLoopLayer.receive": (
        "13e2f342e99520c6", LAYERS, "_LoopLayer.receive is a copy without the clean-up when cancelled"),
    "channels_redis.pubsub:RedisPubSubLoopLayer.group_add": (
        "63ba2e6cba5abe21", LAYERS, "_LoopLayer.group_add records memberships around it"),
    "channels_redis.pubsub:RedisPubSubLoopLayer.group_discard": (
        "c2dfc849f963a36c", LAYERS, "_LoopLayer.group_discard and _leave_group replace it"),
    "channels_redis.pubsub:RedisSingleShardConnection.__init__": (
        "f75846610376788f", LAYERS, "_Shard reads _lock, _subscribed_to, _redis and _pubsub"),
    "channels_redis.pubsub:RedisSingleShardConnection.publish": ("d862ca9af821386d", LAYERS, "_Shard.publish retries it once"),
    "channels_redis.pubsub:RedisSingleShardConnection.subscribe": (
        "c433f6eb15915074", LAYERS, "_Shard.subscribe retries it once"),
    "channels_redis.pubsub:RedisSingleShardConnection.unsubscribe": (
        "46c2ac550111fd7f", LAYERS, "_Shard.sweep is a copy that asks again under the lock"),
    "channels_redis.pubsub:RedisSingleShardConnection.flush": ("acbe0542edf96d13", LAYERS, "_Shard.flush wraps it"),
    "channels_redis.pubsub:RedisSingleShardConnection._do_receiving": (
        "96270d9a5f458216", LAYERS, "_Shard._do_receiving replaces the receive loop"),
    "channels_redis.pubsub:RedisSingleShardConnection._receive_message": (
        "04fc14898fe0a962", LAYERS, "_Shard._do_receiving calls it"),
    "channels_redis.pubsub:RedisSingleShardConnection._ensure_redis": (
        "3979d3305e0205df", LAYERS, "_Shard._ensure_redis replaces its pubsub with a _ResubscribingPubSub"),
    "channels_redis.pubsub:RedisSingleShardConnection._ensure_receiver": ("5e5726fe952336ee", LAYERS, "_Shard.sweep calls it"),
    # redis-py: the pub/sub hooks the layer's resync and silence detection stand on.
    "redis.asyncio.client:PubSub.__init__": (
        "3d74896e9f3b37aa", LAYERS, "_ResubscribingPubSub reads and prunes channels, reads connection"),
    "redis.asyncio.client:PubSub.on_connect": (
        "f9a05b2ef0a9df6f", LAYERS, "_ResubscribingPubSub.on_connect counts the resubscriptions it sends"),
    "redis.asyncio.client:PubSub.subscribed": ("c97cbd2d75a8327b", LAYERS, "_Shard._do_receiving reads it"),
    "redis.asyncio.client:PubSub.check_health": (
        "304097a1ebdf252a", LAYERS, "_ResubscribingPubSub.check_health reconnects through Sentinel first"),
    "redis.asyncio.client:PubSub.get_message": ("a5b85a9e77b1763b", LAYERS, "_Shard._do_receiving's timeout of 0.1 s"),
    "redis.asyncio.client:PubSub.handle_message": (
        "ca3b5568a831af94", LAYERS, "_ResubscribingPubSub.handle_message counts the subscribe confirmations"),
    "redis.asyncio.connection:AbstractConnection.read_response": (
        "348a18d401de2349", LAYERS, "_ResubscribingPubSub.silent_for reads next_health_check, which it moves on"),
    "redis.asyncio.connection:AbstractConnection.is_connected": ("83cf3e5a642ccfbd", LAYERS, "_ResubscribingPubSub reads it"),
    "redis.asyncio.connection:AbstractConnection.disconnect": (
        "ede15705c29e5ebb", LAYERS, "_Shard.leave_if_silent calls disconnect(nowait=True)"),
    # Channels: the consumer's dispatch loop and clean-up.
    "channels.consumer:AsyncConsumer.__call__": (
        "d5c14e0e6cfc782b", DISPATCH, "RelayDispatchMixin.__call__ is a copy with dispatch_from() as its loop"),
    "channels.consumer:AsyncConsumer.dispatch": (
        "1311d472cce74a43", CONSUMERS, "ChatConsumer.dispatch_to_handler skips its aclose_old_connections"),
    "channels.generic.websocket:AsyncWebsocketConsumer.websocket_disconnect": (
        "bb12def8af41c90d", DISPATCH, "RelayDispatchMixin.release_channel repeats its clean-up"),
    # daphne: chat-daphne's server, its handshake internals and its command line.
    "daphne.server:Server.create_application": (
        "73e580441fd6c219", SERVER, "ChatServer.create_application_with_mailbox is a copy with a Mailbox"),
    "daphne.server:Server.kill_all_applications": (
        "9f2096650d576f2c", SERVER, "ChatServer.kill_all_applications hides the connections still in their handshake"),
    "daphne.server:Server.application_checker": (
        "cc3c80470535043d", SERVER, "ChatServer.orphaned reads the connections' 'disconnected'"),
    "daphne.server:Server.handle_reply": ("d27da2aba8102e76", SERVER, "ChatServer.handle_reply wraps it"),
    "daphne.ws_protocol:WebSocketProtocol.onConnect": (
        "226b72a90c46214b", SERVER, "ChatServer.deny reads handshake_deferred and request; ChatServer.create_application "
        "sets client_addr, which daphne logs, and relies on daphne reading no X-Forwarded-For without a header name"),
    "daphne.ws_protocol:WebSocketProtocol.onClose": (
        "d9bb78d9ca943f00", SERVER, "ChatServer.reap_orphans stands in when it never runs"),
    "daphne.ws_protocol:WebSocketProtocol.handle_reply": (
        "d0d43d9054315840", SERVER, "ChatServer.handle_reply takes websocket.close and send before it"),
    "daphne.ws_protocol:WebSocketProtocol.serverReject": (
        "85c6943d8dee8fa0", SERVER, "ChatServer.deny is a copy with the application's status"),
    "daphne.ws_protocol:WebSocketProtocol.serverClose": (
        "fc306e9a11de4253", SERVER, "ChatServer.close replaces it (any close code)"),
    "daphne.http_protocol:WebRequest.process": (
        "3a5d9fee6f31418e", SERVER, "ChatServer.create_application sets client_addr, which daphne logs, and relies "
        "on daphne reading no X-Forwarded-For without a header name"),
    "daphne.cli:CommandLineInterface.run": (
        "9b420ff1f12dc575", SERVER, "ChatCommandLine.run parses the options before it, and its _get_forwarded_host "
        "and _get_forwarded_port keep daphne from reading X-Forwarded-* from every peer"),
    # autobahn and Twisted, under chat-daphne.
    "autobahn.websocket.protocol:WebSocketProtocol._connectionMade": (
        "1fb169b67c8cb5ff", SERVER, "LazyPformat replaces the pformat it calls"),
    "autobahn.websocket.protocol:WebSocketProtocol.sendCloseFrame": (
        "47a8eeeef77d4a02", SERVER, "ChatServer.close and check_send_buffer call it, skipping sendClose's checks"),
    "twisted.internet.abstract:FileDescriptor.write": (
        "1bcfa23120d692cf", SERVER, "unsent_bytes reads dataBuffer, offset and _tempDataLen"),
    "twisted.internet.abstract:FileDescriptor.doWrite": ("6aaaf350da3810af", SERVER, "unsent_bytes, as for write"),
}

# The versions RELIED_ON was written against (../requirements.txt); app/pyproject.toml allows no later minor release.
GUARDED_AT = {
    "channels-redis": "4.3.0",
    "redis": "8.1.0",
    "channels": "4.3.2",
    "daphne": "4.2.3",
    "autobahn": "26.10.2",
    "twisted": "26.10.0",
}


# The distribution of each top-level package (Twisted's is shared: daphne installs a plugin into it).
DISTRIBUTIONS = {"channels_redis": "channels-redis", "redis": "redis", "channels": "channels", "daphne": "daphne",
                 "autobahn": "autobahn", "twisted": "twisted"}


def upstream_object(where):
    """The function (or property's getter) at "module:Class.name", as its class defines it."""
    module, _, names = where.partition(":")
    found = importlib.import_module(module)
    for name in names.split("."):
        found = inspect.getattr_static(found, name) if inspect.isclass(found) else getattr(found, name)
    return found.fget if isinstance(found, property) else found


def fingerprint(function):
    """A hash of a function's source, blank lines and indentation left out.

    The text rather than its syntax tree: ast.unparse writes the same code differently from one Python to the next.
    """
    lines = (line.strip() for line in inspect.getsource(function).splitlines())
    return hashlib.sha256("\n".join(line for line in lines if line).encode()).hexdigest()[:16]


@pytest.mark.parametrize("where", sorted(RELIED_ON))
def test_upstream_code_the_app_relies_on_is_as_it_was_written_against(where):
    recorded, app_file, reliance = RELIED_ON[where]
    module = where.partition(":")[0]
    distribution = DISTRIBUTIONS[module.split(".")[0]]
    found = fingerprint(upstream_object(where))
    assert found == recorded, (
        f"{where} changed in the installed {distribution} {importlib.metadata.version(distribution)} "
        f"(guarded at {GUARDED_AT[distribution]}): revisit {app_file} ({reliance}); then record "
        f"its new fingerprint {found} and the version in tests/test_guards.py, and the range in app/pyproject.toml"
    )


def test_pyproject_allows_only_the_minor_releases_the_guards_were_written_against():
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    ranges = {canonicalize_name(Requirement(line).name): Requirement(line).specifier for line in project["dependencies"]}
    for distribution, version in GUARDED_AT.items():
        major, minor, *_ = version.split(".")
        assert distribution in ranges, f"app/pyproject.toml does not name {distribution}, which the app relies on"
        assert version in ranges[distribution], f"{distribution} {ranges[distribution]} leaves out {version}"
        assert f"{major}.{int(minor) + 1}.0" not in ranges[distribution], (
            f"{distribution} {ranges[distribution]} allows a release the guards have not seen")
