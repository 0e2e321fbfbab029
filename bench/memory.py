"""Server memory: the resident set size (VmRSS) of the processes that serve the chat.

RSS is what a connection costs the server in RAM, which is the figure the idle
mode exists for. Two sources: processes on this machine, by pid (read from
/proc/PID/status), and processes inside a podman container, found by a
pattern in their command line ("bin/chat-daphne" for the deployed demo's daphne
processes; supervisorctl's "restart daphne:..." does not match it). A reading
is the sum over all matched processes, in KiB, or None when it cannot be read:
memory is reported when it can be, and never makes a run fail.

read_processes() also gives each process's open files (the entries in
/proc/PID/fd), for the churn soak (bench.churn), which watches both for leaks.
"""

import os
import subprocess
from pathlib import Path

# Runs inside the container. The pattern comes in the environment, not in this
# text, so the shell running it never matches itself.
_CONTAINER_SCRIPT = r"""
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  [ "$pid" = "$$" ] && continue
  cmd=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
  case "$cmd" in
    *"$BENCH_PATTERN"*)
      fds=$(ls "$d/fd" 2>/dev/null | wc -l)
      awk -v pid="$pid" -v fds="$fds" '/^VmRSS:/ {print pid, $2, fds}' "$d/status" 2>/dev/null ;;
  esac
done
"""


def _vmrss_kib(status_text):
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None  # a zombie or kernel thread has no resident set


class LocalProcesses:
    """Processes on this machine, given by pid."""

    def __init__(self, pids):
        self.pids = list(pids)

    def describe(self):
        return "pid " + ", ".join(str(pid) for pid in self.pids)

    def read(self):
        """{pid: KiB} for the processes still alive, or None if none is."""
        return _sizes(self.read_processes())

    def read_processes(self):
        """{pid: {"rss_kib": KiB, "fds": open files}} for the processes still alive, or None."""
        found = {}
        for pid in self.pids:
            try:
                size = _vmrss_kib(Path(f"/proc/{pid}/status").read_text())
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue
            if size is not None:
                found[pid] = {"rss_kib": size, "fds": fds}
        return found or None


class ContainerProcesses:
    """Processes inside a podman container whose command line contains a pattern."""

    def __init__(self, container, pattern="bin/chat-daphne"):
        self.container = container
        self.pattern = pattern

    def describe(self):
        return f"'{self.pattern}' processes in container {self.container}"

    def read(self):
        """{pid: KiB} for the matching processes, or None."""
        return _sizes(self.read_processes())

    def read_processes(self):
        """{pid: {"rss_kib": KiB, "fds": open files}} for the matching processes, or None."""
        try:
            done = subprocess.run(
                [
                    "podman",
                    "exec",
                    "-e",
                    f"BENCH_PATTERN={self.pattern}",
                    self.container,
                    "sh",
                    "-c",
                    _CONTAINER_SCRIPT,
                ],
                capture_output=True,
                text=True,
                timeout=15,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        found = {}
        for line in done.stdout.splitlines():
            pid, size, fds = line.split()
            found[int(pid)] = {"rss_kib": int(size), "fds": int(fds)}
        return found or None


def _sizes(processes):
    return {pid: figures["rss_kib"] for pid, figures in processes.items()} if processes else None


def total_kib(reading):
    return sum(reading.values()) if reading else None
