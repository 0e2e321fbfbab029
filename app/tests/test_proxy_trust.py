"""chat-daphne --proxy-trusted: X-Forwarded-* believed from the load balancers only.

Each test runs a real `python -m chat.server` with --proxy-headers and an access log, sends an HTTP request
and a websocket handshake from 127.0.0.1 (or ::1) claiming to come from 203.0.113.9 over HTTPS, and reads
who the client was twice: in daphne's access log, and in the scope the application got (tests/asgi_echo.py).
"""

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

from chat.server import TrustedProxyHeader, parse_networks

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
    header = TrustedProxyHeader("X-Forwarded-For", parse_networks("10.0.0.10,10.1.0.0/16,2001:db8::/32"))
    assert header == "X-Forwarded-For" and header.lower() == "x-forwarded-for"  # daphne uses it as before
    assert header.trusts(["10.0.0.10", 40000])
    assert header.trusts(["10.1.200.3", 40000])
    assert header.trusts(["::ffff:10.0.0.10", 40000])  # an IPv4 peer on a dual-stack socket
    assert header.trusts(["2001:db8::5", 40000])
    assert not header.trusts(["10.0.0.11", 40000])
    assert not header.trusts(["2001:db9::5", 40000])
    assert not header.trusts(None)  # a UNIX socket's peer has no address
    assert not header.trusts(["/run/chat.sock", 0])


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
