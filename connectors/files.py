"""JSONL, CSV and Parquet files from local paths and S3, read as a stream of bounded batches.

Memory stays flat as input grows: each file is read block by block, never whole. Input that
cannot become a row (a malformed JSON line, a CSV row with the wrong number of fields, a line that is
not UTF-8) is set aside as quarantined with the file and line, and the rest of the file goes on.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import csv
import dataclasses
import functools
import io
import json
import logging
import math
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from connectors.base import SourceBatch, undecodable_byte, with_lineage
from connectors.read_ahead import read_ahead
from connectors.state import ListedFiles, SourceWatermark
from connectors.storage import (
    PACKED_SUFFIXES,
    FileEntry,
    ReadDigest,
    StorageError,
    Unreadable,
    filesystem,
    hive_base,
    hive_partitions,
    open_input,
    partitions_below,
    read_error,
)
from schemas.arrow_bytes import string_buffers
from schemas.config import FilesSource
from schemas.json_values import JSON_TYPE, float_texts, is_json, json_values
from schemas.records import (
    INPUT_LINE_COLUMN,
    RESERVED,
    InputIds,
    empty_set_aside,
    input_name,
    reads,
    record_json,
    set_aside_rows,
    sorted_holds,
    source_array,
)

CONNECTOR = "files"
log = logging.getLogger(__name__)
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
BLOCK_BYTES = 8 * 1024 * 1024
MAX_CSV_BLOCK_BYTES = 1024 * 1024 * 1024  # the longest CSV record read (a block holds one: see _csv)
_BOM = b"\xef\xbb\xbf"  # a UTF-8 one, which Arrow skips
PROBE_BYTES = 1024 * 1024  # a CSV file's header must end within its first bytes, read for it
HEAD_BYTES = PROBE_BYTES  # what ``curation check`` reads of each input it opens
# The bytes bytes.strip() removes: a line of only these is blank.
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True
# Column types whose values cannot hide a key: see _schema_seen_whole.
_FLAT_TYPES = (pl.String, pl.Int64, pl.Float64, pl.Boolean)
_ESCAPED_COLON = re.compile(rb"\\u003[aA]")
# Any \u escape of a UTF-16 surrogate: a line holding one gets the exact check (``_lone_surrogate``).
_ANY_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, decoded with surrogateescape
MAX_RAW_CHARS = 10_000  # how much of a bad line is kept for the reviewer
_CUT = " [cut]"  # what ends a set-aside record cut at MAX_RAW_CHARS
# A cut word's start that is dropped: an address (254 characters at most), a name or a number cut in two is no
# longer one the pii scrub recognises. Bounded, so text without spaces (Chinese, base64) is not dropped whole.
_CUT_WORD = re.compile(r"\s*\S{0,256}$")
# How much of a cut record's end the word is looked for in: run over the whole text, the regex tried each of its
# 10,000 starts (47-63 ms a record without spaces); a word and the spaces before it past this are dropped anyway.
_CUT_END = 512
# A number in groups the cut fell in ("Call +1 415 555", "Card 4111 1111 1111"): its first groups, each a word of
# its own, are no number the scrub recognises either. Bounded: a phone's or a card's separated digits.
_CUT_NUMBER = re.compile(r"[\d\s+().-]{0,40}$")


def raw_cut(text: str) -> str:
    """``text`` as a set-aside record keeps it: whole, or its first ``MAX_RAW_CHARS`` characters ending in
    `` [cut]``, the word the cut fell in (and a number in groups it ends) left out. The scrub runs on the record
    as cut (the reader cuts it), and did not recognise the start of an address it split (``Contact dana.whitfield@exa``): published in clear."""
    if len(text) <= MAX_RAW_CHARS:
        return text
    kept = text[: MAX_RAW_CHARS - len(_CUT)]
    if not text[len(kept)].isspace():
        kept = kept[:-_CUT_END] + _CUT_WORD.sub("", kept[-_CUT_END:])
    kept = kept[:-_CUT_END] + _CUT_NUMBER.sub("", kept[-_CUT_END:])
    return kept.rstrip() + _CUT


def file_format(uri: str, declared: str) -> str:
    if declared != "auto":
        return declared
    name = uri.lower()
    name = next((name.removesuffix(packed) for packed in PACKED_SUFFIXES if name.endswith(packed)), name)
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise StorageError(f"{uri}: cannot tell the format from the name; set 'format' on the source")


def _with_lineage(
    table: pa.Table,
    ids: InputIds,
    lines: Sequence[int] | np.ndarray,
    contents: Sequence[bytes] | pa.Array | pa.ChunkedArray,
) -> pa.Table:
    return with_lineage(table, ids(contents), source_array(CONNECTOR, ids.uri, lines))


def _with_lines(rows: pa.Table, raws: Sequence[bytes] | pa.Array) -> pa.Table:
    """``rows`` (a JSONL block read as one table) with each row's line (``INPUT_LINE_COLUMN``) where
    a column holds a null: a line without a key holds one under it, as a line that writes null does,
    and a quarantined row's ``record`` is to hold its own line's keys (``input_record_json``)."""
    if not any(column.null_count for column in rows.columns[2:]):
        return rows
    lines = raws if isinstance(raws, pa.Array) else pa.array(raws, pa.large_binary())
    return rows.append_column(INPUT_LINE_COLUMN, lines)


def _rows_as_text(table: pa.Table) -> pa.Array | pa.ChunkedArray:
    """One string per row holding all its values: the content part of a CSV/Parquet row id."""
    if table.num_columns == 0:
        return pa.repeat(pa.scalar("", pa.string()), table.num_rows)
    columns = [pc.fill_null(_as_text(column), "\x00") for column in table.columns]
    return pc.binary_join_element_wise(*columns, "\x1f")


def _rows_as_bytes(table: pa.Table) -> pa.Array | pa.ChunkedArray:
    """``_rows_as_text``, but the values of a binary column (a hash, a thumbnail) as their bytes: they
    need not be UTF-8, which a cast to text demands. Bytes that are UTF-8 are what the text was."""
    if not any(_is_binary(field.type) for field in table.schema):
        return _rows_as_text(table)
    columns = [
        pc.fill_null(pc.cast(column if _is_binary(column.type) else _as_text(column), pa.large_binary()), b"\x00")
        for column in table.columns
    ]
    return pc.binary_join_element_wise(*columns, pa.scalar(b"\x1f", pa.large_binary()))


def _is_binary(dtype: pa.DataType) -> bool:
    return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or pa.types.is_fixed_size_binary(dtype)


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """Each value as text; nested ones (a Parquet struct, list or map), which Arrow cannot cast, as JSON."""
    if not pa.types.is_nested(column.type) and not is_json(column.type):
        return pc.cast(column, pa.string())
    values = column.to_pylist()  # a JSON value's keys sorted, as a struct's were: its id stays as it was
    return pa.array([None if v is None else json.dumps(v, sort_keys=True, default=str) for v in values], pa.string())


def _once_each(uri: str, names: list[str]) -> None:
    """A column named twice cannot be told apart from its namesake: the file is refused, by name."""
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise StorageError(f"{uri}: column(s) {', '.join(map(repr, twice))} appear more than once in the header")


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


def blank_lines(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which lines ``data[starts[i]:ends[i]]`` are empty or ASCII whitespace only, as ``not line.strip()`` says."""
    octets = np.frombuffer(data, dtype=np.uint8)
    if (octets[starts] == ord("{")).all():
        return np.zeros(len(starts), dtype=bool)  # the usual block: every line starts with an object
    solid = np.zeros(len(octets) + 1, dtype=np.int64)  # non-whitespace bytes before each offset
    np.cumsum(~_WHITESPACE[octets], out=solid[1:])
    return solid[ends] == solid[starts]


