"""Processes for test_postgres_order: writers that post into one room, and a reader that resyncs.

Run as `python -m tests.pg_writers <role> ...` from app/, with DATABASE_URL
set. Each prints one JSON line: the ids it wrote or received.
"""

import json
import os
import random
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django.setup()

import threading  # noqa: E402

from django.db import connection, transaction  # noqa: E402

from chat.models import Message  # noqa: E402


def store(room, text, lock):
    if lock == "room-lock":
        return Message.objects.post(room, f"writer-{os.getpid()}", text)[0]
    # How messages were stored before rooms were locked.
    return Message.objects.create(room=room, user=f"writer-{os.getpid()}", text=text)


def write(room, count, lock):
    ids = []
    for n in range(count):
        # The transaction stays open a moment after the message takes its id,
        # as a busy database's commit can: another writer's later id may
        # commit first.
        with transaction.atomic():
            message = store(room, f"m{n}", lock)
            time.sleep(random.uniform(0, 0.004))
        ids.append(message.id)
    print(json.dumps(ids))


def pair(room, lock):
    """The race, step by step: a first writer takes an id and is slow to commit; a second one writes meanwhile.

    A reader resyncs after the second writer is done and again after the
    first commits. Without the room lock the second commits first, the reader
    moves its cursor past the first's id, and never gets it. With the lock the
    second waits for the first, and the reader gets both.
    """
    second_done, reader_read = threading.Event(), threading.Event()
    written = []

    def first():
        with transaction.atomic():
            written.append(store(room, "first", lock).id)
            threading.Thread(target=second).start()
            reader_read.wait(2)  # with the lock nobody reads before we commit: go on after a while
        connection.close()

    def second():
        written.append(store(room, "second", lock).id)
        second_done.set()
        connection.close()

    writer = threading.Thread(target=first)
    writer.start()
    second_done.wait(10)
    received = list(Message.objects.filter(room=room).order_by("id").values_list("id", flat=True))
    reader_read.set()
    writer.join()
    second_done.wait(10)
    cursor = received[-1] if received else 0
    received += Message.objects.filter(room=room, id__gt=cursor).order_by("id").values_list("id", flat=True)
    print(json.dumps({"written": written, "received": received}))


def read(room, done_file):
    """Resyncs the way a client does: again and again, from the last id it got (?since=<id>)."""
    cursor, received = 0, []
    while True:
        finished = os.path.exists(done_file)  # checked before reading: the last read sees every commit
        batch = list(Message.objects.filter(room=room, id__gt=cursor).order_by("id").values_list("id", flat=True))
        received += batch
        cursor = batch[-1] if batch else cursor
        if finished:
            break
        time.sleep(0.001)
    print(json.dumps(received))


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "write":
        write(args[0], int(args[1]), args[2])
    elif role == "pair":
        pair(*args)
    else:
        read(args[0], args[1])
