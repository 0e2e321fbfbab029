"""The churn soak (bench churn): connections come and go for minutes while messages flow. Does the server leak?

Clients connect and disconnect at a steady rate (200 a second by default)
while a set of steady clients stay connected, some of them sending. Between
the phases, and every --sample-interval seconds during the soak, it reads
what the server holds: Redis's pub/sub channels (PUBSUB CHANNELS, and
NUMSUB of the run's rooms), Redis's clients, and each server process's RSS
and open files. Phases:

1. before: nothing of this run connected.
2. the steady clients connect (dealt to --rooms rooms in turn; the first
   --senders of them send, --rate messages/s in all); messages flow until
   phase 6.
3. warm-up: churn for --warmup s, then it stops; --settle s later, "warm".
4. the soak: churn for --duration s, sampled. It stops; --settle s later,
   "after soak": the same clients connected as at "warm", so the two compare.
5. the senders stop; the steady clients get the last messages (--drain s at
   most) and close; once Redis is back to its "before" channels and clients
   (or --settle + --redis-timeout s have passed), "after". The connections a
   burst added to the server processes' Redis pools stay open until they
   have been idle for Redis's timeout (the redis role's redis_timeout, 300 s
   by default); --redis-timeout tells the soak how long that is.

A churning client joins one of the rooms at random, reads what it is sent
for a random time (0 to 2 x --hold s), and leaves: with a close handshake,
or (--abrupt of them) by dropping the TCP connection. --churn-send of them
send one message first, so that senders leave too.

Each steady client checks every message it gets, exactly once: by its id
(today's frames), by its "seq" when the server sends one (the protocol's
per-room number), and by the stamp in its text (a message stored twice
would come with two ids). A message is expected by every steady client of
its room if any of them got it; a steady sender's message is also expected
back by its sender (or an ack or an error frame), else it counts as lost.
A steady client the server disconnects reconnects with ?since=<last id> and
follows the server's resync pages ({"page": "resync", "more": true}); when
the server acks, it resends what was not acked, with the same client_id.

The targets (issue 9) are printed as PASS/FAIL lines; nothing is asserted:
- 0 pub/sub channels and 0 Redis clients left over (after, against before),
- RSS after the soak within 5 % of after warm-up, per process,
- 0 messages lost or repeated for the steady clients.
"""

import asyncio
import hashlib
import json
import math
import random
import subprocess
import time
import uuid
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import loadgen
from .servers import REPO

MAX_STEADY = 5_000
MAX_ROOMS = 100
MAX_CHURN_RATE = 2_000.0  # connections/s
MAX_RATE = 1_000.0  # messages/s over the steady senders
MAX_HOLD = 60.0
MAX_SOAK = 3_600.0  # s, warm-up and soak each
MAX_SETTLE = 120.0
MAX_IN_FLIGHT = 10_000  # churning connections open at once, over all workers
RSS_TOLERANCE = 0.05  # RSS after the soak within 5 % of after warm-up
STAMP = "churn"
PROGRESS_INTERVAL = 0.5


@dataclass(frozen=True)
class ChurnPlan:
    url: str
    steady: int = 100
    rooms: int = 10
    senders: int = 0  # 0: max(rooms, ceil(rate / 4))
    rate: float = 20.0
    churn_rate: float = 200.0
    hold: float = 1.0
    abrupt: float = 0.25
    churn_send: float = 0.1
    warmup: float = 30.0
    duration: float = 300.0
    sample_interval: float = 10.0
    settle: float = 5.0
    redis_timeout: float = 300.0
    drain: float = 5.0
    workers: int = 1
    connect_concurrency: int = 1000
    open_timeout: float = 10.0
    origin: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def room_names(self):
        return [f"churn-{self.run_id}-{room}" for room in range(self.rooms)]

    @property
    def room_channels(self):
        """The rooms' Redis channels under the chat's pub/sub layer (app/chat/protocol.py's group_name)."""
        return ["asgi__group__chat." + hashlib.sha256(name.encode()).hexdigest() for name in self.room_names]

    @property
    def sender_count(self):
        return self.senders or min(self.steady, max(self.rooms, math.ceil(self.rate / loadgen.SENDER_RATE)))

    def room_url(self, room, since=None):
        url = f"{loadgen.ws_base(self.url)}/ws/chat/{self.room_names[room]}/"
        return url if since is None else f"{url}?since={since}"


