"""Run an iterator in a background thread, a bounded number of items ahead of its consumer.

Parsing input (polars, Arrow, the id hashes) releases the GIL, so reading the next batch on one core
while the stages work on the current one on the other uses a machine's second core. The queue is
bounded, so memory stays flat: the reader waits while ``depth`` batches are unclaimed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of ``items`` in order, produced by a background thread; its errors are raised here."""
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it
            offer(_Failed(error))
        finally:
            # Stopped early, a generator's own clean-up (a file to close, a thread of its own to stop) runs now,
            # on the thread that ran it, not whenever the last reference to it goes (an error's traceback
            # can hold it long after).
            if isinstance(items, Generator):
                items.close()

    worker = threading.Thread(target=produce, name="curation-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()  # the consumer stopped (done, failed or closed early): the producer stops too
        worker.join()
