import shutil
import socket
import subprocess
import time

import pytest
import redis


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, seconds=20):
    """Returns once check() is true (a Redis error counts as not yet); fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {seconds} s: {check}")
        time.sleep(0.1)


def wait_for_redis(url, seconds=10):
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.ping()
            return client
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_url():
    """A real Redis: REDIS_URL when the environment gives one, else a private server on a free port."""
    import os

    if os.environ.get("REDIS_URL"):
        wait_for_redis(os.environ["REDIS_URL"])
        yield os.environ["REDIS_URL"]
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server), and REDIS_URL is not set.")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_redis(url)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


LAYERS = {
    "memory": lambda url: {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    "redis-pubsub": lambda url: {
        "BACKEND": "chat.layers.LeanRedisPubSubChannelLayer",
        "CONFIG": {"hosts": [{"address": url}]},
    },
    "redis-core": lambda url: {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": url}]},
    },
}


@pytest.fixture(params=list(LAYERS))
def channel_layer(request, settings):
    """Runs a test once per channel layer: in-memory, and both Redis layers against real Redis."""
    url = None
    if request.param != "memory":
        url = request.getfixturevalue("redis_url")
        try:
            redis.Redis.from_url(url).flushdb()
        except redis.ResponseError:
            pass  # a deployed Redis refuses FLUSHDB; each test's channels are new anyway
    settings.CHANNEL_LAYERS = {"default": LAYERS[request.param](url)}
    return request.param


@pytest.fixture(autouse=True)
def plain_static_storage(settings):
    """Templates render without a collectstatic manifest (DEBUG is off in tests)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def run_as_postgres(command):
    """PostgreSQL refuses to run as root: as root, run its tools as the postgres user Debian's package creates."""
    import os

    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, check=True, capture_output=True, text=True)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL: a private cluster of Debian's postgresql on a free port, with a database `chat`."""
    import glob
    import os
    import tempfile
    from pathlib import Path

    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bindirs:
        pytest.fail("PostgreSQL is not installed (apt-get install postgresql).")
    bindir = bindirs[-1]
    # Not under pytest's own temporary directory, which only root may enter.
    data = Path(tempfile.mkdtemp(prefix="chat-test-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    run_as_postgres([f"{bindir}/initdb", "-D", str(data), "-U", "chat", "--auth=trust", "-E", "UTF8"])
    run_as_postgres(
        [
            f"{bindir}/pg_ctl", "-D", str(data), "-l", str(data / "log"), "-w", "start",
            "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off",
        ]
    )
    try:
        run_as_postgres([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "chat", "chat"])
        yield f"postgresql://chat@127.0.0.1:{port}/chat"
    finally:
        run_as_postgres([f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(data, ignore_errors=True)
