"""python -m bench MODE ...: the chat's websocket benchmark (scripts/bench runs it).

    run URL       one load run (or --idle: hold connections, measure memory per connection)
    connect URL   C clients connecting at once: accepted, refused by status, time to connect all
    compare       every configuration through a fixed set of scenarios -> results.md, latency.png
    search        per configuration, the highest rate with p99 <= 250 ms and nothing lost
    churn [URL]   the churn soak: clients come and go for minutes while steady ones chat;
                  Redis channels and clients, server RSS and open files before, during, after

Only servers on this machine are loaded (loopback addresses; the demo
container's published port is one). Every run is bounded: at most 20,000
clients, 300 s of load, and the drain after it. Senders: when --senders is not
given, S = max(1, ceil(R/4)) (at most one per client), so that no sender sends
more than 4 messages/s and the chat's default per-connection limit (5/s, bursts
of 10) refuses nothing; an error frame is counted and its message not expected.
"""

import argparse
import json
import signal
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from . import churn, loadgen, report, servers, suite
from .memory import ContainerProcesses, LocalProcesses
from .redis_probe import ContainerRedis, LocalRedis
from .servers import REPO

DEFAULT_URL = "http://127.0.0.1:8080/"


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _pids(text):
    return [int(pid) for pid in text.split(",") if pid.strip()]


def _rates(text):
    return [_positive_float(item) for item in text.split(",") if item.strip()]


def _fraction(text):
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _local_config(text):
    if text not in LOCAL_CONFIGS:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(LOCAL_CONFIGS)}")
    return text


LOCAL_CONFIGS = [name for name in suite.CONFIGS if name not in ("deployed", "bare")]


def _configs(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in suite.CONFIGS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(suite.CONFIGS)}")
    return names


def _generator_options():
    """What every mode shares: how the load generator connects."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("load generator")
    group.add_argument(
        "--workers",
        type=_positive_int,
        default=loadgen.default_workers(),
        help="client processes (default: one per CPU, %(default)s here)",
    )
    group.add_argument(
        "--connect-concurrency",
        type=_positive_int,
        default=1000,
        help="handshakes in flight at once, over all workers (default %(default)s)",
    )
    group.add_argument(
        "--open-timeout", type=_positive_float, default=30.0, help="seconds per handshake (default %(default)s)"
    )
    group.add_argument(
        "--drain",
        type=float,
        default=5.0,
        help="seconds to wait after the last send for deliveries still on their way (default %(default)s)",
    )
    return parser


def _target_options():
    """For the modes aimed at one URL: origin, memory source, JSON output."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("url", help="the chat's site, e.g. http://127.0.0.1:8080/ (websockets go to /ws/chat/<room>/)")
    parser.add_argument("--origin", help="Origin header (default: the URL's scheme and host)")
    group = parser.add_argument_group("server memory (reported when given)")
    group.add_argument("--server-pids", type=_pids, help="local server pids, comma-separated: VmRSS from /proc")
    group.add_argument("--container", help="a podman container whose processes to read (e.g. chat-demo)")
    group.add_argument(
        "--container-process",
        default="bin/chat-daphne",
        help="command-line pattern of the server processes in --container (default %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file as JSON")
    return parser


