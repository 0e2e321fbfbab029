"""A page's "latest" (the id a client is then counted as having) never passes a message the page left out.

A consumer that sends a page records page.latest as the client's last id, and drops a live message at or below
it as sent already. A message another server commits while the page is being read must therefore be in the
page, or above page.latest (so that it still goes out live). Found by the cluster's rolling deploy check: a
client that joined as the room's first message was stored never got it (c4 missing 817: c5-1, its last id 1761).
"""

import pytest
from asgiref.sync import async_to_sync

from chat import consumers
from chat.models import Message

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def commit_while_reading(monkeypatch):
    """Has another server commit a message to the room while the page's queries run; returns those stored."""
    stored = []
    real_latest_id = consumers.latest_id

    def latest_id_with_a_commit(room):
        if not stored:
            message, _ = Message.objects.post(room, "other", "committed meanwhile")
            stored.append(message)
        return real_latest_id(room)

    monkeypatch.setattr(consumers, "latest_id", latest_id_with_a_commit)
    return stored


@pytest.mark.parametrize("read", ["history", "resync"])
def test_a_message_committed_while_a_page_is_read_is_in_it_or_still_to_come(read, commit_while_reading):
    if read == "history":
        page = async_to_sync(consumers.read_before)("lobby", None)
    else:
        page = async_to_sync(consumers.read_after)("lobby", 0)
    [meanwhile] = commit_while_reading
    ids = [message.id for message in page.messages]
    # The consumer counts the client as having every id up to the larger of these.
    assert meanwhile.id in ids or meanwhile.id > max([page.latest, *ids]), (
        f"page.latest {page.latest} counts message {meanwhile.id} as sent, but the page has "
        f"{ids}"
    )