def check(plan):
    loadgen.check_loopback(plan.url)
    limits = [
        (1 <= plan.steady <= MAX_STEADY, f"steady clients must be 1..{MAX_STEADY}"),
        (
            1 <= plan.rooms <= min(MAX_ROOMS, plan.steady),
            f"rooms must be 1..{MAX_ROOMS} and at most the steady clients",
        ),
        (
            plan.rooms <= plan.sender_count <= plan.steady,
            "senders must be at least one per room, at most the steady clients",
        ),
        (0 < plan.rate <= MAX_RATE, f"rate must be more than 0 and at most {MAX_RATE:g} messages/s"),
        (0 < plan.churn_rate <= MAX_CHURN_RATE, f"churn rate must be more than 0 and at most {MAX_CHURN_RATE:g}/s"),
        (0 <= plan.hold <= MAX_HOLD, f"hold must be 0..{MAX_HOLD:g} s"),
        (0 <= plan.abrupt <= 1 and 0 <= plan.churn_send <= 1, "--abrupt and --churn-send are fractions, 0..1"),
        (
            0 <= plan.warmup <= MAX_SOAK and 0 < plan.duration <= MAX_SOAK,
            f"warm-up and duration at most {MAX_SOAK:g} s",
        ),
        (0 < plan.sample_interval <= plan.duration, "the sample interval must be more than 0 and at most the duration"),
        (0 <= plan.settle <= MAX_SETTLE, f"settle must be 0..{MAX_SETTLE:g} s"),
        (0 <= plan.redis_timeout <= MAX_SOAK, f"the Redis timeout must be 0..{MAX_SOAK:g} s"),
        (0 <= plan.drain <= loadgen.MAX_DRAIN, f"drain must be 0..{loadgen.MAX_DRAIN:g} s"),
        (
            1 <= plan.workers <= min(loadgen.MAX_WORKERS, plan.steady),
            "workers must be 1..32 and at most the steady clients",
        ),
        (0 < plan.open_timeout <= 120, "open timeout must be 0..120 s"),
    ]
    for ok, message in limits:
        if not ok:
            raise loadgen.PlanError(message)


# ---------------------------------------------------------------- the workers


class _Steady:
    """A client that stays: it checks that every message of its room arrives once."""

    __slots__ = (
        "number",
        "room",
        "sender",
        "cookie",
        "ws",
        "reader",
        "ids",
        "seqs",
        "stamps",
        "last_id",
        "resyncing",
        "duplicated_ids",
        "duplicated_seqs",
        "duplicated_stamps",
        "reconnects",
        "sent",
        "answered",
        "pending",
    )

    def __init__(self, number, room, sender):
        self.number, self.room, self.sender = number, room, sender
        self.ws = self.reader = self.cookie = None
        self.ids, self.seqs, self.stamps = set(), set(), set()
        self.last_id = 0
        self.resyncing = False  # connected with ?since=: the backlog is messages we missed, not history
        self.duplicated_ids = self.duplicated_seqs = self.duplicated_stamps = self.reconnects = 0
        self.sent = 0
        self.answered = set()  # our message numbers the server answered (our copy, an ack, an error)
        self.pending = {}  # message number -> frame, sent and not yet answered