def _suite_options():
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--configs",
        type=_configs,
        default=list(suite.CONFIGS),
        help=f"comma-separated subset of: {', '.join(suite.CONFIGS)} (default: all)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "artifacts" / "bench", help="output directory (default %(default)s)"
    )
    parser.add_argument("--deployed-url", default=DEFAULT_URL, help="the deployed stack (default %(default)s)")
    parser.add_argument(
        "--container",
        default="chat-demo",
        help="podman container of the deployed stack, for its daphne memory (default %(default)s)",
    )
    parser.add_argument(
        "--container-program",
        default="daphne",
        help="the supervisord program compare restarts in --container before the connection scenarios "
        "(default %(default)s)",
    )
    return parser


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    generator, target, suite_options = _generator_options(), _target_options(), _suite_options()

    run = modes.add_parser("run", parents=[target, generator], help="one load run against a URL")
    run.add_argument("--clients", type=_positive_int, default=100, help="clients in all (default %(default)s)")
    run.add_argument(
        "--rooms",
        type=_positive_int,
        default=1,
        help="spread the clients evenly over this many rooms, each with its own senders (default 1)",
    )
    run.add_argument("--senders", type=_positive_int, help="clients that send (default: ceil(rate/4), see above)")
    run.add_argument(
        "--rate", type=_positive_float, default=10.0, help="messages/s over all senders (default %(default)s)"
    )
    run.add_argument("--duration", type=_positive_float, default=10.0, help="seconds of load (default %(default)s)")
    run.add_argument(
        "--idle",
        action="store_true",
        help="send nothing: hold the connections for --duration s, report how many stayed open and "
        "server memory per idle connection",
    )

    connect = modes.add_parser("connect", parents=[target, generator], help="clients connecting at once")
    connect.add_argument("--clients", type=_positive_int, default=1000, help="default %(default)s")

    compare = modes.add_parser(
        "compare",
        parents=[suite_options, generator],
        help="all configurations, fixed scenarios: results.json/.md, latency.png",
    )
    compare.add_argument(
        "--quick",
        action="store_true",
        help="a much smaller run (100 clients for 5 s; a 2-point sweep of 3 s; 100 connecting, 200 idle) to check the setup",
    )
    group = compare.add_argument_group(
        "scenario (a): one room, steady load (defaults: 500 clients, 10 senders, 20 msg/s, 20 s)"
    )
    group.add_argument("--clients", type=_positive_int)
    group.add_argument("--senders", type=_positive_int)
    group.add_argument("--rate", type=_positive_float)
    group.add_argument("--duration", type=_positive_float)
    group = compare.add_argument_group(
        "scenario (b): the sweep (defaults: 100 clients, 2000,5000,10000,20000 deliveries/s, 10 s each)"
    )
    group.add_argument("--sweep-clients", type=_positive_int)
    group.add_argument("--sweep", type=_rates, help="offered deliveries/s, comma-separated (rate = this / clients)")
    group.add_argument("--sweep-duration", type=_positive_float)
    group = compare.add_argument_group(
        "scenarios (c) and (d): connections (defaults: 1000 clients connecting at once; 10000 idle, held 10 s)"
    )
    group.add_argument("--connect-clients", type=_positive_int)
    group.add_argument("--idle-clients", type=_positive_int)
    group.add_argument("--idle-duration", type=_positive_float)

    search = modes.add_parser(
        "search",
        parents=[suite_options, generator],
        help="per configuration, the highest rate holding p99 <= 250 ms with no loss",
    )
    search.add_argument(
        "--clients", type=_positive_int, default=100, help="clients in the one room (default %(default)s)"
    )
    search.add_argument("--duration", type=_positive_float, default=10.0, help="seconds per step (default %(default)s)")
    search.add_argument(
        "--start-rate", type=_positive_float, default=10.0, help="first step's msg/s (default %(default)s)"
    )
    search.add_argument(
        "--max-steps", type=_positive_int, default=8, help="steps per configuration (default %(default)s)"
    )
    search.add_argument("--p99-limit", type=_positive_float, default=250.0, help="ms (default %(default)s)")

    soak = modes.add_parser(
        "churn",
        parents=[generator],
        help="the churn soak: connections come and go while steady clients chat; leaks and lost messages",
        description=churn.__doc__.split("\n\n")[0],
    )
    soak.add_argument("url", nargs="?", default=DEFAULT_URL, help="the chat's site (default %(default)s, make demo's)")
    soak.add_argument("--origin", help="Origin header (default: the URL's scheme and host)")
    where = soak.add_argument_group("the server's side (what is read before, during and after)")
    where.add_argument(
        "--container",
        default="chat-demo",
        help="podman container of the deployed stack: its daphne processes and, with the REDIS_URL of "
        "--env-file inside it, its Redis (default %(default)s; '' for none)",
    )
    where.add_argument(
        "--container-process", default="bin/chat-daphne", help="server processes in --container (default %(default)s)"
    )
    where.add_argument(
        "--env-file",
        default="/etc/chat/chat.env",
        help="in --container, the env file with REDIS_URL (default %(default)s)",
    )
    where.add_argument("--server-pids", type=_pids, help="local server pids instead of --container")
    where.add_argument("--redis-url", help="a local Redis to read instead of --container's")
    where.add_argument(
        "--local",
        type=_local_config,
        help=f"start the chat here instead, in one process with a private redis-server: {', '.join(LOCAL_CONFIGS)} "
        "(the URL and the options above are then ignored)",
    )
    load = soak.add_argument_group("load")
    load.add_argument("--steady", type=_positive_int, default=100, help="clients that stay (default %(default)s)")
    load.add_argument("--rooms", type=_positive_int, default=10, help="rooms they are dealt to (default %(default)s)")
    load.add_argument(
        "--senders", type=_positive_int, help="steady clients that send (default: max(rooms, ceil(rate/4)))"
    )
    load.add_argument(
        "--rate", type=_positive_float, default=20.0, help="messages/s over all steady senders (default %(default)s)"
    )
    load.add_argument(
        "--churn-rate",
        type=_positive_float,
        default=200.0,
        help="connections opened (and closed) per second (default %(default)s)",
    )
    load.add_argument(
        "--hold",
        type=float,
        default=1.0,
        help="mean seconds a churning client stays, 0 to twice this (default %(default)s)",
    )
    load.add_argument(
        "--abrupt",
        type=_fraction,
        default=0.25,
        help="of the churning clients, leave without a close handshake (default %(default)s)",
    )
    load.add_argument(
        "--churn-send",
        type=_fraction,
        default=0.1,
        help="of the churning clients, send one message (default %(default)s)",
    )
    times = soak.add_argument_group("phases (seconds)")
    times.add_argument(
        "--warmup", type=float, default=30.0, help="churn before the 'warm' reading (default %(default)s)"
    )
    times.add_argument("--duration", type=_positive_float, default=300.0, help="the soak (default %(default)s)")
    times.add_argument(
        "--sample-interval",
        type=_positive_float,
        default=10.0,
        help="between readings during the soak (default %(default)s)",
    )
    times.add_argument(
        "--settle", type=float, default=5.0, help="after churn stops, before reading (default %(default)s)"
    )
    times.add_argument(
        "--redis-timeout",
        type=float,
        default=float(servers.REDIS_TIMEOUT),
        help="the server's Redis closes clients idle this long (redis_timeout); the 'after' reading waits for it"
        " (default %(default)s, 0: it does not)",
    )
    soak.add_argument("--json", type=Path, help="also write the figures to this file as JSON")
    # A soak's server may be minutes behind when the senders stop: wait longer for the last deliveries.
    soak.set_defaults(drain=30.0)
    return parser


