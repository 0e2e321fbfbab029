#!/usr/bin/env python3
"""The backup drill's chat client: posts messages and reads them back.

    backup_drill.py post http://10.89.12.10/ drill-room 8     # JSON: the acks' ids and seqs
    backup_drill.py read http://10.89.12.10/ drill-room       # JSON: the join's history
    backup_drill.py read http://10.89.12.10/ drill-room --since 0   # JSON: the ?since= resync

Like a browser: the site's own Origin, one client_id per message, resent
until acknowledged.
"""

import argparse
import asyncio
import json
import ssl
import uuid
from urllib.parse import quote, urlsplit

import websockets

TIMEOUT = 10
QUIET = 2.0


def connect(url, origin):
    """A websocket to the test site; over TLS without checking its certificate (self-signed there)."""
    context = None
    if url.startswith("wss:"):
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return websockets.connect(url, origin=origin, open_timeout=TIMEOUT, ssl=context)


def socket_url(site, room, since=None):
    parts = urlsplit(site)
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = "" if since is None else f"?since={since}"
    return f"{scheme}://{parts.netloc}/ws/chat/{quote(room)}/{query}", f"{parts.scheme}://{parts.netloc}"


async def post(site, room, count, prefix):
    url, origin = socket_url(site, room)
    acks = []
    async with connect(url, origin) as socket:
        for n in range(count):
            client_id = uuid.uuid4().hex
            await socket.send(json.dumps({"message": f"{prefix} {n}", "user": "drill", "client_id": client_id}))
            while True:
                frame = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
                if frame.get("code") == "rate_limited":
                    await asyncio.sleep(1)
                    await socket.send(json.dumps({"message": f"{prefix} {n}", "user": "drill", "client_id": client_id}))
                elif frame.get("error"):
                    raise SystemExit(f"message {n} refused: {frame}")
                elif frame.get("ack") == client_id:
                    acks.append({"id": frame["id"], "seq": frame.get("seq"), "message": f"{prefix} {n}"})
                    break
    return acks


async def read(site, room, since):
    """Every message frame until the connection has been quiet for a while, paging through a resync."""
    url, origin = socket_url(site, room, since)
    messages = []
    async with connect(url, origin) as socket:
        while True:
            try:
                frame = json.loads(await asyncio.wait_for(socket.recv(), QUIET))
            except TimeoutError:
                break
            if "id" in frame and "message" in frame:
                kind = "resync" if frame.get("resync") else "history" if frame.get("history") else "live"
                messages.append({"id": frame["id"], "seq": frame.get("seq"), "message": frame["message"], "kind": kind})
            elif frame.get("page") == "resync" and frame.get("more"):
                await socket.send(json.dumps({"since": frame["last"]}))
    return messages


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["post", "read"])
    parser.add_argument("site")
    parser.add_argument("room")
    parser.add_argument("count", type=int, nargs="?", default=1)
    parser.add_argument("--since", type=int)
    parser.add_argument("--prefix", default="drill")
    args = parser.parse_args()
    if args.action == "post":
        result = asyncio.run(post(args.site, args.room, args.count, args.prefix))
    else:
        result = asyncio.run(read(args.site, args.room, args.since))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
