#!/usr/bin/env python3
"""Check a deployed chat from the outside, the way a user would.

    scripts/smoke_test.py http://chat.example.org/
    scripts/smoke_test.py https://10.0.0.5/ --insecure --wait 60

Through the front door (nginx): the room picker and a room page load, their
script comes from /static/ with caching headers, /healthz says ok, Django's
admin login page loads, a websocket from a foreign origin is refused, and two
clients in one room see each other's message, while malformed JSON gets an
error frame and the connection stays open; over HTTPS, plain HTTP redirects.
Every response fetched carries the security headers, each once:
X-Content-Type-Options nosniff, a Referrer-Policy that keeps addresses from
other sites, framing refused (X-Frame-Options DENY, CSP frame-ancestors
'none'), and over HTTPS Strict-Transport-Security; the pages' CSP also
limits scripts to the site's own. --wait retries the whole check until it
passes or the time is up (after a restart). Exits 0 when everything passed.
"""

import argparse
import asyncio
import itertools
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
        self.admin_checked = False  # /admin/login/ answered with its form (checked once)
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


# Referrer policies that never send a page's address (room names) to another site.
PRIVATE_REFERRER_POLICIES = {"no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"}


def only_header(headers, name, path):
    """The header's value, which must be sent exactly once."""
    values = headers.get_all(name) or []
    expect(len(values) == 1, f"{path} has {len(values)} {name} headers: {values}")
    return values[0].strip()


def csp_directives(policy):
    return {part.split()[0].lower(): part.split()[1:] for part in policy.split(";") if part.strip()}


def check_security_headers(site, path, headers, page=False):
    """The headers nginx adds to every response; page: also a CSP that limits scripts."""
    nosniff = only_header(headers, "X-Content-Type-Options", path)
    expect(nosniff.lower() == "nosniff", f"{path}: X-Content-Type-Options is {nosniff!r}, not nosniff")
    referrer = only_header(headers, "Referrer-Policy", path)
    expect(referrer in PRIVATE_REFERRER_POLICIES, f"{path}: Referrer-Policy {referrer!r} can send addresses to other sites")
    frame_options = only_header(headers, "X-Frame-Options", path)
    expect(frame_options.upper() == "DENY", f"{path}: X-Frame-Options is {frame_options!r}, not DENY")
    policy = csp_directives(only_header(headers, "Content-Security-Policy", path))
    expect(policy.get("frame-ancestors") == ["'none'"], f"{path}: the CSP does not refuse framing: {policy}")
    if page:
        scripts = policy.get("script-src", policy.get("default-src", []))
        expect(scripts == ["'self'"], f"{path}: the CSP lets scripts come from {scripts or 'anywhere'}")
    if site.url.startswith("https://"):
        hsts = only_header(headers, "Strict-Transport-Security", path)
        max_age = re.fullmatch(r"max-age=(\d+)(;.*)?", hsts.replace(" ", ""))
        expect(max_age and int(max_age.group(1)) > 0, f"{path}: Strict-Transport-Security is {hsts!r}")


def check_pages(site, room):
    status, headers, page = site.get("chat/")
    expect(status == 200 and 'id="room-name-input"' in page, f"/chat/ answered {status} without the room picker")
    check_security_headers(site, "/chat/", headers, page=True)
    status, headers, body = site.get("healthz")
    expect(status == 200, f"/healthz answered {status}: {body[:200]}")
    expect(json.loads(body).get("status") == "ok", f"/healthz says {body[:200]}")
    check_security_headers(site, "/healthz", headers)
    room_path = f"/chat/{quote(room)}/"
    status, headers, page = site.get(room_path)
    expect(status == 200 and 'id="chat-log"' in page, f"the room page answered {status}")
    check_security_headers(site, room_path, headers, page=True)
    script = re.search(r'src="(/static/[^"]*room[^"]*\.js)"', page)
    expect(script, "the room page links no room script under /static/")
    status, headers, code = site.get(script.group(1))
    expect(status == 200 and "import" in code, f"{script.group(1)} answered {status}")
    expect("max-age" in (headers.get("Cache-Control") or ""), f"{script.group(1)} has no caching header")
    check_security_headers(site, script.group(1), headers)
    # room.js (the view) imports session.js (the websocket) by its hashed name, beside it.
    module = re.search(r'from "\./(session[^"]*\.js)"', code)
    expect(module, f"{script.group(1)} imports no session module")
    module_path = script.group(1).rsplit("/", 1)[0] + "/" + module.group(1)
    status, headers, code = site.get(module_path)
    expect(status == 200 and "WebSocket" in code, f"{module_path} answered {status}")
    expect("max-age" in (headers.get("Cache-Control") or ""), f"{module_path} has no caching header")
    if not site.admin_checked:
        # Once: nginx throttles this page per address (nginx_login_requests_per_minute),
        # and retries every second would use the budget up and hide the real failure.
        status, headers, page = site.get("admin/login/")
        expect(status == 200 and 'name="password"' in page, f"/admin/login/ answered {status} without the login form")
        check_security_headers(site, "/admin/login/", headers, page=True)
        site.admin_checked = True
    https = " and HSTS" if site.url.startswith("https://") else ""
    return f"pages, /healthz, static files and the admin login, with their security headers{https}"


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
    for attempt in itertools.count():
        # A fresh room each time: a message an attempt stored before failing
        # would come first, as history, to the next attempt's clients.
        room = f"{args.room}-{attempt}" if attempt else args.room
        try:
            print(f"ok: {site.url}: {check(site, room)}")
            return 0
        except (CheckFailed, OSError, asyncio.TimeoutError, websockets.WebSocketException, ValueError) as error:
            if time.monotonic() >= deadline:
                print(f"FAILED: {site.url}: {type(error).__name__}: {error}", file=sys.stderr)
                return 1
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
