"""Values asked of a database a batch at a time, within its limit on bound parameters."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

# Ids asked of a state database in one ``IN (...)``: under every database's limit on bound parameters.
IDS_PER_QUERY = 500

T = TypeVar("T")


def batched(values: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``values``, ``size`` at a time (``itertools.batched`` but for Python 3.11, as slices), so that a
    query asks for them within a database's limit on bound parameters."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def id_chunks(ids: Iterable[Any]) -> Iterator[Sequence[Any]]:
    """The distinct ``ids``, sorted, ``IDS_PER_QUERY`` at a time: one ``IN (...)`` each."""
    return batched(sorted(set(ids)), IDS_PER_QUERY)
