"""The source contract: a source lists what it will read and yields Arrow batches of rows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from connectors.storage import StorageError
from schemas.manifest import InputFile
from schemas.records import RESERVED, empty_set_aside, input_name


@dataclass
class SourceBatch:
    """Rows read (with ``id`` and ``source`` columns) and input that could not become a row."""

    rows: pa.Table
    set_aside: pa.Table = field(default_factory=empty_set_aside)
    input_bytes: int = 0  # bytes of input consumed, for progress

    @property
    def input_records(self) -> int:
        return self.rows.num_rows + self.set_aside.num_rows


class Source(Protocol):
    name: str

    def inputs(self) -> list[InputFile]:
        """What this run will read (files, objects, tables), for the manifest and progress."""
        ...

    def batches(self) -> Iterator[SourceBatch]: ...


def reserved_clash(uri: str, names: Sequence[str]) -> str | None:
    """What is wrong when an input has both ``id`` and ``input_id`` (or ``source`` and ``input_source``):
    read as ``input_id``, its ``id`` would be a second column of that name."""
    clash = [name for name in RESERVED if name in names and f"input_{name}" in names]
    if not clash:
        return None
    return "; ".join(
        f"{uri}: column {name!r} is read as 'input_{name}' ({name} is the record's own), and the input "
        f"has an 'input_{name}' column too: rename one of them"
        for name in clash
    )


def with_lineage(table: pa.Table, ids: list[str] | pa.Array | pa.ChunkedArray, sources: pa.Array) -> pa.Table:
    """Prepend the record ``id`` and ``source``; input columns of those names become ``input_id``/``input_source``.

    Customer tables nearly always have an ``id`` column; renaming keeps it for templates
    (``{{ input_id }}``) without clashing with the record id that lineage depends on.
    """
    names = [input_name(name) for name in table.column_names]
    uri = sources.field("uri")[0].as_py() if len(sources) else "an input"
    clash = reserved_clash(uri, table.column_names)
    if clash is not None:  # two columns of one name: no stage could tell them apart
        raise StorageError(clash)
    table = table.rename_columns(names)
    ids = pc.cast(ids, pa.string()) if isinstance(ids, pa.Array | pa.ChunkedArray) else pa.array(ids, pa.string())
    return table.add_column(0, "id", ids).add_column(1, "source", sources)


def plain_strings(table: pa.Table) -> pa.Table:
    """``large_string`` columns as ``string``: readers hand back either, stages expect one type."""
    for index, column in enumerate(table.schema):
        if pa.types.is_large_string(column.type):
            table = table.set_column(index, column.name, pc.cast(table[column.name], pa.string()))
    return table


def utf8_texts(values: Iterable[bytes | None], column: str) -> tuple[list[str | None], list[str | None]]:
    """A binary column's values as text, and for each that is not UTF-8 (its text None) its problem: a
    Parquet text column holding such a value is handed over as binary (``not_utf8_as_binary``)."""
    texts: list[str | None] = []
    problems: list[str | None] = []
    for value in values:
        try:
            texts.append(None if value is None else value.decode("utf-8"))
            problems.append(None)
        except UnicodeDecodeError as error:
            texts.append(None)
            problems.append(f"column {column!r} holds bytes that are not UTF-8 text ({undecodable_byte(error)})")
    return texts, problems


def undecodable_byte(error: UnicodeDecodeError) -> str:
    """Where a value stops being UTF-8 text, as a problem names it: the byte and its place (from 1)."""
    return f"byte {error.object[error.start]:#04x} at {error.start + 1}"
