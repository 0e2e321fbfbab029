"""Guards for the project's own machinery: undoing any of it, or an upgrade that changes what it copies, fails here.

The benchmark's gains (README, "What each lever bought") rest on code that nothing else would miss if it went:
the pub/sub layer's Mailbox channels, the consumer skipping Channels' per-message database clean-up for
chat.message, and chat-daphne's copy of daphne's create_application.
"""

import ast
import inspect
import pprint
import textwrap
from unittest import mock

from daphne.server import Server
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
