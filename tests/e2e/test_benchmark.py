"""The benchmark's load generator works end to end, at a tiny size.

Runs `python -m bench run` as scripts/bench would, once against the deployed
chat (CHAT_URL, make demo's by default) and once against the bare reference
server started here, and checks that the run completed and accounted for
every message. The figures themselves (latency, throughput) are reported,
never asserted: they depend on the machine. The churn soak runs for a few
seconds against the deployed chat, reading its server (CHAT_CONTAINER) and
its Redis; its targets are printed as PASS/FAIL lines, not asserted.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["--clients", "5", "--senders", "2", "--rate", "4", "--duration", "1", "--drain", "5"]


def bench_run(url, out):
    """One tiny `bench run`; its JSON figures."""
    subprocess.run(
        [sys.executable, "-m", "bench", "run", url, *TINY, "--json", str(out)],
        cwd=REPO,
        check=True,
        timeout=60,
    )
    return json.loads(out.read_text())


def assert_every_message_accounted_for(figures):
    assert figures["connect"]["accepted"] == 5, figures["connect"]
    assert figures["sent"] > 0
    assert figures["errors"] == 0, figures["error_samples"]
    assert figures["expected"] == figures["sent"] * 5
    assert figures["received"] == figures["expected"]
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    latency = figures["latency_ms"]
    assert latency["count"] == figures["received"]
    assert all(latency[key] >= 0 for key in ("p50", "p95", "p99", "max"))


def test_load_generator_against_the_deployed_chat(chat_url, tmp_path):
    assert_every_message_accounted_for(bench_run(chat_url + "/", tmp_path / "deployed.json"))


@pytest.fixture
def bare_server():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "bench.bare_server", "--port", str(port)], cwd=REPO)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, "the bare server exited"
                assert time.monotonic() < deadline, "the bare server did not listen within 15 s"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(10)


def test_load_generator_against_the_bare_reference_server(bare_server, tmp_path):
    assert_every_message_accounted_for(bench_run(bare_server, tmp_path / "bare.json"))


def test_the_comparison_measures_the_deployed_stack_against_the_bare_server(chat_url, tmp_path):
    """`bench compare --quick` for the deployed demo and the bare server: both tables and the plot come out."""
    out = tmp_path / "compare"
    subprocess.run(
        [sys.executable, "-m", "bench", "compare", "--quick", "--configs", "deployed,bare",
         "--deployed-url", chat_url + "/", "--out", str(out)],
        cwd=REPO,
        check=True,
        timeout=300,
    )
    results = json.loads((out / "results.json").read_text())
    for name in ("deployed", "bare"):
        config = results["configs"][name]
        assert "note" not in config or "memory not read" in config["note"], config.get("note")
        modes = [run["mode"] for run in config["runs"]]
        assert modes.count("run") == 3 and "connect" in modes and "idle" in modes, modes
        for run in config["runs"]:
            assert run["connect"]["accepted"] == run["connect"]["attempted"], (name, run["scenario"])
            assert run["lost"] == 0 and run["duplicated"] == 0, (name, run["scenario"])
    markdown = (out / "results.md").read_text()
    assert "| deployed | one room, 100 clients |" in markdown
    assert "KiB per idle connection" in markdown
    assert (out / "latency.png").read_bytes().startswith(b"\x89PNG")


def test_the_churn_soak_reads_the_deployed_server_and_checks_every_message(chat_url, tmp_path):
    """`bench churn` at a tiny size: churns, reads Redis and each daphne process in every phase, judges the targets."""
    out = tmp_path / "churn.json"
    container = os.environ.get("CHAT_CONTAINER", "chat-demo")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "churn", chat_url + "/", "--container", container,
         "--steady", "4", "--rooms", "2", "--rate", "2", "--churn-rate", "10", "--hold", "0.3",
         "--warmup", "1", "--duration", "3", "--sample-interval", "1", "--settle", "1", "--redis-timeout", "0",
         "--drain", "10",
         "--json", str(out)],
        cwd=REPO,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    print(done.stdout)
    figures = json.loads(out.read_text())
    assert [reading["phase"] for reading in figures["readings"]] == ["before", "warm", "after soak", "after"]
    assert figures["samples"], "no reading during the soak"
    for reading in figures["readings"] + figures["samples"]:
        assert "error" not in reading["redis"], reading["redis"]
        assert reading["redis"]["clients"] >= 1 and len(reading["redis"]["numsub"]) == 2
        assert len(reading["processes"]) >= 1 and all(
            process["rss_kib"] > 0 and process["fds"] > 0 for process in reading["processes"].values()
        ), reading["processes"]
    assert figures["churn"]["opened"] > 0, figures["churn"]
    steady = figures["steady"]
    assert steady["connected"] == 4 and steady["sent"] > 0 and steady["deliveries"] > 0, steady
    assert [target for _, target, _ in figures["targets"]] == [
        "0 Redis pub/sub channels left over",
        "0 Redis clients left over",
        "RSS after the soak within 5% of after warm-up",
        "0 messages lost or repeated for the steady clients",
    ]
    assert all(passed is not None for passed, _, _ in figures["targets"]), figures["targets"]
    verdicts = [line.split()[0] for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(verdicts) == 4, done.stdout
