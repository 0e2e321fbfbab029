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


def run_race(postgres_url, tmp_path, lock):
    env = {**os.environ, "DATABASE_URL": postgres_url}
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=APP, env=env, check=True)
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


def test_a_reader_resyncing_from_the_last_id_gets_every_message_once(postgres_url, tmp_path):
    written, received = run_race(postgres_url, tmp_path, "room-lock")
    assert len(written) == WRITERS * MESSAGES_EACH
    assert received == sorted(received), "ids went backwards"
    assert len(received) == len(set(received)), "a message came twice"
    assert set(received) == set(written), f"{len(set(written) - set(received))} messages skipped"


def test_without_the_room_lock_the_same_reader_skips_messages(postgres_url, tmp_path):
    """The check above can fail: storing as the chat did before rooms were locked skips messages."""
    written, received = run_race(postgres_url, tmp_path, "none")
    assert set(received) < set(written)
