"""Reading ahead on a thread keeps order, raises the reader's errors, stays bounded and stops with its consumer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from connectors.read_ahead import read_ahead


def test_items_arrive_in_order_and_a_reader_error_is_raised_to_the_consumer() -> None:
    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("part-0003.jsonl: cannot read")

    stream = read_ahead(failing())
    assert next(stream) == 1
    with pytest.raises(ValueError, match=r"part-0003\.jsonl"):
        next(stream)


def test_the_reader_stays_at_most_depth_items_ahead_and_stops_when_the_consumer_does() -> None:
    produced: list[int] = []

    def counting() -> Iterator[int]:
        for n in range(1000):
            produced.append(n)
            yield n

    stream = read_ahead(counting(), depth=2)
    assert next(stream) == 0
    time.sleep(0.3)  # time enough for an unbounded reader to run far ahead
    # One taken, two queued, one held by the reader while it waits for room: never the whole input.
    assert len(produced) <= 5
    stream.close()  # the consumer stops early: the reader thread ends, it does not read on
    assert not any(t.name == "curation-read-ahead" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 5
