"""The comparison (bench compare) and the capacity search (bench search).

Both measure the same set of configurations, one after the other, so that
only one server is under load at a time:

- deployed: the demo stack as `make demo` runs it (nginx -> two daphne
  processes -> Redis pubsub), at its URL; skipped with a note when it does
  not answer. Its rate limit is the production default (5/s per connection),
  which the benchmark's senders stay under (4/s each).
- bare: bench.bare_server, websockets alone: the floor, what no framework costs.
- daphne-pubsub, daphne-core, uvicorn-pubsub, uvicorn-core: the chat served
  on loopback by one process of that ASGI server with that channel layer,
  against a private redis-server, each with its own fresh SQLite database.

Every local server is started here and stopped when its configuration is
done (or the benchmark is interrupted): see bench.servers.
"""

import json
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import loadgen, report, servers
from .memory import ContainerProcesses, LocalProcesses

CONFIGS = {
    "deployed": "the deployed demo: nginx -> 2 chat-daphne processes -> Redis, the chat's pub/sub layer, "
    "rate limit 5/s (RSS: both)",
    "bare": "bench.bare_server: a bare websockets broadcast server, one process, no framework, no database",
    "daphne-pubsub": "the chat in 1 daphne process (chat-daphne), the chat's pub/sub layer "
    "(channels-redis RedisPubSubChannelLayer with lighter queues), SQLite",
    "daphne-core": "the chat in 1 daphne process (chat-daphne), RedisChannelLayer (core), SQLite",
    "uvicorn-pubsub": "the chat in 1 uvicorn process (uvloop, httptools), the chat's pub/sub layer, SQLite",
    "uvicorn-core": "the chat in 1 uvicorn process (uvloop, httptools), RedisChannelLayer (core), SQLite",
}


class Skipped(Exception):
    """A configuration that cannot be measured here; the message says why."""


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    rate: float
    duration: float
    senders: int = 0  # 0: loadgen.default_senders
    mode: str = "run"  # or "connect", "idle" (see loadgen.Plan)

    def plan(self, url, options):
        loaded = self.mode == "run"
        return loadgen.Plan(
            url=url,
            mode=self.mode,
            clients=self.clients,
            senders=(self.senders or loadgen.default_senders(self.rate, self.clients)) if loaded else 0,
            rate=self.rate if loaded else 0.0,
            duration=self.duration,
            drain=options.drain,
            workers=min(options.workers, self.clients),
            connect_concurrency=options.connect_concurrency,
            open_timeout=options.open_timeout,
            origin=loadgen.default_origin(url),
        )


def compare_scenarios(options):
    """(a) many clients in one room at a steady rate; (b) a sweep of offered load;
    (c) clients connecting at once; (d) idle connections held, for memory per connection."""
    one_room = Scenario(
        f"one room, {options.clients} clients", options.clients, options.rate, options.duration, options.senders
    )
    sweep = [
        Scenario(
            f"sweep {deliveries:g}/s", options.sweep_clients, deliveries / options.sweep_clients, options.sweep_duration
        )
        for deliveries in options.sweep
    ]
    connect = Scenario(f"{options.connect_clients} connecting at once", options.connect_clients, 0, 0, mode="connect")
    idle = Scenario(f"{options.idle_clients} idle", options.idle_clients, 0, options.idle_duration, mode="idle")
    return [one_room, *sweep, connect, idle]


