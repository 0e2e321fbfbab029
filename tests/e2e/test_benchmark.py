"""The benchmark's load generator works end to end, at a tiny size.

Runs `python -m bench run` as scripts/bench would, once against the deployed
chat (CHAT_URL, make demo's by default) and once against the bare reference
server started here, and checks that the run completed and accounted for
every message. The figures themselves (latency, throughput) are reported,
never asserted: they depend on the machine.
"""

import json
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
