"""X-Forwarded-* believed from the load balancers only (chat/proxy.py), under chat-daphne, uvicorn and runserver.

Most tests run a real `python -m chat.server` with --proxy-headers and an access log, send an HTTP request
and a websocket handshake from 127.0.0.1 (or ::1) claiming to come from 203.0.113.9 over HTTPS, and read
who the client was twice: in daphne's access log, and in the scope the application got (tests/asgi_echo.py).
"""

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from websockets.sync.client import connect

from chat.proxy import ProxyHeadersMiddleware, TrustedProxies

from .conftest import free_port

APP_DIR = Path(__file__).resolve().parent.parent
FORGED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Port": "4444", "X-Forwarded-Proto": "https"}


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
            return True
    except OSError:
        return False


def wait_until_answering(process, url):
    """Fetches url until the server process answers it (30 s at most; fails at once if it exits)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if process.poll() is not None:
                raise AssertionError(process.stdout.read()) from None
            assert time.monotonic() < deadline, "chat-daphne did not answer within 30 s"
            time.sleep(0.1)


class Daphne:
    """python -m chat.server on a free port with the echo app, as supervisord runs chat-daphne."""

    def __init__(self, directory, options, host="127.0.0.1", env=None):
        self.host = host
        self.port = free_port()
        self.log = directory / "access.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chat.server", "-b", host, "-p", str(self.port), "--proxy-headers",
             *options, "--access-log", str(self.log), "tests.asgi_echo:application"],
            cwd=APP_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})},
        )
        self.netloc = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        wait_until_answering(self.process, f"http://{self.netloc}/ready")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=15)

    def logged_client(self, path, request):
        """The client address of the access log's line for this path and request (GET, WSCONNECTING)."""
        deadline = time.monotonic() + 5
        while True:
            lines = [line for line in self.log.read_text().splitlines() if f'"{request} {path}"' in line]
            if lines or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(lines) == 1, self.log.read_text()
        return lines[0].split(" ", 1)[0]

    def http(self):
        """(the scope's client and scheme, the logged client) of a GET with the forged headers."""
        path = f"/http-{uuid.uuid4().hex}"
        request = urllib.request.Request(f"http://{self.netloc}{path}", headers=FORGED)
        with urllib.request.urlopen(request, timeout=5) as response:
            seen = json.loads(response.read())
        return seen, self.logged_client(path, "GET")

    def websocket(self):
        """(the scope's client, the logged client) of a websocket handshake with the forged headers."""
        path = f"/ws-{uuid.uuid4().hex}"
        with connect(f"ws://{self.netloc}{path}", additional_headers=FORGED, open_timeout=5) as ws:
            seen = json.loads(ws.recv(timeout=5))
        return seen, self.logged_client(path, "WSCONNECTING")


