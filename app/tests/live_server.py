"""The chat in a real server process (chat-daphne or uvicorn) on loopback, for tests that need one.

Each gets its own SQLite file (migrated first) and the Redis it is given; its output goes to a log file the
test can read (the server's own log lines are part of what some tests check).
"""

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .conftest import free_port

APP_DIR = Path(__file__).resolve().parent.parent
ORIGIN = "http://127.0.0.1"


def server_env(directory, redis_url, **settings):
    """The environment of a test server: production defaults, this test's database and Redis, these settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "REDIS_", "CHAT_"))}
    env.update(
        DJANGO_SECRET_KEY="s" * 50,
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        DJANGO_SQLITE_PATH=str(directory / "db.sqlite3"),
        REDIS_URL=redis_url,
        PYTHONPATH=str(APP_DIR),
        PYTHONUNBUFFERED="1",
    )
    env.update({key: str(value) for key, value in settings.items()})
    return env


class LiveServer:
    """`python -m chat.server` (as supervisord runs chat-daphne) or uvicorn, serving chatsite.asgi on a free port."""

    def __init__(self, kind, directory, redis_url, **settings):
        self.kind = kind
        self.env = server_env(directory, redis_url, **settings)
        if not (directory / "db.sqlite3").exists():
            subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], env=self.env, cwd=APP_DIR,
                           check=True, capture_output=True, timeout=120)
        self.port = free_port()
        if kind == "daphne":
            argv = [sys.executable, "-m", "chat.server", "-b", "127.0.0.1", "-p", str(self.port)]
        elif kind == "uvicorn":
            uvicorn = shutil.which("uvicorn", path=str(Path(sys.executable).parent)) or "uvicorn"
            argv = [uvicorn, "--host", "127.0.0.1", "--port", str(self.port), "--lifespan", "off"]
        else:
            raise ValueError(kind)
        self.log_path = directory / f"{kind}-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [*argv, "chatsite.asgi:application"],
            env=self.env, cwd=APP_DIR, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # it answers (a 503 names a part that is down: the test's business)
            except OSError:
                if self.process.poll() is not None:
                    raise AssertionError(f"{kind} exited:\n{self.log()}") from None
                assert time.monotonic() < deadline, f"{kind} did not answer within 30 s:\n{self.log()}"
                time.sleep(0.1)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self):
        """The server process's resident memory, from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def private_redis(directory, *options):
    """A redis-server of the test's own on a free port, which the test may stop and start: (port, start, stop).

    options are more of redis-server's command-line settings, e.g. "--timeout", "1".
    """
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed (apt-get install redis-server)"
    port = free_port()
    state = {}

    def start():
        state["process"] = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory), *options],
            stdout=subprocess.DEVNULL,
        )
        from .conftest import wait_for_redis

        wait_for_redis(f"redis://127.0.0.1:{port}/0")

    def stop():
        process = state.pop("process", None)
        if process is not None:
            process.terminate()
            process.wait(timeout=10)

    return port, start, stop
