"""JSONL, CSV and Parquet files from local paths and S3, read as a stream of bounded batches.

Memory stays flat as input grows: each file is read block by block, never whole. Input that
cannot become a row (a malformed JSON line, a CSV row with the wrong number of fields) is set
aside as quarantined with the file and line, and the rest of the file goes on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from connectors.base import SourceBatch, with_lineage
from connectors.state import ListedFiles, SourceWatermark
from connectors.storage import FileEntry, StorageError, filesystem
from schemas.config import FilesSource
from schemas.records import record_ids, set_aside_rows, source_array

CONNECTOR = "files"
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
BLOCK_BYTES = 8 * 1024 * 1024
# An inner line that bytes.strip() empties (ASCII whitespace only); starting with a literal lets re skip
# from newline to newline, one fast pass over the block.
_BLANK_INNER_LINE = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")
MAX_RAW_CHARS = 10_000  # how much of a bad line is kept for the reviewer


def file_format(uri: str, declared: str) -> str:
    if declared != "auto":
        return declared
    name = uri.lower().removesuffix(".gz").removesuffix(".zst")
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise StorageError(f"{uri}: cannot tell the format from the name; set 'format' on the source")


def _with_lineage(table: pa.Table, uri: str, lines: Sequence[int], contents: Sequence[bytes]) -> pa.Table:
    return with_lineage(table, record_ids(uri, lines, contents), source_array(CONNECTOR, uri, lines))


def _rows_as_text(table: pa.Table) -> list[bytes]:
    """One byte string per row holding all its values: the content part of a CSV/Parquet row id."""
    if table.num_columns == 0:
        return [b""] * table.num_rows
    columns = [pc.fill_null(pc.cast(column, pa.string()), "\x00") for column in table.columns]
    joined = pc.binary_join_element_wise(*columns, "\x1f")
    return [value.encode() for value in joined.to_pylist()]


class _ByteProgress:
    """Bytes of a file consumed, estimated from decoded sizes and settled at the file's end."""

    def __init__(self, size: int | None) -> None:
        self.size, self.reported = size or 0, 0

    def advance(self, estimate: int) -> int:
        step = max(0, min(estimate, self.size - self.reported))
        self.reported += step
        return step

    def rest(self) -> int:
        return self.advance(self.size)


def has_blank_line(lines: list[bytes]) -> bool:
    """Whether any line is empty or ASCII whitespace only, as ``not line.strip()`` says."""
    if not lines or not lines[0].strip() or not lines[-1].strip():
        return True
    return _BLANK_INNER_LINE.search(b"\n".join(lines)) is not None