@pytest.fixture
def daphne(tmp_path):
    servers = []

    def start(*options, host="127.0.0.1", env=None):
        directory = tmp_path / f"server{len(servers)}"
        directory.mkdir()
        servers.append(Daphne(directory, options, host, env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def forwarded(server):
    """The client was taken from the forged headers, for HTTP and websockets alike."""
    seen, logged = server.http()
    assert seen == {"client": ["203.0.113.9", 4444], "scheme": "https"}
    assert logged == "203.0.113.9:4444"
    seen, logged = server.websocket()
    assert seen["client"] == ["203.0.113.9", 4444]
    assert logged == "203.0.113.9:4444"


def direct(server):
    """The headers were ignored: the client is the peer, for HTTP and websockets alike."""
    seen, logged = server.http()
    assert seen["client"][0] == server.host and seen["client"][1] != 4444
    assert seen["scheme"] == "http"
    assert logged == f"{server.host}:{seen['client'][1]}"
    seen, logged = server.websocket()
    assert seen["client"][0] == server.host and seen["client"][1] != 4444
    assert logged == f"{server.host}:{seen['client'][1]}"


def test_a_trusted_proxy_names_the_client(daphne):
    forwarded(daphne("--proxy-trusted", "127.0.0.1"))


def test_an_address_the_client_wrote_before_the_proxys_is_not_believed(daphne):
    # A proxy that appends to the client's own X-Forwarded-For: its entry, the rightmost, is the client.
    server = daphne("--proxy-trusted", "127.0.0.1")
    path = f"/http-{uuid.uuid4().hex}"
    headers = {**FORGED, "X-Forwarded-For": "198.51.100.66, 203.0.113.9"}
    with urllib.request.urlopen(urllib.request.Request(f"http://{server.netloc}{path}", headers=headers)) as response:
        assert json.loads(response.read())["client"] == ["203.0.113.9", 4444]
    assert server.logged_client(path, "GET") == "203.0.113.9:4444"


def test_anyone_else_is_the_client_themselves(daphne):
    direct(daphne("--proxy-trusted", "10.9.9.9"))


def test_trusted_networks_repeated_or_comma_separated(daphne):
    forwarded(daphne("--proxy-trusted", "10.9.9.9,127.0.0.0/8"))
    forwarded(daphne("--proxy-trusted", "10.9.9.9", "--proxy-trusted", "::1", "--proxy-trusted", "127.0.0.1/32"))
    direct(daphne("--proxy-trusted", "10.9.9.9", "--proxy-trusted", "::1,10.0.0.0/8"))


def test_the_deployment_gives_the_list_in_the_environment(daphne):
    # CHAT_PROXY_TRUSTED, as chat.env sets it: a release from before the
    # option ignores the variable, where it would refuse an unknown argument.
    forwarded(daphne(env={"CHAT_PROXY_TRUSTED": "10.9.9.9,127.0.0.1"}))
    direct(daphne(env={"CHAT_PROXY_TRUSTED": "10.9.9.9"}))


def test_a_bad_list_in_the_environment_stops_it_at_once():
    result = subprocess.run(
        [sys.executable, "-m", "chat.server", "-p", str(free_port()), "--proxy-headers", "tests.asgi_echo:application"],
        cwd=APP_DIR, capture_output=True, text=True, timeout=30, env={**os.environ, "CHAT_PROXY_TRUSTED": "lb.example.org"},
    )
    assert result.returncode == 2, result
    assert "CHAT_PROXY_TRUSTED: 'lb.example.org' is not an IP address" in result.stderr


def test_without_proxy_trusted_every_peer_is_believed_as_before(daphne):
    forwarded(daphne())


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_peers(daphne):
    forwarded(daphne("--proxy-trusted", "::1", host="::1"))
    forwarded(daphne("--proxy-trusted", "fd00::/8,::/127", host="::1"))
    direct(daphne("--proxy-trusted", "127.0.0.1", host="::1"))


@pytest.mark.parametrize(("options", "message"), [
    (["--proxy-headers", "--proxy-trusted", "10.0.0.1/24"], "'10.0.0.1/24' is not an IP address or network"),
    (["--proxy-headers", "--proxy-trusted", "10.0.0.1,lb.example.org"], "'lb.example.org' is not an IP address"),
    (["--proxy-headers", "--proxy-trusted", "10.0.0.1,"], "'' is not an IP address or network"),
    (["--proxy-trusted", "10.0.0.1"], "--proxy-trusted needs --proxy-headers"),
])
def test_bad_options_stop_it_at_once(options, message):
    result = subprocess.run(
        [sys.executable, "-m", "chat.server", "-p", str(free_port()), *options, "tests.asgi_echo:application"],
        cwd=APP_DIR, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2, result
    assert message in result.stderr


def test_which_peers_are_trusted():
    trusted = TrustedProxies.from_setting("10.0.0.10,10.1.0.0/16,2001:db8::/32")
    assert trusted.trusts("10.0.0.10")
    assert trusted.trusts("10.1.200.3")
    assert trusted.trusts("::ffff:10.0.0.10")  # an IPv4 peer on a dual-stack socket
    assert trusted.trusts("2001:db8::5")
    assert not trusted.trusts("10.0.0.11")
    assert not trusted.trusts("2001:db9::5")
    assert not trusted.trusts(None)  # a UNIX socket's peer has no address
    assert not trusted.trusts("/run/chat.sock")
    assert not TrustedProxies.from_setting("").trusts("127.0.0.1")
    assert TrustedProxies.from_setting("*").trusts("198.51.100.1")


def scope_after(setting, peer, headers, kind="http"):
    """The scope's client and scheme once ProxyHeadersMiddleware(setting) has passed a request from peer."""
    seen = {}

    async def application(scope, receive, send):
        seen.update(client=scope["client"], scheme=scope.get("scheme"))

    scope = {"type": kind, "client": peer, "scheme": "ws" if kind == "websocket" else "http",
             "headers": [(name.lower().encode(), value.encode()) for name, value in headers]}
    asyncio.run(ProxyHeadersMiddleware(application, setting)(scope, None, None))
    return seen


def test_the_client_is_the_rightmost_address_that_is_not_a_proxy():
    # A client that writes its own X-Forwarded-For gets it appended to by each proxy: only what the
    # proxies wrote counts.
    chain = [("X-Forwarded-For", "203.0.113.66, 198.51.100.7, 10.0.0.2")]
    assert scope_after("10.0.0.0/24", ("10.0.0.1", 5000), chain)["client"] == ("198.51.100.7", 0)
    assert scope_after("10.0.0.0/24,198.51.100.7", ("10.0.0.1", 5000), chain)["client"] == ("203.0.113.66", 0)
    # Every entry a proxy: the leftmost, as daphne and uvicorn.
    assert scope_after("*", ("10.0.0.1", 5000), chain)["client"] == ("203.0.113.66", 0)
    # Repeated headers are one list, in order.
    repeated = [("X-Forwarded-For", "203.0.113.66"), ("X-Forwarded-For", "198.51.100.7")]
    assert scope_after("10.0.0.1", ("10.0.0.1", 5000), repeated)["client"] == ("198.51.100.7", 0)
    # From anyone else, nothing changes.
    assert scope_after("10.0.0.0/24", ("192.0.2.1", 5000), chain) == {"client": ("192.0.2.1", 5000), "scheme": "http"}


def test_the_scheme_a_proxy_names_suits_the_connection():
    proxy = ("10.0.0.1", 5000)
    assert scope_after("10.0.0.1", proxy, [("X-Forwarded-Proto", "https")])["scheme"] == "https"
    assert scope_after("10.0.0.1", proxy, [("X-Forwarded-Proto", "https")], "websocket")["scheme"] == "wss"
    assert scope_after("10.0.0.1", proxy, [("X-Forwarded-Proto", "wss")])["scheme"] == "https"
    assert scope_after("10.0.0.1", proxy, [("X-Forwarded-Proto", "gopher")])["scheme"] == "http"
    assert scope_after("10.0.0.1", proxy, [("X-Forwarded-Proto", "https")])["client"] == proxy


def test_the_site_resolves_the_client_under_every_server(settings):
    # chatsite.asgi is what chat-daphne, uvicorn and runserver (daphne's, from INSTALLED_APPS) all serve.
    from chatsite.asgi import application

    assert isinstance(application, ProxyHeadersMiddleware)
    assert settings.ASGI_APPLICATION == "chatsite.asgi.application"


def uvicorn(argv, env):
    """uvicorn serving the echo app behind ProxyHeadersMiddleware on a free port; its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), *argv,
         "tests.asgi_echo:behind_proxies"],
        cwd=APP_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env},
    )
    wait_until_answering(process, f"http://127.0.0.1:{port}/ready")
    return process, f"127.0.0.1:{port}"


@pytest.mark.parametrize(("setting", "believed"), [("127.0.0.1", True), ("10.9.9.9", False)])
def test_under_uvicorn_the_middleware_alone_decides(setting, believed):
    # uvicorn's own proxy headers off: the client is the middleware's work only.
    process, netloc = uvicorn(["--no-proxy-headers"], {"CHAT_PROXY_TRUSTED": setting})
    try:
        request = urllib.request.Request(f"http://{netloc}/", headers=FORGED)
        with urllib.request.urlopen(request, timeout=5) as response:
            seen = json.loads(response.read())
        with connect(f"ws://{netloc}/", additional_headers=FORGED, open_timeout=5) as ws:
            seen_ws = json.loads(ws.recv(timeout=5))
    finally:
        process.terminate()
        process.wait(timeout=15)
    if believed:
        assert seen == {"client": ["203.0.113.9", 4444], "scheme": "https"}
        assert seen_ws == {"client": ["203.0.113.9", 4444], "scheme": "wss"}
    else:
        assert seen["client"][0] == "127.0.0.1" and seen["scheme"] == "http"
        assert seen_ws["client"][0] == "127.0.0.1" and seen_ws["scheme"] == "ws"


def test_the_access_log_on_stdout_is_written_line_by_line():
    # Under supervisord stdout is a pipe: daphne never flushes it, so without
    # line buffering a request's log line waits for a full buffer.
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "chat.server", "-b", "127.0.0.1", "-p", str(port), "--access-log", "-",
         "tests.asgi_echo:application"],
        cwd=APP_DIR, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"},  # as supervisord runs it
    )
    try:
        wait_until_answering(process, f"http://127.0.0.1:{port}/line-by-line")
        ready, _, _ = select.select([process.stdout], [], [], 10)
        assert ready, "no access log line on stdout within 10 s: it is still in daphne's buffer"
        assert '"GET /line-by-line"' in process.stdout.readline()
    finally:
        process.terminate()
        process.wait(timeout=15)
