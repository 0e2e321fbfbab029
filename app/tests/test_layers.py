"""The pub/sub layer's lighter mailbox, on its own (the consumer tests use the layer against Redis)."""

import asyncio
import sys

from chat.layers import Mailbox


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
