"""Deletes the messages older than the retention period, a batch at a time.

    manage.py prune_messages                # CHAT_RETENTION_DAYS from the settings
    manage.py prune_messages --days 30      # this run only
    manage.py prune_messages --dry-run      # count, delete nothing

Each batch (1000 messages by default) is its own short transaction, oldest
first, so that the table is never locked for long: the chat keeps storing
messages between batches. A deleted message is gone from the table, and
history and ?since= resync read the table, so it never comes back. Room
rows, and their last_seq, are left alone: new messages go on numbering after
the deleted ones.
"""

import time
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from chat.models import Message


class Command(BaseCommand):
    help = "Delete messages older than CHAT_RETENTION_DAYS (or --days), in small batches."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, help="keep this many days instead of CHAT_RETENTION_DAYS")
        parser.add_argument("--batch-size", type=int, default=1000, help="messages per transaction (1000)")
        parser.add_argument("--pause", type=float, default=0.05, help="seconds between batches (0.05)")
        parser.add_argument("--dry-run", action="store_true", help="count the messages, delete nothing")

    def handle(self, *args, days=None, batch_size=1000, pause=0.05, dry_run=False, **options):
        days = settings.CHAT_RETENTION_DAYS if days is None else days
        if days < 0:
            raise CommandError(f"--days must be 0 (keep forever) or more, not {days}.")
        if batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1, not {batch_size}.")
        if days == 0:
            self.stdout.write("Retention is off (CHAT_RETENTION_DAYS is unset or 0): nothing deleted.")
            return
        cutoff = timezone.now() - timedelta(days=days)
        old = Message.objects.filter(created__lt=cutoff)
        if dry_run:
            self.stdout.write(f"Would delete {old.count()} messages from before {cutoff.isoformat()}.")
            return
        deleted = 0
        while True:
            with transaction.atomic():
                ids = list(old.order_by("id").values_list("id", flat=True)[:batch_size])
                if ids:
                    deleted += Message.objects.filter(id__in=ids).delete()[0]
            if len(ids) < batch_size:
                break
            if pause > 0:
                time.sleep(pause)
        self.stdout.write(f"Deleted {deleted} messages from before {cutoff.isoformat()} (kept {days} days).")
