"""How a run stops on SIGTERM (how cron, Airflow and Kubernetes stop a task) or ^C: the CLI's handler
raises ``Stopped`` in the main thread, so the run unwinds as on any failure (its staging files
removed, PII workers ended, the run marked failed).

Where the unwinding itself would go wrong, the signal is deferred (``stops_deferred``): while a
process pool forks, a ``Stopped`` raised between two workers would leave the ones already forked
running, unowned, for good. A signal the handler deferred (or one raised where Python ignores
exceptions) is in ``stop_signals``, which the run looks at between stages (``raise_if_stopped``).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

stop_signals: list[int] = []  # every stop signal the handler took
_deferring = [0]  # how many ``stops_deferred`` blocks are open


class Stopped(BaseException):
    """The run was stopped by ``signum``. ``published``: the run's result (a ``RunResult``) when the
    signal came once its version was visible."""

    def __init__(self, signum: int, published: Any = None) -> None:
        super().__init__(signum)
        self.published = published


def on_stop_signal(signum: int, _frame: FrameType | None) -> None:
    """The handler for ``STOP_SIGNALS``: ``Stopped`` now, or where the run next looks when deferred."""
    stop_signals.append(signum)
    if not _deferring[0]:
        raise Stopped(signum)


def take_stop_signals() -> None:
    """Put ``on_stop_signal`` in charge of every one of ``STOP_SIGNALS``."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop_signal)


def stop_name(signum: int) -> str:
    """How a stop is said: ``^C`` for SIGINT (what the user typed), the signal's name otherwise."""
    return "^C" if signum == signal.SIGINT else signal.Signals(signum).name


def raise_if_stopped() -> None:
    if stop_signals:
        raise Stopped(stop_signals[0])


@contextlib.contextmanager
def stops_deferred() -> Iterator[None]:
    """A block the handler does not interrupt; a signal that came meanwhile is in ``stop_signals``, for
    ``raise_if_stopped`` where the run can unwind. (Blocking the signal in this thread is not enough:
    the kernel hands it to another thread, and Python still runs the handler here.)"""
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
