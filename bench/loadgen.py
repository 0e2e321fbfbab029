"""The load generator: chat clients driven from several processes.

A run has four phases:

1. connect: all C clients open their websocket at once (at most
   `connect_concurrency` handshakes in flight). Measured: the time until every
   handshake has settled, and the refused (HTTP status) or failed ones.
2. load, by mode. "run": S senders send R messages/s in total for T seconds.
   "idle": the connections are only held open for T seconds. "connect": none.
3. drain ("run" only): until every message the server accepted has reached
   every client of its room, or `drain` seconds have passed.
4. close: the connections are closed and every worker hands in its figures.

The clients are shared out over `workers` processes, each with its own
asyncio loop, so the generator can use every core instead of measuring its
own event loop. The parent process only coordinates them over pipes, reads
the server's memory between phases, and adds the figures up.

What a delivery is: every message text carries a stamp, "bench RUN SENDER
SEQ SEND_NS", with SEND_NS from time.time_ns() when the frame is written.
Each receiving client marks (sender, seq) in a bitmap, so a second copy
counts as duplicated, and records the latency time.time_ns() - SEND_NS when
the frame is handed to it (one clock: generator and server share a machine).
A sender gets either its own message back or an error frame for every
message, so expected deliveries are, per room, (sent - error frames) x the
clients connected in that room; lost = expected - received.

Pacing: the messages of all senders together form one evenly spaced
schedule, message n at start + n/R, sender n mod S sending it, so the load is
a steady stream and not S simultaneous bursts. A sender that falls behind
sends at once; the worst such lag is reported, since a large one means the
generator, not the server, was the bottleneck.
"""

import asyncio
import ipaddress
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import resource
import signal
import socket
import time
import uuid
from array import array
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import memory as server_memory

# Times a handshake answered 503 (the server is busy) is tried again.
BUSY_RETRIES = 20


def retry_after(response, default=1.0, longest=5.0):
    """Seconds a 503's Retry-After asks for (default without one), at most `longest`."""
    try:
        return min(longest, max(0.1, float(response.headers.get("Retry-After", default))))
    except ValueError:
        return default


async def open_unless_refused(open_once, on_busy=None):
    """await open_once(), tried again after Retry-After while the server answers 503 (busy), as the page does.

    The server sheds handshakes past CHAT_HANDSHAKES_IN_FLIGHT. At most
    BUSY_RETRIES times; on_busy() is called for each. Any other refusal, and
    the last 503, are raised.
    """
    for attempt in range(BUSY_RETRIES + 1):
        try:
            return await open_once()
        except InvalidStatus as error:
            if error.response.status_code != 503 or attempt == BUSY_RETRIES:
                raise
            if on_busy is not None:
                on_busy()
            await asyncio.sleep(retry_after(error.response) * (0.5 + random.random()))

# Hard caps, so that a run stays bounded in size and time whatever it is asked.
MAX_CLIENTS = 20_000
MAX_ROOMS = 1_000
MAX_DURATION = 300.0
MAX_RATE = 10_000.0
MAX_DRAIN = 60.0
MAX_WORKERS = 32
MAX_OFFERED_DELIVERIES = 50_000_000  # rate x duration x clients per room, over the run

# A sender sends at most this many messages a second unless told otherwise:
# under the chat's default per-connection limit of 5/s (bursts of 10).
SENDER_RATE = 4.0

PROGRESS_INTERVAL = 0.25  # s between a worker's progress reports
STAMP = "bench"


@dataclass(frozen=True)
class Plan:
    """One run, as the parent and every worker see it."""

    url: str  # the site, http(s):// or ws(s)://
    mode: str  # "run", "idle" or "connect"
    clients: int
    rooms: int = 1
    senders: int = 0
    rate: float = 0.0  # messages/s over all senders
    duration: float = 0.0
    drain: float = 5.0
    workers: int = 1
    connect_concurrency: int = 1000
    open_timeout: float = 30.0
    origin: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def room_names(self):
        return [f"bench-{self.run_id}-{room}" for room in range(self.rooms)]

    @property
    def ws_base(self):
        return ws_base(self.url)

    def room_of(self, client):
        """Clients are dealt to the rooms in turn; clients 0..S-1 are the senders."""
        return client % self.rooms

    def messages_of(self, sender):
        """How many messages a sender sends: its share of the schedule before the end."""
        total = self.rate * self.duration
        return max(0, math.ceil((total - sender) / self.senders))

    def room_layout(self):
        """Per room: {sender: index of its first message in the room's bitmap}, and the room's message count."""
        layouts = [({}, 0) for _ in range(self.rooms)]
        for sender in range(self.senders):
            offsets, count = layouts[self.room_of(sender)]
            offsets[sender] = count
            layouts[self.room_of(sender)] = (offsets, count + self.messages_of(sender))
        return layouts

    def clients_in(self, room):
        return len(range(room, self.clients, self.rooms))

    @property
    def offered_deliveries_per_s(self):
        """Deliveries per second the schedule asks of the server: each room's rate x its clients."""
        if not self.senders:
            return 0.0
        senders = Counter(self.room_of(sender) for sender in range(self.senders))
        return sum(self.rate * count / self.senders * self.clients_in(room) for room, count in senders.items())


