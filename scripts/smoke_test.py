#!/usr/bin/env python3
"""Check a deployed chat from the outside, the way a user would.

    scripts/smoke_test.py http://chat.example.org/
    scripts/smoke_test.py https://10.0.0.5/ --insecure --wait 60

Through the front door (nginx): the room picker and a room page load, their
script comes from /static/ with caching headers, /healthz says ok, a
websocket from a foreign origin is refused, and two clients in one room see
each other's message, while malformed JSON gets an error frame and the
connection stays open; over HTTPS, plain HTTP redirects. --wait retries the whole check until it passes or the
time is up (after a restart). Exits 0 when everything passed.
"""

import argparse
import asyncio
import json
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote, urlsplit

import websockets

TIMEOUT = 10


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


class Site:
    def __init__(self, url, insecure):
        self.url = url.rstrip("/") + "/"
        parts = urlsplit(self.url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.ws_base = ("wss" if parts.scheme == "https" else "ws") + f"://{parts.netloc}"
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        if self.tls and insecure:
            self.tls.check_hostname = False
            self.tls.verify_mode = ssl.CERT_NONE

    def get(self, path):
        request = urllib.request.Request(self.url + path.lstrip("/"))
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self.tls) as response:
                return response.status, response.headers, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read().decode(errors="replace")

    def connect(self, room, origin=None):
        return websockets.connect(
            f"{self.ws_base}/ws/chat/{quote(room)}/",
            origin=origin or self.origin,
            ssl=self.tls,
            open_timeout=TIMEOUT,
        )


def check_https_redirect(site):
    plain = "http://" + site.url.split("://", 1)[1]
    request = urllib.request.Request(plain + "chat/", method="GET")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(request, timeout=TIMEOUT)
        raise CheckFailed(f"{plain}chat/ answered without redirecting to HTTPS")
    except urllib.error.HTTPError as redirect:
        location = redirect.headers.get("Location", "")
        expect(redirect.code == 301 and location.startswith("https://"), f"{plain}chat/ answered {redirect.code} {location}")
    return "HTTP redirects to HTTPS"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def check_pages(site, room):
    status, _, page = site.get("chat/")
    expect(status == 200 and 'id="room-name-input"' in page, f"/chat/ answered {status} without the room picker")
    status, _, body = site.get("healthz")
    expect(status == 200, f"/healthz answered {status}: {body[:200]}")
    expect(json.loads(body).get("status") == "ok", f"/healthz says {body[:200]}")
    status, _, page = site.get(f"chat/{quote(room)}/")
    expect(status == 200 and 'id="chat-log"' in page, f"the room page answered {status}")
    script = re.search(r'src="(/static/[^"]*room[^"]*\.js)"', page)
    expect(script, "the room page links no room script under /static/")
    status, headers, code = site.get(script.group(1))
    expect(status == 200 and "WebSocket" in code, f"{script.group(1)} answered {status}")
    expect("max-age" in (headers.get("Cache-Control") or ""), f"{script.group(1)} has no caching header")
    return "pages, /healthz and static files"


async def receive_json(socket):
    return json.loads(await asyncio.wait_for(socket.recv(), TIMEOUT))


async def check_websockets(site, room):
    try:
        async with site.connect(room, origin="http://evil.invalid"):
            raise CheckFailed("a websocket from a foreign origin was accepted")
    except websockets.InvalidStatus as refused:
        expect(refused.response.status_code == 403, f"foreign origin got HTTP {refused.response.status_code}, not 403")

    text = f"smoke test {uuid.uuid4().hex[:8]} 你好 👋"
    async with site.connect(room) as ann, site.connect(room) as bob:
        await ann.send(json.dumps({"message": text, "user": "smoke-ann"}))
        for name, socket in (("sender", ann), ("other client", bob)):
            got = await receive_json(socket)
            expect(got.get("message") == text and got.get("user") == "smoke-ann", f"the {name} got {got}")
        await ann.send("{this is not json")
        error = await receive_json(ann)
        expect(isinstance(error.get("error"), str), f"malformed JSON got {error}, not an error frame")
        await ann.send(json.dumps({"message": "still open", "user": "smoke-ann"}))
        expect((await receive_json(bob)).get("message") == "still open", "the connection closed after bad input")
    return "origin check, two clients chatting, bad input answered"


def check(site, room):
    done = [check_pages(site, room), asyncio.run(check_websockets(site, room))]
    if site.url.startswith("https://"):
        done.append(check_https_redirect(site))
    return "; ".join(done)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the site's address, e.g. http://127.0.0.1:8080/")
    parser.add_argument("--room", default=f"smoke-{uuid.uuid4().hex[:6]}", help="room to chat in")
    parser.add_argument("--wait", type=float, default=0, help="retry for up to this many seconds")
    parser.add_argument("--insecure", action="store_true", help="accept a self-signed certificate")
    args = parser.parse_args()

    site = Site(args.url, args.insecure)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            print(f"ok: {site.url}: {check(site, args.room)}")
            return 0
        except (CheckFailed, OSError, asyncio.TimeoutError, websockets.WebSocketException, ValueError) as error:
            if time.monotonic() >= deadline:
                print(f"FAILED: {site.url}: {type(error).__name__}: {error}", file=sys.stderr)
                return 1
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
