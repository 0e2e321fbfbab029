"""Ids as a resync cursor on PostgreSQL, with several processes writing at once.

PostgreSQL hands out ids from a sequence before the transaction commits, so
two writers can commit 42 before 41; a client that got 42 and resyncs with
?since=42 would never get 41. Message.objects.post() locks the room's row
from before the id is taken until the commit, so one room's messages commit
in id order. These tests run real writer processes and a resyncing reader
against a real PostgreSQL (conftest.postgres_url).
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent
WRITERS = 4
MESSAGES_EACH = 150


@pytest.fixture(scope="module")
def env(postgres_url):
    """The environment of a process of the chat's on the test PostgreSQL, migrated."""
    env = {**os.environ, "DATABASE_URL": postgres_url}
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=APP, env=env, check=True)
    return env


def run_race(env, tmp_path, lock):
    room = f"race-{uuid.uuid4().hex[:8]}"
    done = tmp_path / f"{room}.done"
    module = [sys.executable, "-m", "tests.pg_writers"]

    def start(*args):
        return subprocess.Popen([*module, *args], cwd=APP, env=env, stdout=subprocess.PIPE, text=True)

    reader = start("read", room, str(done))
    writers = [start("write", room, str(MESSAGES_EACH), lock) for _ in range(WRITERS)]
    written = []
    for writer in writers:
        out, _ = writer.communicate(timeout=120)
        assert writer.returncode == 0
        written += json.loads(out)
    done.touch()
    out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0
    return written, json.loads(out)


def test_writer_processes_at_once_and_a_reader_resyncing_from_the_last_id_miss_nothing(env, tmp_path):
    written, received = run_race(env, tmp_path, "room-lock")
    assert len(written) == WRITERS * MESSAGES_EACH
    assert received == sorted(received), "ids went backwards"
    assert len(received) == len(set(received)), "a message came twice"
    assert set(received) == set(written), f"{len(set(written) - set(received))} messages skipped"


@pytest.mark.parametrize(("lock", "skipped"), [("room-lock", 0), ("none", 1)], ids=["room_lock", "no_lock"])
def test_a_slow_commit_never_lets_a_later_id_past_it(env, lock, skipped):
    """Step by step; without the lock (as messages were stored before), the check catches the skip."""
    room = f"pair-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        [sys.executable, "-m", "tests.pg_writers", "pair", room, lock],
        cwd=APP, env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    result = json.loads(out)
    assert len(result["written"]) == 2
    assert len(set(result["written"]) - set(result["received"])) == skipped
