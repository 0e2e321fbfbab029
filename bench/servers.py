"""The servers the comparison starts on this machine, and their reliable end.

Each is a context manager that starts one process on a free loopback port,
waits until it really answers (Redis: PING; the chat: GET /healthz; the bare
server: a TCP connect), yields it, and stops it on the way out, whatever the
way out is: the process gets SIGTERM, then SIGKILL after 10 s. Every process
also gets SIGTERM from the kernel if the benchmark itself dies (PDEATHSIG),
so none outlives it even after a kill -9. Their output goes to a log file in
the run's work directory, shown when one fails to start.

The chat is started the way the deployment runs it, one process serving
chatsite.asgi:application, under daphne or under uvicorn, with either
channel layer, a fresh SQLite database migrated here, and the per-connection
rate limit raised so that the benchmark's load shape decides, not the limit.
"""

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app"
BIN = Path(sys.executable).parent
START_TIMEOUT = 60  # s for a server to answer after it was started
STOP_TIMEOUT = 10  # s between SIGTERM and SIGKILL
REDIS_TIMEOUT = 300  # s a client may stay idle: the redis role's redis_timeout

# Rate limit for the local chat servers: far above what a benchmark sender
# sends (4/s by default), so no message is refused for it.
RAISED_RATE = "10000"
SETTING_PREFIXES = ("DJANGO_", "CHAT_", "REDIS_", "DATABASE_")


class ServerFailed(RuntimeError):
    """A server did not start; the message ends with its log's last lines."""


class Server:
    """A started process and the URL it serves."""

    def __init__(self, name, process, url, log):
        self.name, self.process, self.url, self.log = name, process, url, log

    @property
    def pid(self):
        return self.process.pid

    def log_tail(self, lines=15):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port():
    """A TCP port nothing listens on at 127.0.0.1 now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent():
    """In the child, before exec: SIGTERM when the benchmark process dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def _started(name, argv, url, ready, workdir, env=None, cwd=REPO):
    """Start argv (env: its whole environment, default ours), wait for ready(), yield, stop."""
    log = workdir / f"{name}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env or os.environ,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which stops us in order
            preexec_fn=_die_with_parent,
        )
    server = Server(name, process, url, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if process.poll() is not None:
                raise ServerFailed(f"{name} exited with code {process.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerFailed(f"{name} did not answer within {START_TIMEOUT} s:\n{server.log_tail()}")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


def _answers_tcp(port, send=None, expect=None):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            if send is None:
                return True
            connection.sendall(send)
            return connection.recv(64).startswith(expect)
    except OSError:
        return False


def http_status(url, timeout=2):
    """The HTTP status a GET gets, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return None


@contextmanager
def redis_server(workdir):
    """A private redis-server on a free port, nothing saved to disk; yields its redis:// URL.

    Idle clients are closed after REDIS_TIMEOUT s, as the deployed Redis does (the redis role's redis_timeout).
    """
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(workdir), "--maxclients", "20000", "--timeout", str(REDIS_TIMEOUT)]
    with _started(
        "redis", argv, f"redis://127.0.0.1:{port}/0", lambda: _answers_tcp(port, b"PING\r\n", b"+PONG"), workdir
    ) as server:
        yield server


@contextmanager
def bare_server(workdir):
    """The reference server (bench.bare_server) on a free port."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.bare_server", "--port", str(port)]
    with _started("bare", argv, f"http://127.0.0.1:{port}/", lambda: _answers_tcp(port), workdir) as server:
        yield server


def chat_env(layer, redis_url, database):
    """The environment of a benchmark chat server: its settings (see app/chatsite/settings.py).

    Settings inherited from this shell (DATABASE_URL, REDIS_SENTINELS, ...)
    are dropped, so that every configuration runs exactly as listed here.
    """
    inherited = {name: value for name, value in os.environ.items() if not name.startswith(SETTING_PREFIXES)}
    return {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_DEBUG": "false",
        "DJANGO_LOG_LEVEL": "WARNING",
        "DJANGO_SQLITE_PATH": str(database),
        "REDIS_URL": redis_url,
        "CHAT_CHANNEL_LAYER": layer,
        "CHAT_RATE_PER_SECOND": RAISED_RATE,
        "CHAT_RATE_BURST": RAISED_RATE,
        "PYTHONPATH": str(APP),
    }


@contextmanager
def chat_server(asgi, layer, redis_url, workdir):
    """The chat in one daphne or uvicorn process, with its own freshly migrated SQLite file."""
    name = f"{asgi}-{layer}"
    env = chat_env(layer, redis_url, workdir / f"{name}.sqlite3")
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
        cwd=APP,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if migrate.returncode != 0:
        raise ServerFailed(f"migrate for {name} failed:\n{migrate.stderr[-2000:]}")
    port = free_port()
    if asgi == "daphne":
        # As deployed (supervisord's chat-daphne, daphne with a lighter
        # per-connection queue), less the inherited socket.
        argv = [sys.executable, "-m", "chat.server", "-b", "127.0.0.1", "-p", str(port), "--ping-interval", "20"]
    elif asgi == "uvicorn":
        # Its defaults (uvloop, httptools, the websockets implementation), minus
        # the access log and the lifespan protocol Django does not speak.
        argv = [
            str(BIN / "uvicorn"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--lifespan",
            "off",
        ]
    else:
        raise ValueError(f"unknown ASGI server {asgi!r}")
    argv.append("chatsite.asgi:application")
    url = f"http://127.0.0.1:{port}/"
    with _started(name, argv, url, lambda: http_status(url + "healthz") == 200, workdir, env, cwd=APP) as server:
        yield server
