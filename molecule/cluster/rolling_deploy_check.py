#!/usr/bin/env python3
"""Chats through the load balancer while a deploy runs, then checks nothing was lost.

    rolling_deploy_check.py --lb http://10.89.20.10/ -- ansible-playbook ... --tags deploy

Websocket clients chat in one room through the load balancer, each sending
a message a second, and behave like the room page: when their connection
drops they reconnect with ?since=<last id>, and resend what was not echoed
back; each message carries a client_id, and one the server refused for now
(rate_limited, store_failed, broadcast_failed) is sent again a second later. An HTTP poller fetches pages through the load balancer meanwhile, and every
static file (CSS, JavaScript) each page names. The
command after -- (the deploy) runs in the middle. Afterwards every client
must have every stored message of the room exactly once (each stays in the
room until all have had their own messages back, and then until it has every
stored one, or DRAIN_SECONDS), no sent message may
be missing, and no HTTP request may have failed (a 404 for a static file
named by a page included). Bounded: the run stops
after --max-seconds whatever happens.

With --outage (the Redis failover drill, failover.yml), the command after --
is the failure itself: clients need not be disconnected by it, and the
longest pause in live delivery (the outage: no client received any message
live, i.e. not through a resync) is printed, and must stay under --outage
seconds.

With --no-reconnects (the certificates' renewal, certificate_renewal.yml),
the command must disconnect no client at all, where a deploy must have
disconnected some (else it restarted nothing).
"""

import argparse
import asyncio
import collections
import contextlib
import json
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit

import websockets

TIMEOUT = 10
RETRY_LATER = {"rate_limited", "store_failed", "broadcast_failed"}
# How long a stored message may take to reach every client once all have had their own back (a
# consumer waits a moment for a missing seq before reading it from the database).
DRAIN_SECONDS = 15


class Client:
    """One person in the room, with the room page's reconnect and resync."""

    def __init__(self, name, url, origin):
        self.name, self.url, self.origin = name, url, origin
        self.seen = {}  # id -> text
        self.duplicates = 0
        self.connections = 0
        self.pending = {}  # text not yet echoed -> None
        self.sequence = 0
        self.last_id = 0
        self.live = []  # when each message arrived live (not through history or a resync)
        self.retry = set()  # refused for now: sent again a second later
        self.recent = collections.deque(maxlen=4)  # the last frames, shown if the run hits its limit

    def describe(self, started):
        recent = [f"{moment - started:.1f}s {frame[:120]}" for moment, frame in self.recent]
        return (f"{self.name}: {self.connections} connections, {len(self.seen)} messages seen, last id "
                f"{self.last_id}, {len(self.pending)} not echoed {sorted(self.pending)[:3]}, last frames {recent}")

    def receive(self, frame):
        self.recent.append((time.monotonic(), frame))
        data = json.loads(frame)
        if data.get("code") in RETRY_LATER and data.get("client_id") in self.pending:
            self.retry.add(data["client_id"])  # as the room page does: again in a moment
        if "message" not in data:  # an error, ack or page frame
            return
        if data["id"] in self.seen:
            self.duplicates += 1
            return
        self.seen[data["id"]] = data["message"]
        if not data.get("history") and not data.get("resync"):
            self.live.append(time.monotonic())
        self.last_id = max(self.last_id, data["id"])
        self.pending.pop(data["message"], None)

    def session_cookie(self):
        """The session a browser gets from the room page: the chat's rate limit counts per session.

        (A client without one is counted by its address, and the clients here
        all come from the control node's.)
        """
        page = self.url.replace("ws://", "http://", 1).replace("/ws/chat/", "/chat/", 1)
        with urllib.request.urlopen(page, timeout=TIMEOUT) as response:
            cookies = response.headers.get_all("Set-Cookie") or []
        session = [cookie.split(";")[0] for cookie in cookies if cookie.startswith("sessionid=")]
        if not session:
            raise SystemExit(f"FAILED: {page} set no session cookie (got {cookies})")
        return session[0]

    async def run(self, sending, done):
        cookie = await asyncio.get_running_loop().run_in_executor(None, self.session_cookie)
        while not done.is_set():
            url = self.url + (f"?since={self.last_id}" if self.last_id else "")
            try:
                async with websockets.connect(
                    url, origin=self.origin, open_timeout=TIMEOUT, additional_headers={"Cookie": cookie}
                ) as socket:
                    self.connections += 1
                    reader = asyncio.create_task(self.read(socket))
                    self.retry.clear()
                    for text in list(self.pending):
                        await self.send(socket, text)
                    while not reader.done() and not done.is_set():
                        for text in [text for text in self.retry if text in self.pending]:
                            await self.send(socket, text)
                        self.retry.clear()
                        if sending.is_set():
                            self.sequence += 1
                            text = f"{self.name}-{self.sequence}"
                            self.pending[text] = None
                            await self.send(socket, text)
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(done.wait(), 1)
                    reader.cancel()
            except (OSError, asyncio.TimeoutError, websockets.WebSocketException):
                pass
            if not done.is_set():
                await asyncio.sleep(0.5)

    async def send(self, socket, text):
        # The text is the client_id too: a resend of a stored message is acknowledged as a duplicate.
        await socket.send(json.dumps({"message": text, "user": self.name, "client_id": text}))

    async def read(self, socket):
        try:
            async for frame in socket:
                self.receive(frame)
        except websockets.ConnectionClosed:
            pass


