"""One connection's delivery state on its own: every transition, without Channels, a database or a clock.

test_delivery.py checks the same behaviour end to end, through the consumer and a real channel layer.
"""

from types import SimpleNamespace

import pytest

from chat import delivery
from chat.delivery import START, STOP, Delivery, Page


def event(id, seq):
    return {"type": "chat.message", "id": id, "seq": seq, "text": f'{{"id": {id}}}'}


def page(*ids, more=False, room_seq=None, latest=None):
    """A page of the messages `ids` (each numbered seq == id), as the consumer reads them."""
    messages = [SimpleNamespace(id=id, seq=id) for id in ids]
    last = ids[-1] if ids else 0
    return Page(messages, more, last if room_seq is None else room_seq, last if latest is None else latest, "lobby")


def sent(steps):
    return [event["id"] for event in steps.deliver]


def joined_at(last):
    """A connection whose backlog ended at message `last` (ids and seqs 1..last)."""
    state = Delivery()
    state.history_sent(page(*range(1, last + 1)))
    return state


def test_the_backlog_puts_the_cursor_at_the_room_as_read_before_its_messages():
    state = Delivery()
    state.history_sent(page(3, 4, room_seq=6, latest=6))  # 5 and 6 were deleted: the room is at 6 all the same
    assert (state.last_id, state.last_seq, state.behind) == (6, 6, False)
    empty = Delivery()
    empty.history_sent(page())
    assert (empty.last_id, empty.last_seq) == (0, 0)


def test_the_next_message_goes_out_at_once():
    state = joined_at(2)
    steps = state.arrived(event(3, 3))
    assert sent(steps) == [3] and not steps.catch_up
    assert steps.gap_wait == STOP  # nothing is held: no wait need run
    assert (state.last_id, state.last_seq) == (3, 3)


def test_a_message_committed_after_the_backlog_was_read_is_not_taken_for_sent():
    state = Delivery()
    state.history_sent(page(1, 2, room_seq=2, latest=2))
    assert sent(state.arrived(event(3, 3))) == [3]


def test_a_message_without_a_seq_from_a_release_before_seqs_goes_by_its_id():
    state = joined_at(2)
    assert sent(state.arrived(event(7, None))) == [7]
    assert (state.last_id, state.last_seq) == (7, 2)
    assert sent(state.arrived(event(7, None))) == []  # its second copy


def test_a_message_sent_already_is_not_sent_again():
    state = joined_at(3)
    steps = state.arrived(event(3, 3))
    assert sent(steps) == [] and steps.gap_wait is None and not steps.catch_up
    assert (state.last_id, state.last_seq) == (3, 3)


def test_a_message_from_ahead_is_held_and_a_gap_wait_starts():
    state = joined_at(2)
    steps = state.arrived(event(4, 4))
    assert sent(steps) == [] and steps.gap_wait == START and not steps.catch_up
    assert set(state.held) == {4}
    assert (state.last_id, state.last_seq) == (2, 2)
    # A further one: the consumer keeps the one wait it has (it starts one only when none runs).
    assert state.arrived(event(6, 6)).gap_wait == START
    assert set(state.held) == {4, 6}


def test_the_missing_message_releases_the_held_ones_in_order_and_stops_the_wait():
    state = joined_at(2)
    for held in (5, 4):
        state.arrived(event(held, held))
    steps = state.arrived(event(3, 3))
    assert sent(steps) == [3, 4, 5]
    assert steps.gap_wait == STOP and not state.held
    assert (state.last_id, state.last_seq) == (5, 5)


def test_a_release_stops_at_the_next_gap_and_the_wait_goes_on():
    state = joined_at(2)
    for held in (4, 6):
        state.arrived(event(held, held))
    steps = state.arrived(event(3, 3))
    assert sent(steps) == [3, 4]
    assert steps.gap_wait is None  # 6 still waits for 5
    assert set(state.held) == {6}


def test_a_copy_of_a_message_sent_already_can_fill_the_gap_the_held_ones_wait_on():
    """Its id counted as sent before its seq was (a room's last seq and last id are read one after the other)."""
    state = joined_at(2)
    state.arrived(event(5, 5))
    state.last_id, state.last_seq = 4, 3
    steps = state.arrived(event(4, 4))
    assert sent(steps) == [5] and steps.gap_wait == STOP
    assert (state.last_id, state.last_seq) == (5, 5)


def test_a_held_message_sent_meanwhile_is_skipped_on_release():
    state = joined_at(2)
    state.arrived(event(4, 4))
    state.last_id = 4  # its id counted as sent, its seq not yet
    steps = state.arrived(event(3, 3))
    assert sent(steps) == [] and not state.held
    assert (state.last_id, state.last_seq) == (4, 4)