def default_senders(rate, clients, rooms=1):
    """S = ceil(R / 4): no sender above 4 messages/s, the chat's limit being 5/s.

    At least one per room (every room has its own senders), at most one per client.
    """
    return min(clients, max(rooms, math.ceil(rate / SENDER_RATE)))


def ws_base(url):
    """The websocket URL a site's paths hang from: http://host:port/ -> ws://host:port."""
    parts = urlsplit(url)
    scheme = "wss" if parts.scheme in {"https", "wss"} else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def guest_session(ws_url, timeout=10.0):
    """The session cookie a browser gets from the room page of this websocket URL, or None (no such page).

    The chat counts a guest's message rate per session, and a client without
    one by its address: the load generator's senders all share this
    machine's, so each sender takes a session as a browser would. (The bare
    server has no pages and no limit.)
    """
    import urllib.error
    import urllib.request

    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    page = f"{scheme}://{parts.netloc}{parts.path.replace('/ws/chat/', '/chat/', 1)}"
    try:
        with urllib.request.urlopen(page, timeout=timeout) as response:
            cookies = response.headers.get_all("Set-Cookie") or []
    except (urllib.error.URLError, OSError):
        return None
    sessions = [cookie.split(";")[0] for cookie in cookies if cookie.startswith("sessionid=")]
    return sessions[0] if sessions else None


def default_origin(url):
    parts = urlsplit(url)
    scheme = "https" if parts.scheme in {"https", "wss"} else "http"
    return f"{scheme}://{parts.netloc}"


class PlanError(ValueError):
    """A plan outside the caps or aimed off this machine; the message says which."""


def check_loopback(url):
    """Raise PlanError unless url is http(s)/ws(s) to this machine (every address it resolves to is loopback)."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https", "ws", "wss"} or not parts.hostname:
        raise PlanError(f"the URL must be http(s):// or ws(s)://HOST[:PORT]/, not {url!r}")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 80)}
    except socket.gaierror as error:
        raise PlanError(f"cannot resolve {parts.hostname}: {error}") from None
    if not all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses):
        raise PlanError(
            f"{parts.hostname} is not a loopback address: this benchmark only loads servers on this "
            "machine (127.0.0.0/8, ::1), such as the demo container's published port."
        )


def check_plan(plan):
    """Raise PlanError for a plan outside the caps, or aimed anywhere but this machine."""
    check_loopback(plan.url)
    limits = [
        (1 <= plan.clients <= MAX_CLIENTS, f"clients must be 1..{MAX_CLIENTS}"),
        (1 <= plan.rooms <= min(MAX_ROOMS, plan.clients), f"rooms must be 1..{MAX_ROOMS} and at most the clients"),
        (
            1 <= plan.workers <= min(MAX_WORKERS, plan.clients),
            f"workers must be 1..{MAX_WORKERS} and at most the clients",
        ),
        (1 <= plan.connect_concurrency <= MAX_CLIENTS, f"connect concurrency must be 1..{MAX_CLIENTS}"),
        (0 <= plan.drain <= MAX_DRAIN, f"drain must be 0..{MAX_DRAIN:g} s"),
        (0 < plan.open_timeout <= 120, "open timeout must be 0..120 s"),
    ]
    if plan.mode != "connect":
        limits.append(
            (0 < plan.duration <= MAX_DURATION, f"duration must be more than 0 and at most {MAX_DURATION:g} s")
        )
    if plan.mode == "run":
        limits += [
            (0 < plan.rate <= MAX_RATE, f"rate must be more than 0 and at most {MAX_RATE:g} messages/s"),
            (
                plan.rooms <= plan.senders <= plan.clients,
                "senders must be at least one per room and at most the clients",
            ),
            (
                plan.offered_deliveries_per_s * plan.duration <= MAX_OFFERED_DELIVERIES,
                f"rate x duration x clients per room must stay under {MAX_OFFERED_DELIVERIES:,} deliveries",
            ),
        ]
    for ok, message in limits:
        if not ok:
            raise PlanError(message)


# ---------------------------------------------------------------- the workers


class _Client:
    __slots__ = ("room", "url", "sender", "ws", "seen", "reader")

    def __init__(self, room, url, sender):
        self.room, self.url, self.sender = room, url, sender
        self.ws = self.seen = self.reader = None


class PipeWorker:
    """A worker process's side of its pipe: commands in from the parent, reports out."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.commands = asyncio.Queue()

    def _on_command(self):
        try:
            self.commands.put_nowait(self.pipe.recv())
        except (EOFError, OSError):  # the parent is gone: stop
            asyncio.get_running_loop().remove_reader(self.pipe.fileno())
            self.commands.put_nowait(("stop",))

    async def _command(self, *expected):
        command = await self.commands.get()
        if command[0] not in expected:
            raise RuntimeError(f"worker expected {expected}, got {command[0]!r}")
        return command

    def _report(self, *message):
        # The event loop made the pipe non-blocking when it started watching
        # it; a large report (every latency sample) must not fail with EAGAIN.
        os.set_blocking(self.pipe.fileno(), True)
        self.pipe.send(message)


