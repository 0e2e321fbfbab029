"""manage.py prune_messages: CHAT_RETENTION_DAYS, in batches, and what it leaves alone."""

from datetime import timedelta
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat.consumers import read_after, read_before
from chat.models import Message, Room

pytestmark = pytest.mark.django_db


def post(room, text, days_ago):
    message, _ = Message.objects.post(room, "ann", text)
    Message.objects.filter(id=message.id).update(created=timezone.now() - timedelta(days=days_ago))
    return message.id


def prune(*args):
    out = StringIO()
    call_command("prune_messages", *args, "--pause=0", stdout=out)
    return out.getvalue()


def test_messages_older_than_the_retention_are_deleted_and_newer_kept(settings):
    settings.CHAT_RETENTION_DAYS = 30
    old = [post("lobby", f"old {n}", days_ago=31 + n) for n in range(3)]
    new = [post("lobby", f"new {n}", days_ago=29 - n) for n in range(2)]
    output = prune()
    assert "Deleted 3 messages" in output
    assert list(Message.objects.values_list("id", flat=True)) == new
    assert not Message.objects.filter(id__in=old).exists()


def test_retention_unset_keeps_everything(settings):
    settings.CHAT_RETENTION_DAYS = 0
    post("lobby", "ancient", days_ago=3650)
    assert "nothing deleted" in prune()
    assert Message.objects.count() == 1


def test_days_option_overrides_the_setting(settings):
    settings.CHAT_RETENTION_DAYS = 0
    post("lobby", "old", days_ago=8)
    kept = post("lobby", "recent", days_ago=6)
    prune("--days=7")
    assert list(Message.objects.values_list("id", flat=True)) == [kept]


def test_dry_run_counts_and_deletes_nothing(settings):
    settings.CHAT_RETENTION_DAYS = 1
    post("lobby", "old", days_ago=2)
    assert "Would delete 1 messages" in prune("--dry-run")
    assert Message.objects.count() == 1


def test_deletes_in_batches_of_the_given_size(settings):
    settings.CHAT_RETENTION_DAYS = 1
    for n in range(7):
        post("lobby", f"old {n}", days_ago=2)
    with CaptureQueriesContext(connection) as queries:
        output = prune("--batch-size=3")
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("DELETE")]
    assert "Deleted 7 messages" in output
    assert len(deletes) == 3  # 3 + 3 + 1, each in its own transaction
    assert Message.objects.count() == 0


def test_deleted_messages_never_come_back_through_history_or_resync(settings):
    settings.CHAT_RETENTION_DAYS = 30
    old = post("lobby", "old", days_ago=40)
    new = post("lobby", "new", days_ago=1)
    prune()
    resync = async_to_sync(read_after)("lobby", 0)
    history = async_to_sync(read_before)("lobby", None)
    assert [m.id for m in resync.messages] == [new]
    assert [m.id for m in history.messages] == [new]
    assert old not in [m.id for m in async_to_sync(read_after)("lobby", old - 1).messages]


def test_room_sequence_is_left_alone_and_new_messages_number_on(settings):
    settings.CHAT_RETENTION_DAYS = 30
    post("lobby", "one", days_ago=40)
    post("lobby", "two", days_ago=40)
    prune()
    assert Room.objects.get(name="lobby").last_seq == 2
    message, _ = Message.objects.post("lobby", "ann", "three")
    assert message.seq == 3


def test_negative_days_are_refused():
    with pytest.raises(CommandError, match="--days"):
        prune("--days=-1")


def test_the_setting_reads_the_environment(monkeypatch):
    from chatsite.settings import env_int

    monkeypatch.setenv("CHAT_RETENTION_DAYS", "")
    assert env_int("CHAT_RETENTION_DAYS", 0, minimum=0) == 0
    monkeypatch.setenv("CHAT_RETENTION_DAYS", "90")
    assert env_int("CHAT_RETENTION_DAYS", 0, minimum=0) == 90
