"""What one connection has been sent, so that it gets each message of its room once and in order.

Every message a client gets has a higher id than the one before (a room's
messages commit in id order, see models.Room), and each message it gets
once. A connection keeps the last id and the last room seq it sent: a live
message with the next seq goes out at once; one from further ahead is held
while a short wait runs for the ones before it (another app process may
publish later than this one), and when the wait runs out the connection
reads the missing ones from the database (a catch-up). So does a connection
whose channel layer lost messages. A client that has more than a page to
catch up pages through them ({"since": <id>}), and live messages wait for
it meanwhile; a client written before pages never asks, and is sent the next
page unasked when it is slow to.

Delivery holds that state and its transitions, and nothing else: no
Channels, no Django, no clock. The consumer tells it what happened and does
what it answers (Steps: send these live messages, read the page after
last_id, start or stop a wait); the waits are the consumer's timers.
"""

from dataclasses import dataclass, field

# Messages held while waiting, at most; past it the connection reads at once.
HELD_MAX = 200

# A wait to start (the gap wait: unless one runs; the page wait: in place of the one running) or to stop.
START, STOP = "start", "stop"


@dataclass(frozen=True)
class Page:
    messages: list  # oldest first; each with .id and .seq (None on messages stored before seqs)
    more: bool  # another page waits (newer for "after", older for "before")
    room_seq: int  # the room's last seq, read before the messages
    # The room's last message id (when the page reaches the end), read before the messages: a message
    # committed after the messages were read must not count as sent, or its live copy would be dropped.
    latest: int
    room_name: str | None  # the room's shown name (None: the room has no row, so no messages)


@dataclass
class Steps:
    """What the consumer does after a transition: sends `deliver` (live events, in order), then the rest."""

    deliver: list = field(default_factory=list)
    catch_up: bool = False  # read the page after last_id from the database now (then caught_up())
    gap_wait: str | None = None  # START, STOP or None (as it is)
    page_wait: str | None = None  # START, STOP or None (as it is)


class Delivery:
    """One connection's delivery state; every public method is one transition."""

    def __init__(self, pages=False):
        self.pages = pages  # whether the client asks for every next page itself (?pages=1)
        self.last_id = 0  # the id of the last message sent to the client
        self.last_seq = 0  # the room seq the client has every message up to
        self.behind = False  # paging through a resync: live messages come from the database
        self.held = None  # seq -> live event that came before the ones it follows
        self.paged_unasked = False  # whether a page went out because the client did not ask for it in time

    def history_sent(self, page):
        """The join's backlog (the room's latest messages) went out: the client has the room up to now."""
        self._advance(page, more=False)

    def resync_sent(self, page):
        """A resync page went out (at the join, asked for, or unasked): live messages wait while more follow."""
        self._advance(page, page.more)
        return Steps(page_wait=self._fall_behind(page.more))

    def arrived(self, event):
        """A live message came (an event with "id", and "seq" unless from a release before seqs)."""
        steps = Steps()
        if self.behind:
            return steps  # the client gets this one from the database, with its pages
        seq = event.get("seq")
        if event["id"] <= self.last_id:
            # Sent already, from the backlog or a catch-up: it may fill the gap that held messages wait on.
            if seq is not None and seq > self.last_seq:
                self.last_seq = seq
                self._release(steps)
            return steps
        if seq is None or seq <= self.last_seq + 1:
            # The next one (or one from an app server of a release before
            # seqs, during a rolling deploy, which can only go by id).
            self._deliver(event, steps)
            self._release(steps)
            return steps
        # One or more messages before this one have not arrived yet.
        if self.held is None:
            self.held = {}
        self.held[seq] = event
        if len(self.held) > HELD_MAX:
            steps.catch_up = True
        else:
            steps.gap_wait = START
        return steps

    def gap_wait_over(self):
        """The gap wait ran out: whether to catch up (messages are still held, and the client is not paging)."""
        return bool(self.held) and not self.behind

    def layer_lost(self):
        """The channel layer may have lost messages for the room: whether to catch up (not while paging)."""
        return not self.behind

    def caught_up(self, page):
        """The catch-up page (the messages after last_id) went out; over a page behind, the client pages on."""
        self._advance(page, page.more)
        steps = Steps()
        if page.more:
            steps.page_wait = self._fall_behind(True)
            self.held = None
        self._release(steps)
        return steps

    def next_page_unasked(self):
        """The page wait ran out: the cursor of the page to send unasked, or None when the client is not paging."""
        if not self.behind:
            return None
        self.paged_unasked = True
        return self.last_id

    def since_asked(self, cursor):
        """The cursor to read a {"since": cursor} request from.

        Once pages went out unasked, a client that asks late (for a page it was sent already) gets the next
        one: each message once, also to a client that counts them.
        """
        return max(cursor, self.last_id) if self.paged_unasked else cursor

    def _advance(self, page, more):
        """Records that the client has every message of `page` (and, when not `more`, the room up to now)."""
        if page.messages:
            self.last_id = max(self.last_id, page.messages[-1].id)
            self.last_seq = max(self.last_seq, page.messages[-1].seq or 0)
        if not more:
            self.last_id = max(self.last_id, page.latest)
            self.last_seq = max(self.last_seq, page.room_seq)
        if self.held:
            self.held = {seq: event for seq, event in self.held.items() if seq > self.last_seq} or None

    def _fall_behind(self, behind):
        """Live messages wait (behind) while the client pages; the page wait's step (a client that does not ask
        for pages gets them unasked: the wait starts anew with every page)."""
        self.behind = behind
        return START if behind and not self.pages else STOP

    def _deliver(self, event, steps):
        steps.deliver.append(event)
        self.last_id = event["id"]
        if event.get("seq") is not None:
            self.last_seq = max(self.last_seq, event["seq"])

    def _release(self, steps):
        """Sends the held messages that now come next; with none left held, the gap wait stops."""
        while self.held and self.last_seq + 1 in self.held:
            event = self.held.pop(self.last_seq + 1)
            if event["id"] > self.last_id:
                self._deliver(event, steps)
            else:
                self.last_seq += 1
        if self.held:
            self.held = {seq: event for seq, event in self.held.items() if seq > self.last_seq} or None
        if not self.held:
            steps.gap_wait = STOP