async def until(condition):
    while not condition():
        await asyncio.sleep(0.2)


STATIC_URL = re.compile(r"""(?:src|href)=["'](/static/[^"']+)["']""")


async def poll_http(base, stop, failures, requests, paths):
    """Fetch pages through the load balancer, and every static file each names.

    A page rendered by a host still on the old release names the old release's
    hashed files: the load balancer must still serve them (and the new ones).
    """
    loop = asyncio.get_running_loop()

    def fetch(path):
        try:
            with urllib.request.urlopen(base + path.lstrip("/"), timeout=TIMEOUT) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, ""
        except OSError as error:
            return repr(error), ""

    while not stop.is_set():
        for path in paths:
            status, body = await loop.run_in_executor(None, fetch, path)
            requests.append(path)
            if status != 200:
                failures.append(f"{path}: {status}")
            for static in STATIC_URL.findall(body):
                static_status, _ = await loop.run_in_executor(None, fetch, static)
                requests.append(static)
                if static_status != 200:
                    failures.append(f"{static} (named by {path}): {static_status}")
        await asyncio.sleep(0.2)


async def room_contents(url, origin):
    """Everything stored in the room: a fresh client resyncs from 0, page by page."""
    contents = {}
    while True:
        since = max(contents, default=0)
        async with websockets.connect(f"{url}?since={since}", origin=origin, open_timeout=TIMEOUT) as socket:
            try:
                while True:
                    data = json.loads(await asyncio.wait_for(socket.recv(), 2))
                    if "message" in data:  # not a page frame
                        contents[data["id"]] = data["message"]
            except asyncio.TimeoutError:
                pass
        if max(contents, default=0) == since:
            return contents


