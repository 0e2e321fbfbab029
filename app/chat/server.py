"""chat-daphne: daphne's own command line and server, with less memory per connection.

daphne hands each connection's events (connect, every frame, disconnect) to
the application through an asyncio.Queue, made per connection and kept as
long as it lives: about 3.5 KiB of an idle websocket's cost, for a queue
that daphne only fills with put_nowait() and the application reads from one
task. ChatServer gives the application a Mailbox (chat.mailbox) instead;
everything else is daphne's, options included:

    chat-daphne --fd 0 --proxy-headers chatsite.asgi:application
    python -m chat.server -b 127.0.0.1 -p 8001 chatsite.asgi:application
"""

import asyncio
from functools import partial

from daphne.cli import CommandLineInterface
from daphne.server import Server

from .mailbox import Mailbox


class ChatServer(Server):
    def create_application(self, protocol, scope):
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


class ChatCommandLine(CommandLineInterface):
    server_class = ChatServer


def main():
    ChatCommandLine.entrypoint()


if __name__ == "__main__":
    main()