FULL = {
    "clients": 500,
    "senders": 10,
    "rate": 20.0,
    "duration": 20.0,
    "sweep_clients": 100,
    "sweep": [2000, 5000, 10000, 20000],
    "sweep_duration": 10.0,
    "connect_clients": 1000,
    "idle_clients": 10000,
    "idle_duration": 10.0,
}
QUICK = {
    "clients": 100,
    "senders": 10,
    "rate": 20.0,
    "duration": 5.0,
    "sweep_clients": 50,
    "sweep": [1000, 4000],
    "sweep_duration": 3.0,
    "connect_clients": 100,
    "idle_clients": 200,
    "idle_duration": 3.0,
}


def _memory_source(options):
    if options.server_pids:
        return LocalProcesses(options.server_pids)
    if options.container:
        return ContainerProcesses(options.container, options.container_process)
    return None


def _single(options):
    """bench run / bench connect: one plan, printed, optionally saved as JSON."""
    mode = "connect" if options.mode == "connect" else ("idle" if options.idle else "run")
    loaded = mode == "run"
    plan = loadgen.Plan(
        url=options.url,
        mode=mode,
        clients=options.clients,
        rooms=getattr(options, "rooms", 1),
        senders=(
            (options.senders or loadgen.default_senders(options.rate, options.clients, options.rooms)) if loaded else 0
        ),
        rate=options.rate if loaded else 0.0,
        duration=options.duration if mode != "connect" else 0.0,
        drain=options.drain,
        workers=min(options.workers, options.clients),
        connect_concurrency=options.connect_concurrency,
        open_timeout=options.open_timeout,
        origin=options.origin or loadgen.default_origin(options.url),
    )
    result = loadgen.run(plan, _memory_source(options))
    print(report.text_block(result))
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps({"machine": report.machine_info(), **result}, indent=2) + "\n")


def _churn(options):
    """bench churn: against the deployed stack (or given pids and Redis), or a local server started here."""
    with ExitStack() as stack:
        if options.local:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-churn-")))
            redis_server = stack.enter_context(servers.redis_server(workdir))
            asgi, layer = options.local.split("-")
            server = stack.enter_context(servers.chat_server(asgi, layer, redis_server.url, workdir))
            url, processes, redis = server.url, LocalProcesses([server.pid]), LocalRedis(redis_server.url)
        else:
            url = options.url
            if options.server_pids:
                processes = LocalProcesses(options.server_pids)
            else:
                processes = (
                    ContainerProcesses(options.container, options.container_process) if options.container else None
                )
            if options.redis_url:
                redis = LocalRedis(options.redis_url)
            else:
                redis = ContainerRedis(options.container, options.env_file) if options.container else None
        plan = churn.ChurnPlan(
            url=url,
            steady=options.steady,
            rooms=options.rooms,
            senders=options.senders or 0,
            rate=options.rate,
            churn_rate=options.churn_rate,
            hold=options.hold,
            abrupt=options.abrupt,
            churn_send=options.churn_send,
            warmup=options.warmup,
            duration=options.duration,
            sample_interval=min(options.sample_interval, options.duration),
            settle=options.settle,
            redis_timeout=options.redis_timeout,
            drain=options.drain,
            workers=min(options.workers, options.steady),
            connect_concurrency=options.connect_concurrency,
            open_timeout=min(options.open_timeout, 120.0),
            origin=options.origin or loadgen.default_origin(url),
        )
        figures = churn.run(plan, processes, redis)
    print(churn.text_block(figures))
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps({"machine": report.machine_info(), **figures}, indent=2) + "\n")


def main(argv=None):
    parser = build_parser()
    options = parser.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so every server and worker started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if options.mode == "compare":
        for key, value in (QUICK if options.quick else FULL).items():
            if getattr(options, key) is None:
                setattr(options, key, value)
    try:
        if options.mode in ("run", "connect"):
            _single(options)
        elif options.mode == "compare":
            suite.compare(options)
        elif options.mode == "churn":
            _churn(options)
        else:
            suite.search(options)
    except loadgen.PlanError as error:
        parser.error(str(error))
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