class Targets:
    """Brings up each configuration's server in turn; one private Redis serves all the chat configurations."""

    def __init__(self, stack, workdir, options):
        self.stack, self.workdir, self.options = stack, workdir, options
        self.redis = None

    @contextmanager
    def up(self, name, restart=False):
        """Yields (URL, memory source or None, note) for a configuration; raises Skipped.

        A local server is started afresh on every call. The deployed stack's
        server processes are restarted when restart is true (and --container
        names its container), the way an operator restarts them.
        """
        if name == "deployed":
            if restart:
                self._restart_deployed()
            yield self._deployed()
            return
        if name == "bare":
            with servers.bare_server(self.workdir) as server:
                yield server.url, LocalProcesses([server.pid]), ""
            return
        asgi, layer = name.split("-")
        if self.redis is None:
            self.redis = self.stack.enter_context(servers.redis_server(self.workdir))
        with servers.chat_server(asgi, layer, self.redis.url, self.workdir) as server:
            yield server.url, LocalProcesses([server.pid]), ""

    def _restart_deployed(self):
        container = self.options.container
        if not container or shutil.which("podman") is None:
            return
        subprocess.run(
            ["podman", "exec", container, "supervisorctl", "restart", f"{self.options.container_program}:*"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        healthz = self.options.deployed_url.rstrip("/") + "/healthz"
        deadline = time.monotonic() + 60
        while servers.http_status(healthz, timeout=5) != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{healthz} did not answer 200 within 60 s of restarting the server")
            time.sleep(0.5)

    def _deployed(self):
        url = self.options.deployed_url
        if servers.http_status(url.rstrip("/") + "/healthz", timeout=5) is None:
            raise Skipped(f"nothing answers at {url} (start it with `make demo`)")
        container = self.options.container
        if not container or shutil.which("podman") is None:
            return url, None, "server memory not read (no podman or no --container)"
        source = ContainerProcesses(container)
        if source.read() is None:
            return url, None, f"server memory not read (no daphne process found in container {container})"
        return url, source, ""


def _progress(name, label, result):
    if result["mode"] != "run":
        connect = result["connect"]
        kib = (result.get("memory") or {}).get("per_connection_kib")
        print(
            f"  {name:<15} {label:<26} accepted {connect['accepted']:>6}/{connect['attempted']:<6} "
            f"in {connect['time_s']:.2f} s"
            + (f", {result['closed_early']} closed early" if result["mode"] == "idle" else "")
            + (f", {kib:.1f} KiB per connection" if kib is not None else ""),
            flush=True,
        )
        return
    latency = result["latency_ms"] or {}
    print(
        f"  {name:<15} {label:<26} sent {result['sent']:>6}  received {result['received']:>8}/{result['expected']:<8} "
        f"lost {result['lost']:>6}  p99 {report.fmt_ms(latency.get('p99'))} ms",
        flush=True,
    )


@contextmanager
def _noted(config):
    """Measures one configuration: a skip or a failure becomes its note, and the run goes on to the next."""
    try:
        yield
    except Skipped as why:
        config["note"] = f"skipped: {why}"
        print(f"  skipped: {why}", flush=True)
    except (servers.ServerFailed, RuntimeError, TimeoutError, OSError) as error:
        config["note"] = f"failed: {str(error).splitlines()[0]}"
        print(f"  failed: {error}", flush=True)


def _configure_run(options, about):
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": report.machine_info(),
        "started": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "about": about,
        "configs": {},
    }
    return out, results


def compare(options):
    """Every configuration through every scenario; writes results.json, results.md, latency.png."""
    scenarios = compare_scenarios(options)
    out, results = _configure_run(
        options,
        f"Scenarios: {', '.join(s.name for s in scenarios)}; one room each; each sender at most "
        f"{loadgen.SENDER_RATE:g} msg/s unless --senders; latencies are receive time minus send time; "
        "RSS is the server process(es) at the end of the load, growth since before connecting; memory per idle "
        "connection is the RSS growth from before connecting to the end of the hold, divided by the connections. "
        "The connection scenarios run on a freshly started server (the deployed one restarted with supervisorctl): "
        "the first of them is a restart followed by clients connecting at once.",
    )
    results["scenarios"] = [asdict(scenario) for scenario in scenarios]
    load_scenarios = [scenario for scenario in scenarios if scenario.mode == "run"]
    connection_scenarios = [scenario for scenario in scenarios if scenario.mode != "run"]
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir, ExitStack() as stack:
        targets = Targets(stack, Path(workdir), options)
        for name in options.configs:
            config = results["configs"][name] = {"description": CONFIGS[name], "runs": []}
            print(f"{name}: {CONFIGS[name]}", flush=True)
            with _noted(config):
                # The load first; then the connections on a freshly started
                # server (the deployed one restarted), so that neither a backlog
                # left by an overloaded step nor a heap grown by the load skews
                # connecting or memory per idle connection.
                for restart, phase in ((False, load_scenarios), (True, connection_scenarios)):
                    with targets.up(name, restart=restart) as (url, memory, note):
                        config["url"] = url
                        if note:
                            config["note"] = note
                        for scenario in phase:
                            result = loadgen.run(scenario.plan(url, options), memory)
                            config["runs"].append({"scenario": scenario.name, **result})
                            _progress(name, scenario.name, result)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.compare_markdown(results)
    (out / "results.md").write_text(markdown)
    report.plot_latency(results, out / "latency.png")
    print()
    print(markdown)
    print(f"Written: {out / 'results.json'}, {out / 'results.md'}, {out / 'latency.png'}")


def _judge(result, p99_limit):
    """Why a search step failed, or "" if it passed."""
    connect = result["connect"]
    latency = result["latency_ms"]
    if connect["accepted"] < connect["attempted"]:
        return f"{connect['attempted'] - connect['accepted']} not connected"
    if result["errors"]:
        return f"{result['errors']} refused"
    if result["lost"]:
        return f"{result['lost']} lost"
    if latency is None:
        return "nothing received"
    if latency["p99"] > p99_limit:
        return f"p99 {latency['p99']:.0f} ms"
    return ""


def _next_rate(passed, failed):
    """Double until a step fails, then bisect; None when the bracket is as narrow as worth measuring."""
    if failed is None:
        return min(passed * 2, loadgen.MAX_RATE)
    middle = round((passed + failed) / 2, 1 if failed < 10 else 0)
    if failed - passed <= max(0.5, passed * 0.05) or middle in (passed, failed):
        return None
    return middle


def search(options):
    """Per configuration, the highest message rate whose deliveries all arrive with p99 under the limit."""
    out, results = _configure_run(
        options,
        f"{options.clients} clients in one room, {options.duration:g} s per step; a step passes when every client "
        f"connected, no message was refused, none was lost and p99 <= {options.p99_limit:g} ms. The rate doubles "
        f"from {options.start_rate:g} msg/s until a step fails, then is bisected; at most {options.max_steps} steps.",
    )
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir, ExitStack() as stack:
        targets = Targets(stack, Path(workdir), options)
        for name in options.configs:
            config = results["configs"][name] = {"description": CONFIGS[name], "steps": [], "best": None}
            print(f"{name}: {CONFIGS[name]}", flush=True)
            with _noted(config), targets.up(name) as (url, memory, note):
                config["url"] = url
                if note:
                    config["note"] = note
                _search_one(name, url, memory, config, options)
    (out / "search.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.search_markdown(results)
    (out / "search.md").write_text(markdown)
    print()
    print(markdown)
    print(f"Written: {out / 'search.json'}, {out / 'search.md'}")


def _search_one(name, url, memory, config, options):
    passed, failed, rate = 0.0, None, options.start_rate
    for _ in range(options.max_steps):
        scenario = Scenario(f"{rate:g} msg/s", options.clients, rate, options.duration)
        plan = scenario.plan(url, options)
        if plan.offered_deliveries_per_s * plan.duration > loadgen.MAX_OFFERED_DELIVERIES:
            break
        result = loadgen.run(plan, memory)
        why = _judge(result, options.p99_limit)
        latency = result["latency_ms"]
        step = {
            "rate": rate,
            "senders": plan.senders,
            "offered_deliveries_per_s": plan.offered_deliveries_per_s,
            "deliveries_per_s": result["deliveries_per_s"],
            "lost": result["lost"],
            "errors": result["errors"],
            "p99_ms": latency["p99"] if latency else None,
            "passed": not why,
            "why": why,
            "result": result,
        }
        config["steps"].append(step)
        _progress(name, scenario.name, result)
        if why:
            failed = rate
        else:
            passed = rate
            config["best"] = {
                key: step[key] for key in ("rate", "deliveries_per_s", "p99_ms", "offered_deliveries_per_s")
            }
        rate = _next_rate(passed, failed)
        if not rate:
            break
        time.sleep(1)  # let the server settle between steps
