"""The envelope: one Arrow row per batch that carries the kept rows and everything a stage set aside.

Ray Data moves one table per ``map_batches`` call, but a stage returns four things: the rows it
keeps, the rows it sets aside, review flags and stats. The envelope packs them into one row (the
tables as Arrow IPC bytes, the stats as JSON), so the writer and the tally on the driver get every
record's fate, and tables whose columns differ from batch to batch never need one Ray schema.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import pickle
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

import pyarrow as pa

from curation.stages.base import Stage
from schemas.records import FLAG_SCHEMA, SET_ASIDE_SCHEMA

ENVELOPE_SCHEMA = pa.schema(
    [
        pa.field("rows", pa.large_binary()),  # the kept rows, Arrow IPC stream
        pa.field("set_aside", pa.large_binary()),  # SET_ASIDE_SCHEMA rows, Arrow IPC stream
        pa.field("flags", pa.large_binary()),  # FLAG_SCHEMA rows, Arrow IPC stream
        pa.field("stats", pa.string()),  # {stage: {name: count}}
        pa.field("input_records", pa.int64()),  # records read from the input (only on read envelopes)
        pa.field("input_bytes", pa.int64()),  # bytes read, for progress
        # A project error (StageError, AccountingError, StorageError, ...) raised in a worker, pickled:
        # Ray keeps only the text of a failed task's exception, so it travels as data instead and
        # the driver raises it again, same type, same message.
        pa.field("error", pa.large_binary()),
        # What a read task's source took ({"task", "pending", "reread", "replaced"}, JSON): a worker's
        # copy of the source records it (a SQL cursor's highest value, VQA rows), the driver commits it.
        pa.field("watermark", pa.string()),
        # Rows set aside and flags per step (the reader, then each stage), in order ([[rows, flags], ...],
        # JSON): the driver hands each step's set-aside rows on before its flags, as the embedded
        # executor does, so the review queue holds the items in the same order.
        pa.field("steps", pa.string()),
        # What a stage learned from this batch for the run to keep once it publishes ({stage: {item:
        # value}}, JSON: the review stage's content keys of rejected records it met, ``learned``); the
        # driver adds it to its own copy of the stage, as if the stage had run there.
        pa.field("learned", pa.string()),
        # The project's warnings logged in the worker while it read or ran the stages ([[logger, level,
        # message], ...], JSON): the driver logs them, as the embedded executor would have (``collecting_notes``).
        pa.field("notes", pa.string()),
    ]
)


def pack(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.BufferReader(data)).read_all()


@dataclass
class Letter:
    """One envelope row, unpacked. ``set_aside[i]`` and ``flags[i]`` are what step ``i`` (the reader, a
    stage) set aside and flagged."""

    rows: pa.Table
    set_aside: list[pa.Table] = field(default_factory=list)
    flags: list[pa.Table] = field(default_factory=list)
    stats: dict[str, Counter[str]] = field(default_factory=dict)
    input_records: int = 0
    input_bytes: int = 0
    error: BaseException | None = None
    watermark: str | None = None
    learned: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[list[Any]] = field(default_factory=list)

    def add_step(self, set_aside: pa.Table, flags: pa.Table) -> None:
        """What one more step set aside and flagged (the lists are made as long as each other first)."""
        self.flags += [FLAG_SCHEMA.empty_table()] * (len(self.set_aside) - len(self.flags))
        self.set_aside += [SET_ASIDE_SCHEMA.empty_table()] * (len(self.flags) - len(self.set_aside))
        self.set_aside.append(set_aside)
        self.flags.append(flags)

    def seal(self) -> dict[str, object]:
        aside = pa.concat_tables([SET_ASIDE_SCHEMA.empty_table()] + [t.cast(SET_ASIDE_SCHEMA) for t in self.set_aside])
        flags = pa.concat_tables([FLAG_SCHEMA.empty_table()] + [t.cast(FLAG_SCHEMA) for t in self.flags])
        steps = [[t.num_rows if t is not None else 0 for t in step] for step in zip_longest(self.set_aside, self.flags)]
        return {
            "rows": pack(self.rows),
            "set_aside": pack(aside),
            "flags": pack(flags),
            "stats": json.dumps({stage: dict(counter) for stage, counter in self.stats.items()}),
            "input_records": self.input_records,
            "input_bytes": self.input_bytes,
            "error": pickle.dumps(self.error) if self.error is not None else None,
            "watermark": self.watermark,
            "steps": json.dumps(steps),
            "learned": json.dumps(self.learned) if self.learned else None,
            "notes": json.dumps(self.notes) if self.notes else None,
        }


def seal_all(letters: list[Letter]) -> pa.Table:
    return pa.Table.from_pylist([letter.seal() for letter in letters], schema=ENVELOPE_SCHEMA)


def _by_step(table: pa.Table, counts: list[int]) -> list[pa.Table]:
    starts = [sum(counts[:index]) for index in range(len(counts))]
    return [table.slice(start, count) for start, count in zip(starts, counts, strict=True)]


def open_all(envelopes: pa.Table) -> list[Letter]:
    letters = []
    for row in envelopes.to_pylist():
        stats = {stage: Counter(counts) for stage, counts in json.loads(row["stats"]).items()}
        steps = json.loads(row["steps"] or "[]")
        letters.append(
            Letter(
                rows=unpack(row["rows"]),
                set_aside=_by_step(unpack(row["set_aside"]), [aside for aside, _ in steps]),
                flags=_by_step(unpack(row["flags"]), [flags for _, flags in steps]),
                stats=stats,
                input_records=row["input_records"],
                input_bytes=row["input_bytes"],
                error=pickle.loads(row["error"]) if row["error"] is not None else None,
                watermark=row["watermark"],
                learned=json.loads(row["learned"]) if row["learned"] else {},
                notes=json.loads(row["notes"]) if row["notes"] else [],
            )
        )
    return letters


PROJECT_PACKAGES = ("curation.", "schemas.", "connectors.", "train.")


class _Notes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.notes: list[list[Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.notes.append([record.name, record.levelno, record.getMessage()])
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def collecting_notes() -> Iterator[list[list[Any]]]:
    """In a Ray worker: the warnings the project's loggers give meanwhile (a reader's, a stage's), kept
    for the envelopes, not printed there. A worker's log reaches the driver's console only as its
    output (not with ``--quiet``, not in the driver's logging): the driver logs these itself (take them
    off the list as each envelope gets them)."""
    handler = _Notes()
    loggers = [logging.getLogger(package.rstrip(".")) for package in PROJECT_PACKAGES]
    propagating = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield handler.notes
    finally:
        for logger, propagate in zip(loggers, propagating, strict=True):
            logger.removeHandler(handler)
            logger.propagate = propagate


def taken(notes: list[list[Any]]) -> list[list[Any]]:
    """The notes collected so far, which leave the list."""
    found = notes[:]
    del notes[: len(found)]
    return found


def is_project_error(error: BaseException) -> bool:
    """Errors a run reports in a line, as the embedded executor raises them: the project's own (a message
    for the user), and the library errors the command line says as "run failed" (an OSError, a ValueError:
    Arrow's ArrowInvalid, json's, a codec's), not bugs. Left to Ray, a ValueError came back as Ray's task
    error, with its retry notes and a traceback, where the embedded executor says its message."""
    return type(error).__module__.startswith(PROJECT_PACKAGES) or isinstance(error, OSError | ValueError)


class CarriedError(Exception):
    """A project error raised in a Ray task outside an envelope (a global stage's steps at a barrier),
    pickled as its first argument. Ray appends its retry notes to the message of an exception that
    leaves a task, and logs the task's traceback; the driver finds this one (``unwrap``) and raises the
    original, as it was raised."""

    def original(self) -> BaseException:
        return pickle.loads(self.args[0])


def carried(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (a Ray Data UDF returning or yielding tables) with its project errors carried."""
    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def generating(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from function(*args, **kwargs)
            except Exception as error:
                if not is_project_error(error):
                    raise
                raise CarriedError(pickle.dumps(error)) from None

        return generating

    @functools.wraps(function)
    def returning(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as error:
            if not is_project_error(error):
                raise
            raise CarriedError(pickle.dumps(error)) from None

    return returning


def carrying_errors(make: Callable[[], pa.Table]) -> pa.Table:
    """``make()``, or an envelope holding the project error it raised."""
    try:
        return make()
    except Exception as error:
        if not is_project_error(error):
            raise
        return seal_all([Letter(rows=pa.table({}), error=error)])


def apply_stages(letter: Letter, stages: list[Stage]) -> Letter:
    """Run per-batch stages on the letter's rows, as the embedded executor does, checking each count."""
    from curation.executors.local import AccountingError

    batch = letter.rows
    for stage in stages:
        if batch.num_rows == 0:
            break
        learned = getattr(stage, "learned", None)  # what the stage keeps for the run, here in a worker
        known = len(learned) if learned is not None else 0
        result = stage(batch)
        if learned is not None and len(learned) > known:
            letter.learned.setdefault(stage.name, {}).update(list(learned.items())[known:])
        if result.kept.num_rows + result.set_aside.num_rows != batch.num_rows:
            raise AccountingError(
                f"stage {stage.name} took {batch.num_rows} records and returned "
                f"{result.kept.num_rows} kept + {result.set_aside.num_rows} set aside"
            )
        if result.set_aside.num_rows or result.flags.num_rows:
            letter.add_step(result.set_aside, result.flags)
        if result.stats:
            letter.stats.setdefault(stage.name, Counter()).update(result.stats)
        batch = result.kept
    letter.rows = batch
    return letter