class _ChurnWorker(loadgen.PipeWorker):
    """One process's share: steady clients index, index + workers, ...; churn at churn_rate / workers."""

    def __init__(self, plan, index, pipe):
        super().__init__(pipe)
        self.plan, self.index = plan, index
        senders = plan.sender_count
        self.steady = [
            _Steady(number, number % plan.rooms, number if number < senders else None)
            for number in range(index, plan.steady, plan.workers)
        ]
        self.closing = False
        self.quiet = False
        self.churning = False
        self.acks_seen = False  # the server acks client_ids (protocol v2): resend what was not acked
        self.tasks = set()
        self.churn = Counter()
        self.refused, self.failed = Counter(), Counter()
        self.handshake_us = array("I")
        self.latency_us = array("I")
        self.in_flight = 0
        self.churn_lag_max = 0.0
        self.errors = 0
        self.errors_unmatched = 0  # error frames without a client_id: for a sender, one message answered
        self.error_samples = []
        self.connect_failed = Counter()

    def _spawn(self, coroutine):
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _open(self, url, cookie=None):
        return await connect(
            url,
            origin=self.plan.origin,
            additional_headers={"Cookie": cookie} if cookie else {},
            open_timeout=self.plan.open_timeout,
            ping_interval=None,  # the server's pings are answered; we send none (see bench.loadgen)
            close_timeout=2,
            compression=None,
            proxy=None,
        )

    # -- phases

    async def main(self):
        asyncio.get_running_loop().add_reader(self.pipe.fileno(), self._on_command)
        self._report("ready")
        await self._command("connect")
        await self._connect_steady()
        self._report(
            "connected", {"open": sum(1 for client in self.steady if client.ws), "failed": dict(self.connect_failed)}
        )
        progress = self._spawn(self._progress())
        senders = []
        churn = None
        while True:
            command = await self._command("messages", "churn", "calm", "quiet", "close", "stop")
            if command[0] == "messages":
                loop = asyncio.get_running_loop()
                start = loop.time() + (command[1] - time.time_ns()) / 1e9
                senders = [
                    self._spawn(self._send(client, start)) for client in self.steady if client.sender is not None
                ]
            elif command[0] == "churn":
                self.churning = True
                churn = self._spawn(self._churn())
            elif command[0] == "calm":
                self.churning = False
                if churn:
                    await churn
                deadline = time.monotonic() + self.plan.open_timeout + 2 * self.plan.hold + 10
                while self.in_flight and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                self._report("calm", self.in_flight)
            elif command[0] == "quiet":
                self.quiet = True
                for task in senders:
                    task.cancel()
            else:
                break
        self.closing = True
        self.churning = False
        progress.cancel()
        for task in senders:
            task.cancel()
        open_clients = [client for client in self.steady if client.ws is not None]
        await asyncio.gather(*(client.ws.close() for client in open_clients), return_exceptions=True)
        readers = [client.reader for client in self.steady if client.reader is not None]
        if readers:
            await asyncio.wait(readers, timeout=5)
        self._report("result", self._figures())

    async def _connect_steady(self):
        gate = asyncio.Semaphore(max(1, math.ceil(self.plan.connect_concurrency / self.plan.workers)))

        async def open_one(client):
            async with gate:
                if client.sender is not None:
                    # A sender's messages count against its own session, not this machine's address.
                    client.cookie = await asyncio.get_running_loop().run_in_executor(
                        None, loadgen.guest_session, self.plan.room_url(client.room)
                    )
                # A client that means to stay comes back when the server is busy.
                try:
                    client.ws = await loadgen.open_unless_refused(
                        lambda: self._open(self.plan.room_url(client.room), client.cookie)
                    )
                except InvalidStatus as error:
                    self.connect_failed[f"HTTP {error.response.status_code}"] += 1
                except Exception as error:  # counted by kind; the client stays out
                    self.connect_failed[type(error).__name__] += 1
                else:
                    client.reader = self._spawn(self._steady_life(client))

        await asyncio.gather(*(open_one(client) for client in self.steady))

    # -- the steady clients

    async def _steady_life(self, client):
        """Read until closed; when the server closed us, reconnect with ?since= and carry on."""
        while True:
            try:
                async for frame in client.ws:
                    await self._on_frame(client, frame)
            except ConnectionClosed:
                pass
            if self.closing:
                return
            client.ws = None
            client.reconnects += 1
            while not self.closing:
                await asyncio.sleep(0.5)
                try:
                    ws = await self._open(self.plan.room_url(client.room, client.last_id), client.cookie)
                except Exception:
                    continue
                client.ws, client.resyncing = ws, True
                if self.acks_seen:
                    for text in list(client.pending.values()):
                        await ws.send(text)
                break
            if client.ws is None:
                return

    async def _on_frame(self, client, frame):
        now_ns = time.time_ns()
        try:
            data = json.loads(frame)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {"error": f"unreadable frame: {str(frame)[:80]!r}"}
        if "ack" in data:
            self.acks_seen = True
            self._answered(client, data["ack"])
            return
        if "error" in data:
            self.errors += 1
            if len(self.error_samples) < 3 and data["error"] not in self.error_samples:
                self.error_samples.append(str(data["error"])[:200])
            if data.get("client_id"):
                self._answered(client, data["client_id"])
            elif client.sender is not None and client.pending:
                self.errors_unmatched += 1
                client.pending.pop(
                    min(client.pending)
                )  # answers the oldest message waiting (today's frames say no more)
            return
        if "page" in data:
            if data.get("page") == "resync" and data.get("more") and data.get("last") is not None:
                await client.ws.send(json.dumps({"since": data["last"]}))
            return
        if "id" not in data or "message" not in data:
            return
        if data.get("history") and not client.resyncing:
            return  # the room's backlog at join; the run's rooms are new, so none of it is ours
        message_id = data["id"]
        if message_id in client.ids:
            client.duplicated_ids += 1
            return
        client.ids.add(message_id)
        client.last_id = max(client.last_id, message_id)
        seq = data.get("seq")
        if seq is not None:
            if seq in client.seqs:
                client.duplicated_seqs += 1
            client.seqs.add(seq)
        stamp = str(data["message"]).split(" ")
        if len(stamp) != 5 or stamp[0] != STAMP or stamp[1] != self.plan.run_id:
            return
        key = f"{stamp[2]} {stamp[3]}"
        if key in client.stamps:
            client.duplicated_stamps += 1  # the same sent message, stored twice (two ids)
        client.stamps.add(key)
        if not data.get("history") and not data.get("resync"):
            self.latency_us.append(min(max(0, (now_ns - int(stamp[4])) // 1000), 0xFFFFFFFF))
        if stamp[2] == f"s{client.sender}":
            self._answered(client, f"{self.plan.run_id}-s{client.sender}-{stamp[3]}")

    def _answered(self, client, client_id):
        parts = str(client_id).rsplit("-", 1)
        if len(parts) == 2 and parts[0] == f"{self.plan.run_id}-s{client.sender}" and parts[1].isdigit():
            number = int(parts[1])
            client.answered.add(number)
            client.pending.pop(number, None)

    async def _send(self, client, start):
        """Message n of all senders at start + n / rate, sender n mod S sending it: one steady stream."""
        loop = asyncio.get_running_loop()
        plan = self.plan
        senders = plan.sender_count
        interval = senders / plan.rate
        first = start + client.sender / plan.rate
        number = 0
        while not self.quiet:
            due = first + number * interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            client_id = f"{plan.run_id}-s{client.sender}-{number}"
            text = json.dumps(
                {
                    "message": f"{STAMP} {plan.run_id} s{client.sender} {number} {time.time_ns()}",
                    "user": f"steady-{client.sender}",
                    "client_id": client_id,
                }
            )
            number += 1
            if client.ws is None:
                continue  # reconnecting: this one is not sent (nor expected)
            client.pending[number - 1] = text
            try:
                await client.ws.send(text)
            except ConnectionClosed:
                if not self.acks_seen:
                    client.pending.pop(number - 1, None)  # written nowhere; without acks it cannot be resent safely
                continue
            client.sent += 1

    # -- the churning clients

    async def _churn(self):
        loop = asyncio.get_running_loop()
        interval = self.plan.workers / self.plan.churn_rate
        cap = max(1, MAX_IN_FLIGHT // self.plan.workers)
        # The workers' schedules interleave: worker i starts i / churn_rate later.
        due = loop.time() + self.index / self.plan.churn_rate
        while self.churning:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                if not self.churning:
                    break
            lag = loop.time() - due
            self.churn_lag_max = max(self.churn_lag_max, lag)
            if lag > 1.0:
                # Over a second behind: the generator cannot keep up. Those are skipped, not burst.
                missed = int(lag / interval)
                self.churn["skipped_behind"] += missed
                due += missed * interval
            if self.in_flight >= cap:
                self.churn["skipped_in_flight"] += 1
            else:
                self.in_flight += 1
                self._spawn(self._churn_one(random.randrange(self.plan.rooms)))
            due += interval

    async def _churn_one(self, room):
        plan = self.plan
        try:
            started = time.perf_counter()
            self.churn["attempted"] += 1
            try:
                ws = await self._open(plan.room_url(room))
            except InvalidStatus as error:
                self.refused[str(error.response.status_code)] += 1
                return
            except Exception as error:  # counted by kind
                self.failed[type(error).__name__] += 1
                return
            self.handshake_us.append(min(int((time.perf_counter() - started) * 1e6), 0xFFFFFFFF))
            self.churn["opened"] += 1
            reader = asyncio.create_task(self._read_all(ws))
            try:
                if random.random() < plan.churn_send:
                    number = self.churn["sent"]
                    text = f"{STAMP} {plan.run_id} c{self.index}.{number} 0 {time.time_ns()}"
                    await ws.send(json.dumps({"message": text, "user": "churner"}))
                    self.churn["sent"] += 1
                await asyncio.sleep(random.uniform(0, 2 * plan.hold))
            except ConnectionClosed:
                pass
            if reader.done():
                self.churn["closed_by_server"] += 1
            elif random.random() < plan.abrupt:
                ws.transport.abort()  # no close frame, no FIN: a reset, as when a phone loses its network
                self.churn["left_abruptly"] += 1
            else:
                await ws.close()
                self.churn["left_cleanly"] += 1
            reader.cancel()
        finally:
            self.in_flight -= 1

    async def _read_all(self, ws):
        try:
            async for _ in ws:
                self.churn["frames"] += 1
        except ConnectionClosed:
            pass

    # -- reports

    async def _progress(self):
        while True:
            self._report(
                "progress",
                {
                    "churn": dict(self.churn),
                    "in_flight": self.in_flight,
                    "steady_open": sum(1 for client in self.steady if client.ws is not None),
                    "sent": sum(client.sent for client in self.steady),
                    "unanswered": sum(len(client.pending) for client in self.steady),
                    "received": sum(len(client.ids) for client in self.steady),
                },
            )
            await asyncio.sleep(PROGRESS_INTERVAL)

    def _figures(self):
        return {
            "churn": dict(self.churn),
            "refused": dict(self.refused),
            "failed": dict(self.failed),
            "handshake_us": self.handshake_us.tobytes(),
            "latency_us": self.latency_us.tobytes(),
            "churn_lag_max_s": self.churn_lag_max,
            "errors": self.errors,
            "errors_unmatched": self.errors_unmatched,
            "error_samples": self.error_samples,
            "acks_seen": self.acks_seen,
            "steady": [
                {
                    "number": client.number,
                    "room": client.room,
                    "sender": client.sender,
                    "connected": client.reader is not None,
                    "ids": array("q", sorted(client.ids)).tobytes(),
                    "seqs": array("q", sorted(client.seqs)).tobytes(),
                    "duplicated_ids": client.duplicated_ids,
                    "duplicated_seqs": client.duplicated_seqs,
                    "duplicated_stamps": client.duplicated_stamps,
                    "reconnects": client.reconnects,
                    "sent": client.sent,
                    "unanswered": len(client.pending),
                }
                for client in self.steady
            ],
        }


# ---------------------------------------------------------------- the parent


class _Probe:
    """Reads the server's side: processes (RSS, open files) and Redis (channels, clients)."""

    def __init__(self, processes, redis, channels):
        self.processes, self.redis, self.channels = processes, redis, channels

    def read(self, label, **extra):
        reading = {"phase": label, "time": round(time.time(), 1), **extra}
        found = self.processes.read_processes() if self.processes else None
        reading["processes"] = {str(pid): figures for pid, figures in (found or {}).items()}
        if self.redis is not None:
            reading["redis"] = self.redis.read(self.channels)
        return reading


def _say(text):
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


def _churn_counts(workers):
    counts = Counter()
    for report in workers.progress:
        if report:
            counts.update(report["churn"])
    return counts


def _steady_line(workers):
    reports = [report for report in workers.progress if report]
    keys = ("steady_open", "sent", "unanswered", "received", "in_flight")
    totals = {key: sum(report[key] for report in reports) for key in keys}
    return (
        f"steady open {totals['steady_open']}, sent {totals['sent']}, unanswered {totals['unanswered']}, "
        f"received {totals['received']}; churning in flight {totals['in_flight']}"
    )


def _wait(workers, seconds):
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        workers.poll(min(PROGRESS_INTERVAL, left))


def _churn_phase(plan, workers, probe, seconds, samples, label):
    """Churn for `seconds`, sampling every plan.sample_interval when samples is a list; then calm down."""
    before = _churn_counts(workers)
    started = time.monotonic()
    workers.tell("churn")
    next_sample = started + plan.sample_interval
    end = started + seconds
    while (now := time.monotonic()) < end:
        if samples is not None and now >= next_sample:
            opened = _churn_counts(workers)["opened"] - before["opened"]
            reading = probe.read("during", elapsed_s=round(now - started, 1), churned=opened)
            samples.append(reading)
            _say(f"{label} {now - started:5.0f} s: {opened} churned; {_brief(reading)}; {_steady_line(workers)}")
            next_sample += plan.sample_interval
        workers.poll(min(PROGRESS_INTERVAL, max(0.0, min(end, next_sample) - time.monotonic())))
    workers.tell("calm")
    churned = time.monotonic() - started
    workers.gather("calm", timeout=plan.open_timeout + 2 * plan.hold + 30)
    counts = _churn_counts(workers)
    counts.subtract(before)
    return {
        "seconds": round(churned, 1),
        "calm_s": round(time.monotonic() - started - churned, 1),
        **{key: value for key, value in counts.items() if value},
    }


def _brief(reading):
    redis = reading.get("redis") or {}
    processes = reading["processes"]
    parts = []
    if "error" in redis:
        parts.append(f"redis: {redis['error']}")
    elif redis:
        parts.append(
            f"redis channels {redis['channels']} ({redis['websocket_channels']} websockets, "
            f"{redis['room_channels']} rooms), clients {redis['clients']}"
        )
    parts.append(
        "; ".join(
            f"pid {pid} {figures['rss_kib'] / 1024:.1f} MiB {figures['fds']} fds" for pid, figures in processes.items()
        )
        or "no server process read"
    )
    return "; ".join(parts)


PRIMERS = 20  # clients that prime the server, at once: through nginx, every server process gets some


def _prime(plan):
    """A few clients join a room of their own at once, each sends a message, gets it back and leaves.

    A server process that has never served a websocket opens its Redis
    connections (the layer's publisher and subscriber) on its first one;
    primed, the "before" reading counts what a server in use holds, not a
    cold start. Returns how many were answered.
    """
    url = f"{loadgen.ws_base(plan.url)}/ws/chat/churn-{plan.run_id}-primer/"

    async def one(number):
        async with connect(url, origin=plan.origin, open_timeout=plan.open_timeout, close_timeout=2, proxy=None) as ws:
            text = f"priming {number}"
            await ws.send(json.dumps({"message": text, "user": "churn-primer"}))
            async with asyncio.timeout(plan.open_timeout):
                async for frame in ws:
                    data = json.loads(frame)
                    if data.get("message") == text or "error" in data:
                        return True
        return False

    async def all_of_them():
        return await asyncio.gather(*(one(number) for number in range(PRIMERS)), return_exceptions=True)

    answered = sum(1 for result in asyncio.run(all_of_them()) if result is True)
    if answered < PRIMERS:
        _say(f"priming the server: {answered} of {PRIMERS} clients answered")
    return answered


def run(plan, processes, redis):
    """The soak; returns its figures (see summarize). processes: a bench.memory source; redis: a bench.redis_probe source or None."""
    check(plan)
    probe = _Probe(processes, redis, plan.room_channels)
    readings = []
    _prime(plan)
    workers = loadgen.Workers(plan, _ChurnWorker)
    try:
        workers.gather("ready", timeout=60)
        readings.append(probe.read("before"))
        _say(f"before: {_brief(readings[-1])}")
        workers.tell("connect")
        connects = workers.gather(
            "connected", timeout=math.ceil(plan.steady / plan.connect_concurrency) * plan.open_timeout + 30
        )
        _say(f"{sum(report['open'] for report in connects)} of {plan.steady} steady clients connected")
        workers.tell("messages", time.time_ns() + 300_000_000)
        phases = {}
        if plan.warmup:
            phases["warmup"] = _churn_phase(plan, workers, probe, plan.warmup, None, "warm-up")
        _wait(workers, plan.settle)
        readings.append(probe.read("warm"))
        _say(f"after warm-up: {_brief(readings[-1])}; {_steady_line(workers)}")
        samples = []
        phases["soak"] = _churn_phase(plan, workers, probe, plan.duration, samples, "soak")
        _wait(workers, plan.settle)
        readings.append(probe.read("after soak"))
        _say(f"after the soak: {_brief(readings[-1])}; {_steady_line(workers)}")
        workers.tell("quiet")
        _drain(plan, workers)
        workers.tell("close")
        results = workers.gather("result", timeout=60)
        workers.finished = True
    finally:
        workers.close()
    readings.append(_after(plan, probe, readings[0]))
    _say(f"after: {_brief(readings[-1])}")
    return summarize(plan, connects, results, readings, samples, phases, processes, redis)


def _drain(plan, workers):
    """Until every steady sender's messages are answered and deliveries stop arriving (plan.drain s at most)."""
    end = time.monotonic() + plan.drain
    last, quiet_since = None, time.monotonic()
    while time.monotonic() < end:
        workers.poll(PROGRESS_INTERVAL)
        reports = [report for report in workers.progress if report]
        received = sum(report["received"] for report in reports)
        if received != last:
            last, quiet_since = received, time.monotonic()
        if sum(report["unanswered"] for report in reports) == 0 and time.monotonic() - quiet_since >= 1.0:
            return


def _after(plan, probe, before):
    """After everything closed: read until Redis is back to its channels and clients before the run.

    plan.settle s at most, plus Redis's timeout when it has one: the server processes' pools keep the
    connections a burst opened until Redis closes them as idle.
    """
    wait = plan.settle + (plan.redis_timeout + 5 if plan.redis_timeout else 0)
    end = time.monotonic() + wait
    if plan.redis_timeout:
        _say(f"waiting until Redis is back to its clients before the run ({wait:.0f} s at most)")
    while True:
        reading = probe.read("after")
        redis, base = reading.get("redis") or {}, before.get("redis") or {}
        settled = (
            "channels" not in redis
            or "channels" not in base
            or (redis["channels"] <= base["channels"] and redis["clients"] <= base["clients"])
        )
        if settled or time.monotonic() >= end:
            return reading
        time.sleep(1)


def _percentiles(raw):
    values = array("I")
    for chunk in raw:
        values.frombytes(chunk)
    if not values:
        return None
    ordered = sorted(values)
    figures = {f"p{point}": ordered[max(0, math.ceil(point / 100 * len(ordered)) - 1)] / 1000 for point in (50, 99)}
    figures["max"] = ordered[-1] / 1000
    figures["count"] = len(ordered)
    return figures


def _steady_figures(results):
    """Per room, every message any steady client got is expected by all of them, once."""
    clients = [client for result in results for client in result["steady"]]
    rooms = {}
    for client in clients:
        client["ids"] = set(array("q", client["ids"]))
        client["seqs"] = set(array("q", client["seqs"]))
        room = rooms.setdefault(client["room"], {"ids": set(), "seqs": set()})
        room["ids"] |= client["ids"]
        room["seqs"] |= client["seqs"]
    missing = sum(len(rooms[client["room"]]["ids"] - client["ids"]) for client in clients if client["connected"])
    missing_seqs = sum(len(rooms[client["room"]]["seqs"] - client["seqs"]) for client in clients if client["connected"])
    # A seq no steady client got: a gap in the room's numbering (seq starts at 1 in a new room).
    seq_gaps = sum(max(room["seqs"]) - len(room["seqs"]) for room in rooms.values() if room["seqs"])
    unanswered = sum(client["unanswered"] for client in clients)
    return {
        "clients": len(clients),
        "connected": sum(1 for client in clients if client["connected"]),
        "reconnects": sum(client["reconnects"] for client in clients),
        "sent": sum(client["sent"] for client in clients),
        "room_messages": sum(len(room["ids"]) for room in rooms.values()),
        "deliveries": sum(len(client["ids"]) for client in clients),
        "missing": missing,
        "unanswered": unanswered,
        "seq_numbered": any(room["seqs"] for room in rooms.values()),
        "missing_seqs": missing_seqs,
        "seq_gaps": seq_gaps,
        "lost": missing + unanswered + seq_gaps,
        "duplicated_ids": sum(client["duplicated_ids"] for client in clients),
        "duplicated_seqs": sum(client["duplicated_seqs"] for client in clients),
        "duplicated_stamps": sum(client["duplicated_stamps"] for client in clients),
        "repeated": sum(client["duplicated_ids"] + client["duplicated_stamps"] for client in clients),
    }


def _checkout():
    """The commit this checkout is at, "-dirty" when it has changes: the code a local server runs, and make demo deploys."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def summarize(plan, connects, results, readings, samples, phases, processes, redis):
    churn, refused, failed = Counter(), Counter(), Counter()
    for result in results:
        churn.update(result["churn"])
        refused.update(result["refused"])
        failed.update(result["failed"])
    soak = phases["soak"]
    figures = {
        "mode": "churn",
        "url": plan.url,
        "run_id": plan.run_id,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "checkout": _checkout(),
        "params": {
            "steady": plan.steady,
            "rooms": plan.rooms,
            "senders": plan.sender_count,
            "rate": plan.rate,
            "churn_rate": plan.churn_rate,
            "hold_s": plan.hold,
            "abrupt": plan.abrupt,
            "churn_send": plan.churn_send,
            "warmup_s": plan.warmup,
            "duration_s": plan.duration,
            "sample_interval_s": plan.sample_interval,
            "settle_s": plan.settle,
            "redis_timeout_s": plan.redis_timeout,
            "workers": plan.workers,
        },
        "sources": {
            "processes": processes.describe() if processes else "server processes not read",
            "redis": redis.describe() if redis else None,
        },
        "steady_connect_failed": sum(sum(report["failed"].values()) for report in connects),
        "churn": {
            **dict(churn),
            "refused": dict(refused),
            "failed": dict(failed),
            "soak_rate_per_s": round(soak.get("opened", 0) / soak["seconds"], 1) if soak["seconds"] else 0.0,
            "handshake_ms": _percentiles(result["handshake_us"] for result in results),
            "lag_max_s": round(max(result["churn_lag_max_s"] for result in results), 2),
        },
        "phases": phases,
        "steady": _steady_figures(results),
        "latency_ms": _percentiles(result["latency_us"] for result in results),
        "errors": sum(result["errors"] for result in results),
        "error_samples": [sample for result in results for sample in result["error_samples"]][:3],
        "acks_seen": any(result["acks_seen"] for result in results),
        "readings": readings,
        "samples": samples,
    }
    figures["targets"] = targets(figures)
    return figures


def _reading(figures, phase):
    return next(reading for reading in figures["readings"] if reading["phase"] == phase)


def targets(figures):
    """[(passed or None when it could not be judged, the target, what was measured)]"""
    before, warm, soaked, after = (_reading(figures, phase) for phase in ("before", "warm", "after soak", "after"))
    lines = []
    redis_before, redis_after = before.get("redis") or {}, after.get("redis") or {}
    if "channels" in redis_before and "channels" in redis_after:
        left = redis_after["channels"] - redis_before["channels"]
        rooms = sum(redis_after["numsub"].values())
        measured = (
            f"{redis_before['channels']} before, {redis_after['channels']} after ({left:+d}); "
            f"subscribers left on the run's rooms: {rooms}"
        )
        redis_warm, redis_soaked = warm.get("redis") or {}, soaked.get("redis") or {}
        if "channels" in redis_warm and "channels" in redis_soaked:
            measured += (
                f"; with the steady clients connected: {redis_warm['channels']} after warm-up, "
                f"{redis_soaked['channels']} after the soak"
            )
        lines.append((left <= 0 and rooms == 0, "0 Redis pub/sub channels left over", measured))
        left = redis_after["clients"] - redis_before["clients"]
        lines.append(
            (
                left <= 0,
                "0 Redis clients left over",
                f"{redis_before['clients']} before, {redis_after['clients']} after ({left:+d})",
            )
        )
    else:
        problem = redis_after.get("error") or redis_before.get("error") or "no Redis source"
        lines.append((None, "0 Redis pub/sub channels or clients left over", f"not read: {problem}"))
    warm_processes, soaked_processes = warm["processes"], soaked["processes"]
    if warm_processes and set(warm_processes) == set(soaked_processes):
        growths = {pid: soaked_processes[pid]["rss_kib"] / warm_processes[pid]["rss_kib"] - 1 for pid in warm_processes}
        lines.append(
            (
                all(growth <= RSS_TOLERANCE for growth in growths.values()),
                f"RSS after the soak within {RSS_TOLERANCE:.0%} of after warm-up",
                "; ".join(
                    f"pid {pid} {warm_processes[pid]['rss_kib'] / 1024:.1f} -> {soaked_processes[pid]['rss_kib'] / 1024:.1f} MiB "
                    f"({growth:+.1%})"
                    for pid, growth in growths.items()
                ),
            )
        )
    elif warm_processes:
        lines.append(
            (
                False,
                f"RSS after the soak within {RSS_TOLERANCE:.0%} of after warm-up",
                f"the server processes changed (a restart?): {sorted(warm_processes)} -> {sorted(soaked_processes)}",
            )
        )
    else:
        lines.append(
            (None, f"RSS after the soak within {RSS_TOLERANCE:.0%} of after warm-up", "no server process read")
        )
    steady = figures["steady"]
    measured = (
        f"{steady['connected']} steady clients, {steady['room_messages']} messages in their rooms, "
        f"{steady['deliveries']} deliveries; lost {steady['lost']} (missing {steady['missing']}, "
        f"sender's own unanswered {steady['unanswered']}"
        + (f", seq gaps {steady['seq_gaps']}" if steady["seq_numbered"] else ", no seq in the frames")
        + f"), repeated {steady['repeated']} (same id {steady['duplicated_ids']}, stored twice {steady['duplicated_stamps']})"
        + (f"; {steady['reconnects']} reconnects" if steady["reconnects"] else "")
        + (
            f"; {figures['errors']} of {steady['sent']} sent refused with an error frame (not expected, so not lost)"
            if figures["errors"]
            else ""
        )
    )
    ok = (
        steady["lost"] == 0
        and steady["repeated"] == 0
        and steady["connected"] == steady["clients"]
        and steady["room_messages"] > 0
    )
    lines.append((ok, "0 messages lost or repeated for the steady clients", measured))
    return lines


def text_block(figures):
    """The soak's figures as readable lines: the readings by phase, the samples, the targets."""
    params, churn, steady = figures["params"], figures["churn"], figures["steady"]
    lines = [
        f"bench churn {figures['url']}  (run {figures['run_id']}, {figures['date']}, bench checkout {figures['checkout']}, "
        f"{params['workers']} worker processes)",
        f"load        {params['steady']} steady clients in {params['rooms']} rooms, {params['senders']} senders at "
        f"{params['rate']:g} msg/s in all; churn {params['churn_rate']:g} connections/s (held 0-{2 * params['hold_s']:g} s, "
        f"{params['abrupt']:.0%} dropped without a close, {params['churn_send']:.0%} send one message), "
        f"warm-up {params['warmup_s']:g} s, soak {params['duration_s']:g} s",
        f"churned     {churn.get('opened', 0)} opened of {churn.get('attempted', 0)} attempted "
        f"(soak: {churn['soak_rate_per_s']:g}/s); refused {sum(churn['refused'].values())}"
        + (f" {churn['refused']}" if churn["refused"] else "")
        + f"; failed {sum(churn['failed'].values())}"
        + (f" {churn['failed']}" if churn["failed"] else "")
        + f"; closed by the server {churn.get('closed_by_server', 0)}; skipped {churn.get('skipped_behind', 0) + churn.get('skipped_in_flight', 0)}"
        + f" (worst lag {churn['lag_max_s']:g} s)",
    ]
    if churn["handshake_ms"]:
        handshake = churn["handshake_ms"]
        lines.append(
            f"handshake   p50 {handshake['p50']:.1f} ms, p99 {handshake['p99']:.1f} ms, max {handshake['max']:.0f} ms"
        )
    latency = figures["latency_ms"]
    lines.append(
        f"steady      sent {steady['sent']}, {steady['deliveries']} deliveries"
        + (
            f", latency p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, max {latency['max']:.0f} ms"
            if latency
            else ""
        )
        + f"; error frames {figures['errors']}"
        + (f" ({' | '.join(figures['error_samples'])})" if figures["error_samples"] else "")
    )
    lines.append(f"server      {figures['sources']['processes']}; {figures['sources']['redis'] or 'Redis not read'}")
    for reading in figures["readings"]:
        lines.append(f"  {reading['phase']:<11} {_brief(reading)}")
    if figures["samples"]:
        lines.append(f"  during the soak, every {params['sample_interval_s']:g} s:")
        for reading in figures["samples"]:
            lines.append(f"    {reading['elapsed_s']:6.0f} s  {_brief(reading)}")
    redis = _reading(figures, "after").get("redis") or {}
    if redis.get("clients_source"):
        lines.append(f"  Redis clients: {redis['clients_source']}")
    for passed, target, measured in figures["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[passed]
        lines.append(f"{verdict}  {target}: {measured}")
    return "\n".join(lines)
