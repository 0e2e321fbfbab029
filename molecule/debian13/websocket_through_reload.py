#!/usr/bin/env python3
"""Keeps a websocket open through nginx while a command runs, then chats on it.

    websocket_through_reload.py https://10.89.13.10/ -- <command> [args...]

Client A joins a room through nginx and stays connected while the command
runs (a certificate renewal, whose deploy hook reloads nginx). Afterwards, on
the connection it opened before, A sends a message, and a new client B joins
the room and sends one: A must receive both (its own and B's). Prints JSON
with what happened and the command's output; exits 0 when A's connection
survived and still chats. Bounded: every wait times out.
"""

import argparse
import asyncio
import json
import ssl
import subprocess
import sys
import uuid
from urllib.parse import urlsplit

import websockets

TIMEOUT = 10


def endpoints(site, room):
    parts = urlsplit(site)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/ws/chat/{room}/", f"{parts.scheme}://{parts.netloc}"


async def send(socket, user, text):
    await socket.send(json.dumps({"message": text, "user": user, "client_id": uuid.uuid4().hex}))


async def wait_for(socket, texts):
    """Reads frames until every one of texts has arrived as a message; returns those missing at the timeout."""
    missing = set(texts)
    try:
        async with asyncio.timeout(TIMEOUT):
            while missing:
                frame = json.loads(await socket.recv())
                missing.discard(frame.get("message"))
    except TimeoutError:
        pass
    return sorted(missing)


async def main(site, command):
    room = "reload-" + uuid.uuid4().hex[:8]
    url, origin = endpoints(site, room)
    tls = None
    if url.startswith("wss:"):
        # The certificate is checked elsewhere; this is about the connection.
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    result = {"room": room}
    async with websockets.connect(url, origin=origin, ssl=tls, open_timeout=TIMEOUT) as first:
        await send(first, "a", "before the command")
        result["missing_before"] = await wait_for(first, ["before the command"])

        done = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=120, check=False
        )
        result.update(command_rc=done.returncode, command_output=done.stdout + done.stderr)

        await send(first, "a", "after the command, from a")
        async with websockets.connect(url, origin=origin, ssl=tls, open_timeout=TIMEOUT) as second:
            await send(second, "b", "after the command, from b")
            result["missing_after"] = await wait_for(first, ["after the command, from a", "after the command, from b"])
    result["ok"] = result["command_rc"] == 0 and not result["missing_before"] and not result["missing_after"]
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site")
    parser.add_argument("command", nargs="+", help="after --: the command to run while the websocket is open")
    args = parser.parse_args()
    try:
        outcome = asyncio.run(main(args.site, args.command))
    except (OSError, websockets.WebSocketException) as error:
        outcome = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    print(json.dumps(outcome))
    sys.exit(0 if outcome["ok"] else 1)