class _Worker(PipeWorker):
    """One process's share of the clients, driven by commands from the parent."""

    def __init__(self, plan, index, pipe):
        super().__init__(pipe)
        self.plan = plan
        self.layout = plan.room_layout()
        names = plan.room_names
        self.clients = [
            _Client(
                plan.room_of(client),
                f"{plan.ws_base}/ws/chat/{names[plan.room_of(client)]}/",
                client if client < plan.senders else None,
            )
            for client in range(index, plan.clients, plan.workers)
        ]
        rooms = plan.rooms
        self.connected = [0] * rooms
        self.sent = [0] * rooms
        self.errors = [0] * rooms
        self.received = [0] * rooms
        self.refused = Counter()
        self.failed = Counter()
        self.busy_retries = 0  # handshakes answered 503 (busy) and tried again
        self.handshake_us = array("I")
        self.settled_ns = 0
        self.answered = 0  # messages of our senders answered: own copy back, or an error frame
        self.senders_done = False
        self.duplicated = 0
        self.latency_us = array("I")
        self.last_receive_ns = 0
        self.error_samples = []
        self.send_lag_max = 0.0
        self.closed_early = 0
        self.stopping = False

    # -- phases

    async def main(self):
        asyncio.get_running_loop().add_reader(self.pipe.fileno(), self._on_command)
        self._report("ready")
        _, start_ns = await self._command("connect")
        await _sleep_until_ns(start_ns)
        await self._connect_all()
        self._report(
            "connected",
            {
                "per_room": self.connected,
                "refused": dict(self.refused),
                "failed": dict(self.failed),
                "busy_retries": self.busy_retries,
                "settled_ns": self.settled_ns,
                "handshake_us": self.handshake_us.tobytes(),
            },
        )
        progress = asyncio.create_task(self._progress())
        command = await self._command("start", "stop")
        senders = []
        if command[0] == "start":
            loop = asyncio.get_running_loop()
            start = loop.time() + (command[1] - time.time_ns()) / 1e9
            senders = [
                asyncio.create_task(self._send(client, start)) for client in self.clients if client.sender is not None
            ]
            watcher = asyncio.create_task(self._mark_senders_done(senders))
            await self._command("stop")
            watcher.cancel()
        self.stopping = True
        progress.cancel()
        for task in senders:
            task.cancel()
        await self._close_all()
        self._report("result", self._figures())

    async def _connect_all(self):
        gate = asyncio.Semaphore(max(1, math.ceil(self.plan.connect_concurrency / self.plan.workers)))

        async def open_one(client):
            async with gate:
                headers = {}
                if client.sender is not None:
                    cookie = await asyncio.get_running_loop().run_in_executor(None, guest_session, client.url)
                    headers = {"Cookie": cookie} if cookie else {}
                started = None

                async def open_once():
                    nonlocal started
                    started = time.perf_counter()  # the handshake that succeeds, not the waits before it
                    return await connect(
                        client.url,
                        origin=self.plan.origin,
                        additional_headers=headers,
                        open_timeout=self.plan.open_timeout,
                        # No keepalive pings of our own: a loaded server answering
                        # late must not make the client hang up. The server's pings
                        # are still answered.
                        ping_interval=None,
                        close_timeout=2,
                        # No permessage-deflate: every server sends the same bytes.
                        compression=None,
                        proxy=None,
                    )

                def busy():
                    self.busy_retries += 1

                try:
                    client.ws = await open_unless_refused(open_once, busy)
                except InvalidStatus as error:
                    self.refused[error.response.status_code] += 1
                except Exception as error:  # any other failed handshake is counted, by kind
                    self.failed[type(error).__name__] += 1
                else:
                    self.handshake_us.append(int((time.perf_counter() - started) * 1e6))
                    self.connected[client.room] += 1
                    client.reader = asyncio.create_task(self._receive(client))
                finally:
                    self.settled_ns = time.time_ns()

        await asyncio.gather(*(open_one(client) for client in self.clients))

    async def _send(self, client, start):
        loop = asyncio.get_running_loop()
        plan = self.plan
        if client.ws is None:
            return
        interval = plan.senders / plan.rate
        first = start + client.sender / plan.rate
        for seq in range(plan.messages_of(client.sender)):
            due = first + seq * interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.send_lag_max = max(self.send_lag_max, loop.time() - due)
            text = f"{STAMP} {plan.run_id} {client.sender} {seq} {time.time_ns()}"
            try:
                await client.ws.send(json.dumps({"message": text, "user": f"bench-{client.sender}"}))
            except ConnectionClosed:
                return
            self.sent[client.room] += 1

    async def _mark_senders_done(self, senders):
        await asyncio.gather(*senders, return_exceptions=True)
        self.senders_done = True

    async def _receive(self, client):
        try:
            async for frame in client.ws:
                self._on_frame(client, frame, time.time_ns())
        except ConnectionClosed:
            pass
        if not self.stopping:
            self.closed_early += 1

    def _on_frame(self, client, frame, now_ns):
        try:
            data = json.loads(frame)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {"error": f"unreadable frame from the server: {str(frame)[:80]!r}"}
        if "error" in data:
            self.errors[client.room] += 1
            if client.sender is not None:
                self.answered += 1
            if len(self.error_samples) < 3 and data["error"] not in self.error_samples:
                self.error_samples.append(data["error"])
            return
        if data.get("history"):
            return
        stamp = str(data.get("message", "")).split(" ")
        if len(stamp) != 5 or stamp[0] != STAMP or stamp[1] != self.plan.run_id:
            return
        sender, seq, sent_ns = int(stamp[2]), int(stamp[3]), int(stamp[4])
        offsets, count = self.layout[client.room]
        bit = offsets.get(sender, count) + seq
        if bit >= count:
            return
        if client.seen is None:
            client.seen = bytearray((count + 7) // 8)
        byte, mask = bit >> 3, 1 << (bit & 7)
        if client.seen[byte] & mask:
            self.duplicated += 1
            return
        client.seen[byte] |= mask
        self.received[client.room] += 1
        self.latency_us.append(min(max(0, (now_ns - sent_ns) // 1000), 0xFFFFFFFF))
        self.last_receive_ns = max(self.last_receive_ns, now_ns)
        if sender == client.sender:
            self.answered += 1

    async def _progress(self):
        while True:
            self._report(
                "progress",
                {
                    "sent": self.sent,
                    "errors": self.errors,
                    "received": self.received,
                    "answered": self.answered,
                    "senders_done": self.senders_done,
                },
            )
            await asyncio.sleep(PROGRESS_INTERVAL)

    async def _close_all(self):
        open_clients = [client for client in self.clients if client.ws is not None]
        await asyncio.gather(*(client.ws.close() for client in open_clients), return_exceptions=True)
        readers = [client.reader for client in open_clients]
        if readers:
            await asyncio.wait(readers, timeout=5)

    def _figures(self):
        return {
            "sent": self.sent,
            "errors": self.errors,
            "received": self.received,
            "duplicated": self.duplicated,
            "latency_us": self.latency_us.tobytes(),
            "last_receive_ns": self.last_receive_ns,
            "error_samples": self.error_samples,
            "send_lag_max_ms": self.send_lag_max * 1000,
            "closed_early": self.closed_early,
        }


async def _sleep_until_ns(wall_ns):
    delay = (wall_ns - time.time_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


def _worker_main(plan, index, pipe, worker_class=_Worker):
    """A worker process: its clients on one event loop (uvloop when installed)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    worker = worker_class(plan, index, pipe)
    try:
        import uvloop
    except ImportError:
        asyncio.run(worker.main())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(worker.main())


# ---------------------------------------------------------------- the parent


class Workers:
    """The worker processes and their pipes; always ended on the way out.

    Each runs worker_class(plan, index, pipe).main() (bench.churn has its own).
    """

    def __init__(self, plan, worker_class=_Worker):
        context = multiprocessing.get_context("spawn")
        self.pipes, self.processes = [], []
        for index in range(plan.workers):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(plan, index, child_end, worker_class),
                name=f"bench-worker-{index}",
                daemon=True,
            )
            process.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.processes.append(process)
        self.progress = [None] * plan.workers
        self.finished = False

    def tell(self, *command):
        for pipe in self.pipes:
            pipe.send(command)

    def poll(self, timeout):
        """Take in the workers' progress reports for up to `timeout` seconds."""
        for pipe in multiprocessing.connection.wait(self.pipes, timeout):
            self._take(pipe, "progress")

    def gather(self, kind, timeout):
        """Each worker's next `kind` message (progress reports meanwhile are kept)."""
        answers = {}
        deadline = time.monotonic() + timeout
        while len(answers) < len(self.pipes):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the load generator's workers did not report '{kind}' within {timeout:.0f} s")
            waiting = [pipe for index, pipe in enumerate(self.pipes) if index not in answers]
            for pipe in multiprocessing.connection.wait(waiting, left):
                index = self.pipes.index(pipe)
                message = self._take(pipe, kind)
                if message is not None:
                    answers[index] = message
        return [answers[index] for index in range(len(self.pipes))]

    def _take(self, pipe, kind):
        index = self.pipes.index(pipe)
        try:
            message = pipe.recv()
        except EOFError:
            self.processes[index].join(1)
            raise RuntimeError(
                f"load generator worker {index} exited (code {self.processes[index].exitcode})"
            ) from None
        if message[0] == "progress":
            self.progress[index] = message[1]
        if message[0] == kind:
            return message[1] if len(message) > 1 else True
        return None

    def close(self):
        """Wait for workers that handed in their results; end the others (an error, Ctrl-C) at once."""
        for process in self.processes:
            process.join(timeout=5 if self.finished else 0)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for pipe in self.pipes:
            pipe.close()


def _sum(lists):
    return [sum(column) for column in zip(*lists)]


def _drained(plan, workers, connected):
    """True once every accepted message has reached every client of its room, and every sender had an answer."""
    reports = workers.progress
    if any(report is None or not report["senders_done"] for report in reports):
        return False
    sent, errors, received = (_sum([report[key] for report in reports]) for key in ("sent", "errors", "received"))
    if sum(report["answered"] for report in reports) < sum(sent):
        return False
    return all(received[room] >= (sent[room] - errors[room]) * connected[room] for room in range(plan.rooms))


def _read_memory(source):
    return server_memory.total_kib(source.read()) if source else None


def run(plan, memory=None):
    """Run a plan and return its figures (a dict, see `summarize`).

    `memory` is a bench.memory source (LocalProcesses or ContainerProcesses),
    read before connecting, once all are connected, and at the end of the
    load (while the clients are still connected).
    """
    check_plan(plan)
    readings = {"before_kib": None}
    workers = Workers(plan)
    try:
        workers.gather("ready", timeout=60)
        readings["before_kib"] = _read_memory(memory)
        connect_ns = time.time_ns() + 200_000_000
        workers.tell("connect", connect_ns)
        # Every handshake has its own timeout; they run connect_concurrency at a time.
        rounds = math.ceil(plan.clients / plan.connect_concurrency)
        connects = workers.gather("connected", timeout=rounds * plan.open_timeout + 30)
        connected = _sum([report["per_room"] for report in connects])
        readings["connected_kib"] = _read_memory(memory)
        start_ns = drained = None
        if plan.mode == "run":
            start_ns = time.time_ns() + 300_000_000
            workers.tell("start", start_ns)
            end = start_ns / 1e9 + plan.duration
            while time.time() < end:
                workers.poll(min(PROGRESS_INTERVAL, max(0.0, end - time.time())))
            readings["loaded_kib"] = _read_memory(memory)
            drained = False
            while time.time() < end + plan.drain and not drained:
                workers.poll(PROGRESS_INTERVAL)
                drained = _drained(plan, workers, connected)
        elif plan.mode == "idle":
            end = time.time() + plan.duration
            while time.time() < end:
                workers.poll(min(PROGRESS_INTERVAL, max(0.0, end - time.time())))
            readings["after_kib"] = _read_memory(memory)
        workers.tell("stop")
        results = workers.gather("result", timeout=60)
        workers.finished = True
    finally:
        workers.close()
    figures = summarize(plan, connects, results, connect_ns, start_ns)
    figures["drained"] = drained
    figures["memory"] = _memory_figures(plan, memory, readings, figures["connect"]["accepted"])
    return figures


def _percentiles(values, points=(50, 95, 99)):
    if not values:
        return None
    ordered = sorted(values)
    figures = {f"p{point}": ordered[max(0, math.ceil(point / 100 * len(ordered)) - 1)] / 1000 for point in points}
    figures["max"] = ordered[-1] / 1000
    figures["count"] = len(ordered)
    return figures


def summarize(plan, connects, results, connect_ns, start_ns):
    """Add up the workers' figures into the run's report (times in ms unless named _s)."""
    refused, failed, handshakes = Counter(), Counter(), array("I")
    for report in connects:
        refused.update({str(status): count for status, count in report["refused"].items()})
        failed.update(report["failed"])
        handshakes.frombytes(report["handshake_us"])
    connected = _sum([report["per_room"] for report in connects])
    sent, errors, received = (_sum([result[key] for result in results]) for key in ("sent", "errors", "received"))
    expected = sum(max(0, sent[room] - errors[room]) * connected[room] for room in range(plan.rooms))
    latencies = array("I")
    for result in results:
        latencies.frombytes(result["latency_us"])
    last_receive_ns = max(result["last_receive_ns"] for result in results)
    # Over the load's duration, or until the last delivery if that came later.
    span = max(plan.duration, (last_receive_ns - start_ns) / 1e9) if start_ns else 0
    samples = []
    for result in results:
        samples += [sample for sample in result["error_samples"] if sample not in samples]
    handshake_ms = _percentiles(handshakes)
    return {
        "url": plan.url,
        "mode": plan.mode,
        "run_id": plan.run_id,
        "params": {
            "clients": plan.clients,
            "rooms": plan.rooms,
            "senders": plan.senders,
            "rate": plan.rate,
            "duration_s": plan.duration,
            "drain_s": plan.drain,
            "workers": plan.workers,
            "connect_concurrency": plan.connect_concurrency,
            "origin": plan.origin,
            "offered_deliveries_per_s": round(plan.offered_deliveries_per_s, 1),
        },
        "connect": {
            "attempted": plan.clients,
            "accepted": sum(connected),
            "refused": sum(refused.values()),
            "refused_by_status": dict(refused),
            "busy_retries": sum(report.get("busy_retries", 0) for report in connects),
            "failed": sum(failed.values()),
            "failed_by_error": dict(failed),
            "time_s": round(max(report["settled_ns"] for report in connects) / 1e9 - connect_ns / 1e9, 3),
            "handshake_ms": {key: handshake_ms[key] for key in ("p50", "p99", "max")} if handshake_ms else None,
        },
        "sent": sum(sent),
        "errors": sum(errors),
        "error_samples": samples[:3],
        "expected": expected,
        "received": sum(received),
        "lost": max(0, expected - sum(received)),
        "duplicated": sum(result["duplicated"] for result in results),
        "deliveries_per_s": round(sum(received) / span, 1) if span else 0.0,
        "latency_ms": _percentiles(latencies),
        "closed_early": sum(result["closed_early"] for result in results),
        "send_lag_max_ms": round(max(result["send_lag_max_ms"] for result in results), 1),
    }


def _memory_figures(plan, source, readings, accepted):
    if source is None:
        return None
    figures = {"source": source.describe(), **readings}
    if (
        plan.mode == "idle"
        and readings.get("after_kib") is not None
        and readings["before_kib"] is not None
        and accepted
    ):
        figures["per_connection_kib"] = round((readings["after_kib"] - readings["before_kib"]) / accepted, 2)
    return figures


def default_workers():
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))