class FilesSourceReader(ListedFiles):
    """Reads the files a ``FilesSource`` names, in URI order."""

    name = CONNECTOR
    suffixes = tuple(FORMATS) + tuple(f"{s}.gz" for s in FORMATS)

    def __init__(self, config: FilesSource, batch_rows: int, watermark: SourceWatermark | None = None) -> None:
        self.config = config
        self.batch_rows = batch_rows
        self.watermark = watermark  # with one, only files new or changed since the last run are read

    def batches(self) -> Iterator[SourceBatch]:
        for entry in self.entries():
            fmt = file_format(entry.uri, self.config.format)
            reader = {"jsonl": self._jsonl, "csv": self._csv, "parquet": self._parquet}[fmt]
            try:
                yield from reader(entry)
            except OSError as exc:
                raise StorageError(f"{entry.uri}: cannot read: {exc}") from None

    # --- JSONL -------------------------------------------------------------------------------

    def _jsonl(self, entry: FileEntry) -> Iterator[SourceBatch]:
        fs, path = filesystem(entry.uri)
        line_no = 0
        with fs.open_input_stream(path, compression="detect") as stream:
            pending = b""
            while True:
                chunk = stream.read(BLOCK_BYTES)
                data = pending + chunk
                if chunk:
                    cut = data.rfind(b"\n") + 1
                    data, pending = data[:cut], data[cut:]
                lines = data.split(b"\n")
                if lines and lines[-1] == b"":
                    lines.pop()
                for start in range(0, len(lines), self.batch_rows):
                    group = lines[start : start + self.batch_rows]
                    yield self._parse_lines(entry.uri, line_no + start + 1, group)
                line_no += len(lines)
                if not chunk:
                    return

    def _parse_lines(self, uri: str, first_line: int, lines: list[bytes]) -> SourceBatch:
        input_bytes = sum(map(len, lines)) + len(lines)
        if not has_blank_line(lines):  # the usual block: no per-line check
            numbers, raws = list(range(first_line, first_line + len(lines))), lines
        else:
            numbered = [(first_line + i, line) for i, line in enumerate(lines) if line.strip()]
            numbers = [n for n, _ in numbered]
            raws = [line for _, line in numbered]
        if not raws:
            return SourceBatch(rows=pa.table({}), input_bytes=input_bytes)
        try:
            # Fast path: the whole block parses as JSON objects (polars does not guess dates).
            table = pl.read_ndjson(b"\n".join(raws), infer_schema_length=None).to_arrow()
            if table.num_rows == len(raws):
                return SourceBatch(_with_lineage(table, uri, numbers, raws), input_bytes=input_bytes)
        except Exception:
            pass
        return self._parse_lines_one_by_one(uri, numbers, raws, input_bytes)

    def _parse_lines_one_by_one(self, uri: str, numbers: list[int], raws: list[bytes], input_bytes: int) -> SourceBatch:
        good_lines, good_raws, objects = [], [], []
        bad_lines, bad_raws, details = [], [], []
        for number, raw in zip(numbers, raws, strict=True):
            try:
                value = json.loads(raw)
                problem = None if isinstance(value, dict) else f"a JSON {type(value).__name__}, not an object"
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                problem = f"malformed JSON: {exc.msg if hasattr(exc, 'msg') else exc}"
            if problem is None:
                good_lines.append(number)
                good_raws.append(raw)
                objects.append(value)
            else:
                bad_lines.append(number)
                bad_raws.append(raw)
                details.append(f"{uri}:{number}: {problem}")
        set_aside = set_aside_rows(
            record_ids(uri, bad_lines, bad_raws),
            source_array(CONNECTOR, uri, bad_lines),
            stage="read",
            outcome="quarantined",
            reasons="malformed_json",
            details=details,
            records=[raw.decode("utf-8", "replace")[:MAX_RAW_CHARS] for raw in bad_raws],
        )
        rows = _with_lineage(_table_from_objects(objects), uri, good_lines, good_raws)
        return SourceBatch(rows=rows, set_aside=set_aside, input_bytes=input_bytes)

    # --- CSV ---------------------------------------------------------------------------------

    def _csv(self, entry: FileEntry) -> Iterator[SourceBatch]:
        fs, path = filesystem(entry.uri)
        probe = pacsv.ParseOptions(delimiter=self.config.csv_delimiter, invalid_row_handler=lambda _: "skip")
        with fs.open_input_stream(path, compression="detect") as stream:
            header = pacsv.open_csv(stream, parse_options=probe).schema.names
        # Read every column as text: a type guessed from the first block would break on a later one;
        # the input schema (if any) decides types, with errors that name the row.
        invalid: list[Any] = []

        def keep_invalid(row: Any) -> str:
            invalid.append(row)
            return "skip"

        read = pacsv.ReadOptions(use_threads=False, block_size=BLOCK_BYTES)
        parse = pacsv.ParseOptions(delimiter=self.config.csv_delimiter, invalid_row_handler=keep_invalid)
        # An empty unquoted field is a missing value, so a required column can catch it.
        convert = pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            strings_can_be_null=True,
            null_values=[""],
            quoted_strings_can_be_null=False,
        )
        next_line = 2  # line 1 is the header
        skipped: set[int] = set()
        progress = _ByteProgress(entry.size)
        with fs.open_input_stream(path, compression="detect") as stream:
            reader = pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
            for batch in reader:
                skipped.update(row.number for row in invalid if row.number is not None)
                set_aside = self._invalid_csv_rows(entry.uri, invalid, len(header))
                invalid.clear()
                table = pa.Table.from_batches([batch])
                lines = []
                while len(lines) < table.num_rows:
                    if next_line not in skipped:
                        lines.append(next_line)
                    next_line += 1
                rows = _with_lineage(table, entry.uri, lines, _rows_as_text(table))
                for start in range(0, max(rows.num_rows, 1), self.batch_rows):
                    yield SourceBatch(
                        rows=rows.slice(start, self.batch_rows),
                        set_aside=set_aside if start == 0 else set_aside.slice(0, 0),
                        input_bytes=progress.advance(batch.nbytes) if start == 0 else 0,
                    )
            rest = self._invalid_csv_rows(entry.uri, invalid, len(header))  # rows rejected after the last batch
            yield SourceBatch(rows=pa.table({}), set_aside=rest, input_bytes=progress.rest())

    @staticmethod
    def _invalid_csv_rows(uri: str, rows: list[Any], expected: int) -> pa.Table:
        lines = [row.number for row in rows]
        texts = [row.text for row in rows]
        return set_aside_rows(
            record_ids(uri, lines, [t.encode() for t in texts]),
            source_array(CONNECTOR, uri, lines),
            stage="read",
            outcome="quarantined",
            reasons="malformed_csv",
            details=[f"{uri}:{row.number}: expected {expected} fields, found {row.actual_columns}" for row in rows],
            records=[t[:MAX_RAW_CHARS] for t in texts],
        )

    # --- Parquet -----------------------------------------------------------------------------

    def _parquet(self, entry: FileEntry) -> Iterator[SourceBatch]:
        fs, path = filesystem(entry.uri)
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            total_rows = max(parquet.metadata.num_rows, 1)
            row = 1
            for batch in parquet.iter_batches(batch_size=self.batch_rows):
                table = pa.Table.from_batches([batch])
                lines = list(range(row, row + table.num_rows))
                row += table.num_rows
                yield SourceBatch(
                    rows=_with_lineage(table, entry.uri, lines, _rows_as_text(table)),
                    input_bytes=(entry.size or 0) * table.num_rows // total_rows,
                )


def _table_from_objects(objects: list[dict[str, Any]]) -> pa.Table:
    """Rows from parsed JSON objects; a key whose values mix types is kept as JSON text."""
    if not objects:
        return pa.table({})
    try:
        return pa.Table.from_pylist(objects)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    keys = list(dict.fromkeys(key for obj in objects for key in obj))
    columns = {}
    for key in keys:
        values = [obj.get(key) for obj in objects]
        kinds = {type(v) for v in values if v is not None}
        if kinds <= {int, float}:
            columns[key] = pa.array(values, pa.float64() if float in kinds else None)
        elif kinds == {str}:
            columns[key] = pa.array(values, pa.string())
        else:
            columns[key] = pa.array([v if isinstance(v, str) or v is None else json.dumps(v) for v in values])
    return pa.table(columns)


def lines_of(table: pa.Table) -> np.ndarray:
    """The source line of each row (for messages and tests)."""
    return pc.struct_field(table["source"], "line").to_numpy(zero_copy_only=False)
