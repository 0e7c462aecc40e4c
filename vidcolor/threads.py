"""Run a stage of the frame stream in its own thread, joined to the next by a bounded queue.

Decode, colorize, temporal and encode overlap this way, so the slowest stage sets the pace
(torch, cv2, numpy and PyAV release the GIL in their heavy calls) while memory stays bounded
by the queues. It knows nothing of frames' contents and imports nothing from the package.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")
PUT_POLL_S = 0.1  # how often a producer blocked on a full queue checks for a stop, seconds


def in_thread(stage: Callable[[Iterator[T]], Iterator[U]], items_in: Iterator[T], depth: int,
              name: str) -> Iterator[U]:
    """Run `stage(items_in)` in a daemon thread named `name`, up to `depth` items ahead.

    One producer and one FIFO queue, so order and count are kept. An exception raised in the
    stage is raised again here, in the consumer, as the same object (type and traceback
    kept). When the stage ends, fails or is stopped (this generator closed, or an error in the
    consumer), the thread closes the stage's iterator and `items_in` itself, in the thread
    that used them, which stops every stage upstream in turn; it is joined before this
    generator finishes. `items_in` is closed explicitly because an exception's traceback
    would otherwise keep it, and the threads behind it, alive.

    Args:
        stage: a function from an iterator to an iterator (often a generator's `run`);
            `iter` runs `items_in` itself in the thread.
        items_in: the upstream items.
        depth: queue size, >= 1.
        name: thread name, for debuggers and tests.

    Yields:
        The stage's items, in order.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        items = None
        try:
            items = stage(items_in)
            for item in items:
                if not offer(item):
                    return
            offer(_END)
        except BaseException as e:  # handed to the consumer, raised there
            offer(_Failure(e))
        finally:
            for iterator in (items, items_in):
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while (item := slots.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


class _Failure:
    """An exception travelling from a stage thread to its consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()  # end-of-stream marker on a stage queue
