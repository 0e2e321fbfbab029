"""The reference: a bare `websockets` broadcast server speaking the chat's wire protocol.

    python -m bench.bare_server --port 8765 [--host 127.0.0.1]

It is what the chat would cost with nothing but a websocket library in the
way: one asyncio process, rooms held in a dict, each incoming frame turned
into {"id", "room", "user", "message", "ts"} (ids increasing) and broadcast
to everyone in the room, the sender included. No Origin check, no rate limit,
no database, no channel layer, no history. The load generator drives it
exactly like the chat, so the gap between its figures and the chat's is what
Django, Channels, the channel layer and the database cost.
"""

import argparse
import asyncio
import itertools
import json
import re
from datetime import UTC, datetime
from http import HTTPStatus

from websockets.asyncio.server import broadcast, serve

ROOM_PATH = re.compile(r"^/ws/chat/([^/]+)/$")


class Rooms:
    def __init__(self):
        self.members = {}
        self.ids = itertools.count(1)

    def refuse_other_paths(self, connection, request):
        if not ROOM_PATH.match(request.path.split("?", 1)[0]):
            return connection.respond(HTTPStatus.NOT_FOUND, "Not a chat room.\n")
        return None

    async def handle(self, connection):
        room = ROOM_PATH.match(connection.request.path.split("?", 1)[0]).group(1)
        members = self.members.setdefault(room, set())
        members.add(connection)
        try:
            async for frame in connection:
                try:
                    incoming = json.loads(frame)
                    text, user = incoming["message"], incoming.get("user") or "anonymous"
                except (ValueError, TypeError, KeyError):
                    await connection.send(json.dumps({"error": 'Send {"message": "...", "user": "..."}.'}))
                    continue
                outgoing = {
                    "id": next(self.ids),
                    "room": room,
                    "user": user,
                    "message": text,
                    "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                }
                # One serialization, written to every member without waiting on any.
                broadcast(members, json.dumps(outgoing, ensure_ascii=False))
        finally:
            members.discard(connection)
            if not members and self.members.get(room) is members:
                del self.members[room]


async def main(host, port):
    rooms = Rooms()
    async with serve(rooms.handle, host, port, process_request=rooms.refuse_other_paths) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.host, args.port))
    except KeyboardInterrupt:
        pass
