"""The lighter mailbox that daphne (chat.server) and the pub/sub layer use, on its own."""

import asyncio
import sys

from chat.mailbox import Mailbox


async def test_items_come_out_in_order():
    box = Mailbox()
    for item in ("a", "b", "c"):
        box.put_nowait(item)
    assert [await box.get() for _ in range(3)] == ["a", "b", "c"]
    assert box.qsize() == 0


async def test_a_waiting_reader_gets_the_next_item():
    box = Mailbox()
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    box.put_nowait("late")
    assert await asyncio.wait_for(reader, 1) == "late"


async def test_a_cancelled_reader_leaves_the_next_item_for_the_next_reader():
    box = Mailbox()
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    box.put_nowait("kept")
    assert await asyncio.wait_for(box.get(), 1) == "kept"


def test_an_empty_mailbox_is_small():
    # asyncio.Queue allocates four deques (about 2.9 KB) before its first item.
    assert sys.getsizeof(Mailbox()) < 100


async def test_a_drained_mailbox_lets_go_of_its_deque():
    box = Mailbox()
    box.put_nowait("a")
    box.put_nowait("b")
    assert box.qsize() == 2
    assert [await box.get(), await box.get()] == ["a", "b"]
    assert box._items is None  # an idle connection keeps no deque (760 bytes each)
