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

from django.db import transaction  # noqa: E402

from chat.models import Message  # noqa: E402


def write(room, count, lock):
    ids = []
    for n in range(count):
        # The transaction stays open a moment after the message takes its id,
        # as a busy database's commit can: another writer's later id may
        # commit first.
        with transaction.atomic():
            if lock == "room-lock":
                message, _ = Message.objects.post(room, f"writer-{os.getpid()}", f"m{n}")
            else:  # how messages were stored before rooms were locked
                message = Message.objects.create(room=room, user=f"writer-{os.getpid()}", text=f"m{n}")
            time.sleep(random.uniform(0, 0.004))
        ids.append(message.id)
    print(json.dumps(ids))


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
    else:
        read(args[0], args[1])
