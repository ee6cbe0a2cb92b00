"""The stage contract.

A stage is a callable on a batch that returns the rows it keeps and the rows it sets aside, each
with a reason. It holds no state across batches. Work that needs the whole dataset (duplicates)
is a ``GlobalStage``: a per-batch part that computes signatures and a global part that resolves
them, so the embedded executor and a distributed one run the same code.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import RecipeError
from schemas.records import SIGNATURE_COLUMN_PREFIX, empty_flags, empty_set_aside


def raised_where(error: BaseException) -> str:
    """An unexpected error (a bug) named by its type and the place it was raised, not by its message: a
    message can quote a value (a KeyError holds the key it missed), and values never reach a log line."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return type(error).__name__
    frame = frames[-1]
    return f"{type(error).__name__} in {frame.name} ({Path(frame.filename).name} line {frame.lineno})"


# A value Python's types cannot hold (a Parquet timestamp after the year 9999): see ``as_python``.
NOT_HELD = object()
_NOT_HELD_ERRORS = (OverflowError, ValueError, pa.ArrowException)


def as_python(values: pa.Array | pa.ChunkedArray, as_text: bool = False) -> list[Any]:
    """``values`` as Python objects; for each one Python cannot hold (a Parquet timestamp after the year
    9999: ``to_pylist`` raises for the whole column), ``NOT_HELD``, or with ``as_text`` Arrow's text of it."""
    try:
        return values.to_pylist()
    except _NOT_HELD_ERRORS:
        held: list[Any] = []
        for at in range(len(values)):
            try:
                held.append(values[at].as_py())
            except _NOT_HELD_ERRORS:
                held.append(values[at].cast(pa.string()).as_py() if as_text else NOT_HELD)
        return held


def rows_as_python(table: pa.Table, as_text: bool = False) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """The rows of ``table`` as dicts, and for each the columns whose value Python cannot hold (left out
    of its dict, or with ``as_text`` there as Arrow's text): such a row is quarantined by a template that
    reads one, not the whole run failed (``to_pylist`` raises for the whole table)."""
    try:
        return table.to_pylist(), [[] for _ in range(table.num_rows)]
    except _NOT_HELD_ERRORS:
        columns = {name: as_python(table[name].combine_chunks(), as_text) for name in table.column_names}
        rows = [
            {name: values[at] for name, values in columns.items() if values[at] is not NOT_HELD}
            for at in range(table.num_rows)
        ]
        return rows, [[n for n, values in columns.items() if values[at] is NOT_HELD] for at in range(table.num_rows)]


def flag_payloads(
    flags: pa.Table, kind: str, made_by: Collection[str], ids: Collection[str] | None = None
) -> dict[int, dict[str, Any]]:
    """The payloads, decoded, of the ``flags`` rows of ``kind`` that the stages ``made_by`` made, by row;
    with ``ids``, of those records' flags alone (the others' payloads, records' texts, are not decoded)."""
    column = flags["payload"].to_pylist()
    found = zip(flags["kind"].to_pylist(), flags["stage"].to_pylist(), strict=True)
    rows = [row for row, (of, by) in enumerate(found) if of == kind and by in made_by]
    if ids is not None:
        records = flags["id"].to_pylist()
        rows = [row for row in rows if records[row] in ids]
    return {row: json.loads(column[row]) for row in rows}


def with_payloads(flags: pa.Table, payloads: dict[int, dict[str, Any]]) -> pa.Table:
    """``flags`` with the payloads of the rows in ``payloads`` replaced by them."""
    column = flags["payload"].to_pylist()
    for row, payload in payloads.items():
        column[row] = json.dumps(payload)
    return flags.set_column(flags.schema.get_field_index("payload"), "payload", pa.array(column, pa.string()))


def scrubbed_as_records(
    scrub: Callable[[list[str | None], list[int]], list[str | None]], records: list[list[str | None]]
) -> list[list[str | None]]:
    """Each record's texts as ``scrub`` (a stage's ``rewrite_texts``: texts and the record each is of)
    makes them, every record's texts scanned together (a name found in one redacted in all): one call
    for them all."""
    texts = [text for record in records for text in record]
    scrubbed = iter(scrub(texts, [at for at, record in enumerate(records) for _ in record]))
    return [[next(scrubbed) for _ in record] for record in records]


class StageError(RuntimeError):
    """A stage cannot go on (a setting that only fails on real data); the run publishes nothing."""


class StageSettingError(StageError, RecipeError):
    """A stage setting the records cannot satisfy (a column they do not have), found on the first batch
    where the recipe could not tell at load (table rows): a recipe error, so the run exits 2."""


def is_text(kind: pa.DataType) -> bool:
    # polars hands JSONL text over as large_string.
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def require_columns(batch: pa.Table, names: Iterable[str], setting: str) -> None:
    """Raise ``StageSettingError`` naming ``setting`` when the batch lacks any of ``names``: a misspelt
    column would otherwise crash inside Arrow, or make a stage compare or measure nothing."""
    missing = [name for name in names if name not in batch.column_names]
    if missing:
        own = ("id", "source")
        have = [c for c in batch.column_names if c not in own and not c.startswith(SIGNATURE_COLUMN_PREFIX)]
        raise StageSettingError(f"{setting}: {missing} are not columns of the records; they have {have}")


@dataclass
class StageResult:
    kept: pa.Table
    set_aside: pa.Table = field(default_factory=empty_set_aside)
    # Figures the stage wants in the manifest (changes made, entities redacted, ...): the executor
    # sums them per stage into ``manifest.stats["stages"][stage.name]``.
    stats: dict[str, int] = field(default_factory=dict)
    # Records for the review queue (``FLAG_SCHEMA``); they stay in the output or set-aside as usual.
    flags: pa.Table = field(default_factory=empty_flags)


@runtime_checkable
class Stage(Protocol):
    name: str

    def __call__(self, batch: pa.Table) -> StageResult: ...


@runtime_checkable
class GlobalStage(Protocol):
    name: str

    def signatures(self, batch: pa.Table) -> pa.Table:
        """Per batch: ``id``, ``source`` and the signature columns of each row."""
        ...

    def resolve(self, signatures: Iterable[pa.Table]) -> pa.Table:
        """Over all signatures: the rows to set aside (``SET_ASIDE_SCHEMA``), in any order."""
        ...


@runtime_checkable
class DuplicateStage(GlobalStage, Protocol):
    """Deduplication as steps that any executor can run, locally or distributed.

    ``signatures(batch)`` returns ``id``, ``source``, ``keys`` (``list<uint64>``: rows that share a
    key are candidates) and whatever columns ``pairs`` needs. ``pairs(group)`` takes the signature
    rows that share one key and returns the confirmed duplicate pairs (``a``, ``b``: ids). Clusters
    are the connected components of all pairs; each keeps its first record in input order (by
    source URI, line, page, then id, so every executor keeps the same one).
    ``resolve`` is ``curation.stages.duplicates.resolve_duplicates(self, signatures)``.
    """

    reason: str

    def pairs(self, group: pa.Table) -> pa.Table: ...


def split_by_mask(batch: pa.Table, keep: pa.Array) -> tuple[pa.Table, pa.Table]:
    """Rows where ``keep`` is true, and the rest."""
    keep = pc.fill_null(keep, False)
    return batch.filter(keep), batch.filter(pc.invert(keep))
