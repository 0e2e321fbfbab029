"""The consumer's dispatch loop, on its own."""

import asyncio

import pytest

from chat.dispatch import dispatch_from


class Stop(Exception):
    pass


def source_of(messages, then=None):
    """A source that yields these messages, then raises `then` or waits forever."""
    pending = list(messages)

    async def receive():
        if pending:
            await asyncio.sleep(0)
            return pending.pop(0)
        if then is not None:
            raise then
        await asyncio.Event().wait()

    return receive


async def test_every_message_of_every_source_is_dispatched_in_order_per_source():
    got = []

    async def dispatch(message):
        got.append(message)
        if len(got) == 6:
            raise Stop

    with pytest.raises(Stop):
        await dispatch_from([source_of(["a1", "a2", "a3"]), source_of(["b1", "b2", "b3"])], dispatch)
    assert [m for m in got if m[0] == "a"] == ["a1", "a2", "a3"]
    assert [m for m in got if m[0] == "b"] == ["b1", "b2", "b3"]


async def test_a_failing_source_raises_in_the_loop_after_its_earlier_messages():
    got = []

    async def dispatch(message):
        got.append(message)

    with pytest.raises(ConnectionError):
        await dispatch_from([source_of(["x"], then=ConnectionError("gone"))], dispatch)
    assert got == ["x"]


async def test_a_failing_helper_source_raises_in_the_calling_task():
    got = []

    async def dispatch(message):
        got.append(message)

    with pytest.raises(ConnectionError):
        await dispatch_from([source_of([]), source_of(["y"], then=ConnectionError("layer gone"))], dispatch)
    assert got == ["y"]


async def test_handlers_never_run_at_the_same_time():
    running = []
    overlaps = []

    async def dispatch(message):
        overlaps.append(len(running))
        running.append(message)
        await asyncio.sleep(0.01)
        running.remove(message)
        if len(overlaps) == 6:
            raise Stop

    with pytest.raises(Stop):
        await dispatch_from([source_of(["a1", "a2", "a3"]), source_of(["b1", "b2", "b3"])], dispatch)
    assert overlaps == [0] * 6


async def test_the_helper_tasks_end_with_the_loop():
    before = len(asyncio.all_tasks())

    async def dispatch(message):
        raise Stop

    with pytest.raises(Stop):
        await dispatch_from([source_of(["one"]), source_of([])], dispatch)
    assert len(asyncio.all_tasks()) == before
