"""How the figures are shown: a text block for one run, Markdown tables, the latency plot.

Nothing here measures; it only formats what bench.loadgen returned, plus a
description of the machine, because every figure depends on it (the load
generator and the local servers share its cores).
"""

import os
import platform
from pathlib import Path


def machine_info():
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def machine_line(machine):
    return (
        f"{machine['cpus']} CPUs ({machine['cpu_model']}), {machine['kernel']}, Python {machine['python']}; "
        "the load generator and every local server share these CPUs."
    )


def fmt_ms(value):
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


def memory_cell(result):
    """Server RSS in MiB at the end of the load, with its growth since before connecting."""
    memory = result.get("memory") or {}
    end = memory.get("loaded_kib") or memory.get("after_kib") or memory.get("connected_kib")
    if end is None:
        return "-"
    before = memory.get("before_kib")
    return _mib(end) if before is None else f"{_mib(end)} ({(end - before) / 1024:+.1f})"


def text_block(result):
    """One run, as a few readable lines (bench run, bench connect)."""
    params, connect = result["params"], result["connect"]
    lines = [f"bench {result['mode']} {result['url']}  (run {result['run_id']}, {params['workers']} worker processes)"]
    if result["mode"] == "run":
        lines.append(
            f"load        {params['clients']} clients in {params['rooms']} room(s), {params['senders']} senders, "
            f"{params['rate']:g} msg/s for {params['duration_s']:g} s = {params['offered_deliveries_per_s']:,.0f} "
            "deliveries/s offered"
        )
    handshake = connect["handshake_ms"]
    lines.append(
        f"connect     {connect['accepted']}/{connect['attempted']} accepted in {connect['time_s']:.2f} s"
        + (f" (handshake p50 {fmt_ms(handshake['p50'])} ms, p99 {fmt_ms(handshake['p99'])} ms)" if handshake else "")
        + f"; refused {connect['refused']}"
        + (f" {connect['refused_by_status']}" if connect["refused"] else "")
        + (f"; retried after 503 (busy) {connect['busy_retries']}" if connect.get("busy_retries") else "")
        + f"; failed {connect['failed']}"
        + (f" {connect['failed_by_error']}" if connect["failed"] else "")
    )
    if result["mode"] == "run":
        lines.append(
            f"messages    sent {result['sent']}, errors {result['errors']}, expected {result['expected']}, "
            f"received {result['received']}, lost {result['lost']}, duplicated {result['duplicated']}"
        )
        if result["error_samples"]:
            lines.append("errors      " + " | ".join(result["error_samples"]))
        latency = result["latency_ms"]
        lines.append(
            f"throughput  {result['deliveries_per_s']:,.0f} deliveries/s; "
            f"{'all arrived' if result['drained'] else 'drain timed out'}; "
            f"closed early {result['closed_early']}; worst send lag {result['send_lag_max_ms']:.1f} ms"
        )
        lines.append(
            "latency     "
            + (
                ", ".join(f"{key} {fmt_ms(latency[key])} ms" for key in ("p50", "p95", "p99", "max"))
                if latency
                else "none received"
            )
        )
    elif result["mode"] == "idle":
        lines.append(
            f"idle        held {params['duration_s']:g} s: {connect['accepted'] - result['closed_early']} still open, "
            f"{result['closed_early']} closed early"
        )
    memory = result.get("memory")
    if memory:
        readings = ", ".join(
            f"{label} {_mib(memory.get(key))} MiB"
            for key, label in (
                ("before_kib", "before"),
                ("connected_kib", "connected"),
                ("loaded_kib", "end of load"),
                ("after_kib", "after idle"),
            )
            if key in memory
        )
        lines.append(f"memory      {memory['source']}: {readings}")
        if "per_connection_kib" in memory:
            lines.append(f"            {memory['per_connection_kib']:.1f} KiB per idle connection")
    return "\n".join(lines)


COMPARE_COLUMNS = (
    "config",
    "scenario",
    "clients",
    "offered/s",
    "sent",
    "errors",
    "expected",
    "received",
    "lost",
    "dup",
    "deliveries/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "connect s",
    "refused",
    "RSS MiB (growth)",
)


CONNECTION_COLUMNS = (
    "config",
    "connecting at once",
    "accepted",
    "refused",
    "all connected in s",
    "idle held",
    "closed early",
    "KiB per idle connection",
    "x bare",
)


def _idle_kib(config):
    for run in config.get("runs", []):
        if run["mode"] == "idle":
            return (run.get("memory") or {}).get("per_connection_kib")
    return None


def connections_rows(results):
    """One row per configuration: its connect run and its idle run, memory against the bare server's."""
    bare_kib = _idle_kib(results["configs"].get("bare", {}))
    rows = []
    for name, config in results["configs"].items():
        runs = {run["mode"]: run for run in config.get("runs", [])}
        connect, idle = runs.get("connect"), runs.get("idle")
        if connect is None and idle is None:
            continue
        kib = _idle_kib(config)
        row = [name]
        if connect:
            figures = connect["connect"]
            row += [figures["attempted"], figures["accepted"], figures["refused"] + figures["failed"],
                    f"{figures['time_s']:.2f}"]
        else:
            row += ["-"] * 4
        if idle:
            row += [idle["connect"]["accepted"] - idle["closed_early"], idle["closed_early"]]
        else:
            row += ["-"] * 2
        row += ["-" if kib is None else f"{kib:.1f}", "-" if kib is None or not bare_kib else f"{kib / bare_kib:.2f}"]
        rows.append(row)
    return rows


