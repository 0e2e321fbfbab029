#!/usr/bin/env python3
"""Checks a multi-server site across its hosts, from the outside.

    cluster_check.py --lb http://10.89.20.10/ --app 10.89.20.11:8001 --app 10.89.20.12:8001

- A client connected straight to one app server's daphne and a client on the
  other one, in the same room, see each other's messages (the channel layer
  spans the hosts).
- A client that joins on the other app server gets what was said on the
  first in its history (the database is shared).
- Through the load balancer, a batch of websocket clients joins one room; the
  room's name is printed so that the caller can read in the load balancer's
  log which app servers took them.
Exits 0 when every check passed.
"""

import argparse
import asyncio
import json
import sys
import uuid
from urllib.parse import urlsplit

import websockets

TIMEOUT = 10


async def receive_message(socket, text):
    """Reads frames until the message with this text arrives."""
    while True:
        frame = json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))
        if frame.get("message") == text:
            return frame


async def check_across_app_servers(apps, origin):
    room = f"cluster-{uuid.uuid4().hex[:8]}"
    first, second = (f"ws://{app}/ws/chat/{room}/" for app in apps[:2])
    async with websockets.connect(first, origin=origin) as ann, websockets.connect(second, origin=origin) as bob:
        await ann.send(json.dumps({"message": "from app1", "user": "ann"}))
        await receive_message(bob, "from app1")
        await bob.send(json.dumps({"message": "from app2", "user": "bob"}))
        await receive_message(ann, "from app2")
    print(f"ok: clients on {apps[0]} and {apps[1]} see each other's messages")
    async with websockets.connect(second, origin=origin) as late:
        history = [json.loads(await asyncio.wait_for(late.recv(), TIMEOUT)) for _ in range(2)]
    texts = [frame.get("message") for frame in history]
    if texts != ["from app1", "from app2"] or not all(frame.get("history") for frame in history):
        raise SystemExit(f"FAILED: a client joining on {apps[1]} got {history} as history")
    print(f"ok: history written through {apps[0]} is read through {apps[1]}")


async def spread_through_load_balancer(lb, origin, clients):
    room = f"spread-{uuid.uuid4().hex[:8]}"
    parts = urlsplit(lb)
    url = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}/ws/chat/{room}/"
    for _ in range(clients):
        # One after another, so that the load balancer's round robin sees each.
        async with websockets.connect(url, origin=origin) as socket:
            await socket.send(json.dumps({"message": "hello", "user": "spread"}))
            await receive_message(socket, "hello")
    print(f"spread-room: {room}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lb", required=True, help="the load balancer's URL")
    parser.add_argument("--app", action="append", required=True, help="an app server's daphne, address:port")
    parser.add_argument("--clients", type=int, default=12, help="clients to send through the load balancer")
    args = parser.parse_args()
    parts = urlsplit(args.lb)
    origin = f"{parts.scheme}://{parts.netloc}"
    asyncio.run(check_across_app_servers(args.app, origin))
    asyncio.run(spread_through_load_balancer(args.lb, origin, args.clients))
    return 0


if __name__ == "__main__":
    sys.exit(main())