def test_too_many_held_messages_ask_for_a_catch_up_at_once(monkeypatch):
    monkeypatch.setattr(delivery, "HELD_MAX", 2)
    state = joined_at(1)
    assert not state.arrived(event(3, 3)).catch_up
    assert not state.arrived(event(4, 4)).catch_up
    steps = state.arrived(event(5, 5))
    assert steps.catch_up and steps.gap_wait is None


def test_a_gap_wait_that_runs_out_asks_for_a_catch_up_only_while_messages_are_held():
    state = joined_at(2)
    assert not state.gap_wait_over()
    state.arrived(event(4, 4))
    assert state.gap_wait_over()
    state.arrived(event(3, 3))  # filled in time
    assert not state.gap_wait_over()


def test_a_gap_wait_that_runs_out_while_the_client_pages_leaves_the_gap_to_its_pages():
    state = joined_at(2)
    state.arrived(event(6, 6))
    state.resync_sent(page(3, 4, more=True, room_seq=9, latest=9))  # the client asked for {"since": 2}
    assert not state.gap_wait_over()


def test_a_catch_up_page_sends_the_missing_ones_then_the_held_that_follow():
    state = joined_at(2)
    for held in (4, 6):
        state.arrived(event(held, held))
    steps = state.caught_up(page(3, 4, 5, room_seq=5, latest=5))
    assert sent(steps) == [6]  # 4 came with the page: dropped from the held ones, not sent twice
    assert steps.gap_wait == STOP and steps.page_wait is None
    assert (state.last_id, state.last_seq, state.behind) == (6, 6, False) and not state.held


def test_a_catch_up_over_a_page_behind_makes_a_first_version_client_page_with_pages_sent_unasked():
    state = joined_at(2)
    state.arrived(event(9, 9))
    steps = state.caught_up(page(3, 4, more=True, room_seq=9, latest=9))
    assert state.behind and state.held is None
    assert sent(steps) == [] and steps.gap_wait == STOP
    assert steps.page_wait == START
    assert (state.last_id, state.last_seq) == (4, 4)  # up to the page, not the room: more follows


def test_a_catch_up_over_a_page_behind_waits_for_a_client_that_asks_for_pages():
    state = Delivery(pages=True)
    state.history_sent(page(1, 2))
    steps = state.caught_up(page(3, 4, more=True, room_seq=9, latest=9))
    assert state.behind and steps.page_wait == STOP


def test_live_messages_are_left_to_the_database_while_the_client_pages():
    state = joined_at(2)
    state.caught_up(page(3, 4, more=True, room_seq=9, latest=9))
    steps = state.arrived(event(10, 10))
    assert sent(steps) == [] and state.held is None and steps.gap_wait is None and not steps.catch_up
    assert not state.gap_wait_over()


def test_a_layer_loss_asks_for_a_catch_up_unless_the_client_is_paging():
    state = joined_at(2)
    assert state.layer_lost()
    state.resync_sent(page(3, 4, more=True))
    assert not state.layer_lost()


@pytest.mark.parametrize("pages", [False, True], ids=["first-version client", "client that asks for pages"])
def test_resync_pages_keep_live_messages_waiting_until_the_last(pages):
    state = Delivery(pages=pages)
    steps = state.resync_sent(page(3, 4, more=True, room_seq=9, latest=9))
    assert state.behind and steps.page_wait == (STOP if pages else START)
    assert (state.last_id, state.last_seq) == (4, 4)
    steps = state.resync_sent(page(5, 6, room_seq=9, latest=9))
    assert not state.behind and steps.page_wait == STOP
    assert (state.last_id, state.last_seq) == (9, 9)
    assert sent(state.arrived(event(10, 10))) == [10]


def test_a_page_is_sent_unasked_only_while_the_client_pages():
    state = joined_at(2)
    assert state.next_page_unasked() is None and not state.paged_unasked
    state.resync_sent(page(3, 4, more=True, room_seq=9, latest=9))
    assert state.next_page_unasked() == 4 and state.paged_unasked


def test_a_client_that_asks_late_for_a_page_sent_unasked_gets_the_next_one():
    state = Delivery()
    state.resync_sent(page(1, 2, more=True, room_seq=9, latest=9))
    assert state.since_asked(0) == 0  # nothing unasked yet: as asked, even backwards
    state.resync_sent(page(3, 4, more=True, room_seq=9, latest=9))
    assert state.next_page_unasked() == 4
    state.resync_sent(page(5, 6, more=True, room_seq=9, latest=9))  # the page sent unasked
    assert state.since_asked(2) == 6  # the client asks for what it was sent unasked: it gets what follows
    assert state.since_asked(8) == 8


def test_a_page_of_messages_stored_before_seqs_moves_only_the_id_on():
    state = Delivery()
    state.resync_sent(Page([SimpleNamespace(id=3, seq=None)], True, 0, 3, "lobby"))
    assert (state.last_id, state.last_seq) == (3, 0)
