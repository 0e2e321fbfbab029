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
# fingerprint of its code as written against the versions in GUARDED_AT (see fingerprint()), the app file to
# revisit when it changes, and what there relies on it.
LAYERS, DISPATCH, CONSUMERS, SERVER = "app/chat/layers.py", "app/chat/dispatch.py", "app/chat/consumers.py", "app/chat/server.py"
RELIED_ON = {
    # channels-redis: the lean layer replaces parts of its pub/sub layer and reads its fields.
    "channels_redis.pubsub:RedisPubSubChannelLayer.__init__": (
        "5c8f5cd1fb87208f", LAYERS, "LeanRedisPubSubChannelLayer._get_layer reads _args, _kwargs and _layers"),
    "channels_redis.pubsub:RedisPubSubChannelLayer._get_layer": (
        "4febe230a90ad149", LAYERS, "LeanRedisPubSubChannelLayer._get_layer is a copy that makes a _LoopLayer"),
    "channels_redis.utils:_wrap_close": ("86f201163bcb6e35", LAYERS, "LeanRedisPubSubChannelLayer._get_layer calls it"),
    "channels_redis.pubsub:RedisPubSubLoopLayer.__init__": (
        "bacbef4805667fc1", LAYERS, "_LoopLayer rebuilds _shards and reads channels, groups and channel_layer"),
    "channels_redis.pubsub:RedisPubSubLoopLayer._get_shard": ("1470bb355fa36445", LAYERS, "_LoopLayer calls it"),
    "channels_redis.pubsub:RedisPubSubLoopLayer._get_group_channel_name": (
        "fdab10ceb48a9857", LAYERS, "_LoopLayer.group_add and group_discard call it"),
    "channels_redis.pubsub:RedisPubSubLoopLayer._subscribe_to_channel": (
        "246e94f952ff230b", LAYERS, "_LoopLayer._subscribe_to_channel replaces it (a _ChannelMailbox per channel)"),
    "channels_redis.pubsub:RedisPubSubLoopLayer.receive": (
        "9ed7804b0008fc35", LAYERS, "_LoopLayer.receive is a copy without the clean-up when cancelled"),
    "channels_redis.pubsub:RedisPubSubLoopLayer.group_add": (
        "a0779ab983b0fc0e", LAYERS, "_LoopLayer.group_add records memberships around it"),
    "channels_redis.pubsub:RedisPubSubLoopLayer.group_discard": (
        "540b176c7e739674", LAYERS, "_LoopLayer.group_discard and _leave_group replace it"),
    "channels_redis.pubsub:RedisSingleShardConnection.__init__": (
        "d5fc7b54025ec90c", LAYERS, "_Shard reads _lock, _subscribed_to, _redis and _pubsub"),
    "channels_redis.pubsub:RedisSingleShardConnection.publish": ("9f00f65956c38e0d", LAYERS, "_Shard.publish retries it once"),
    "channels_redis.pubsub:RedisSingleShardConnection.subscribe": (
        "6296953712fc7f64", LAYERS, "_Shard.subscribe retries it once"),
    "channels_redis.pubsub:RedisSingleShardConnection.unsubscribe": (
        "6b1ac4d5e76538e0", LAYERS, "_Shard.sweep is a copy that asks again under the lock"),
    "channels_redis.pubsub:RedisSingleShardConnection.flush": ("8c1281fdc2d5f231", LAYERS, "_Shard.flush wraps it"),
    "channels_redis.pubsub:RedisSingleShardConnection._do_receiving": (
        "3c8e7b29a5c2b1e2", LAYERS, "_Shard._do_receiving replaces the receive loop"),
    "channels_redis.pubsub:RedisSingleShardConnection._receive_message": (
        "44f4aa3a5829244c", LAYERS, "_Shard._do_receiving calls it"),
    "channels_redis.pubsub:RedisSingleShardConnection._ensure_redis": (
        "7a992d603f56b3eb", LAYERS, "_Shard._ensure_redis replaces its pubsub with a _ResubscribingPubSub"),
    "channels_redis.pubsub:RedisSingleShardConnection._ensure_receiver": ("280417f6660c64c4", LAYERS, "_Shard.sweep calls it"),
    # redis-py: the pub/sub hooks the layer's resync and silence detection stand on.
    "redis.asyncio.client:PubSub.__init__": (
        "c4e7982ca8f8776e", LAYERS, "_ResubscribingPubSub reads and prunes channels, reads connection"),
    "redis.asyncio.client:PubSub.on_connect": (
        "5021b7eadcb43849", LAYERS, "_ResubscribingPubSub.on_connect counts the resubscriptions it sends"),
    "redis.asyncio.client:PubSub.subscribed": ("9957832ddbebd32e", LAYERS, "_Shard._do_receiving reads it"),
    "redis.asyncio.client:PubSub.check_health": (
        "9299570208d29bef", LAYERS, "_ResubscribingPubSub.check_health reconnects through Sentinel first"),
    "redis.asyncio.client:PubSub.get_message": ("e4842f82d13f1fd5", LAYERS, "_Shard._do_receiving's timeout of 0.1 s"),
    "redis.asyncio.client:PubSub.handle_message": (
        "ebe7f2dcf277c258", LAYERS, "_ResubscribingPubSub.handle_message counts the subscribe confirmations"),
    "redis.asyncio.connection:AbstractConnection.read_response": (
        "d39b3d73cd2df7ef", LAYERS, "_ResubscribingPubSub.silent_for reads next_health_check, which it moves on"),
    "redis.asyncio.connection:AbstractConnection.is_connected": ("f4ffc02b86a6a798", LAYERS, "_ResubscribingPubSub reads it"),
    "redis.asyncio.connection:AbstractConnection.disconnect": (
        "d538ba8034d3b7b7", LAYERS, "_Shard.leave_if_silent calls disconnect(nowait=True)"),
    # Channels: the consumer's dispatch loop and clean-up.
    "channels.consumer:AsyncConsumer.__call__": (
        "8462ee3f7788c350", DISPATCH, "RelayDispatchMixin.__call__ is a copy with dispatch_from() as its loop"),
    "channels.consumer:AsyncConsumer.dispatch": (
        "32a44591cd405e48", CONSUMERS, "ChatConsumer.dispatch_to_handler skips its aclose_old_connections"),
    "channels.generic.websocket:AsyncWebsocketConsumer.websocket_disconnect": (
        "3b0dcdc7420644eb", DISPATCH, "RelayDispatchMixin.release_channel repeats its clean-up"),
    # daphne: chat-daphne's server, its handshake internals and its command line.
    "daphne.server:Server.create_application": (
        "70369507a4ef2ab7", SERVER, "ChatServer.create_application_with_mailbox is a copy with a Mailbox"),
    "daphne.server:Server.kill_all_applications": (
        "8c6c86e85fe53c58", SERVER, "ChatServer.kill_all_applications hides the connections still in their handshake"),
    "daphne.server:Server.application_checker": (
        "ebf5cd70f10f4c9f", SERVER, "ChatServer.orphaned reads the connections' 'disconnected'"),
    "daphne.server:Server.handle_reply": ("35e6b4cb62402804", SERVER, "ChatServer.handle_reply wraps it"),
    "daphne.ws_protocol:WebSocketProtocol.onConnect": (
        "fa9e4b08e297fa65", SERVER, "ChatServer.deny reads handshake_deferred and request; ChatServer.create_application "
        "sets client_addr, which daphne logs, and relies on daphne reading no X-Forwarded-For without a header name"),
    "daphne.ws_protocol:WebSocketProtocol.onClose": (
        "893ea1b882b9a2a7", SERVER, "ChatServer.reap_orphans stands in when it never runs"),
    "daphne.ws_protocol:WebSocketProtocol.handle_reply": (
        "837ab2f1c6fc2b2a", SERVER, "ChatServer.handle_reply takes websocket.close and send before it"),
    "daphne.ws_protocol:WebSocketProtocol.serverReject": (
        "933620a765c73cef", SERVER, "ChatServer.deny is a copy with the application's status"),
    "daphne.ws_protocol:WebSocketProtocol.serverClose": (
        "eecfa8250d57669f", SERVER, "ChatServer.close replaces it (any close code)"),
    "daphne.http_protocol:WebRequest.process": (
        "009fec0cde27b330", SERVER, "ChatServer.create_application sets client_addr, which daphne logs, and relies "
        "on daphne reading no X-Forwarded-For without a header name"),
    "daphne.cli:CommandLineInterface.run": (
        "891f38b690b291cd", SERVER, "ChatCommandLine.run parses the options before it, and its _get_forwarded_host "
        "and _get_forwarded_port keep daphne from reading X-Forwarded-* from every peer"),
    # autobahn and Twisted, under chat-daphne.
    "autobahn.websocket.protocol:WebSocketProtocol._connectionMade": (
        "6e2c4a4e3b0603dd", SERVER, "LazyPformat replaces the pformat it calls"),
    "autobahn.websocket.protocol:WebSocketProtocol.sendCloseFrame": (
        "9c9f00ae8a29f925", SERVER, "ChatServer.close and check_send_buffer call it, skipping sendClose's checks"),
    "twisted.internet.abstract:FileDescriptor.write": (
        "6be1610913d28b12", SERVER, "unsent_bytes reads dataBuffer, offset and _tempDataLen"),
    "twisted.internet.abstract:FileDescriptor.doWrite": ("59d5e53f857a62d1", SERVER, "unsent_bytes, as for write"),
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
    """A hash of a function's code as ast.unparse writes it: without its docstring, comments and layout."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant):
        tree.body = tree.body[1:]
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()[:16]


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
