"""What Redis holds for the chat: pub/sub channels, subscribers of given channels, clients.

The chat's pub/sub channel layer subscribes one Redis channel per websocket
("asgispecific.<hex>") and, per server process, one per room that has a
member there ("asgi__group__chat.<sha256 of the room>"). A websocket whose
clean-up did not run leaves its channel, or its process's subscription to a
room, behind: what the churn soak (bench.churn) looks for.

This file is also a script, stdlib only, so that it runs unchanged where Redis
is: on this machine (ContainerRedis's local twin, LocalRedis) or piped into
the demo container's python3 (`podman exec -i chat-demo python3 -`). It
reads from its environment:

    BENCH_REDIS_URL   redis://[user:password@]host:port/db, or
    BENCH_ENV_FILE    a deployed env file (/etc/chat/chat.env) whose REDIS_URL it reads
    BENCH_CHANNELS    channels to count subscribers of (PUBSUB NUMSUB), comma-separated

and prints one JSON object: channels (PUBSUB CHANNELS, counted: all, the
websockets' own, the rooms'), numsub, clients. The password is sent to
Redis and nowhere else; no error message carries the URL.

Clients: connected_clients from INFO, less this probe's own connection.
The deployed Redis denies INFO to the chat's user (-@dangerous); then the
established TCP connections to Redis's port are counted from /proc/net/tcp
(so the probe must run in Redis's network namespace, as it does in the
container), and "clients_source" says which was used.
"""

import json
import os
import shlex
import socket
import subprocess
import sys
from urllib.parse import unquote, urlsplit

SPECIFIC = "asgispecific."
GROUP = "asgi__group__"
TIMEOUT = 10  # s for one probe


class ProbeError(Exception):
    pass


# ---------------------------------------------------------------- the script


def _redis_url():
    if os.environ.get("BENCH_REDIS_URL"):
        return os.environ["BENCH_REDIS_URL"]
    path = os.environ.get("BENCH_ENV_FILE")
    if not path:
        raise ProbeError("neither BENCH_REDIS_URL nor BENCH_ENV_FILE is set")
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as error:
        raise ProbeError(f"cannot read {path}: {error.strerror}") from None
    for line in lines:
        name, _, value = line.partition("=")
        if name.strip() == "REDIS_URL":
            words = shlex.split(value)
            # Several URLs shard the layer; the first is probed (the demo has one).
            return words[0].split(",")[0] if words else ""
    raise ProbeError(f"{path} sets no REDIS_URL")


def _command(*words):
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode() if isinstance(word, str) else word
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Connection:
    def __init__(self, host, port):
        self.socket = socket.create_connection((host, port), timeout=TIMEOUT)
        self.file = self.socket.makefile("rb")

    def close(self):
        self.file.close()
        self.socket.close()

    def call(self, *words):
        self.socket.sendall(_command(*words))
        return self._reply()

    def _reply(self):
        line = self.file.readline()
        if not line:
            raise ProbeError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return ProbeError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)[:-2]
            return data.decode(errors="replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise ProbeError(f"unexpected reply from Redis: {line[:40]!r}")


def _established_to(port):
    """Established TCP connections whose local port is Redis's: its clients, seen from its side."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def probe():
    url = urlsplit(_redis_url())
    if url.scheme != "redis":
        raise ProbeError(f"only redis:// URLs are probed, not {url.scheme}://")
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    wanted = [name for name in os.environ.get("BENCH_CHANNELS", "").split(",") if name]
    connection = _Connection(host, port)
    try:
        if url.password is not None:
            credentials = [unquote(url.username), unquote(url.password)] if url.username else [unquote(url.password)]
            if isinstance(connection.call("AUTH", *credentials), ProbeError):
                raise ProbeError("Redis refused the password from the URL")
        channels = connection.call("PUBSUB", "CHANNELS")
        if isinstance(channels, ProbeError):
            raise channels
        numsub = connection.call("PUBSUB", "NUMSUB", *wanted) if wanted else []
        if isinstance(numsub, ProbeError):
            raise numsub
        info = connection.call("INFO", "clients")
    finally:
        connection.close()
    figures = {
        "channels": len(channels),
        "websocket_channels": sum(1 for name in channels if name.startswith(SPECIFIC)),
        "room_channels": sum(1 for name in channels if name.startswith(GROUP)),
        "numsub": {numsub[index]: numsub[index + 1] for index in range(0, len(numsub), 2)},
    }
    if isinstance(info, str):
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        figures["clients"] = int(fields["connected_clients"]) - 1  # less this probe
        figures["clients_source"] = "INFO clients"
    else:
        # Counted after our connection closed; one in its closing handshake is not ESTABLISHED.
        figures["clients"] = _established_to(port)
        figures["clients_source"] = f"established TCP connections to port {port} (INFO denied: {info})"
    return figures


def main():
    try:
        figures = probe()
    except (OSError, ProbeError) as error:
        figures = {"error": str(error)}
    print(json.dumps(figures))


# ---------------------------------------------------------------- from the benchmark


def _run(argv, env, stdin=None):
    try:
        done = subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True, timeout=TIMEOUT + 10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"error": f"probe did not run: {error}"}
    if done.returncode != 0:
        return {"error": f"probe exited with {done.returncode}: {done.stderr.strip()[-300:]}"}
    try:
        return json.loads(done.stdout)
    except ValueError:
        return {"error": f"probe printed {done.stdout[:200]!r}"}


class LocalRedis:
    """A Redis on this machine, by URL (the local configurations' redis-server)."""

    def __init__(self, url):
        self.url = url

    def describe(self):
        return f"Redis at {urlsplit(self.url).netloc.rpartition('@')[2]}"

    def read(self, channels=()):
        env = {**os.environ, "BENCH_REDIS_URL": self.url, "BENCH_CHANNELS": ",".join(channels)}
        env.pop("BENCH_ENV_FILE", None)
        return _run([sys.executable, __file__], env)


class ContainerRedis:
    """The Redis a container's chat uses, reached from inside it with the URL its env file holds."""

    def __init__(self, container, env_file="/etc/chat/chat.env"):
        self.container, self.env_file = container, env_file

    def describe(self):
        return f"the Redis in {self.env_file}'s REDIS_URL, probed inside container {self.container}"

    def read(self, channels=()):
        argv = ["podman", "exec", "-i", "-e", f"BENCH_ENV_FILE={self.env_file}"]
        argv += ["-e", f"BENCH_CHANNELS={','.join(channels)}", self.container, "python3", "-"]
        with open(__file__, encoding="utf-8") as source:
            return _run(argv, os.environ, stdin=source.read())


if __name__ == "__main__":
    main()