def _line_array(data: bytes, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """The lines ``data[starts[i]:ends[i]]``, each followed by a newline in ``data``, as one binary array."""
    # Consecutive lines with their newline are one run of data: offsets alone slice it, then the
    # newline is cut off each value.
    offsets = np.append(starts, ends[-1] + 1).astype(np.int64)
    with_newline = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(starts), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    return pc.binary_slice(with_newline, 0, -1)


class _Scan(NamedTuple):
    """What the checks of a JSONL block look for in its bytes, found once for all of them (each pass
    over a block costs about a millisecond a MB): how many colons it holds, and whether any backslash."""

    colons: int
    escapes: bool


def _scan(text: bytes) -> _Scan:
    # The colons in NumPy: three times faster than ``bytes.count``; a backslash at memchr's speed.
    return _Scan(int(np.count_nonzero(np.frombuffer(text, dtype=np.uint8) == ord(":"))), b"\\" in text)


# The bytes ``_line_ends`` looks at a time (a multiple of 8): the piece and its flags stay in the core's
# cache for both the newline and the colon pass, where 8 MB flags went out to memory and back per pass.
_PIECE = 256 * 1024


def _line_ends(data: bytes) -> tuple[np.ndarray, _Scan]:
    """Where each newline of ``data`` is, and ``_scan(data)``, in one walk over it. ``np.flatnonzero``
    looks at each flag one by one (most of the newline search): it looks instead at the flags 8 at a
    time, as one 64-bit word, and then only into the words holding a newline (about one in 20 here).
    Together, about a third less CPU than the two passes over the whole block."""
    octets = np.frombuffer(data, dtype=np.uint8)
    flags = np.empty(-(-min(len(octets), _PIECE) // 8) * 8, dtype=bool)
    ends, colons = [np.zeros(0, dtype=np.int64)], 0
    for at in range(0, len(octets), _PIECE):
        piece = octets[at : at + _PIECE]
        size = len(piece)
        np.equal(piece, ord("\n"), out=flags[:size])
        flags[size:] = False  # the last piece's flags past its end, in its last word
        words = flags[: -(-size // 8) * 8].view(np.uint64)
        held = np.flatnonzero(words != 0)
        found = np.flatnonzero(words[held].view(np.bool_))  # the flags of those words, 8 a word
        ends.append(held[found >> 3] * 8 + (found & 7) + at)
        colons += int(np.count_nonzero(np.equal(piece, ord(":"), out=flags[:size])))
    return np.concatenate(ends), _Scan(colons, b"\\" in data)


def _escapes_a_colon(text: bytes, scan: _Scan) -> bool:
    return scan.escapes and _ESCAPED_COLON.search(text) is not None


def _schema_seen_whole(text: bytes, frame: pl.DataFrame, scan: _Scan | None = None) -> bool:
    """Whether the schema polars inferred from the first rows of ``text`` is what all rows give.

    Reading with a schema is what polars does either way, so the frames are then equal too. A later
    row can change the schema without failing the read only by a key not seen before (polars drops
    it) or a value under a null-typed, list or struct column (polars keeps null or drops a field);
    any other type change fails the read. Without null, list and struct columns, the keys remain: in
    the text every key is followed by one colon and a colon elsewhere is in a string, so with no
    column name holding a colon, no escaped colon (\\u003a) and every cell filled (each key once per
    row), the text's colons number rows x columns plus those in string values exactly when no key
    is new. ``scan``: ``text``'s, where scanned already.
    """
    if any(dtype not in _FLAT_TYPES for dtype in frame.dtypes) or any(":" in name for name in frame.columns):
        return False
    scan = _scan(text) if scan is None else scan
    if sum(frame.null_count().row(0)) > 0 or _escapes_a_colon(text, scan):
        return False
    colons = scan.colons
    if colons == frame.height * frame.width:  # no colon in any string: no need to count them there
        return True
    strings = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    counts = frame.select(pl.col(strings).str.count_matches(":", literal=True).sum())
    return colons == frame.height * frame.width + (sum(counts.row(0)) if strings else 0)


_HIGH_SURROGATE = np.zeros(256, dtype=bool)  # the third hex digit of \uD800-\uDBFF
_HIGH_SURROGATE[list(b"89abAB")] = True
_LOW_SURROGATE = np.zeros(256, dtype=bool)  # of \uDC00-\uDFFF
_LOW_SURROGATE[list(b"cdefCDEF")] = True


def _may_hold_lone_surrogate(text: bytes, scan: _Scan | None = None) -> bool:
    """Whether ``text`` holds a \\u escape of a lone UTF-16 surrogate (a high one with no low one after
    it, or a low one with no high one before it), which is no character: polars reads a lone high one
    as NUL and panics on one in a key. A pair (how ASCII JSON writes an emoji) is one character. An
    escaped backslash before the \\u is not told apart: such lines get the exact check, one by one.
    In NumPy, about 1 ms a MB (a regex took 40). ``scan``: ``text``'s, where scanned already."""
    if not (b"\\" in text if scan is None else scan.escapes):  # no escape at all: the usual block
        return False
    octets = np.frombuffer(text, dtype=np.uint8)
    at = np.flatnonzero(octets[:-5] == ord("\\"))
    at = at[(octets[at + 1] == ord("u")) & ((octets[at + 2] | 0x20) == ord("d"))]
    if not len(at):
        return False
    digit = octets[at + 3]
    high, low = at[_HIGH_SURROGATE[digit]], at[_LOW_SURROGATE[digit]]
    return not (sorted_holds(low, high + 6).all() and sorted_holds(high, low - 6).all())


def _lone_surrogate(raw: bytes, value: dict[str, Any]) -> str | None:
    """What is wrong when a string of the line's object holds a lone UTF-16 surrogate, which no text
    can hold (a valid pair, as JSON writes an emoji, is one character and fine)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError as error:
        escape = f"\\u{ord(error.object[error.start]):04x}"
        column = raw.decode("utf-8-sig").lower().find(escape) + 1
        where = f": column {column}" if column else ""
        return f"malformed JSON: {escape} is half of a UTF-16 surrogate pair, not a character{where}"


def read_json_objects(text: bytes, count: int, scan: _Scan | None = None) -> pa.Table | None:
    """The ``count`` JSON lines of ``text`` as a table, typed from all rows; None unless each is an object.

    polars does not guess dates. It types columns from the first rows unless told to read all of them
    first, a second pass over the text that cost more than the read itself: that pass runs only when
    the first rows may not tell the whole schema. ``scan``: ``text``'s, where scanned already.
    """
    for infer_rows in (100, None):
        try:
            frame = pl.read_ndjson(text, infer_schema_length=infer_rows)
            if frame.height == count and (
                infer_rows is None or count <= infer_rows or _schema_seen_whole(text, frame, scan)
            ):
                return frame.to_arrow()
        except Exception:  # a line polars cannot take, a type the first rows did not show, or none Arrow has
            continue
        except BaseException as error:  # a panic in polars' Rust code: the lines are read one by one
            if type(error).__name__ != "PanicException":
                raise
            continue
    return None


class _RepeatedKey(Exception):
    pass


def _one_value_per_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict; a key named twice raises ``_RepeatedKey`` (``object_pairs_hook``)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        raise _RepeatedKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return value


def _may_repeat_a_key(text: bytes, table: pa.Table, scan: _Scan | None = None) -> bool:
    """Whether a line of ``text``, read as ``table``, may name a key twice in one object (at any depth).

    polars keeps the first value of such a key and Python's json the last, so which one a record got
    hung on which path read its block. Every key in the text is followed by one colon, and any other
    colon is in a string: with no escaped colon (\\u003a) and no key name holding one, the keys number
    the colons less those in the table's strings. Each value the table holds (not null, at any depth)
    had a key of its own, so when the keys number exactly those values, none is named twice. A key
    named twice leaves a value out of the table (or, nested, fails the read): more keys than values.
    So do keys given ``null``, which sends such a block to the exact check. ``scan``: ``text``'s, where
    scanned already.
    """
    scan = _scan(text) if scan is None else scan
    if _escapes_a_colon(text, scan):
        return True
    colons = scan.colons
    # Flat columns: each value had a key and each key a colon, so the colons are at least the values. As
    # many leaves none for a key named twice, nor for a string (or an object's text): the usual block is
    # decided without counting the colons in its strings (a third of the check's time).
    flat = not any(":" in field.name or pa.types.is_nested(field.type) for field in table.schema)
    if flat and colons == sum(len(column) - column.null_count for column in table.columns):
        return False
    values = in_strings = 0
    for name, column in zip(table.column_names, table.columns, strict=True):
        within = _values_and_colons(column)
        if ":" in name or within is None:
            return True
        values += len(column) - column.null_count + within[0]
        in_strings += within[1]
    return colons - in_strings != values


def _values_and_colons(column: pa.Array | pa.ChunkedArray) -> tuple[int, int] | None:
    """The values nested in ``column``'s values that are not null (each had a key) and the colons in its
    strings, at any depth; None when a nested key name holds a colon or a string may be an object's JSON."""
    if isinstance(column, pa.ChunkedArray):
        parts = [_values_and_colons(chunk) for chunk in column.chunks]
        if any(part is None for part in parts):
            return None
        return sum(part[0] for part in parts), sum(part[1] for part in parts)  # type: ignore[index]
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        # polars writes an object or array as its JSON text in a column that mixes types, each key it
        # read kept, a key named twice too: the colons of its keys are not those of a string.
        if pc.any(pc.or_(pc.starts_with(column, "{"), pc.starts_with(column, "["))).as_py():
            return None
        if column.null_count:  # a null's slot may hold bytes: counted value by value
            return 0, int(pc.sum(pc.count_substring(column, ":")).as_py() or 0)
        # The bytes behind the values, counted at once: several times faster than value by value.
        offsets, data = string_buffers(column)
        return 0, int(np.count_nonzero(data[offsets[0] : offsets[-1]] == ord(":")))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _values_and_colons(column.flatten())  # the items of the lists that are not null
    if not pa.types.is_struct(kind):
        return 0, 0
    values = colons = 0
    for field, child in zip(kind, column.flatten(), strict=True):  # children with their parent's nulls
        within = _values_and_colons(child)
        if ":" in field.name or within is None:
            return None
        values += len(child) - child.null_count + within[0]
        colons += within[1]
    return values, colons


def _repeats_a_key(text: bytes) -> bool:
    """Whether a line of ``text`` names a key twice in one object: Arrow's JSON reader tells (in C++, as
    fast as the read), or, when it cannot read the block (a type that changes from line to line),
    Python's json, line by line."""
    try:
        pajson.read_json(
            pa.BufferReader(text), read_options=pajson.ReadOptions(use_threads=False, block_size=len(text) + 1)
        )
        return False
    except pa.ArrowInvalid as error:
        if "specified twice" in str(error):
            return True
    for line in text.split(b"\n"):
        try:
            if line.strip():
                json.loads(line.decode("utf-8-sig"), object_pairs_hook=_one_value_per_key)
        except _RepeatedKey:
            return True
        except (ValueError, RecursionError):  # read line by line, the problem is named there
            return True
    return False


def _nested_as_written(table: pa.Table, raws: pa.Array) -> pa.Table | None:
    """``table`` (read whole by polars from the lines ``raws``) with each column of objects or arrays
    (a struct or list) holding the values as the lines wrote them, as the lines read one by one give
    them (see ``schemas.json_values``); None when a line does not parse. Only blocks with such a
    column parse their lines a second time."""
    try:
        # Not "utf-8-sig": that codec, written in Python, took longer than the parse.
        objects = [json.loads(raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")) for raw in raws.to_pylist()]
    except (ValueError, RecursionError):
        return None
    for index, kind in enumerate(table.schema.types):
        if pa.types.is_nested(kind):
            name = table.column_names[index]
            table = table.set_column(index, name, json_values([obj.get(name) for obj in objects]))
    return table


# The first bytes of how polars writes a number, object or array in a column whose other values are text.
_NOT_TEXT_START = np.zeros(256, dtype=bool)
_NOT_TEXT_START[list(b"-0123456789[{")] = True
_MAY_OPEN_NOT_TEXT = _NOT_TEXT_START.copy()  # or true or false
_MAY_OPEN_NOT_TEXT[list(b"tf")] = True


def _mixed_as_written(table: pa.Table, raws: pa.Array, text: bytes) -> pa.Table | None:
    """``table`` (read whole by polars from the lines ``raws``, the block ``text``) with each value as the
    lines read one by one give it (``_table_from_objects``), which the same line must get on every path;
    None when the block must be read line by line for that. polars writes a number in a column that
    mixes types as its own text (``1.0`` as ``1``, ``1e3`` as ``1000``, an object's ``1.0`` as ``1``):
    such a value is written again as Python's json writes it. It reads an integer beside floats as a
    float: the column then keeps each value as JSON as its line wrote it (``1`` beside ``2.0``), or, for
    one a float cannot hold (``9007199254740993`` read as ``9007199254740992.0``), the block is read line
    by line (None), where the column is text. The values that may be such (text that reads as a number,
    boolean, object or array; a whole float) are looked up in their lines, parsed again: only those
    lines, and only when the block has the column's key before a value that is not a string (before an
    integer, for a float; a column of text such as "12345" costs a scan of the block, not a parse of its
    lines)."""
    suspects: dict[str, np.ndarray] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            found = _may_not_be_text(column)
            if found.any() and not _found_in(_not_a_string_after(name), text):
                continue  # text that reads as a number, and every value of the key a JSON string
        elif pa.types.is_floating(kind):
            # polars reads an integer beside floats as a float: a whole value (10.0) may be one. The block is
            # scanned for the key before an integer, then, where it has one, the lines of whole values (only
            # those lines are looked up): a column whose values have fractions costs no scan.
            found = pc.fill_null(pc.equal(pc.floor(column), column), False).to_numpy(zero_copy_only=False)
            pattern = _an_integer_after(name)
            if not found.any() or not _found_in(pattern, text):
                continue
            found = found.copy()
            found[found] = pc.match_substring_regex(raws.filter(pa.array(found)), pattern=pattern).to_numpy(
                zero_copy_only=False
            )
        else:
            continue
        if found.any():
            suspects[name] = np.flatnonzero(found)
    if not suspects:  # the usual block
        return table
    rows = np.unique(np.concatenate(list(suspects.values())))
    lines = [raw.removeprefix(b"\xef\xbb\xbf") for raw in raws.take(pa.array(rows)).to_pylist()]
    try:  # as one array: a parse per line cost several times more
        parsed = json.loads(b"[" + b",".join(lines) + b"]")
    except (ValueError, RecursionError):
        return None  # a line polars took and Python's json does not: named line by line
    if len(parsed) != len(lines):
        return None
    objects = dict(zip(rows.tolist(), parsed, strict=True))
    for name, found in suspects.items():
        index = table.column_names.index(name)
        kind = table.schema.field(index).type
        written = [obj.get(name) if isinstance(obj := objects[row], dict) else None for row in found.tolist()]
        if pa.types.is_floating(kind):
            if any(type(value) is int and not _fits_a_float(value) for value in written):
                return None
            integers = np.array([type(value) is int for value in written], dtype=bool)
            if integers.any():  # integers beside floats: each as written, the floats' JSON as Python's json writes it
                where = np.zeros(len(table), dtype=bool)
                where[found[integers]] = True
                texts = pa.array([str(value) for value in written if type(value) is int], pa.string())
                texts = pc.replace_with_mask(float_texts(table[name], _json_text), pa.array(where), texts)
                table = table.set_column(index, name, pa.ExtensionArray.from_storage(JSON_TYPE, texts))
            continue
        values = None
        for row, value in zip(found.tolist(), written, strict=True):
            if value is not None and not isinstance(value, str):
                values = table[name].to_pylist() if values is None else values
                values[row] = _json_text(value)
        if values is not None:
            table = table.set_column(index, name, pa.array(values, kind))
    return table


def _json_text(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)``, as ``_table_from_objects`` writes a value beside text; a
    finite float or an integer without the encoder's cost per call (a float's JSON is its repr)."""
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _may_not_be_text(column: pa.ChunkedArray) -> np.ndarray:
    """Which values of a text column polars may have written from a number, boolean, object or array:
    by their first byte (and length, for true and false), from the bytes behind them (a regex over the
    values took 20 times longer). polars hands a block's column over in a chunk per thread that read
    it, a few thousand values each: only the first bytes are taken chunk by chunk, the rest is one pass
    over them all and a look at the few values they may open (a pass per chunk cost twice as much)."""
    chunks = [string_buffers(chunk) for chunk in column.chunks]
    first = np.concatenate([_first_bytes(*chunk) for chunk in chunks] or [np.zeros(0, np.uint8)])
    found = np.zeros(len(first), dtype=bool)
    maybe = np.flatnonzero(_MAY_OPEN_NOT_TEXT.take(first))
    if not len(maybe):  # the usual column
        return found
    lengths = np.concatenate([np.diff(offsets) for offsets, _ in chunks])[maybe]
    lead = first[maybe]
    found[maybe] = (lengths > 0) & (
        _NOT_TEXT_START[lead] | ((lead == ord("t")) & (lengths == 4)) | ((lead == ord("f")) & (lengths == 5))
    )
    if column.null_count:
        found &= column.is_valid().to_numpy(zero_copy_only=False)
    return found


def _first_bytes(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """The first byte of each value of a string array (``string_buffers``); an empty value's is its next
    value's, or none past the data's end (its length tells)."""
    starts = offsets[:-1]
    if not len(starts) or starts[-1] < data.size:  # the usual: a plain take, twice as fast as a clipped one
        return data.take(starts)
    return data.take(starts, mode="clip") if data.size else np.zeros(len(starts), np.uint8)


# The escapes JSON has besides \\u: each character's may stand for it in a key.
_SHORT_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}


def _spellings(char: str) -> bytes:
    """A regex for every way a JSON string may write ``char``: itself in UTF-8 (where JSON lets it
    stand as it is), its short escape (``\\n``, ``\\/``), or its \\u escape, hex in either case (a
    character past U+FFFF as the escapes of its UTF-16 pair)."""
    ways = []
    if char >= " " and char not in '"\\' and not "\ud800" <= char <= "\udfff":
        ways.append(re.escape(char.encode()))
    if char in _SHORT_ESCAPES:
        ways.append(re.escape(b"\\" + _SHORT_ESCAPES[char].encode()))
    units = np.frombuffer(char.encode("utf-16-be", "surrogatepass"), dtype=">u2")
    ways.append(b"".join(rb"\\u(?i:%04x)" % unit for unit in units.tolist()))
    return b"(?:%s)" % b"|".join(ways)


@functools.cache
def _key_before(key: str, value: bytes) -> bytes:
    """A regex (RE2's, which Python's re reads too) for the key, spelt any way JSON may write it (``"prénom"``,
    ``"pr\\u00e9nom"``, ``"n\\u0061me"``), followed by a value the regex ``value`` matches. A key of an
    object nested in a value matches too."""
    return rb'"%s"\s*:\s*%s' % (b"".join(_spellings(char) for char in key), value)


def _not_a_string_after(key: str) -> bytes:
    """The key before a value that is not a JSON string or null (a number, boolean, array or object)."""
    return _key_before(key, rb"[-0-9tf\[{]")


def _an_integer_after(key: str) -> bytes:
    """The key before an integer (a number with no fraction or exponent: ``1``, not ``1.0`` or ``1e3``)."""
    return _key_before(key, rb"-?[0-9]+[\s,}\]]")


def _found_in(pattern: bytes, text: bytes) -> bool:
    """Whether the regex ``pattern`` matches in ``text``: Arrow's RE2 scans a block of lines about eight
    times faster than Python's re (3 ms for 2 MB, where re took 28: about a sixth of polars' read of it
    rather than more than the read), and reads the block where it lies."""
    offsets = pa.py_buffer(np.array([0, len(text)], dtype=np.int64))
    block = pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(text)])
    return bool(pc.match_substring_regex(block, pattern=pattern)[0].as_py())


def _fits_a_float(value: int) -> bool:
    """Whether Arrow takes an integer beside floats: one a float64 holds with every integer below it."""
    return abs(value) <= 2**53


def _opens_an_array(data: bytes) -> bool:
    """Whether the file's first block opens a JSON array (a ``.json`` export of ``[{...}, ...]``)."""
    return data[:4096].lstrip(b" \t\r\n").removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"[")


class _KeysOfFile:
    """The columns of ``names`` a JSONL file holds: those some line of it has the key of. A line without
    the key holds null in such a column, in a block none of whose lines has it too, so what its record
    becomes (split as one with no value, or set aside as one of a file without the column) does not hang
    on the lines read with it (a block's end). ``held`` reads the whole file for the
    keys, once, and only where a block lacks one that the lines before it did not have either."""

    def __init__(self, names: Collection[str], held: Callable[[set[str]], set[str]]) -> None:
        self.names = set(names)
        self.held: set[str] = set()
        self._read: Callable[[set[str]], set[str]] | None = held

    def pad(self, rows: pa.Table) -> pa.Table:
        """``rows`` (a batch with its lineage) with a null column for each of ``names`` it lacks and the file holds."""
        if not rows.num_rows:
            return rows
        present = set(rows.column_names)
        self.held |= self.names & present
        if self.names - present - self.held and self._read is not None:
            self.held |= self._read(self.names - self.held)  # what is held now is all the file holds
            self._read = None
        for name in sorted(self.held - present):
            rows = rows.append_column(name, pa.nulls(rows.num_rows))
        return rows


def _keys_in(data: bytes, keys: Collection[str]) -> set[str]:
    """Which of ``keys`` some line of ``data`` (whole lines) that is a JSON object has. The block is
    parsed once for all of them, and only where one is spelt in it."""
    spelt = {key: pattern for key in keys if _found_in(pattern := _key_before(key, b""), data)}
    if not spelt:
        return set()
    try:  # the block read whole, typed from every line: a column for each key a line has
        return spelt.keys() & set(pl.read_ndjson(data, infer_schema_length=None).columns)
    except Exception:  # a line polars cannot take: the lines that spell a key are parsed one by one
        pass
    except BaseException as error:  # a panic in polars' Rust code (a lone surrogate in a key)
        if type(error).__name__ != "PanicException":
            raise
    # A key of an object nested in a value matches too: the line tells.
    starts = {
        data.rfind(b"\n", 0, found.start()) + 1 for pattern in spelt.values() for found in re.finditer(pattern, data)
    }
    found_keys: set[str] = set()
    for start in sorted(starts):
        end = data.find(b"\n", start)
        try:
            line = data[start : None if end < 0 else end].decode("utf-8-sig")
            value = json.loads(line, object_pairs_hook=_one_value_per_key)
        except (ValueError, RecursionError, _RepeatedKey):  # no record: a line the reader quarantines holds no key
            continue
        if isinstance(value, dict):
            found_keys |= spelt.keys() & value.keys()
            if len(found_keys) == len(spelt):
                break
    return found_keys


class _Step(NamedTuple):
    """What reading the ``at``-th file gave next: a batch to finish (``make``), the error that stopped it, or,
    neither, its end (with the hash of the bytes read, ``digest``)."""

    at: int
    entry: FileEntry
    make: Callable[[], SourceBatch] | None = None
    error: Exception | None = None
    digest: ReadDigest | None = None


def _by_lines(
    make: Callable[[], SourceBatch], first_line: int, ends: np.ndarray, batch_rows: int
) -> Iterator[Callable[[], SourceBatch]]:
    """The batch ``make`` makes of a block's lines (numbered from ``first_line``, each ending at its
    ``ends``), as a batch per ``batch_rows`` lines: each with its lines' rows, set-aside rows and bytes.
    Made once, when the first is called, in the file's order (its ids count the contents before)."""
    made: list[SourceBatch] = []

    def part(start: int) -> SourceBatch:
        if not made:
            made.append(make())
        end = min(start + batch_rows, len(ends))
        low, high = first_line + start, first_line + end

        def within(table: pa.Table) -> pa.Table:  # rows and set-aside rows are each in their lines' order
            if not table.num_rows:
                return table
            first, last = np.searchsorted(lines_of(table), [low, high])
            return table.slice(first, last - first)

        input_bytes = int(ends[end - 1]) - (int(ends[start - 1]) if start else -1)  # with their newlines
        return SourceBatch(within(made[0].rows), within(made[0].set_aside), input_bytes)

    for start in range(0, len(ends), batch_rows):
        yield functools.partial(part, start)


def _as_made(batch: SourceBatch) -> SourceBatch:
    """A batch its reader finished (CSV, Parquet), as a ``_Step`` hands it on."""
    return batch


class FilesSourceReader(ListedFiles):
    """Reads the files a ``FilesSource`` names, in URI order."""

    name = CONNECTOR
    suffixes = tuple(f"{s}{packed}" for s in FORMATS for packed in ("", *PACKED_SUFFIXES))  # as file_format reads them

    def __init__(
        self,
        config: FilesSource,
        batch_rows: int,
        watermark: SourceWatermark | None = None,
        text_columns: Sequence[str] = (),
        used_columns: Collection[str] | None = None,
        keyed: Collection[str] = (),
    ) -> None:
        self.config = config
        self.keyed = set(keyed)  # columns whose absence from a JSONL batch is not null: see ``_KeysOfFile``
        # The input columns the recipe reads (None: all): text that is not UTF-8 in a Parquet struct,
        # list or map of another column is not published, so it does not quarantine its row.
        self.used_columns = used_columns
        self.batch_rows = batch_rows
        self.watermark = watermark  # with one, only files new or changed since the last run are read
        # A format the source names is how to read a file whose name has no suffix (Hive's 000000_0).
        self.bare_names = config.format != "auto"
        # Columns the input schema declares ``str``. A JSON reader makes text of any value in a column
        # whose other values are text (["a"] becomes '["a"]'), so a value that is not a JSON string
        # in one of these is quarantined here, while its type can still be seen.
        self.text_columns = list(text_columns)
        self._not_text = [_not_a_string_after(name) for name in text_columns]
        self._keys: list[str] = []
        self._keys_of: list[str] | None = None  # the listing ``_keys`` were found in
        # False for a read before the run's own (``batches_of``): what the file holds is said once, by the run's.
        self._warns = True

    def entries(self) -> list[FileEntry]:
        """The files to read; one whose format its name does not tell (a path naming ``data.txt``) is an
        error here, at listing, so ``curation check`` says so too, not only the run."""
        entries = super().entries()
        for entry in entries:
            file_format(entry.uri, self.config.format)
        self._partition_keys()  # found once, here: the copies a Ray run reads each file with carry them
        return entries

    def batches(self) -> Iterator[SourceBatch]:
        entries = self.entries()
        # Read, parsed and checked a batch or two ahead on another thread, from one file on into the next (a
        # thread per file left the next file's first block unread until the last batch of the one before was
        # taken); each batch is finished here, in order (a JSONL file's ids count the contents before). A
        # source of one block or less is read here: the thread would cost more than it overlaps.
        read = self._steps(entries, BLOCK_BYTES)
        steps = read_ahead(read) if sum(entry.size or 0 for entry in entries) > BLOCK_BYTES else read
        passed_on = -1  # the file a batch was last passed on of
        left = -1  # a file left to the next run: its other steps are passed over
        # However this ends, the reading stops and the file it read is closed (by the reading thread, if one).
        with contextlib.closing(steps):
            for step in steps:
                if step.at == left:
                    continue
                error = step.error
                if step.make is not None:
                    try:
                        batch = self._finished(step.entry, step.make)  # may read the file again (its keys)
                    except Unreadable as failed:
                        error = failed
                    else:
                        yield self._less_kept(batch, step.entry.uri)
                        passed_on = step.at
                        continue
                if error is None:
                    self.taken(step.entry, step.digest)
                elif isinstance(error, Unreadable) and passed_on != step.at:
                    yield self.unreadable(step.entry, error)
                    left = step.at
                else:
                    # Past its first batch an error still fails the run: the records before it were passed on,
                    # and the file read again from its start would give them twice.
                    raise error

    def _less_kept(self, batch: SourceBatch, uri: str) -> SourceBatch:
        """``batch`` (of file ``uri``) less the rows whose published records stay as they were though their
        file is read again (``SourceWatermark.kept``: a VQA row whose image was moved away since): carried, not
        read. Of an unchanged file read for the records an earlier run could not take (``SourceWatermark.retry``)
        only those: its others stay as that run left them."""
        mark = self.watermark
        if mark is None:
            return batch
        if uri in mark.retry and uri not in mark.replaced:
            wanted = pa.array(list(mark.retry[uri]), pa.string())  # a look-up set: no order needed
            return dataclasses.replace(
                batch,
                rows=batch.rows.filter(pc.is_in(batch.rows["id"], value_set=wanted))
                if batch.rows.num_rows
                else batch.rows,
                set_aside=batch.set_aside.filter(pc.is_in(batch.set_aside["id"], value_set=wanted)),
            )
        return mark.less_kept(batch)

    def batches_of(self, uris: set[str]) -> Iterator[SourceBatch]:
        """The batches of its files in ``uris`` (read whole again), read before the run (``keep_archived``)."""
        again = [entry for entry in self.entries() if entry.uri in uris]
        if not again:
            return iter(())
        part = self.limited_to(again)
        part._warns = False
        return part.batches()

    def _steps(self, entries: Iterable[FileEntry], block_bytes: int) -> Iterator[_Step]:
        """Each file read ``block_bytes`` at a time (Parquet: a row group at a time): its batches to finish, then
        its end, or the error that stopped it (named by the file); the next file is read then all the same."""
        for at, entry in enumerate(entries):
            digest = self.read_digest(entry)
            try:
                with self._naming_errors(entry):
                    fmt = file_format(entry.uri, self.config.format)
                    if fmt == "jsonl":
                        for make in self._jsonl(entry, block_bytes, digest):
                            yield _Step(at, entry, make=make)
                    else:
                        reader = {"csv": self._csv, "parquet": self._parquet}[fmt]
                        for batch in reader(entry, block_bytes, digest):
                            yield _Step(at, entry, make=functools.partial(_as_made, batch))
            except Exception as error:  # handed on in the files' order: the file's reader raises it
                yield _Step(at, entry, error=error)
            else:
                yield _Step(at, entry, digest=digest)

    def _finished(self, entry: FileEntry, make: Callable[[], SourceBatch]) -> SourceBatch:
        """The batch ``make`` finishes, with the file's partition columns."""
        with self._naming_errors(entry):
            batch = make()
        partitions = hive_partitions(self.config.path, entry.uri) if self.config.hive_partitioning else {}
        elsewhere = [key for key in self._partition_keys() if key not in partitions]
        return _with_partitions(batch, partitions, elsewhere, entry.uri) if partitions or elsewhere else batch

    @contextlib.contextmanager
    def _naming_errors(self, entry: FileEntry) -> Iterator[None]:
        """An I/O error or Arrow's error on a damaged file as one naming the file (Arrow's message does not)."""
        try:
            yield
        except OSError as exc:
            raise read_error(entry.uri, exc) from None
        except pa.ArrowException as exc:
            raise StorageError(
                f"{entry.uri}: not a readable {file_format(entry.uri, self.config.format)} file: {exc}"
            ) from None

    def partition_of(self, uri: str) -> Hashable:
        """The file's hive partition values: its rows' columns, so the same bytes in another partition
        are other records (``new_files``)."""
        if not self.config.hive_partitioning:
            return None
        try:
            return frozenset(hive_partitions(self.config.path, uri).items())
        except StorageError:  # a key named twice: refused when the file is read; alike no other file
            return uri

    def _partition_keys(self) -> list[str]:
        """The partition keys of every file the source lists (new or not, so each run and each Ray read
        task finds the same) and of every file earlier runs took (inputs are often moved away once taken,
        and a later file outside their folders would lack the column its rows held null in before): a file
        outside one of their folders holds null in it, as Arrow reads a partly partitioned table, not a
        column that some batches lack (a split by it set its records aside)."""
        if not self.config.hive_partitioning:
            return []
        listed = getattr(self, "listed_uris", [])
        if self._keys_of is not listed:
            # A file's keys are its folder's: one file of each folder is looked at (earlier runs may have taken
            # a hundred thousand, in a few hundred folders).
            base = hive_base(self.config.path)
            keys = dict.fromkeys(key for uri in _one_per_folder(listed) for key in partitions_below(base, uri))
            for uri in _one_per_folder(self.watermark.committed if self.watermark is not None else ()):
                with contextlib.suppress(StorageError):  # a path naming a key twice: refused when it was listed
                    keys.update(dict.fromkeys(partitions_below(base, uri)))
            self._keys, self._keys_of = list(keys), listed
        return self._keys

    def head(self, entry: FileEntry, block_bytes: int = HEAD_BYTES) -> SourceBatch:
        """The file's first batch, as a run reads it (the same checks and messages: a file the run would
        refuse raises the same StorageError), from about its first ``block_bytes`` (a CSV file's first
        record may take a whole block, a Parquet file's first batch its first row group), for
        ``curation check``."""
        reader = copy.copy(self)
        reader.keyed = set()  # the head alone is read: a key only later lines have is not looked for
        # A CSV record longer than the head: ``_csv`` grows the blocks. Closed once the first batch is made: the
        # file is closed, the rest not read.
        with contextlib.closing(reader._steps([entry], block_bytes)) as steps:
            for step in steps:
                if step.error is not None:
                    raise step.error
                if step.make is not None:
                    return reader._finished(entry, step.make)
        return SourceBatch(rows=pa.table({}))

    # --- JSONL -------------------------------------------------------------------------------

    def _jsonl(
        self, entry: FileEntry, block_bytes: int, digest: ReadDigest | None = None
    ) -> Iterator[Callable[[], SourceBatch]]:
        """The file's lines, parsed and checked a batch at a time: each made a batch (its ids, which count the
        contents before) when the function given for it is called, in the file's order."""
        fs, path = filesystem(entry.uri)
        ids = InputIds(entry.uri)
        keyed = self.keyed - set(self._partition_keys())  # a partition column is the folder's: null where none
        keys = _KeysOfFile(keyed, lambda names: self._keys_held(entry, names)) if keyed else None

        def refuse_an_array(data: bytes) -> None:
            # Read as lines, an indented array would be quarantined a line at a time and publish nothing.
            if _opens_an_array(data):
                raise StorageError(
                    f"{entry.uri}: holds a JSON array, not JSON Lines (one object per line): write one "
                    "object per line, for example with jq -c '.[]'"
                )

        line_no = 0
        with open_input(fs, path, entry.etag, digest) as stream:
            # Looked at in the first bytes read: an array written on one line is one line, read whole otherwise.
            blocks = _line_blocks(_LineFeeds(stream), block_bytes, first=refuse_an_array)
            for data in blocks:  # lines may end in CR alone
                if line_no == 0:
                    refuse_an_array(data)
                if not data.endswith(b"\n"):
                    data += b"\n"  # the last line, without its newline in the file
                ends, scan = _line_ends(data)  # one newline per line
                starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
                # The block is parsed whole (a blank line left out of its text holds no colon nor backslash),
                # so a value is typed by the lines of its block (a number beside text is text), not by those
                # batched with it: ``batch_rows`` changes no record.
                make = self._parsed_lines(ids, line_no + 1, data, starts, ends, keys, scan)
                if len(ends) <= self.batch_rows:  # the usual: one batch of the block
                    yield make
                else:
                    yield from _by_lines(make, line_no + 1, ends, self.batch_rows)
                line_no += len(ends)

    def _keys_held(self, entry: FileEntry, names: Collection[str]) -> set[str]:
        """Which of the columns ``names`` some line of the JSONL file holds the key of (a line that is no
        JSON object holds none). Read a block at a time: a block without the key spelt any way JSON may
        write it is passed over at RE2's speed, and only the lines that spell it are parsed."""
        fs, path = filesystem(entry.uri)
        # An input column "id" is read as "input_id" (``with_lineage``).
        keys = {key: name for name in names for key in (name, *RESERVED) if input_name(key) == name}
        found: set[str] = set()
        with open_input(fs, path, entry.etag) as stream:
            for data in _line_blocks(_LineFeeds(stream), BLOCK_BYTES):
                found |= {keys[key] for key in _keys_in(data, [key for key in keys if keys[key] not in found])}
                if len(found) == len(set(names)):
                    break
        return found

    def _parsed_lines(
        self,
        ids: InputIds,
        first_line: int,
        data: bytes,
        starts: np.ndarray,
        ends: np.ndarray,
        keys: _KeysOfFile | None = None,
        scan: _Scan | None = None,
    ) -> Callable[[], SourceBatch]:
        """The lines ``data[starts[i]:ends[i]]``, numbered from ``first_line`` (blank ones skipped), in two
        steps: parsed and checked now, made a batch when the function returned is called, in the file's
        order (its ids count the contents before). ``scan``: the lines', where scanned already."""
        input_bytes = int(ends[-1]) + 1 - int(starts[0])  # the lines and their newlines
        numbers = np.arange(first_line, first_line + len(starts))
        raws = _line_array(data, starts, ends)
        blank = blank_lines(data, starts, ends)
        if not blank.any():  # the usual block: polars reads it as it lies in the file
            text = data[starts[0] : ends[-1] + 1]
        else:
            numbers, raws = numbers[~blank], raws.filter(pa.array(~blank))
            if not len(raws):
                return lambda: SourceBatch(rows=pa.table({}), input_bytes=input_bytes)
            newline = pa.scalar(b"\n", pa.large_binary())
            text = pc.binary_join(pa.ListArray.from_arrays([0, len(raws)], raws), newline)[0].as_py()

        def one_by_one() -> SourceBatch:
            return self._parse_lines_one_by_one(ids, numbers.tolist(), raws.to_pylist(), input_bytes, keys)

        scan = _scan(text) if scan is None else scan  # once for the checks
        # Checked first: polars panics on a lone surrogate in a key.
        table = None if _may_hold_lone_surrogate(text, scan) else read_json_objects(text, len(raws), scan)
        if (
            table is None
            or self._may_hold_values_not_text(text, table)
            or (_may_repeat_a_key(text, table, scan) and _repeats_a_key(text))
        ):
            return one_by_one
        table = _mixed_as_written(table, raws, text)  # a column of text (or floats) a line wrote otherwise
        if table is None:
            return one_by_one
        if any(pa.types.is_nested(kind) for kind in table.schema.types):
            table = _nested_as_written(table, raws)
            if table is None:  # a line polars took and Python's json does not: named line by line
                return one_by_one
        parsed = table

        def batch() -> SourceBatch:
            rows = _with_lineage(parsed, ids, numbers, raws)
            return SourceBatch(_with_lines(keys.pad(rows) if keys else rows, raws), input_bytes=input_bytes)

        return batch

    def _may_hold_values_not_text(self, text: bytes, table: pa.Table) -> bool:
        """Whether a declared text column may hold a number, boolean, list or object in ``text``, read as
        ``table``: a column of another type does, and one of text may where polars wrote such a value as
        text and the block has its key before such a value (possibly a nested key of the same name: the
        lines are then parsed one by one, which tells). The block is scanned only for a column holding
        text that such a value gives (``12345``): the scan costs about a sixth of the read (``_found_in``)."""
        for name, pattern in zip(self.text_columns, self._not_text, strict=True):
            if name not in table.column_names or table[name].type == pa.null():
                continue
            column = table[name]
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                return True
            if _may_not_be_text(column).any() and _found_in(pattern, text):
                return True
        return False

    def _parse_lines_one_by_one(
        self, ids: InputIds, numbers: list[int], raws: list[bytes], input_bytes: int, keys: _KeysOfFile | None = None
    ) -> SourceBatch:
        uri = ids.uri
        good_lines, good_raws, objects = [], [], []
        bad_lines, bad_raws, reasons, details = [], [], [], []
        for number, raw in zip(numbers, raws, strict=True):
            reason = "malformed_json"
            try:
                # Decoded first: given bytes, json guesses UTF-16 or -32 from the first bytes, and JSON
                # Lines are UTF-8 (a file may start with a byte-order mark).
                value = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_one_value_per_key)
                problem = None if isinstance(value, dict) else f"a JSON {type(value).__name__}, not an object"
                if problem is None and _ANY_SURROGATE_ESCAPE.search(raw):  # a pair may follow an escaped \\
                    problem = _lone_surrogate(raw, value)
                if problem is None and (problem := self._not_text_problem(value)) is not None:
                    reason = "schema"
            except UnicodeDecodeError as exc:
                problem = f"not UTF-8: byte {raw[exc.start]:#04x} at column {exc.start + 1}"
            except _RepeatedKey as exc:  # which value is meant cannot be told: readers keep the first or the last
                problem = (
                    f"malformed JSON: the key {json.dumps(exc.args[0], ensure_ascii=False)} appears twice in one object"
                )
            except json.JSONDecodeError as exc:
                problem = f"malformed JSON: {exc.msg}: column {exc.colno}"
            except RecursionError:  # arrays or objects nested thousands deep: no record, and no reason to stop
                problem = "malformed JSON: nested too deeply to read"
            if problem is None:
                good_lines.append(number)
                good_raws.append(raw)
                objects.append(value)
            else:
                bad_lines.append(number)
                bad_raws.append(raw)
                reasons.append(reason)
                details.append(f"{uri}:{number}: {problem}")
        rows = _with_lineage(_table_from_objects(objects), ids, good_lines, good_raws)
        rows = _with_lines(keys.pad(rows) if keys else rows, good_raws)
        set_aside = set_aside_rows(
            ids(bad_raws),
            source_array(CONNECTOR, uri, bad_lines),
            stage="read",
            outcome="quarantined",
            reasons=reasons,
            details=details,
            records=[raw_cut(raw.decode("utf-8", "replace")) for raw in bad_raws],
        )
        return SourceBatch(rows=rows, set_aside=set_aside, input_bytes=input_bytes)

    def _not_text_problem(self, value: dict[str, Any]) -> str | None:
        """What is wrong when a declared text column holds something else than a JSON string (null is
        left to the schema check, which knows whether the column is optional)."""
        for name in self.text_columns:
            found = value.get(name)
            if found is not None and not isinstance(found, str):
                kind = {dict: "object", list: "array", bool: "boolean"}.get(type(found), "number")
                return f"{name}: a JSON {kind}, not a string (the input schema declares str)"
        return None

    # --- CSV ---------------------------------------------------------------------------------

    def _csv(self, entry: FileEntry, block_bytes: int, digest: ReadDigest | None = None) -> Iterator[SourceBatch]:
        """The file's batches. Arrow reads a record that spans at most two blocks: the file is read again
        from its start, with blocks four times the size, where a longer one comes, and what was handed on
        already is left out (its ids are counted again, as they were; ``digest`` is the last reading's)."""
        progress = _ByteProgress(entry.size)
        done = 0  # the last line handed on
        first_try = self._warns  # a header that is not UTF-8 is warned of once, not on each try
        while True:
            try:
                for batch in self._csv_blocks(entry, block_bytes, progress, done, digest, first_try):
                    yield batch
                    for table in (batch.rows, batch.set_aside):
                        if table.num_rows:
                            done = max(done, int(lines_of(table).max()))
                return
            except pa.ArrowInvalid as error:
                if "straddl" not in str(error):
                    raise
                if block_bytes >= MAX_CSV_BLOCK_BYTES:
                    raise StorageError(
                        f"{entry.uri}:{done + 1}: a CSV record from about this line on is longer than "
                        f"{MAX_CSV_BLOCK_BYTES:,} bytes (a quote that is never closed?)"
                    ) from None
                block_bytes, first_try = min(block_bytes * 4, MAX_CSV_BLOCK_BYTES), False

    def _csv_blocks(
        self,
        entry: FileEntry,
        block_bytes: int,
        progress: _ByteProgress,
        after: int,
        digest: ReadDigest | None = None,
        warn_header: bool = True,
    ) -> Iterator[SourceBatch]:
        """The file's batches, read ``block_bytes`` at a time, without the rows and set-aside lines up to
        line ``after``."""
        fs, path = filesystem(entry.uri)
        with open_input(fs, path, entry.etag, digest) as raw:
            # The header is found in the file's first bytes, which Arrow is then given again: the file is
            # read once, not opened for its header first (Arrow, reading ahead, read megabytes of it).
            feeds = _LineFeeds(raw)
            head = _read_up_to(feeds, PROBE_BYTES)
            header = self._csv_header(entry.uri, head, warn_header)
            if header is None:  # no record, as in an empty JSONL file
                yield SourceBatch(rows=pa.table({}), input_bytes=progress.rest())
                return
            yield from self._csv_records(entry, header, _Replayed(head, feeds), block_bytes, progress, after)

    def _csv_records(
        self,
        entry: FileEntry,
        header: tuple[int, list[str]],
        feeds: Any,
        block_bytes: int,
        progress: _ByteProgress,
        after: int,
    ) -> Iterator[SourceBatch]:
        """The batches of the file's records, read from ``feeds`` (the file from its start, line ends as
        ``_LineFeeds`` passes them on) with its ``header`` (``_csv_header``)."""
        invalid: list[Any] = []

        def keep_invalid(row: Any) -> str:
            invalid.append(row)
            return "skip"

        header_line, header = header
        _once_each(entry.uri, header)
        read = pacsv.ReadOptions(use_threads=False, block_size=block_bytes, skip_rows=header_line - 1)
        # A quoted value may hold newlines: a block must not end inside one. Blank lines come through as
        # rows with no value (and are dropped below): skipped by Arrow, they would go uncounted, and
        # every later record's line would be off.
        parse = pacsv.ParseOptions(
            delimiter=self.config.csv_delimiter,
            newlines_in_values=True,
            invalid_row_handler=keep_invalid,
            ignore_empty_lines=False,
        )
        # Read every column as text: a type guessed from the first block would break on a later one;
        # the input schema (if any) decides types, with errors that name the row.
        # An empty unquoted field is a missing value, so a required column can catch it.
        convert = pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            strings_can_be_null=True,
            null_values=[""],
            quoted_strings_can_be_null=False,
        )
        lines = _CsvLines(header, header_line)
        # One numbering for rows (their values joined) and set-aside lines (their text): a row and a
        # line with one content are two records with two ids.
        ids = InputIds(entry.uri)
        stream = _Utf8Guard(feeds, block_bytes)
        reader = pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
        # Each batch is handed on once the next is read: the file's last record, in the last batch,
        # may hold a quote that is never closed, which only the file's end tells.
        held: tuple[pa.Table, pa.Table, int] | None = None
        last = 0  # the line the last record read starts on
        try:
            for batch in reader:
                table = pa.Table.from_batches([batch])
                # Arrow calls keep_invalid on its own threads, parsing blocks ahead of the batch handed
                # over here: the rows taken are those noted so far, and one noted meanwhile waits for the
                # next batch (cleared with them, it was lost, and every later line was off by one).
                rejected = invalid[:]
                del invalid[: len(rejected)]
                starts, ends, placed = lines.place(table, rejected)
                table, starts, ends = _without_blank_lines(table, starts, ends, stream.blank)
                rows, not_utf8 = self._split_not_utf8(ids, table, starts, ends, stream.bad)
                set_aside = self._invalid_csv_rows(ids, placed, len(header))
                if not_utf8.num_rows:
                    set_aside = pa.concat_tables([set_aside, not_utf8])
                last = max([last, *starts[-1:].tolist(), *(line for line, _ in placed[-1:])])
                stream.forget_before(last)
                if held is not None:
                    yield from self._csv_batches(*held, after, progress)
                held = (rows, set_aside, batch.nbytes)
        except pa.ArrowInvalid:  # a record longer than two blocks (see _csv): what came before it is fine
            if held is not None:
                yield from self._csv_batches(*held, after, progress)
            raise
        _, _, placed = lines.place(None, invalid)  # rows rejected after the last batch
        rest = self._invalid_csv_rows(ids, placed, len(header))
        last = max([last, *(line for line, _ in placed[-1:])])
        if held is None:
            held = (pa.table({}), empty_set_aside(), 0)
        held = self._never_closed(ids, stream, last, (held[0], pa.concat_tables([held[1], rest]), held[2]))
        yield from self._csv_batches(*held, after, progress)
        yield SourceBatch(rows=pa.table({}), input_bytes=progress.rest())

    def _csv_batches(
        self, rows: pa.Table, set_aside: pa.Table, nbytes: int, after: int, progress: _ByteProgress
    ) -> Iterator[SourceBatch]:
        """A batch Arrow read as batches of ``batch_rows``, less what was handed on up to line ``after``."""
        if after:  # read again with larger blocks: what was handed on already is left out
            rows, set_aside = (t.filter(pc.greater(lines_of(t), after)) if t.num_rows else t for t in (rows, set_aside))
        for start in range(0, max(rows.num_rows, 1), self.batch_rows):
            yield SourceBatch(
                rows=rows.slice(start, self.batch_rows) if rows.num_rows else rows,  # pa.table({}) too
                set_aside=set_aside if start == 0 else set_aside.slice(0, 0),
                input_bytes=progress.advance(nbytes) if start == 0 else 0,
            )

    def _never_closed(
        self, ids: InputIds, stream: _Utf8Guard, last: int, batch: tuple[pa.Table, pa.Table, int]
    ) -> tuple[pa.Table, pa.Table, int]:
        """The file's last batch (rows, set aside, bytes) with its last record, which starts on line
        ``last``, set aside when it holds a quote that is never closed: Arrow reads the rest of the file
        as one value of it (500 rows become one), set aside or written as if it were fine."""
        text = stream.last_lines(last) if last else None
        opened = _open_quote_at(text, self.config.csv_delimiter) if text is not None else None
        if opened is None:  # the usual: every quote closed
            return batch
        rows, set_aside, nbytes = batch
        uri, quote_line = ids.uri, last + text.count(b"\n", 0, opened)
        end = stream.line - 1 if text.endswith(b"\n") else stream.line  # the file's last line
        where = "here" if quote_line == last else f"on line {quote_line}"
        detail = (
            f"{uri}:{last}: a quote opened {where} is never closed: the rest of the file (lines {last}-{end}) "
            "would be one value"
        )
        if set_aside.num_rows and (at := pc.equal(lines_of(set_aside), last)).to_numpy(zero_copy_only=False).any():
            details = pc.if_else(at, pa.scalar(detail), set_aside["detail"])
            return rows, set_aside.set_column(set_aside.column_names.index("detail"), "detail", details), nbytes
        at = pc.equal(lines_of(rows), last)
        bad = rows.filter(at)
        record = raw_cut(text.decode("utf-8", "replace"))  # as the file has it: no quote closes it
        never_closed = set_aside_rows(
            bad["id"], bad["source"], "read", "quarantined", "malformed_csv", [detail], [record]
        )
        return rows.filter(pc.invert(at)), pa.concat_tables([set_aside, never_closed]), nbytes

    def _csv_header(self, uri: str, head: bytes, warn: bool = True) -> tuple[int, list[str]] | None:
        """The header's line (after any blank lines) and column names, as Arrow reads them, from ``head``:
        the file's first ``PROBE_BYTES`` (all of it, where shorter), within which the header must end.
        None when there is no line to read: the file is empty or blank (Arrow reads none). ``warn``: say
        where a header is not UTF-8."""
        whole = len(head) < PROBE_BYTES
        leading = len(head) - len(head.lstrip(b"\r\n"))
        header_line = head[:leading].count(b"\n") + 1
        start = len(head) - len(head.removeprefix(_BOM).lstrip(b"\r\n"))  # Arrow skips both
        end = _record_end(head, start, self.config.csv_delimiter)
        if end is None:  # the header runs to the end of what was read
            if _open_quote_at(head[start:], self.config.csv_delimiter) is not None:
                raise StorageError(
                    f"{uri}:{header_line}: a quote in the header "
                    + (
                        "is never closed: the whole file would be one column name"
                        if whole
                        else f"is not closed within the file's first {PROBE_BYTES:,} bytes (never closed?)"
                    )
                )
            if not whole:
                raise StorageError(
                    f"{uri}:{header_line}: the header does not end within the file's first {PROBE_BYTES:,} bytes "
                    "(not a CSV file?)"
                )
            end = len(head)  # a header that no newline ends: a file of no record
        parse = pacsv.ParseOptions(delimiter=self.config.csv_delimiter, newlines_in_values=True)
        # Its bytes as the reading passes them to Arrow: one that is not UTF-8 is U+FFFD.
        text = _Utf8Guard(io.BytesIO(head[:end]), max(end, 1)).read()
        try:
            names = pacsv.read_csv(pa.py_buffer(text), pacsv.ReadOptions(use_threads=False), parse).column_names
        except pa.ArrowInvalid as error:
            if "Empty CSV" in str(error):
                return None
            raise
        if warn and any("\ufffd" in name for name in names):
            _warn_header_not_utf8(uri, head, leading, header_line)
        return header_line, names

    def _split_not_utf8(
        self,
        ids: InputIds,
        table: pa.Table,
        starts: np.ndarray,
        ends: np.ndarray,
        bad: list[tuple[int, int, int]],
    ) -> tuple[pa.Table, pa.Table]:
        """The rows of ``table`` on lines ``starts[i]``..``ends[i]`` with their lineage, and those on a
        line with a byte that is not UTF-8 (``bad``: line, column, byte), set aside."""
        bad_lines = np.array([line for line, _, _ in bad], dtype=np.int64)
        first = np.searchsorted(bad_lines, starts)  # the first bad byte on or after each row's first line
        hit = np.append(bad_lines, np.iinfo(np.int64).max)[first] <= ends
        culprits = [bad[i] for i in first[hit]]
        if len(bad_lines) and len(ends):
            # Later rows start after these rows end: the bad bytes noted so far are done with.
            del bad[: np.searchsorted(bad_lines, ends.max(), side="right")]
        if not culprits:  # the usual: all UTF-8
            return _with_lineage(table, ids, starts, _rows_as_text(table)), empty_set_aside()
        uri = ids.uri
        good = table.filter(pa.array(~hit))
        rows = _with_lineage(good, ids, starts[~hit], _rows_as_text(good))
        indices = np.flatnonzero(hit)
        records = [_csv_line(list(row.values()), self.config.csv_delimiter) for row in table.take(indices).to_pylist()]
        details = []
        for index, (line, column, byte) in zip(indices, culprits, strict=True):
            where = f"column {column}" if line == starts[index] else f"line {line}, column {column}"
            details.append(f"{uri}:{starts[index]}: not UTF-8: byte {byte:#04x} at {where}")
        set_aside = set_aside_rows(
            ids([record.encode() for record in records]),
            source_array(CONNECTOR, uri, starts[indices]),
            stage="read",
            outcome="quarantined",
            reasons="malformed_csv",
            details=details,
            records=[raw_cut(record) for record in records],
        )
        return rows, set_aside

    @staticmethod
    def _invalid_csv_rows(ids: InputIds, placed: list[tuple[int, Any]], expected: int) -> pa.Table:
        uri = ids.uri
        lines = [line for line, _ in placed]
        texts = [row.text for _, row in placed]
        return set_aside_rows(
            ids([t.encode() for t in texts]),
            source_array(CONNECTOR, uri, lines),
            stage="read",
            outcome="quarantined",
            reasons="malformed_csv",
            details=[f"{uri}:{line}: expected {expected} fields, found {row.actual_columns}" for line, row in placed],
            records=[raw_cut(t) for t in texts],
        )

    # --- Parquet -----------------------------------------------------------------------------

    def _parquet(self, entry: FileEntry, _block_bytes: int, digest: ReadDigest | None = None) -> Iterator[SourceBatch]:
        fs, path = filesystem(entry.uri)
        with _parquet_file(fs, path, entry.etag, digest) as handle:
            if not handle.seek(0, io.SEEK_END):
                # No Parquet file, not even one of no rows (its footer takes bytes): what a writer leaves
                # when it stops before writing any, which Spark and Trino pass over. As an empty JSONL or
                # CSV file, it holds no record; the run goes on, and says so.
                if self._warns:
                    log.warning(
                        "%s: 0 bytes, not a Parquet file (a writer that stopped?): read as holding no records",
                        entry.uri,
                    )
                return
            handle.seek(0)
            parquet = pq.ParquetFile(handle)
            _once_each(entry.uri, parquet.schema_arrow.names)
            total_rows = max(parquet.metadata.num_rows, 1)
            row = 1
            ids = InputIds(entry.uri)
            for batch in parquet.iter_batches(batch_size=self.batch_rows):
                table = pa.Table.from_batches([batch])
                lines = np.arange(row, row + table.num_rows)
                read = table.num_rows
                row += read
                table, lines, set_aside = split_nested_not_utf8(table, ids, lines, self.used_columns)
                rows = _with_lineage(table, ids, lines, _rows_as_bytes(as_read(table)))
                yield SourceBatch(
                    rows=not_utf8_as_binary(rows),
                    set_aside=set_aside,
                    input_bytes=(entry.size or 0) * read // total_rows,
                )


def _one_per_folder(uris: Iterable[str]) -> list[str]:
    """The first of ``uris`` in each folder, in their order."""
    first: dict[str, str] = {}
    for uri in uris:
        first.setdefault(uri.rpartition("/")[0], uri)
    return list(first.values())


def unread_partition(config: object, uri: str, missing: str) -> str:
    """What to say after ``missing`` (a record of ``uri``: ``column 'year' is missing ...``) when the
    column lies in a ``year=`` folder below the path of ``config``, a files source without
    ``hive_partitioning`` (only then would the setting give its rows that column); else nothing."""
    named = re.search(r"column '([^']+)' is missing", missing)
    if named is None or not isinstance(config, FilesSource) or config.hive_partitioning:
        return ""
    try:
        found = hive_partitions(config.path, uri)
    except StorageError:  # a key twice in the path: no partition either way
        return ""
    key = named.group(1)
    if key not in found:
        return ""
    return f" (its files lie in '{key}=...' folders: 'hive_partitioning: true' on the source reads those as columns)"


def _with_partitions(
    batch: SourceBatch, partitions: dict[str, str | None], elsewhere: list[str], uri: str
) -> SourceBatch:
    """The batch's rows with a text column for each partition folder (``id`` and ``source`` read as
    ``input_id`` and ``input_source``, as input columns of those names are: see ``with_lineage``), and
    a null one for each key of other files' folders (``elsewhere``) the rows do not hold themselves."""
    rows = batch.rows
    for key in elsewhere:
        name = input_name(key)
        if name not in rows.column_names:
            rows = rows.append_column(name, pa.nulls(rows.num_rows, pa.string()))
    for key, value in partitions.items():
        name = input_name(key)
        if name in rows.column_names:
            raise StorageError(
                f"{uri}: {name!r} is both a column of the file and a partition folder ({key}=...): "
                "rename one of them, or set hive_partitioning: false"
            )
        rows = rows.append_column(name, pa.repeat(pa.scalar(value, pa.string()), rows.num_rows))
    return dataclasses.replace(batch, rows=rows)


def not_utf8_as_binary(table: pa.Table) -> pa.Table:
    """``table`` with each column holding text that is not UTF-8 (Parquet readers do not check: a lone
    surrogate written as its three bytes) with that text binary: a text column's values that are not
    UTF-8 quarantine their rows (``Shape``), as a binary column's do, and a struct's, list's or map's are
    bytes to Python (a column the recipe does not read, ``split_nested_not_utf8``). Left as text they
    failed the run in a later stage."""
    for index, kind in enumerate(table.schema.types):
        if (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_nested(kind)) and not _valid(
            table.column(index)
        ):
            binary = _binary_leaves(kind)
            table = table.set_column(index, table.field(index).with_type(binary), table.column(index).cast(binary))
    return table


def as_read(table: pa.Table) -> pa.Table:
    """``table`` with each struct, list or map column holding text that is not UTF-8 as the JSON text a
    row id is made of (``_as_text``): the same text as ever for a value whose text is UTF-8, so a row's id
    does not change with the rows read beside it, and each byte that is not UTF-8 escaped in the others."""
    for index, column in enumerate(table.columns):
        if pa.types.is_nested(column.type) and not _valid(column):
            table = table.set_column(index, table.column_names[index], _json_of_rows(column))
    return table


def _json_of_rows(column: pa.ChunkedArray) -> pa.Array:
    as_bytes = column.cast(_binary_leaves(column.type))
    texts: list[str | None] = []
    for index in range(len(column)):
        try:
            value = column.slice(index, 1).to_pylist()[0]
        except UnicodeDecodeError:
            value = as_bytes.slice(index, 1).to_pylist()[0]
            texts.append(json.dumps(value, sort_keys=True, default=_escaped))
            continue
        texts.append(None if value is None else json.dumps(value, sort_keys=True, default=str))
    return pa.array(texts, pa.string())


def _escaped(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def split_nested_not_utf8(
    table: pa.Table,
    ids: InputIds,
    lines: np.ndarray,
    used: Collection[str] | None = None,
    connector: str = CONNECTOR,
) -> tuple[pa.Table, np.ndarray, pa.Table]:
    """``table`` (and its ``lines``) without the rows whose struct, list or map of a column the recipe reads
    (``used``; None: any) holds text that is not UTF-8, and those rows set aside, quarantined as a
    top-level text column's are (``Shape``): their record cannot hold that text, which Python's view of
    them failed the run on with a traceback. A column the recipe does not read is not published: its
    rows stay (``not_utf8_as_binary`` makes its text bytes)."""
    problems: dict[int, str] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not pa.types.is_nested(column.type) or not reads(name, used) or _valid(column):
            continue
        for index in range(table.num_rows):
            try:
                column.slice(index, 1).to_pylist()
            except UnicodeDecodeError as error:
                byte = undecodable_byte(error)
                problems.setdefault(index, f"column {name!r} holds bytes that are not UTF-8 text ({byte} of a value)")
    if not problems:
        return table, lines, empty_set_aside()
    indices = sorted(problems)
    keep = np.ones(table.num_rows, dtype=bool)
    keep[indices] = False
    bad = table.take(indices)
    rows = rows_as_read(bad)
    set_aside = set_aside_rows(
        # The id from every byte (as ever): two pictures of one size are two rows.
        ids([json.dumps(row, ensure_ascii=False, default=_bytes_as_text).encode() for row in rows]),
        source_array(connector, ids.uri, lines[indices]),
        stage="read",
        outcome="quarantined",
        reasons="schema",
        details=[f"{ids.uri}:{lines[i]}: {problems[i]}" for i in indices],
        records=[raw_cut(_row_text(row)) for row in rows],
    )
    return table.filter(pa.array(keep)), lines[keep], set_aside


def _row_text(row: dict[str, Any]) -> str:
    """A set-aside row (``rows_as_read``) as JSON text: a binary value that is UTF-8 as its text (a template reads
    it so, and the pii stage's scrub finds a name there), any other as its size: an Image() feature's picture,
    the record's or another column's (a list of masks), was megabytes of text in ``set_aside/``. Characters are
    not escaped: as ``\\u00e9``, a row reached ``MAX_RAW_CHARS`` up to six times sooner, cut into text that is
    no JSON, whose names the scrub did not recognise."""
    return record_json(row, ensure_ascii=False, default=_text_or_size)


def _text_or_size(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(value)} bytes>"
    return str(value)


def rows_as_read(table: pa.Table) -> list[dict[str, Any]]:
    """``table``'s rows, whose text (in a struct, list or map too) that is not UTF-8, which Python's view of
    the table fails on, holds U+FFFD for each such byte; binary values stay bytes."""
    kinds = dict(zip(table.column_names, table.schema.types, strict=True))
    return [
        {name: _text_leaves(value, kinds[name]) for name, value in row.items()} for row in _as_bytes(table).to_pylist()
    ]


def _as_bytes(table: pa.Table) -> pa.Table:
    """``table`` with each text in it binary (``_binary_leaves``)."""
    return pa.table([column.cast(_binary_leaves(column.type)) for column in table.columns], names=table.column_names)


def _text_leaves(value: Any, kind: pa.DataType) -> Any:
    """``value``, read as ``_binary_leaves(kind)``, with the text ``kind`` holds as text again."""
    if value is None:
        return None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return value.decode("utf-8", "replace")
    if pa.types.is_struct(kind):
        return {field.name: _text_leaves(value[field.name], field.type) for field in kind}
    if pa.types.is_map(kind):
        return [(_text_leaves(key, kind.key_type), _text_leaves(item, kind.item_type)) for key, item in value]
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return [_text_leaves(item, kind.value_type) for item in value]
    return value


def _valid(column: pa.ChunkedArray) -> bool:
    try:
        column.validate(full=True)  # a nested column's text too
    except pa.ArrowInvalid:
        return False
    return True


def _binary_leaves(kind: pa.DataType) -> pa.DataType:
    """``kind`` with each text inside it binary, which Python reads as bytes whether or not they are UTF-8."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pa.large_binary() if pa.types.is_large_string(kind) else pa.binary()
    if pa.types.is_struct(kind):
        return pa.struct([kind.field(i).with_type(_binary_leaves(kind.field(i).type)) for i in range(kind.num_fields)])
    if pa.types.is_map(kind):
        return pa.map_(_binary_leaves(kind.key_type), _binary_leaves(kind.item_type))
    if pa.types.is_large_list(kind):
        return pa.large_list(kind.value_field.with_type(_binary_leaves(kind.value_type)))
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_binary_leaves(kind.value_type)))
    if pa.types.is_fixed_size_list(kind):
        return pa.list_(kind.value_field.with_type(_binary_leaves(kind.value_type)), kind.list_size)
    return kind


def _bytes_as_text(value: Any) -> str:
    """A set-aside record's bytes as text, U+FFFD for each byte that is not UTF-8."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _parquet_file(fs: Any, path: str, etag: str | None = None, digest: ReadDigest | None = None) -> Iterator[Any]:
    """A Parquet file opened for random access (its footer is read first). One compressed whole
    (``.parquet.gz``, ``.parquet.zst``, an object uploaded with ``Content-Encoding: gzip``) gives no
    such access: it is unpacked into a temporary local file first, a block at a time, so memory stays flat."""
    with open_input(fs, path, etag, digest) as stream:
        if not isinstance(stream, pa.CompressedInputStream):
            yield stream
            return
        with tempfile.TemporaryFile(prefix="curation-parquet-") as unpacked:
            shutil.copyfileobj(stream, unpacked, BLOCK_BYTES)
            unpacked.seek(0)
            yield unpacked


def _warn_header_not_utf8(uri: str, head: bytes, leading: int, header_line: int) -> None:
    """Say where a CSV header's first byte that is not UTF-8 is: its names read with U+FFFD in its place,
    so a recipe naming the column finds none ("column 'prénom' is missing") and the cause is the file."""
    try:
        head[leading:].decode("utf-8")
        return  # the header holds U+FFFD itself
    except UnicodeDecodeError as error:
        before = head[leading : leading + error.start]
        line, column = header_line + before.count(b"\n"), error.start - (before.rfind(b"\n") + 1) + 1
        byte = head[leading + error.start]
    utf16 = " (a UTF-16 file)" if head.startswith((b"\xff\xfe", b"\xfe\xff")) else ""
    log.warning(
        "%s:%d: the header is not UTF-8%s: byte %#04x at column %d; its column names hold U+FFFD for such bytes "
        "(save the file as UTF-8)",
        uri,
        line,
        utf16,
        byte,
        column,
    )


def _read_up_to(stream: Any, size: int) -> bytes:
    """``size`` bytes of ``stream`` (all it has left, where fewer): a read may return fewer."""
    pieces, got = [], 0
    while got < size and (piece := stream.read(size - got)):
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


class _Replayed(io.RawIOBase):
    """``stream``, its first bytes (``head``, read from it already) passed on first."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self.head, self.stream = memoryview(head), stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(size)
        taken = self.head[:size] if size >= 0 else self.head
        self.head = self.head[len(taken) :]
        more = self.stream.read(size - len(taken)) if size < 0 or len(taken) < size else b""
        return b"".join((taken, more))


def _csv_values(text: bytes, start: int, delimiter: str) -> Iterator[re.Match[bytes]]:
    """The values of the CSV records in ``text`` from ``start`` on, as Arrow reads them (``_csv_value``),
    each followed by a delimiter or newline, the last by the end of ``text``."""
    value, at = _csv_value(delimiter.encode()), start
    while at <= len(text):
        found = value.match(text, at)
        yield found
        at = found.end() + 1  # past the delimiter or newline


def _runs_open(found: re.Match[bytes]) -> bool:
    """The value's quoted part ran to the end of the text: a quote never closed there."""
    return bool(found.group(1)) and not found.group(2)


def _record_end(text: bytes, start: int, delimiter: str) -> int | None:
    """Where the CSV record that starts at ``start`` in ``text`` ends (past its newline), as Arrow reads
    it (``_csv_value``), or None where it runs to the end of ``text``."""
    for found in _csv_values(text, start, delimiter):
        if _runs_open(found) or found.end() >= len(text):
            return None
        if text[found.end()] == ord("\n"):
            return found.end() + 1
    return None


def _line_blocks(stream: Any, block_bytes: int, first: Callable[[bytes], None] | None = None) -> Iterator[bytes]:
    """The stream in blocks of whole lines, about ``block_bytes`` each; the last holds what follows
    the last newline, if anything does. ``first`` sees the first bytes read, before a line longer than
    a block is gathered whole."""
    pending: list[bytes] = []  # joined once: a line of many blocks was copied again with each block
    while chunk := stream.read(block_bytes):
        if first is not None:
            first(chunk)
            first = None
        cut = chunk.rfind(b"\n") + 1
        if not cut:  # no line ends in this block: it all waits for the next
            pending.append(chunk)
            continue
        # Whole lines, copied once; the rest waits for the next block.
        yield b"".join((*pending, memoryview(chunk)[:cut]))
        pending = [chunk[cut:]]
    rest = b"".join(pending)
    if rest:
        yield rest


_LONE_CR = re.compile(rb"\r(?!\n)")


class LineCounter:
    """How many lines bytes given a block at a time hold, as ``_LineFeeds`` passes them on (and editors
    count them): each ends in LF, CRLF or CR alone; the last one counts whether or not it is ended. The
    count a sidecar's watermark keeps (``lines``): it must not change between releases."""

    def __init__(self) -> None:
        self._ends, self._last = 0, b""

    def update(self, block: bytes) -> None:
        if not block:
            return
        ends = block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
        # A CRLF split between two blocks is one line end, not a CR alone and then an LF.
        self._ends += ends - (self._last == b"\r" and block.startswith(b"\n"))
        self._last = block[-1:]

    @property
    def lines(self) -> int:
        return self._ends + (self._last not in (b"", b"\n", b"\r"))


def lines_in(data: bytes) -> int:
    """How many lines ``data`` holds (``LineCounter``)."""
    counter = LineCounter()
    counter.update(data)
    return counter.lines


class _LineFeeds(io.RawIOBase):
    """A stream with each CR that ends a line alone (classic Mac, Excel's "CSV (Macintosh)", or rows
    of one appended to a file of the other) made an LF, byte for byte, so lines are counted and blank
    ones found as in any other file; LF and CRLF pass as they are. A CR that ends a read waits for the
    next one, which may open with its LF."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.held = stream, b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while True:
            fresh = self.stream.read(size if size < 0 else max(size - len(self.held), 1))
            data, self.held = self.held + fresh, b""
            if fresh and data.endswith(b"\r"):
                data, self.held = data[:-1], b"\r"
            if data or not self.held:  # nothing passed on only at the stream's end
                break
        if b"\r" not in data or (b"\n" in data and not _LONE_CR.search(data)):
            return data  # the usual: lines that end in LF (no CR found, at memchr's speed) or CRLF
        return data.replace(b"\r", b"\n") if b"\n" not in data else _LONE_CR.sub(b"\n", data)


class _Utf8Guard(io.RawIOBase):
    """A CSV stream as Arrow is to read it: each byte that is not UTF-8 is replaced by U+FFFD and noted.

    Arrow fails a whole file on a value that is not UTF-8, and cannot hand over a row with the wrong
    number of fields that holds one. Replaced, the row reads; noted, it is set aside by its line. The
    stream is passed on in whole lines, so a character is never cut in two.
    """

    def __init__(self, stream: Any, block_bytes: int = BLOCK_BYTES) -> None:
        self.blocks, self.out = _line_blocks(stream, block_bytes), memoryview(b"")
        self.line = 1  # of the next byte passed on
        self.bad: list[tuple[int, int, int]] = []  # (line, column, byte) of each byte not UTF-8, in order
        self.blank: list[int] = []  # the numbers of empty lines, in order
        # The last blocks passed on, (first line, bytes): from the one the last record read starts in
        # (``forget_before``), and never more than two of Arrow's blocks' worth before the newest. The
        # file's last record, which Arrow reads only when it spans at most two, lies within them.
        self.tail: collections.deque[tuple[int, bytes]] = collections.deque()
        self.tail_bytes, self.keep_bytes = 0, 2 * block_bytes + 1
        # Arrow reads (``read``) on its own thread while the reader's thread lets go of blocks.
        self._tail_lock = threading.Lock()

    def forget_before(self, line: int) -> None:
        """Let go of the blocks that end before ``line``: no record after it starts in them."""
        with self._tail_lock:
            while len(self.tail) > 1 and self.tail[1][0] <= line:
                self.tail_bytes -= len(self.tail.popleft()[1])

    def last_lines(self, line: int) -> bytes | None:
        """What was passed on from the start of ``line`` to the end, or None where it is no longer held."""
        with self._tail_lock:
            tail = list(self.tail)
        for index in range(len(tail) - 1, -1, -1):
            first, data = tail[index]
            if first <= line:
                newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
                if line - first > len(newlines):
                    return None  # past the end
                start = int(newlines[line - first - 1]) + 1 if line > first else 0
                return b"".join([data[start:], *(later for _, later in tail[index + 1 :])])
        return None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        # Read whole: Arrow takes a short read as a short block, and a record may span two blocks only.
        pieces = []
        while size < 0 or size > 0:
            if not self.out:
                self.out = memoryview(self._next_lines())
                if not self.out:
                    break
            pieces.append(self.out[:size] if size >= 0 else self.out)
            self.out, size = self.out[len(pieces[-1]) :], size - len(pieces[-1])
        return b"".join(pieces)

    def _next_lines(self) -> bytes:
        data = next(self.blocks, b"")
        first = self.line
        self._note_blank_lines(data)
        if not _is_utf8(data):
            data = self._replace_bad_bytes(data)
        else:
            self.line += int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n")))
        if data:
            with self._tail_lock:
                self.tail.append((first, data))
                self.tail_bytes += len(data)
                while self.tail_bytes - len(self.tail[0][1]) >= self.keep_bytes:
                    self.tail_bytes -= len(self.tail.popleft()[1])
        return data

    def _note_blank_lines(self, data: bytes) -> None:
        if b"\n\n" not in data and b"\n\r\n" not in data and not data.startswith((b"\n", b"\r\n")):
            return  # the usual: none, found without a pass in Python
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
        lengths = np.diff(ends, prepend=-1) - 1  # each line's bytes before its newline
        carriage = np.frombuffer(data, dtype=np.uint8)[np.maximum(ends - 1, 0)] == ord("\r")
        blank = (lengths == 0) | ((lengths == 1) & carriage)
        self.blank += (self.line + np.flatnonzero(blank)).tolist()

    def _replace_bad_bytes(self, data: bytes) -> bytes:
        text = data.decode("utf-8", "surrogateescape")  # each byte not UTF-8 becomes one of U+DC80..U+DCFF
        offset = line_start = done = 0  # bytes before text[done:], and before its line
        for match in _ESCAPED_BYTE.finditer(text):
            before = text[done : match.start()]
            if "\n" in before:
                self.line += before.count("\n")
                line_start = offset + len(before[: before.rfind("\n") + 1].encode())
            offset += len(before.encode())
            self.bad.append((self.line, offset - line_start + 1, ord(match.group()) - 0xDC00))
            offset, done = offset + 1, match.end()
        self.line += text.count("\n", done)
        return _ESCAPED_BYTE.sub("\ufffd", text).encode()


def _is_utf8(data: bytes) -> bool:
    """Whether ``data`` is UTF-8, checked by Arrow: several times faster than decoding it."""
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


class _CsvLines:
    """The lines each CSV record spans.

    Arrow numbers records (the header is 1) and gives the numbers of the rows it rejects, so the rows
    it keeps have the numbers left. A quoted value can span lines: a record starts on its number plus
    the newlines inside the records before it.
    """

    def __init__(self, header: list[str], header_line: int = 1) -> None:
        self.next_number = header_line + 1
        self.newlines = sum(name.count("\n") for name in header)
        self.pending: list[Any] = []  # rejected rows after the last row placed

    def place(
        self, table: pa.Table | None, rejected: list[Any]
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, Any]]]:
        """The first and last lines of ``table``'s rows, and (line, row) for each rejected row before its
        last one; with no table (the file's end), for every rejected row left."""
        self.pending += rejected
        count = table.num_rows if table is not None else 0
        skipped = np.array([row.number for row in self.pending], dtype=np.int64)
        candidates = np.arange(self.next_number, self.next_number + count + len(skipped))
        numbers = candidates[~np.isin(candidates, skipped)][:count]
        if count:
            self.next_number = int(numbers[-1]) + 1
        last = self.next_number - 1 if table is not None else np.iinfo(np.int64).max
        placed = [row for row in self.pending if row.number <= last]
        self.pending = [row for row in self.pending if row.number > last]
        in_rows = _newlines_per_row(table) if count else None
        in_placed = np.array([row.text.count("\n") for row in placed], dtype=np.int64)
        if in_rows is None and not in_placed.any():  # the usual: a record a line
            starts = numbers + self.newlines
            return starts, starts, [(row.number + self.newlines, row) for row in placed]
        both = np.concatenate((numbers, [row.number for row in placed])).astype(np.int64)
        newlines = np.concatenate((np.zeros(count, np.int64) if in_rows is None else in_rows, in_placed))
        order = np.argsort(both, kind="stable")
        starts = np.empty_like(both)
        starts[order] = both[order] + self.newlines + np.cumsum(newlines[order]) - newlines[order]
        self.newlines += int(newlines.sum())
        return (
            starts[:count],
            starts[:count] + newlines[:count],
            list(zip(starts[count:].tolist(), placed, strict=True)),
        )


@functools.cache
def _csv_value(delimiter: bytes) -> re.Pattern[bytes]:
    """A CSV value as Arrow reads one: quoted (a "" in it is a quote; another quote closes it, and what
    follows up to the next delimiter is more of the value), or not (a quote in it is a quote)."""
    other = re.escape(delimiter)
    return re.compile(rb'(")(?:[^"]+|"")*("?)[^%s\n]*|[^%s\n]*' % (other, other))


def _open_quote_at(text: bytes, delimiter: str) -> int | None:
    """Where a quote opens in ``text`` (CSV records from one's start to the file's end) that is never
    closed, or None."""
    return next((found.start() for found in _csv_values(text, 0, delimiter) if _runs_open(found)), None)


def _without_blank_lines(
    table: pa.Table, starts: np.ndarray, ends: np.ndarray, blank: list[int]
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """``table`` (rows on lines ``starts``..``ends``) less the rows that are a blank line: no value, on
    a line the stream found empty (a line of delimiters only is a record, with every value missing)."""
    if not blank or not len(starts):
        return table, starts, ends
    on_blank = np.isin(starts, blank) & (starts == ends)
    del blank[: int(np.searchsorted(blank, ends.max(), side="right"))]  # later rows start after these
    if on_blank.any():
        empty = np.ones(table.num_rows, dtype=bool)
        for column in table.columns:
            empty &= column.is_null().to_numpy(zero_copy_only=False)
        keep = ~(on_blank & empty)
        table, starts, ends = table.filter(pa.array(keep)), starts[keep], ends[keep]
    return table, starts, ends


def _newlines_per_row(table: pa.Table) -> np.ndarray | None:
    """How many newlines each row's values hold, or None when none holds one (the usual table)."""
    counts = None
    for column in table.columns:
        # A look at the bytes behind the values first: counting them one by one costs ten times more.
        if any(_holds_newline(chunk.buffers()[-1]) for chunk in column.chunks):
            found = pc.fill_null(pc.count_substring(column, "\n"), 0).to_numpy().astype(np.int64)
            counts = found if counts is None else counts + found
    return counts


def _holds_newline(data: pa.Buffer | None) -> bool:
    return data is not None and bool((np.frombuffer(data, dtype=np.uint8) == ord("\n")).any())


def _csv_line(values: list[str | None], delimiter: str) -> str:
    """Values as the CSV line that holds them, for a reviewer."""
    line = io.StringIO()
    csv.writer(line, delimiter=delimiter, lineterminator="").writerow(values)
    return line.getvalue()


def _table_from_objects(objects: list[dict[str, Any]]) -> pa.Table:
    """Rows from parsed JSON objects, a column for every key any of them has (a key the first lacks
    too); a key whose values mix types (a boolean beside a number too), or hold an integer past 64
    bits (an account number, a u64 hash: no Arrow integer holds it, and a float would change its
    digits) or past 2^53 beside a float (which would change its digits), is kept as JSON text; a key
    whose values are all objects, all arrays, or integers beside floats, keeps each as its line wrote
    it (``json_values``)."""
    keys = list(dict.fromkeys(key for obj in objects for key in obj))
    columns = {}
    for key in keys:
        values = [obj.get(key) for obj in objects]
        kinds = {type(v) for v in values if v is not None}
        numbers = kinds == {int, float} and all(_fits_a_float(v) for v in values if type(v) is int)
        # Objects or arrays only, or integers beside floats (a float column writes 1 as 1.0, where the
        # line in a block without floats gave 1): each value as the line wrote it.
        if kinds == {dict} or kinds == {list} or numbers:
            columns[key] = json_values(values)
            continue
        # Arrow would make a boolean beside a float 1.0 (but fail on one before it), and fails on an
        # integer a float cannot hold beside a float: both are kept as text below.
        mixed = (bool in kinds and len(kinds) > 1) or kinds == {int, float}
        try:
            if not mixed:
                columns[key] = pa.array(values)
                continue
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
        if not mixed and kinds <= {int, float} and all(-(2**63) <= v < 2**63 for v in values if isinstance(v, int)):
            columns[key] = pa.array(values, pa.float64() if float in kinds else None)
        elif kinds == {str}:
            columns[key] = pa.array(values, pa.string())
        else:
            # As polars writes such a value (the block read whole): non-ASCII text as it is, not \u escapes.
            columns[key] = pa.array(
                [v if isinstance(v, str) or v is None else json.dumps(v, ensure_ascii=False) for v in values]
            )
    return pa.table(columns)


def lines_of(table: pa.Table) -> np.ndarray:
    """The source line of each row (for messages and tests)."""
    return pc.struct_field(table["source"], "line").to_numpy(zero_copy_only=False)