async def main_async(args):
    parts = urlsplit(args.lb)
    origin = f"{parts.scheme}://{parts.netloc}"
    room = f"rolling-{uuid.uuid4().hex[:8]}"
    url = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}/ws/chat/{room}/"
    clients = [Client(f"c{n}", url, origin) for n in range(args.clients)]
    sending, done, stop_polling = asyncio.Event(), asyncio.Event(), asyncio.Event()
    failures, requests = [], []
    sending.set()
    tasks = [asyncio.create_task(client.run(sending, done)) for client in clients]
    # /healthz answers 503 while Redis fails over, as it should; the pages must not fail.
    paths = ("chat/", "chat/rolling-page/") + (("healthz",) if args.outage is None else ())
    poller = asyncio.create_task(poll_http(args.lb, stop_polling, failures, requests, paths))
    started = time.monotonic()
    await asyncio.sleep(args.settle)

    print(f"deploying: {' '.join(args.deploy[:2])} ...", flush=True)
    command_started = time.monotonic()
    deploy = await asyncio.create_subprocess_exec(*args.deploy, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(deploy.communicate(), args.max_seconds)
    if deploy.returncode != 0:
        print(output.decode()[-4000:])
        raise SystemExit(f"FAILED: the deploy exited with {deploy.returncode}")
    command_ended = time.monotonic()

    await asyncio.sleep(args.settle)
    sending.clear()
    sending_ended = time.monotonic()
    # Every client stays in the room until each has had its own messages back (so all are stored),
    # and then until each has every stored message or DRAIN_SECONDS have passed: a client that left
    # as soon as its own messages were back would miss one another client sent in the same second.
    try:
        await asyncio.wait_for(until(lambda: not any(client.pending for client in clients)),
                               max(5, args.max_seconds - (time.monotonic() - started)))
    except asyncio.TimeoutError:
        for client in clients:
            print(client.describe(started))
        raise SystemExit(f"FAILED: clients still waited for their own messages after {args.max_seconds:g} s") from None
    stored = await room_contents(url, origin)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(until(lambda: all(client.seen.keys() >= stored.keys() for client in clients)),
                               DRAIN_SECONDS)
    done.set()
    await asyncio.gather(*tasks)
    stop_polling.set()
    await poller

    problems = []
    sent = {f"{client.name}-{n}" for client in clients for n in range(1, client.sequence + 1)}
    missing_sent = sent - set(stored.values())
    if missing_sent:
        problems.append(f"{len(missing_sent)} sent messages were never stored, e.g. {sorted(missing_sent)[:3]}")
    for client in clients:
        if client.duplicates:
            problems.append(f"{client.name} received {client.duplicates} messages twice")
        if client.seen.keys() != stored.keys():
            lost = stored.keys() - client.seen.keys()
            problems.append(f"{client.name} is missing {len(lost)} of {len(stored)} messages "
                            f"({', '.join(f'{id}: {stored[id]}' for id in sorted(lost)[:5])}; its last id {client.last_id})")
    if failures:
        problems.append(f"{len(failures)} of {len(requests)} HTTP requests failed: {failures[:5]}")
    reconnects = sum(client.connections - 1 for client in clients)
    if args.no_reconnects and reconnects:
        problems.append(f"clients reconnected {reconnects} times: the command was to disconnect none of them")
    elif reconnects == 0 and args.outage is None and not args.no_reconnects:
        problems.append("no client was ever disconnected: the deploy restarted nothing under them")
    if args.outage is not None:
        # Up to the end of sending: live delivery that never came back before the clients stopped is an
        # outage that long, not none. (Clients send in step, once a second: up to a second of it is the
        # ordinary pause between rounds.)
        live = sorted([moment for client in clients for moment in client.live if moment < sending_ended])
        live.append(sending_ended)
        gap, since = max((later - earlier, earlier - started) for earlier, later in zip(live, live[1:]))
        print(f"outage: no message was delivered live for {gap:.1f} s, from {since:.1f} s into the run "
              f"(the command ran from {command_started - started:.1f} s to {command_ended - started:.1f} s)")
        if gap >= args.outage:
            problems.append(f"live delivery stopped for {gap:.1f} s, not under {args.outage} s")
    print(
        f"{len(clients)} clients, {len(stored)} messages stored, {len(sent)} sent, "
        f"{reconnects} reconnections during the deploy, {len(requests)} HTTP requests, {len(failures)} failed"
    )
    if problems:
        raise SystemExit("FAILED: " + "; ".join(problems))
    print("ok: every client has every message exactly once, and no HTTP request failed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lb", required=True, help="the load balancer's URL")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--settle", type=float, default=5, help="seconds of chat before and after the deploy")
    parser.add_argument("--max-seconds", type=float, default=600, help="the whole run's limit")
    parser.add_argument("--outage", type=float, help="the command is a failure: print the live outage, which must be under this")
    parser.add_argument("--no-reconnects", action="store_true",
                        help="the command must disconnect no client (e.g. a certificate renewal), rather than at least one")
    parser.add_argument("deploy", nargs="+", help="the deploy command, after --")
    args = parser.parse_args()
    args.lb = args.lb.rstrip("/") + "/"
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