def _row(cells):
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _table(columns, rows):
    lines = [_row(columns), _row("---" for _ in columns)]
    lines += [_row(row) for row in rows]
    return lines


def compare_markdown(results):
    """results.md: one row per configuration per scenario, then the configurations not measured."""
    lines = ["# Chat websocket benchmark", "", f"Machine: {machine_line(results['machine'])}", ""]
    lines += [f"Run {results['started']}. " + results["about"], ""]
    rows = []
    for name, config in results["configs"].items():
        for run in config.get("runs", []):
            if run["mode"] != "run":
                continue
            latency = run["latency_ms"] or {}
            rows.append(
                [
                    name,
                    run["scenario"],
                    run["connect"]["accepted"],
                    f"{run['params']['offered_deliveries_per_s']:,.0f}",
                    run["sent"],
                    run["errors"],
                    run["expected"],
                    run["received"],
                    run["lost"],
                    run["duplicated"],
                    f"{run['deliveries_per_s']:,.0f}",
                    *(fmt_ms(latency.get(key)) for key in ("p50", "p95", "p99", "max")),
                    f"{run['connect']['time_s']:.2f}",
                    run["connect"]["refused"] + run["connect"]["failed"],
                    memory_cell(run),
                ]
            )
    lines += _table(COMPARE_COLUMNS, rows)
    connection_rows = connections_rows(results)
    if connection_rows:
        lines += ["", "Connections: clients connecting at once, and idle connections held (memory per connection):", ""]
        lines += _table(CONNECTION_COLUMNS, connection_rows)
    lines += [""] + [f"- {name}: {config['description']}" for name, config in results["configs"].items()]
    notes = [(name, config["note"]) for name, config in results["configs"].items() if config.get("note")]
    if notes:
        lines += ["", "Not measured or incomplete:", ""] + [f"- {name}: {note}" for name, note in notes]
    return "\n".join(lines) + "\n"


def search_markdown(results):
    """search.md: per configuration the best passing rate, then every step."""
    lines = ["# Chat websocket benchmark: capacity search", "", f"Machine: {machine_line(results['machine'])}", ""]
    lines += [f"Run {results['started']}. " + results["about"], ""]
    best_rows, step_rows = [], []
    for name, config in results["configs"].items():
        best = config.get("best")
        best_rows.append(
            [
                name,
                f"{best['rate']:g}" if best else "-",
                f"{best['deliveries_per_s']:,.0f}" if best else "-",
                fmt_ms(best["p99_ms"]) if best else "-",
                len(config.get("steps", [])),
                config.get("note", ""),
            ]
        )
        for number, step in enumerate(config.get("steps", []), 1):
            step_rows.append(
                [
                    name,
                    number,
                    f"{step['rate']:g}",
                    f"{step['offered_deliveries_per_s']:,.0f}",
                    f"{step['deliveries_per_s']:,.0f}",
                    step["lost"],
                    step["errors"],
                    fmt_ms(step["p99_ms"]),
                    "pass" if step["passed"] else "fail: " + step["why"],
                ]
            )
    lines += _table(("config", "best msg/s", "delivered/s", "p99 ms", "steps", "note"), best_rows)
    lines += ["", "Steps:", ""]
    lines += _table(
        ("config", "step", "msg/s", "offered/s", "delivered/s", "lost", "errors", "p99 ms", "result"), step_rows
    )
    return "\n".join(lines) + "\n"


def plot_latency(results, path):
    """latency.png: p99 latency (log scale) against offered deliveries/s, one line per configuration.

    The points come from the sweep scenario; a cross marks a point where
    deliveries were lost or messages refused, whose latency is only that of
    what did arrive.
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    plotted = False
    for name, config in results["configs"].items():
        points = [
            (run["params"]["offered_deliveries_per_s"], run["latency_ms"]["p99"], run["lost"] or run["errors"])
            for run in config.get("runs", [])
            if run["scenario"].startswith("sweep") and run["latency_ms"]
        ]
        if not points:
            continue
        plotted = True
        x, y, bad = zip(*points)
        (line,) = axes.plot(x, y, marker="o", label=name)
        bad_points = [(px, py) for px, py, flag in points if flag]
        if bad_points:
            axes.scatter(*zip(*bad_points), marker="x", s=120, color=line.get_color(), zorder=3)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    # Labels some minor ticks (20, 50, ...) only when the range is narrow enough for them.
    axes.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.set_xlabel("offered deliveries/s (message rate x clients in the room)")
    axes.set_ylabel("p99 latency, ms (log scale)")
    axes.set_title("Latency against offered load (x: some lost or refused)")
    axes.grid(True, which="both", alpha=0.3)
    if plotted:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
