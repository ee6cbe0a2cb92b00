"""Writes a dataset version: size-bounded JSONL shards, checksums, and an atomic publish.

Everything goes to a staging prefix first (``DEST/DATASET/_staging/RUN``); the manifest is
written last. Locally the staged folder is renamed into place in one step; on S3 the objects are
copied to ``vN/`` and the manifest is put after them, so a reader never sees a version without
all its files.

A scheduled run's version also holds the records of the version it extends (``carry``): they are
copied into the same staging prefix, so they publish, or vanish, with the run's own.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import hashlib
import io
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from connectors.state import LEASE_SETTING, LockLost
from connectors.storage import StorageError, copy_published, filesystem, is_s3, join, make_dirs, put_if_absent
from curation.carried_edits import apply_edits
from curation.formats import OutputFormat, take_rows
from curation.ndjson import ndjson_lines
from curation.published import dataset_uri, published_versions, read_manifest, version_uri
from curation.report import reported_columns
from curation.review.decisions import RunDecisions
from curation.split import Splitter
from curation.stopping import stops_deferred
from schemas.arrow_bytes import string_buffers
from schemas.manifest import MANIFEST_NAME, Manifest, Shard, Split
from schemas.records import SOURCE_TYPE

log = logging.getLogger(__name__)

_LEFTOVER = "-leftover"  # a run's staging folder's name with it: what it moved out of a version folder to delete


class PublishedMeanwhile(LockLost):
    """The dest's versions changed while the run went on (a run with another state store published): the
    run publishes nothing, as when its lock was taken over."""


SPLITS = ("train", "validation")
# Formats whose consumer reads one file per channel (besides those with a fixed ``data_file``, like VQA's
# metadata.jsonl): JumpStart domain adaptation's text. Each split is one file (``shard_max_bytes`` does not
# apply), and carried lines go into this run's file instead of beside it, or training could not take the version.
ONE_FILE_FORMATS = ("text",)
UNBOUNDED = 1 << 62  # bytes: the size of a shard series that is one file
CARRIED_NAME = re.compile(r"^part-v\d+-")
SET_ASIDE_PIECE_ROWS = 16_384
# Bytes of a one-file format's carried shard read at a time: its lines, and their lineage rows, go as columns a
# block at a time.
CARRY_BLOCK_BYTES = 8 << 20
# A lineage row, as ``_write_lineage`` writes it and a carry adds ``carried_from`` (the version it came from).
LINEAGE_ARROW = pa.schema(
    [
        ("shard", pa.string()),
        ("line", pa.int64()),
        ("id", pa.string()),
        ("source", SOURCE_TYPE),
        ("carried_from", pa.int64()),
    ]
)
LINEAGE_SCHEMA = pl.from_arrow(LINEAGE_ARROW.empty_table()).schema
# Rows in a lineage file, and read from one at a time: a reader's memory holds one such piece (a file is
# about 20 bytes a row, its rows in memory about 150).
LINEAGE_FILE_ROWS = 1 << 20
# Dictionaries only for the columns that repeat (a dictionary of random ids is built, then dropped, at a
# third of the write's CPU), line numbers as deltas, and no min and max of ids: at 900k rows 0.27 CPU s and
# 16 MB, against 0.69 s and 22 MB with pyarrow's defaults (and 0.44 s and 167 MB as JSON lines). Ids with
# their lengths apart (DELTA_LENGTH_BYTE_ARRAY): zstd then reads hex text alone, not a 4-byte length
# before each id, for 0.19 CPU s and 14.7 MB.
LINEAGE_PARQUET: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": ["shard", "source.connector", "source.uri"],
    "column_encoding": {
        "line": "DELTA_BINARY_PACKED",
        "id": "DELTA_LENGTH_BYTE_ARRAY",
        "source.line": "DELTA_BINARY_PACKED",
    },
    "write_statistics": ["shard", "line", "carried_from"],
}
LINEAGE_READ_ROWS = 1 << 18
ALL_LINEAGE = tuple(LINEAGE_ARROW.names)


def _whole_lines(fs: pafs.FileSystem, path: str, size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of a file about ``size`` at a time, each piece whole lines ending in a newline (one is added to a
    last line without it; a line longer than ``size`` makes its piece longer)."""
    rest = b""
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(size):
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            if cut:
                yield data[:cut]
            rest = data[cut:]
    if rest:
        yield rest + b"\n"


def _read_lines(fs: pafs.FileSystem, path: str) -> Iterator[bytes]:
    """The lines of a file, each with its newline (one is added to a last line without it). Cut at newlines
    alone, as shards and their lineage number lines (``splitlines`` also cuts at a lone carriage return)."""
    for data in _whole_lines(fs, path):
        yield from (line + b"\n" for line in data[:-1].split(b"\n"))


def _line_array(data: bytes) -> pa.LargeStringArray:
    """Lines, each ending in a newline (one is added to a last line without it), as one column: its offsets say
    where each ends, so those that stay are taken without a Python object a line."""
    if data and not data.endswith(b"\n"):
        data += b"\n"
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n")) + 1
    offsets = np.concatenate([np.zeros(1, np.int64), ends])
    return pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data))


def _lineage_files(
    fs: pafs.FileSystem,
    folder: str,
    shards: list[Shard],
    columns: tuple[str, ...] = ALL_LINEAGE,
    own: bool = False,
    of_shard: str | None = None,
) -> Iterator[pl.DataFrame]:
    """A version's lineage rows, a file at a time: a version carried by every scheduled run can hold
    millions of rows, so they are read as columns (a JSON object per row cost more than the rest of
    an incremental run) and never all at once.

    ``columns`` are those the caller uses (``source.uri`` one field of ``source``): a Parquet file's
    others are not read (its ids and sources are most of its work to read). ``own``: only the rows of the
    records the version's run wrote (``carried_from`` null), where a walk down a chain needs no others (a
    carried record is in the version it came from, on its side); a Parquet file's row groups of carried
    rows alone, as its statistics tell, are not read. ``of_shard``: the rows of that shard alone, and a Parquet
    file's row groups whose statistics say they hold none are not read (a one-file format's carry reads each
    shard's rows in a pass of its own)."""
    schema = _lineage_columns((*columns, "carried_from") if own else columns)
    for shard in shards:
        path = f"{folder}/{shard.path}"
        if path.endswith(".parquet"):
            frames = _parquet_lineage(fs, path, schema, own, of_shard)
        else:  # a version published before lineage was Parquet
            frames = iter([_lineage_file(fs, path, schema)])
        if own:
            wanted = _lineage_columns(columns).names
            frames = (frame.filter(pl.col("carried_from").is_null()).select(wanted) for frame in frames)
        if of_shard is not None:
            frames = (frame.filter(pl.col("shard") == of_shard) for frame in frames)
        yield from frames


def _lineage_columns(columns: tuple[str, ...]) -> pa.Schema:
    """The part of ``LINEAGE_ARROW`` that ``columns`` name, in its order (a Parquet read gives that order)."""
    fields = []
    for field in LINEAGE_ARROW:
        if field.name in columns:
            fields.append(field)
        elif pa.types.is_struct(field.type):
            inner = [sub for sub in field.type if f"{field.name}.{sub.name}" in columns]
            fields += [pa.field(field.name, pa.struct(inner))] if inner else []
    return pa.schema(fields)


def _column_paths(schema: pa.Schema) -> list[str]:
    """The Parquet columns holding ``schema``, a part of ``LINEAGE_ARROW``: a struct's fields by path where
    it holds only some."""
    paths = []
    for field in schema:
        whole = field.type == LINEAGE_ARROW.field(field.name).type
        paths += [field.name] if whole else [f"{field.name}.{sub.name}" for sub in field.type]
    return paths


def records_from_inputs(version_dir: str, uris: set[str], own: bool = False) -> tuple[pl.DataFrame, set[str]]:
    """The records that ``version_dir`` holds (its own and carried; ``own``: its own alone) from the inputs
    ``uris`` (``id``, and ``validation`` where it holds it there), and which of ``uris`` hold any. Their inputs
    apart: a run holds the records all along (``RunPlan.published_sides``), a string per record at no use past
    the plan."""
    fs, folder = filesystem(version_dir)
    wanted = pl.Series(sorted(uris), dtype=pl.String).implode()
    uri = pl.col("source").struct.field("uri")
    parts = [
        rows.filter(uri.is_in(wanted)).select("id", validation=pl.col("shard").str.starts_with("validation/"), uri=uri)
        for rows in _lineage_files(fs, folder, read_manifest(version_dir).lineage, ("shard", "id", "source.uri"), own)
    ]
    found = (
        pl.concat(parts)
        if parts
        else pl.DataFrame(schema={"id": pl.String, "validation": pl.Boolean, "uri": pl.String})
    )
    held = set(found["uri"].unique().to_list())
    return found.drop("uri").unique("id"), held  # a chunked document has a line a piece, all on its side


def records_of_other_inputs(version_dir: str, uris: set[str], skip: Collection[str] = ()) -> dict[str, int]:
    """How many records ``version_dir`` holds (its own and carried) of each input not in ``uris``, but for
    those of the connectors ``skip``."""
    fs, folder = filesystem(version_dir)
    listed = pl.Series(sorted(uris), dtype=pl.String).implode()
    skipped = pl.Series(sorted(skip), dtype=pl.String).implode()
    source = pl.col("source").struct
    columns = ("id", "source.uri", "source.connector")
    parts = [
        rows.select("id", uri=source.field("uri"), connector=source.field("connector")).filter(
            pl.col("uri").is_not_null() & ~pl.col("uri").is_in(listed) & ~pl.col("connector").is_in(skipped)
        )
        for rows in _lineage_files(fs, folder, read_manifest(version_dir).lineage, columns)
    ]
    if not parts:
        return {}
    found = pl.concat(parts).unique(["uri", "id"]).group_by("uri").len()  # a chunked document has a line a piece
    return dict(zip(found["uri"].to_list(), found["len"].to_list(), strict=True))


def inputs_of_duplicates(dest: str, dataset: str, versions: list[int], ids: pl.Series) -> dict[str, set[str]]:
    """The inputs of records that ``versions`` set aside as duplicates of one of ``ids``, each with the
    ids it holds duplicates of: when those are replaced (their input changed), the content may live
    on only in such a record, read again."""
    wanted = ids.implode()
    found: dict[str, set[str]] = {}
    for version in versions:
        folder = version_uri(dest, dataset, version)
        fs, root = filesystem(folder)
        for shard in read_manifest(folder).set_aside:
            columns = {"source": LINEAGE_SCHEMA["source"], "outcome": pl.String, "duplicate_of": pl.String}
            rows = _ndjson_columns(fs, f"{root}/{shard.path}", columns)
            # Duplicates only: a record filtered for holding a rejected record's content names it too.
            duplicates = rows.filter(pl.col("duplicate_of").is_in(wanted) & (pl.col("outcome") == "duplicate"))
            uris = duplicates["source"].struct.field("uri").to_list()
            for uri, kept in zip(uris, duplicates["duplicate_of"].to_list(), strict=True):
                if uri:
                    found.setdefault(uri, set()).add(kept)
    return found


def _ndjson_columns(fs: pafs.FileSystem, path: str, schema: dict[str, Any]) -> pl.DataFrame:
    """The ``schema`` columns of a JSONL file this project wrote (set-aside rows), as a frame."""
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    return pl.read_ndjson(io.BytesIO(data), schema=schema) if data.strip() else pl.DataFrame(schema=schema)


def _lineage_file(fs: pafs.FileSystem, path: str, schema: pa.Schema) -> pl.DataFrame:
    """The ``schema`` columns of a JSONL lineage file (of a version published before lineage was Parquet)."""
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    columns = pl.from_arrow(schema.empty_table()).schema
    if not data.strip():
        return pl.DataFrame(schema=columns)
    try:
        frame = pl.read_ndjson(io.BytesIO(data), schema=columns)
    except pl.exceptions.PolarsError as error:
        raise ValueError(f"{path}: {_first_bad_line(data, error)}") from None
    return _complete(frame, path, 0)


def _parquet_lineage(
    fs: pafs.FileSystem, path: str, schema: pa.Schema, own: bool = False, shard: str | None = None
) -> Iterator[pl.DataFrame]:
    """The ``schema`` columns of a Parquet lineage file, ``LINEAGE_READ_ROWS`` rows at a time (``own``: less the
    row groups of carried rows alone; ``shard``: less those of other shards' rows alone)."""
    with fs.open_input_file(path) as stream:
        batches = _parquet_batches(stream, schema, own, shard)
        while True:
            try:
                read, rows = next(batches, (0, None))
            # pyarrow says what is wrong (a file cut short, not Parquet, a column of another type) from deep
            # inside; a store that failed reading it says so the same way, so its words are kept.
            except (pa.ArrowException, OSError, ValueError) as error:
                said = str(error).strip().splitlines()
                raise ValueError(
                    f"{path}: not a readable Parquet file of lineage rows ({said[0] if said else type(error).__name__})"
                ) from None
            if rows is None:
                return
            yield _complete(pl.from_arrow(rows), path, read)


def _parquet_batches(
    stream: pa.NativeFile, schema: pa.Schema, own: bool = False, shard: str | None = None
) -> Iterator[tuple[int, pa.Table]]:
    """Each batch of the file's rows with the number of rows before it (for the row an error names)."""
    parquet = pq.ParquetFile(stream)
    lacking = [name for name in LINEAGE_ARROW.names if name not in parquet.schema_arrow.names]
    if lacking:
        raise ValueError(f"it has no column {', '.join(lacking)}")
    columns = _column_paths(schema)
    pieces = [(0, None)] if not own and shard is None else _row_groups_holding(parquet.metadata, own, shard)
    for before, group in pieces:
        groups = None if group is None else [group]
        for batch in parquet.iter_batches(LINEAGE_READ_ROWS, row_groups=groups, columns=columns):
            yield before, pa.Table.from_batches([batch]).select(schema.names).cast(schema)
            before += batch.num_rows


def _row_groups_holding(metadata: pq.FileMetaData, own: bool, shard: str | None) -> list[tuple[int, int | None]]:
    """The row groups that may hold rows of the version's own run (``own``: ``carried_from`` null) of ``shard``
    (where given), each with the number of rows before it: all but those whose statistics say they hold none (a
    carry writes its rows apart, and a writer each split's part apart). A group without statistics is read."""
    paths = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    carried_from, shards = paths.index("carried_from"), paths.index("shard")
    wanted = None if shard is None else shard.encode()  # Parquet orders strings by their UTF-8 bytes
    found, before = [], 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group)
        stats = rows.column(carried_from).statistics
        may = not own or stats is None or not stats.has_null_count or stats.null_count > 0
        stats = rows.column(shards).statistics
        if wanted is not None and stats is not None and stats.has_min_max:
            may = may and stats.min_raw <= wanted <= stats.max_raw
        if may:
            found.append((before, group))
        before += rows.num_rows
    return found


def _complete(frame: pl.DataFrame, path: str, before: int) -> pl.DataFrame:
    """``frame``, rows ``before + 1``... of the lineage file ``path``, if each row has a shard, line and id
    (those of them it holds)."""
    held = [name for name in ("shard", "line", "id") if name in frame.columns]
    missing = frame.select(pl.any_horizontal(pl.col(held).is_null()).arg_true().first()).item()
    if missing is not None:
        raise ValueError(f"{path}: lineage row {before + missing + 1} has no shard, line or id")
    return frame


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON value")


def _json_object_pairs(line: bytes, number: int) -> list[tuple[str, Any]]:
    """The pairs of the JSON object ``line`` holds (a key twice stays twice), read as polars reads JSON (Python's
    also takes ``NaN`` and ``Infinity``); a ValueError naming line ``number`` where it holds none."""
    try:
        pairs = json.loads(line, object_pairs_hook=list, parse_constant=_not_json)
    except (ValueError, RecursionError) as problem:
        raise ValueError(f"line {number} is not JSON ({problem})") from None
    if not line.lstrip().startswith(b"{"):
        raise ValueError(f"line {number} is not a JSON object")
    return pairs


def _first_bad_line(data: bytes, error: Exception, first: int = 1, what: str = "lineage rows") -> str:
    """Where polars' error is: the first line (numbered from ``first``) that is not a JSON object (polars names
    no line)."""
    for number, line in enumerate(data.splitlines(), first):
        if not line.strip():
            continue
        try:
            _json_object_pairs(line, number)
        except ValueError as problem:
            return str(problem)
    return f"not JSON lines of {what} ({error})"


def _noting_images(
    lines: Iterable[tuple[bytes, dict[str, Any] | None, bool]], split: str, named: set[str]
) -> Iterator[tuple[bytes, dict[str, Any] | None, bool]]:
    """``lines`` as they pass (each a JSON object: ``_checked_file_names``), noting the image each names
    (``file_name``, relative to its split's folder)."""
    for item in lines:
        file_name = json.loads(item[0]).get("file_name")
        if isinstance(file_name, str):
            named.add(f"{split}/{file_name}")
        yield item


# An escape of an ASCII letter or "_" (``\u0066`` for "f"): a line holding one may name file_name without spelling it.
_SPELT_KEY = r"\\u00[5-7][0-9a-fA-F]"


def _one_file_name(line: bytes, where: str, number: int) -> None:
    """Refuses line ``number`` of the metadata file ``where`` if its object names ``file_name`` twice (a hand edit):
    polars keeps the first and Python's json the last, so which image it names cannot be told. Only a line that
    spells the name twice, or holds an escape that may spell it, is read as JSON."""
    if line.count(b"file_name") < 2 and re.search(_SPELT_KEY.encode(), line) is None:
        return
    try:
        pairs = json.loads(line, object_pairs_hook=list)  # each object as its pairs: a key twice stays twice
    except (ValueError, RecursionError):  # not JSON: named where the lines are read as a column
        return
    _file_name_once(pairs, line, where, number)


def _file_name_once(pairs: Any, line: bytes, where: str, number: int) -> None:
    """Refuses line ``number`` of ``where`` if its object (``pairs``, as ``object_pairs_hook=list`` reads it) names
    ``file_name`` twice."""
    if line.lstrip().startswith(b"{") and sum(key == "file_name" for key, _ in pairs) > 1:
        raise ValueError(
            f'{where} line {number}: the key "file_name" appears twice in one object, so which image the line names '
            "cannot be told; edit the line in the file (a review decision does not reach it)"
        )


def _checked_file_names(lines: Iterable[bytes], where: str) -> Iterator[bytes]:
    """``lines`` of the metadata file ``where`` as they pass, read one by one, each refused by its number if it is
    no JSON object (a hand edit: as the lines read as a column are, ``_first_bad_line``) or names ``file_name``
    twice."""
    for number, line in enumerate(lines, 1):
        try:
            pairs = _json_object_pairs(line, number)
        except ValueError as problem:
            raise ValueError(f"{where}: {problem}") from None
        _file_name_once(pairs, line, where, number)
        yield line


def _images_named(
    data: bytes, lines: pa.LargeStringArray, keep: np.ndarray, split: str, where: str, first: int
) -> set[str]:
    """The images (``file_name``, relative to its split's folder) that the lines ``data`` (as ``lines``), lines
    ``first``... of ``where``, name where ``keep`` keeps them: read as one column (a JSON object a line cost
    seconds a 300k)."""
    lines = pl.Series(lines)
    twice = lines.str.count_matches("file_name", literal=True) > 1
    for index in (twice | lines.str.contains(_SPELT_KEY)).arg_true().to_list():
        _one_file_name(lines[index].encode(), where, first + index)
    try:
        names = pl.read_ndjson(io.BytesIO(data), schema={"file_name": pl.String})["file_name"]
    except pl.exceptions.PolarsError as error:
        raise ValueError(f"{where}: {_first_bad_line(data, error, first, 'metadata lines')}") from None
    if names.len() != len(keep):  # polars passes over a blank line
        blank = next((number for number, line in enumerate(data.splitlines(), first) if not line.strip()), None)
        said = f"line {blank} is blank" if blank else f"lines {first} to {first + len(keep) - 1} hold a line that is"
        raise ValueError(f"{where}: {said}, not a JSON object")
    return {f"{split}/{name}" for name in names.filter(pl.Series(keep)).drop_nulls().unique().to_list()}


def _delete_or_say(delete: Callable[[], None], what: str, left: str) -> None:
    """``delete()``; what is already gone is fine, and what the store refuses (a permission, a lost connection)
    a warning saying what is left and how to delete it: the run's outcome, or its error, stands."""
    try:
        delete()
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("%s, could not be deleted (%s); %s", what, _first_error(error), left)


def _first_error(error: OSError) -> str:
    """``error`` on one line: a delete of many objects at once lists each one that failed (a folder of thousands)."""
    first, *others = str(error).strip().splitlines() or [""]
    return f"{first.rstrip(':')}, such as {others[0].lstrip('- ')}" if others else first


def _placed_lines(placed: list[tuple[str, int]], total: int, series: ShardSeries) -> tuple[pa.Array, np.ndarray]:
    """The shard and line of each of ``total`` lines ``series.write`` placed as ``placed``. Pieces fill each
    shard to its end, so every piece but the last ends one: the series' last closed shards, in order (their
    counts read there, not looked up among every shard written so far)."""
    ended = series.shards[len(series.shards) + 1 - len(placed) :] if len(placed) > 1 else []
    sizes = [shard.records - first + 1 for shard, (_, first) in zip(ended, placed[:-1], strict=True)]
    counts = np.array([*sizes, total - sum(sizes)] if placed else [], np.int64)
    firsts = np.array([first for _, first in placed], np.int64)
    piece = np.repeat(np.arange(len(placed)), counts)  # which piece each line went into
    starts = np.cumsum(counts) - counts  # index of each piece's first line
    lines = np.arange(total, dtype=np.int64) - starts[piece] + firsts[piece]
    return pa.array([shard for shard, _ in placed], pa.string()).take(piece), lines


def _in_line_order(fs: pafs.FileSystem, folder: str, lineage: list[Shard], shards: set[str]) -> set[str]:
    """Those of ``shards`` whose lineage rows run in line order through the version's files, as a writer writes
    them (its own rows as it places their lines, a carry's after them): read in step with their lines, a piece
    at a time, not held whole. A pass over two columns of the lineage."""
    last: dict[str, int] = {}
    unordered: set[str] = set()
    wanted = pl.Series(sorted(shards), dtype=pl.String).implode()
    for rows in _lineage_files(fs, folder, lineage, ("shard", "line")):
        line = pl.col("line")
        ends = (
            rows.filter(pl.col("shard").is_in(wanted))
            .group_by("shard")
            .agg(first=line.first(), last=line.last(), ordered=(line.diff() >= 0).all())
        )
        for shard, first, end, ordered in ends.iter_rows():
            if not ordered or first < last.get(shard, first):
                unordered.add(shard)
            last[shard] = end
    return shards - unordered


class _LineOrdered:
    """A shard's lineage rows in line order, taken as its lines are read: memory holds a piece of them (a
    lineage read), not the shard's, which for a one-file format is the dataset's."""

    WINDOW = 1 << 16  # lines whose rows ``get`` holds as Python objects at a time

    def __init__(self, pieces: Iterable[pl.DataFrame]) -> None:
        self._pieces = iter(pieces)
        self._rest = pl.DataFrame(schema=LINEAGE_SCHEMA)
        self._end, self._rows = 0, {}

    def before(self, end: int) -> pl.DataFrame:
        """The rows not taken yet of the lines before ``end``."""
        taken = []
        while True:
            cut = self._rest["line"].search_sorted(end, "left")
            taken.append(self._rest.slice(0, cut))
            self._rest = self._rest.slice(cut)
            piece = None if self._rest.height else next(self._pieces, None)
            if piece is None:
                return pl.concat(taken)
            self._rest = piece

    def get(self, line: int) -> dict[str, Any] | None:
        """The row of ``line`` (lines asked for in order), as ``_by_line`` gives it."""
        if line >= self._end:
            self._end = line + self.WINDOW
            self._rows = _by_line(self.before(self._end))
        return self._rows.get(line)


def _by_line(rows: pl.DataFrame | None) -> dict[int, dict[str, Any]]:
    """Lineage rows keyed by line, for the shards whose lines are read one by one."""
    return {} if rows is None else {row["line"]: row for row in rows.to_dicts()}


class _Carrying:
    """Review decisions applied to carried lines, and the counts of what they did."""

    def __init__(self, decisions: RunDecisions, fmt: str, chunked: bool) -> None:
        self.decisions, self.fmt, self.chunked = decisions, fmt, chunked
        self.edits = decisions.carried_edits()  # annotators' values, and texts with not-PII spans put back
        # Edited records on more than one line of the carried version: a document cut into pieces by the
        # chunk_chars of the recipe that wrote it (the recipe may no longer set it), each line a piece.
        self.in_pieces: set[str] = set()
        self.carried = 0
        self.unknown = 0  # carried lines without a lineage row: no record id to match decisions against
        self.rejected: set[str] = set()
        self.rejected_uris: dict[str, str] = {}  # each rejected record's input
        self.edited: set[str] = set()
        self.edits_not_applied: set[str] = set()
        # Carried records this run read again: what it wrote of them (if anything) replaces them.
        self.superseded: set[str] = set()
        self.replaced: set[str] = set()
        self.decided_shards: set[str] = set()  # shards with a line a decision rejects or edits
        self._superseded: pl.Series | None = None

    def decided(self) -> pl.Series:
        """The ids a decision rejects or edits."""
        return pl.Series(sorted(self.decisions.rejected | self.edits.keys()), dtype=pl.String)

    def copied(self, lines: int, known: int) -> None:
        """A shard copied whole: all its lines carried, ``known`` of them with a lineage row."""
        self.carried += lines
        self.unknown += max(lines - known, 0)

    def sift(self, lines: int, rows: pl.DataFrame | None, first: int = 1) -> tuple[np.ndarray, pl.DataFrame]:
        """``review`` as columns, for ``lines`` lines from line ``first`` of a shard no decision reaches (``rows``:
        its lineage rows, in line order): which lines stay (all but those of records read again), and the
        lineage rows of those, each with ``at``, its index among them."""
        rows = rows if rows is not None else pl.DataFrame(schema=LINEAGE_SCHEMA)
        # A slice, not a filter: a one-file format's shard is sifted a block at a time, and may be the dataset.
        start, end = (rows["line"].search_sorted(line, "left") for line in (first, first + lines))
        rows = rows.slice(start, end - start)
        rows = rows.unique("line", keep="last", maintain_order=True)  # as ``_by_line``'s dict keeps them
        if self._superseded is None:  # the set is whole by the time shards are sifted
            self._superseded = pl.Series(list(self.superseded), dtype=pl.String)
        gone = pl.col("id").is_in(self._superseded.implode()).fill_null(False)
        replaced = rows.filter(gone)
        self.replaced.update(replaced["id"].to_list())
        keep = np.ones(lines, dtype=bool)
        keep[replaced["line"].to_numpy() - first] = False
        self.unknown += lines - rows.height
        self.carried += int(keep.sum())
        at = np.cumsum(keep) - 1
        stay = rows.filter(~gone)
        return keep, stay.with_columns(at=pl.Series(at[stay["line"].to_numpy() - first]))

    def review(
        self, lines: Iterable[bytes], rows: dict[int, dict[str, Any]] | _LineOrdered, where: str
    ) -> Iterator[tuple[bytes, dict[str, Any] | None, bool]]:
        """(line, its lineage row, whether an edit changed it) for each line of shard ``where`` that stays."""
        for number, line in enumerate(lines, 1):
            row = rows.get(number)
            if row is None:
                self.unknown += 1
                self.carried += 1
                yield line, None, False
                continue
            record = row["id"]
            if record in self.superseded:
                self.replaced.add(record)
                continue
            if record in self.decisions.rejected:
                self.rejected.add(record)
                self.rejected_uris[record] = (row.get("source") or {}).get("uri") or ""
                continue
            changed = False
            if record in self.edits:
                try:
                    parsed = json.loads(line)
                except ValueError as error:
                    raise ValueError(
                        f"{where} line {number}: not a JSON object ({error}); cannot apply its edit"
                    ) from None
                chunked = self.chunked or record in self.in_pieces
                changed, missed = apply_edits(parsed, self.edits[record], self.fmt, chunked)
                if missed:
                    self.edits_not_applied.add(record)
                if changed:
                    self.edited.add(record)
                    line = json.dumps(parsed, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            self.carried += 1
            yield line, row, changed

    def stats(self) -> dict[str, int]:
        return {
            "replaced": len(self.replaced),
            "review_rejected": len(self.rejected),
            "review_edited": len(self.edited),
            "edits_not_applied": len(self.edits_not_applied),
            "lines_without_lineage": self.unknown,
        }


class ShardSeries:
    """part-00000.jsonl, part-00001.jsonl, ... under one folder, each at most ``max_bytes``.

    With ``file_name`` the series is that one file, unbounded: for consumers that read a fixed name.
    """

    def __init__(
        self, fs: pafs.FileSystem, folder: str, relative: str, max_bytes: int, file_name: str | None = None
    ) -> None:
        self.fs, self.folder, self.relative, self.max_bytes = fs, folder, relative, max_bytes
        self.file_name = file_name
        if file_name is not None:
            self.max_bytes = UNBOUNDED
        self.shards: list[Shard] = []
        self._stream = None
        self._digest = hashlib.sha256()
        self._bytes = 0
        self._records = 0

    def write(self, data: bytes | pa.ChunkedArray, lines: int | None = None) -> list[tuple[str, int]]:
        """Append whole lines; returns (shard path, first line number) for each piece written.

        ``data`` is their bytes, or a string column of one line a value (``ndjson_lines``): its offsets say
        where lines end, and its data are written as they are. ``lines``, when the caller knows it, is how
        many lines ``data`` holds: counting them is a pass over every byte, so only the pieces that end a
        shard are counted then.
        """
        if isinstance(data, bytes):
            return self._write(memoryview(data), _NewlineEnds(data, lines))
        placed: list[tuple[str, int]] = []
        for chunk in data.chunks:
            offsets, buffer = string_buffers(chunk)
            pieces = self._write(memoryview(buffer), _OffsetEnds(offsets))
            if placed and pieces and pieces[0][0] == placed[-1][0]:  # one piece: it goes on in that shard
                pieces = pieces[1:]
            placed += pieces
        return placed

    def _write(self, view: memoryview, ends: _LineEnds) -> list[tuple[str, int]]:
        placed = []
        start, end = ends.start, ends.end
        while start < end:
            if self._stream is None:
                self._open()
            room = max(self.max_bytes - self._bytes, 0)  # a line longer than a shard fills it past its bound
            if end - start <= room:
                cut = end
            else:
                cut = ends.last(start, start + room)
                if cut == 0:
                    if self._bytes:  # the next line does not fit: start a new shard
                        self._close()
                        continue
                    cut = ends.next(start)  # one line longer than a shard: it gets a shard alone
            placed.append((self._path_relative(), self._records + 1))
            piece = view[start:cut]  # pieces are views: no copy of a large ``data`` per shard
            with writing(f"{self.folder}/{self._path_relative()}", fs=self.fs):
                self._stream.write(piece)
            self._digest.update(piece)
            self._bytes += cut - start
            self._records += ends.count(start, cut)
            start = cut
            if start < end:
                self._close()
        return placed

    def close(self) -> None:
        if self._stream is not None:
            self._close()

    def _path_relative(self) -> str:
        if self.file_name is not None:
            return f"{self.relative}/{self.file_name}"
        return f"{self.relative}/part-{len(self.shards):05d}.jsonl"

    def _open(self) -> None:
        make_dirs(self.fs, f"{self.folder}/{self.relative}")
        self._stream = self.fs.open_output_stream(f"{self.folder}/{self._path_relative()}")
        self._digest, self._bytes, self._records = hashlib.sha256(), 0, 0

    def _close(self) -> None:
        with writing(f"{self.folder}/{self._path_relative()}", fs=self.fs):
            self._stream.close()
        self.shards.append(
            Shard(path=self._path_relative(), records=self._records, bytes=self._bytes, sha256=self._digest.hexdigest())
        )
        self._stream = None


class _LineEnds(Protocol):
    """Where the lines of bytes written to a ``ShardSeries`` end (each just after its newline)."""

    start: int  # where the first line starts
    end: int  # where the last ends

    def last(self, start: int, limit: int) -> int:
        """The end of the last line from ``start`` that ends by ``limit``; 0 when none does."""

    def next(self, start: int) -> int:
        """The end of the line that starts at ``start``."""

    def count(self, start: int, cut: int) -> int:
        """How many lines ``start:cut`` holds (a line's start, a line's end)."""


class _NewlineEnds:
    """Ends found by searching the bytes; ``lines``, when known, is how many they hold."""

    def __init__(self, data: bytes, lines: int | None) -> None:
        self.data, self.lines, self.start, self.end = data, lines, 0, len(data)

    def last(self, start: int, limit: int) -> int:
        return self.data.rfind(b"\n", start, limit) + 1

    def next(self, start: int) -> int:
        return self.data.find(b"\n", start) + 1 or self.end

    def count(self, start: int, cut: int) -> int:
        counted = self.data.count(b"\n", start, cut) if self.lines is None or cut < self.end else self.lines
        if self.lines is not None:  # the pieces are counted in order: the last is what is left
            self.lines -= counted
        return counted


class _OffsetEnds:
    """Ends read from a string column's offsets, one line a value: found without reading the bytes."""

    def __init__(self, offsets: np.ndarray) -> None:
        self.ends, self.start, self.end = offsets[1:], int(offsets[0]), int(offsets[-1])

    def last(self, start: int, limit: int) -> int:
        fit = int(np.searchsorted(self.ends, limit, "right"))
        return int(self.ends[fit - 1]) if fit and self.ends[fit - 1] > start else 0

    def next(self, start: int) -> int:
        return int(self.ends[np.searchsorted(self.ends, start, "right")])

    def count(self, start: int, cut: int) -> int:
        return int(np.searchsorted(self.ends, cut, "right") - np.searchsorted(self.ends, start, "right"))


class LineageSeries:
    """lineage/part-00000.parquet, part-00001.parquet, ...: lineage rows (``LINEAGE_ARROW``, zstd), each file at
    most ``max_rows`` rows, and closed once it holds ``max_bytes`` (so a little over them).

    A file is made in memory (a million rows is about 20 MB) and written, with its sha256, when it is closed.
    """

    def __init__(self, fs: pafs.FileSystem, folder: str, relative: str, max_bytes: int) -> None:
        self.fs, self.folder, self.relative, self.max_bytes = fs, folder, relative, max_bytes
        self.max_rows = LINEAGE_FILE_ROWS
        self.shards: list[Shard] = []
        self._sink: pa.BufferOutputStream | None = None
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0

    def write(self, rows: pa.Table) -> None:
        """Append ``rows`` (the columns of ``LINEAGE_ARROW``; without ``carried_from`` it is null)."""
        if "carried_from" not in rows.column_names:
            rows = rows.append_column("carried_from", pa.nulls(rows.num_rows, pa.int64()))
        rows = rows.select(LINEAGE_ARROW.names).cast(LINEAGE_ARROW)
        while rows.num_rows:
            if self._writer is None:
                self._sink = pa.BufferOutputStream()
                self._writer = pq.ParquetWriter(self._sink, LINEAGE_ARROW, **LINEAGE_PARQUET)
                self._rows = 0
            piece = rows.slice(0, self.max_rows - self._rows)
            self._writer.write_table(piece)
            self._rows += piece.num_rows
            rows = rows.slice(piece.num_rows)
            if self._rows >= self.max_rows or self._sink.tell() >= self.max_bytes:
                self._close()

    def close(self) -> None:
        if self._writer is not None:
            self._close()

    def discard(self) -> None:
        """Drop the file being made, unwritten (a run that failed: its staging goes anyway)."""
        writer, self._writer, self._sink = self._writer, None, None
        if writer is not None:
            with contextlib.suppress(Exception):  # a writer a failed write left broken
                writer.close()

    def _close(self) -> None:
        self._writer.close()
        data = self._sink.getvalue()
        self._writer = self._sink = None
        path = f"{self.relative}/part-{len(self.shards):05d}.parquet"
        self.shards.append(put_file(self.fs, self.folder, path, data, self._rows))


class _OneAtATime:
    """Jobs run in order on a thread of their own, one in flight at most (so memory holds one more):
    ``submit`` first waits for the job before it, and raises that job's error."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: Future[None] | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._pool.submit(job)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    @staticmethod
    def wait_all(*threads: _OneAtATime) -> None:
        """Each one's job done, in order (a job may submit to a later one); then the first error raised."""
        errors = []
        for thread in threads:
            try:
                thread.wait()
            except BaseException as error:  # the others still waited for: none runs on after the caller
                errors.append(error)
        if errors:
            raise errors[0]

    def shutdown(self) -> None:
        self._pool.shutdown()


@contextlib.contextmanager
def writing(path: str, full: str = "", fs: pafs.FileSystem | None = None) -> Iterator[None]:
    """Raise an error writing ``path`` (of ``fs``: on S3 named by its URI) as one line naming it, its errno kept
    where it has one (the CLI says it as a failed run): pyarrow's names no file, so a full dest and a full spill
    folder read alike. ``full`` is added where the disk is full."""
    try:
        yield
    except OSError as error:
        where = f"s3://{path}" if fs is not None and fs.type_name == "s3" else path
        if not error.errno:  # S3's errors have none: "[Errno None]" would say nothing
            raise OSError(f"cannot write {where}: {error}") from error
        is_full = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        raise OSError(
            error.errno, f"cannot write {where}: {os.strerror(error.errno)}{full if is_full else ''}"
        ) from error


def how_to_fill_validation(group_by: str | None) -> str:
    """What places records in an empty validation side: more records, or, where groups keep their sides across
    runs, more groups or another split_seed with --full-refresh."""
    if group_by:
        return f"publish more groups of {group_by!r} (each keeps its side), or another split_seed with --full-refresh"
    return "publish more records to choose them"


def new_run_id() -> str:
    """A new run's id: its run lock, its row in the runs table, its log lines and its staging folder use it."""
    return uuid.uuid4().hex[:12]


def put_file(fs: pafs.FileSystem, folder: str, path: str, data: bytes | pa.Buffer, records: int) -> Shard:
    """Write ``data`` to ``folder/path`` (its folder made first); the manifest's entry for it."""
    make_dirs(fs, f"{folder}/{path.rsplit('/', 1)[0]}")
    with writing(f"{folder}/{path}", fs=fs), fs.open_output_stream(f"{folder}/{path}") as out:
        out.write(data)
    return Shard(path=path, records=records, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


class DatasetWriter:
    def __init__(
        self,
        dest: str,
        dataset: str,
        fmt: OutputFormat,
        shard_max_bytes: int,
        validation_fraction: float,
        split_seed: str,
        stratify_by: str | None = None,
        group_by: str | None = None,
        by_document: bool = False,
        run_id: str | None = None,
    ) -> None:
        self.dest, self.dataset, self.format = dest, dataset, fmt
        # VQA records are grouped by image unless the recipe says how to split (README "Splits").
        by_image = fmt.kinds == {"vqa"}
        self.splitter = Splitter(
            validation_fraction, split_seed, stratify_by, group_by, by_image=by_image, by_document=by_document
        )
        self.run_id = run_id or new_run_id()  # the pipeline's: the one its run lock holds too
        # Which of the given run ids the state store knows as runs of the dataset that are over (set by the
        # pipeline): what they left in the dest is removed; anything else may be a run of another store.
        self.ended_runs: Callable[[Iterable[str]], set[str]] = lambda _ids: set()
        # Raises unless the run still holds the dataset's lock (set by the pipeline): checked before the run
        # touches anything outside its own staging folder.
        self.confirm_lock: Callable[[], None] = lambda: None
        # The version the state store's latest publishing run of the dataset made (set by the pipeline).
        self.last_published: Callable[[], int | None] = lambda: None
        self.staging_uri = join(dataset_uri(dest, dataset), "_staging", self.run_id)
        # Made by the first file written there, not here: the writer is built before the run is recorded, and
        # a folder of a run killed in between, which no store knows of, no later run would remove.
        self.fs, self.staging = filesystem(self.staging_uri)
        # A format read as one file per channel writes one file per split, whatever its size.
        split_bytes = UNBOUNDED if fmt.name in ONE_FILE_FORMATS else shard_max_bytes
        self.splits = {name: ShardSeries(self.fs, self.staging, name, split_bytes, fmt.data_file) for name in SPLITS}
        self.files: dict[str, Shard] = {}  # binary side files the lines refer to (images), by path
        # On S3, carried files (published path, path in the version) are copied straight into the version
        # as it is published: through the staging area each would be copied twice.
        self._carried_files: list[tuple[str, str]] = []
        self.set_aside = ShardSeries(self.fs, self.staging, "set_aside", shard_max_bytes)
        self.set_aside_reported: list[pa.Table] = []  # the columns of the set-aside rows the report counts
        self.lineage = LineageSeries(self.fs, self.staging, "lineage", shard_max_bytes)
        self.written = 0
        self.carried: dict[str, list[Shard]] = {name: [] for name in SPLITS}  # shards copied whole
        self.carry_stats: dict[str, int] = {}  # what review decisions did to the carried lines
        self.carry_rejected: set[str] = set()  # carried records left out because an annotator rejected them
        self.carry_rejected_uris: dict[str, str] = {}  # and the input of each
        self.carry_replaced: set[str] = set()  # carried records left out because this run read them again
        self._carried_from: int | None = None
        # Applied to set-aside rows before they are written (the PII stage's redaction of raw input).
        self.scrub: Callable[[pa.Table], pa.Table] | None = None
        self.on_written: Callable[[int], None] = lambda _: None  # records written so far, for progress
        # A batch's sides, their lines, images, shards and hashes are made on one thread, in the order
        # they were asked for, while the caller makes the next batch: Arrow, hashlib and file writes
        # release the GIL. Its error is raised by the next call (write, write_set_aside, carry or
        # publish), and the run fails with it as before.
        self._worker = _OneAtATime("dataset-writer")
        # The lineage's files are made on a thread of their own, fed by the writer's: it is the one
        # busy all the time once records are written.
        self._lineage_worker = _OneAtATime("dataset-lineage")

    def write(self, batch: pa.Table) -> None:
        if batch.num_rows == 0:
            return
        to_validation = self.splitter.assign(batch)  # here: it may look up earlier sides in the state store
        # The rest (the two sides' rows, their lines, images, shards and lineage) on the writer's thread, in
        # order, while the caller makes the next batch: a record the format refuses fails the next call.
        self._submit(lambda: self._write_sides(batch, to_validation))
        self.written += batch.num_rows
        self.on_written(self.written)

    def _write_sides(self, batch: pa.Table, to_validation: pa.Array) -> None:
        for name, mask in (("train", pc.invert(to_validation)), ("validation", to_validation)):
            part = batch.filter(mask)
            if part.num_rows:
                rendered = self.format.render(part)
                self._write_files(name, rendered.files)
                series = self.splits[name]
                placed = series.write(ndjson_lines(rendered.rows), rendered.rows.num_rows)
                self._write_lineage(take_rows(part, rendered), series, placed)

    def _submit(self, job: Callable[[], None]) -> None:
        # After the writer's last job only: the lineage's overlaps the next one (which waits for it before it
        # hands the lineage more, so an error there fails that job); ``flush`` waits for both.
        self._worker.submit(job)

    def flush(self) -> None:
        """Wait until what was asked for is written; raises the error of a write that failed (the writer's
        first: a job of its thread may hand the lineage one more)."""
        _OneAtATime.wait_all(self._worker, self._lineage_worker)

    def _shut_down(self) -> None:
        self._worker.shutdown()
        self._lineage_worker.shutdown()

    def _write_files(self, split: str, files: dict[str, bytes]) -> None:
        """Binary side files, each once per split (their names are content hashes)."""
        for relative, content in files.items():
            path = f"{split}/{relative}"
            if path not in self.files:
                self.files[path] = put_file(self.fs, self.staging, path, content, 1)

    def _write_lineage(self, part: pa.Table, series: ShardSeries, placed: list[tuple[str, int]]) -> None:
        """One row per output record: which shard and line holds it, its id and its source."""
        shards, lines = _placed_lines(placed, part.num_rows, series)
        rows = pa.table({"shard": shards, "line": lines, "id": part["id"], "source": part["source"]})
        # After the lineage's last job: its error fails this job, and so the writer's next call.
        self._lineage_worker.submit(lambda: self.lineage.write(rows))

    def write_set_aside(self, table: pa.Table) -> pa.Table:
        """Write set-aside rows; returns them as published (with ``scrub``, their PII redacted)."""
        if table.num_rows:
            table = self.scrub(table) if self.scrub else table
            self.set_aside_reported.append(reported_columns(table))
            self._submit(lambda: self._write_set_aside(table))
        return table

    def _write_set_aside(self, table: pa.Table) -> None:
        # In pieces: a dedup barrier sets aside every duplicate of the run at once, and its JSON in
        # one piece would add to the run's memory peak.
        for piece in table.to_batches(SET_ASIDE_PIECE_ROWS):
            self.set_aside.write(ndjson_lines(pa.Table.from_batches([piece])), piece.num_rows)

    def carry(
        self,
        version_dir: str,
        record_kind: str,
        decisions: RunDecisions | None = None,
        reread: bool = True,
        read_again: pl.Series | None = None,
    ) -> int:
        """Copy the published records of ``version_dir`` into this version; returns how many lines.

        Only the train and validation lines (and the images they name) travel, with their lineage
        rows (new shard and line, marked ``carried_from``) so a later carry still knows their record
        ids; the set-aside rows and report describe the run that made that version. Shards are copied
        whole (a server-side copy on S3) under a name that says where they came from, so they keep
        their sha256; for formats read as one file per channel the lines are appended to this run's
        file. With ``decisions``, lines of rejected records stay behind and edits are applied: a shard
        with such a line is rewritten (``carry_stats`` counts them). So is a shard with a line whose
        record this run read again (wrote, or set aside: a keyed SQL row now a duplicate of another),
        which only a run that ``reread`` input an earlier run took can do, or whose record came from an
        input this run read whole again (ids ``read_again``): what the input holds now replaces what it
        held, so an edited or deleted line does not stay.
        Call before ``publish``: everything lands in the staging prefix, so a failed run leaves none.
        """
        self.flush()
        previous = read_manifest(version_dir)
        if (previous.format, previous.record_kind) != (self.format.name, record_kind):
            raise ValueError(
                f"{version_dir} holds {previous.record_kind} records in the {previous.format} format, this run "
                f"writes {record_kind} records in {self.format.name}: its records cannot be carried; "
                "run with --full-refresh"
            )
        source_fs, source = filesystem(version_dir)
        self._carried_from = previous.version
        carrying = _Carrying(decisions or RunDecisions(), self.format.name, self.format.options.chunk_chars is not None)
        append = self.format.data_file is not None or self.format.name in ONE_FILE_FORMATS
        shards = {name: previous.splits[name].shards if name in previous.splits else [] for name in SPLITS}
        paths = {
            shard.path: self._carried_path(shard.path, previous.version) for name in SPLITS for shard in shards[name]
        }
        # Shards read: every shard of a one-file format (its lines go into this run's file), and those a review
        # decision or a record written again reaches (a shard is size-bounded); line by line where a decision
        # reaches, as columns elsewhere. The lineage of the others moves as it is, a file at a time.
        read_again = read_again if read_again is not None else pl.Series([], dtype=pl.String)
        reached = self._reached_shards(source_fs, source, previous.lineage, carrying, reread, read_again)
        by_line = set(paths) if append else reached
        # A one-file format's shard may be the dataset: its lineage rows are read in step with its lines where
        # they are in line order (as a writer writes them), else held and sorted whole.
        streamed = _in_line_order(source_fs, source, previous.lineage, by_line) if append else set()
        held, known = self._carry_lineage(source_fs, source, previous.lineage, paths, by_line, streamed)
        named: set[str] = set()  # the images the carried lines name (VQA): those of dropped lines stay behind
        for name in SPLITS:
            for shard in shards[name]:
                rows, where = held.get(shard.path), f"{version_dir}/{shard.path}"
                if append:
                    ordered = _LineOrdered(
                        _lineage_files(source_fs, source, previous.lineage, of_shard=shard.path)
                        if shard.path in streamed
                        else ([] if rows is None else [rows])
                    )
                    if shard.path in carrying.decided_shards:
                        lines = _read_lines(source_fs, f"{source}/{shard.path}")
                        lines = _checked_file_names(lines, where) if previous.files else lines
                        kept = carrying.review(lines, ordered, where)
                        self._emit(self.splits[name], _noting_images(kept, name, named) if previous.files else kept)
                    else:
                        images = named if previous.files else None
                        self._append_sifted(source_fs, f"{source}/{shard.path}", ordered, carrying, name, images, where)
                    continue
                path = paths[shard.path]
                folder, renamed = path.rsplit("/", 1)
                make_dirs(self.fs, f"{self.staging}/{folder}")
                if shard.path in by_line:
                    write = self._reviewed(source_fs, f"{source}/{shard.path}", shard, rows, carrying, where)
                    if write is not None:
                        rewritten = ShardSeries(self.fs, self.staging, folder, 0, file_name=renamed)
                        write(rewritten)
                        rewritten.close()
                        self.carried[name] += rewritten.shards
                        continue
                    if rows is not None:
                        self._write_moved_lineage(rows, {shard.path: path})
                else:
                    carrying.copied(shard.records, known[shard.path])
                self._carry_file(f"{source}/{shard.path}", path)
                self._check_unchanged(f"{version_dir}/{shard.path}", f"{source}/{shard.path}", shard)
                self.carried[name].append(shard.model_copy(update={"path": path}))
        for image in previous.files:
            if image.path not in named:
                continue
            if image.path not in self.files:  # named by content hash: one already here is the same file
                make_dirs(self.fs, f"{self.staging}/{image.path.rsplit('/', 1)[0]}")
                self._carry_file(f"{source}/{image.path}", image.path)
                self.files[image.path] = image
        if carrying.unknown:
            log.warning(
                "%s: %d carried line(s) have no lineage row, so review decisions cannot reach them",
                version_dir,
                carrying.unknown,
            )
        if carrying.edits_not_applied:
            log.warning(
                "%s: %d carried record(s) have edits the %s format has no simple place for; kept unedited",
                version_dir,
                len(carrying.edits_not_applied),
                self.format.name,
            )
        self.carry_stats = carrying.stats()
        self.carry_rejected, self.carry_rejected_uris = carrying.rejected, carrying.rejected_uris
        self.carry_replaced = carrying.replaced
        return carrying.carried

    def _reviewed(
        self,
        fs: pafs.FileSystem,
        path: str,
        shard: Shard,
        rows: pl.DataFrame | None,
        carrying: _Carrying,
        where: str,
    ) -> Callable[[ShardSeries], None] | None:
        """Reads a shard a decision or a record read again reaches; returns what writes the lines that stay,
        or None when the shard stays as it is (an edit carried before is already in the line). Only a shard
        a decision reaches is read line by line (an edit is JSON work): the records read again of the others
        (a changed input's records reach most shards) go as columns."""
        if shard.path in carrying.decided_shards:
            kept = list(carrying.review(_read_lines(fs, path), _by_line(rows), where))
            if len(kept) == shard.records and not any(changed for _, _, changed in kept):
                return None
            return lambda series: self._emit(series, kept)
        with fs.open_input_stream(path) as stream:
            lines = _line_array(stream.read())
        keep, stay = carrying.sift(len(lines), rows)
        if int(keep.sum()) == shard.records:
            return None
        return lambda series: self._write_sifted(series, lines.filter(pa.array(keep)), stay)

    def _append_sifted(
        self,
        fs: pafs.FileSystem,
        path: str,
        rows: _LineOrdered,
        carrying: _Carrying,
        split: str,
        named: set[str] | None,
        where: str,
    ) -> None:
        """The lines of a one-file format's shard that no decision reaches, appended to this run's file of
        ``split`` as columns (all but those of records read again), a few MiB at a time: the shard may hold the
        whole dataset. ``named`` (VQA) gets the images the lines that stay name."""
        first = 1
        for data in _whole_lines(fs, path, CARRY_BLOCK_BYTES):
            lines = _line_array(data)
            keep, stay = carrying.sift(len(lines), rows.before(first + len(lines)), first)
            if named is not None:
                named.update(_images_named(data, lines, keep, split, where, first))
            self._write_sifted(self.splits[split], lines.filter(pa.array(keep)), stay)
            first += len(lines)

    def _write_sifted(self, series: ShardSeries, lines: pa.LargeStringArray, rows: pl.DataFrame) -> None:
        """The lines that stay of a sifted shard, and their lineage rows (``at``: the index of each one's line)."""
        placed = series.write(pa.chunked_array([lines]))
        shards, numbers = _placed_lines(placed, len(lines), series)
        at = rows["at"].to_numpy()
        self.lineage.write(
            rows.drop("at")
            .with_columns(
                shard=pl.Series(shards.take(at)),
                line=pl.Series(numbers[at]),
                carried_from=pl.lit(self._carried_from, pl.Int64),
            )
            .to_arrow()
        )

    def _carry_file(self, published: str, path: str) -> None:
        """A published file into the new version at ``path``: staged (a hard link on local disk), or on
        S3 left to ``publish``, which copies it once, straight into the version."""
        if isinstance(self.fs, pafs.S3FileSystem):
            self._carried_files.append((published, path))
        else:
            copy_published(self.fs, published, f"{self.staging}/{path}")

    def _check_unchanged(self, where: str, published: str, shard: Shard) -> None:
        """A carried shard keeps the sha256 its manifest gives it: one changed since it was published (by
        hand, a sync tool) would carry a checksum it no longer has into every later version, which
        training then refuses. Its size tells most changes without reading it again."""
        info = self.fs.get_file_info(published)
        if info.type == pafs.FileType.NotFound:  # on S3 nothing was copied yet to say so
            raise StorageError(
                f"{where}: is missing, its manifest lists it: the published shard was deleted after it was "
                "published, so it cannot be carried; --full-refresh rebuilds the dataset from the input"
            )
        size = info.size
        if size != shard.bytes:
            raise StorageError(
                f"{where}: holds {size} bytes, its manifest says {shard.bytes}: the published shard was changed "
                "after it was published, so it cannot be carried with its checksum; --full-refresh rebuilds "
                "the dataset from the input"
            )

    @staticmethod
    def _carried_path(path: str, version: int) -> str:
        """Where a carried shard goes: under a name that says which version it came from (kept as it
        is when it came from an earlier one already)."""
        folder, base = path.rsplit("/", 1)
        return path if CARRIED_NAME.match(base) else f"{folder}/part-v{version}-{base.removeprefix('part-')}"

    def _reached_shards(
        self,
        fs: pafs.FileSystem,
        folder: str,
        lineage: list[Shard],
        carrying: _Carrying,
        reread: bool,
        read_again: pl.Series,
    ) -> set[str]:
        """The shards holding a record that a review decision rejects or edits, that this run read
        again (a keyed SQL row that was edited), or that came from an input this run read whole again
        (``carrying.superseded`` gets those ids). A pass of its own over the lineage, made only when
        there are such records: the carry's pass writes each file's rows as it reads them, so it must
        know these shards before it starts."""
        decided = carrying.decided()
        read = self._read_ids() if reread else pl.Series([], dtype=pl.String)
        if decided.is_empty() and read.is_empty() and read_again.is_empty():
            return set()
        found: set[str] = set()
        edited = pl.Series(sorted(carrying.edits), dtype=pl.String)
        lines_of: collections.Counter[str] = collections.Counter()
        for rows in _lineage_files(fs, folder, lineage, ("shard", "id")):
            again = rows.filter(pl.col("id").is_in(read.implode()) | pl.col("id").is_in(read_again.implode()))
            carrying.superseded.update(again["id"].to_list())
            found.update(again["shard"].to_list())
            hit = rows.filter(pl.col("id").is_in(decided.implode()))  # the edited are among the decided
            carrying.decided_shards.update(hit["shard"].to_list())
            lines_of.update(hit.filter(pl.col("id").is_in(edited.implode()))["id"].to_list())
        carrying.in_pieces = {record for record, lines in lines_of.items() if lines > 1}
        return found | carrying.decided_shards

    def _read_ids(self) -> pl.Series:
        """The ids of the records this run read: those it wrote, from its own lineage in the staging
        folder (its open file closed first: the carried rows start a new one), and those it set aside."""
        self.flush()
        self.lineage.close()
        parts = [rows["id"] for rows in _lineage_files(self.fs, self.staging, self.lineage.shards, ("id",))]
        self.set_aside.close()
        parts += [
            _ndjson_columns(self.fs, f"{self.staging}/{shard.path}", {"id": pl.String})["id"]
            for shard in self.set_aside.shards
        ]
        return pl.concat(parts) if parts else pl.Series([], dtype=pl.String)

    def _carry_lineage(
        self,
        fs: pafs.FileSystem,
        folder: str,
        lineage: list[Shard],
        paths: dict[str, str],
        by_line: set[str],
        streamed: set[str],
    ) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
        """Writes the moved lineage rows of the shards copied whole, a lineage file at a time; returns the
        rows of the shards read line by line (``by_line``) but not ``streamed`` (their rows read in step with
        their lines), each in line order, and how many rows each shard has (not counted for ``streamed``)."""
        held: dict[str, list[pl.DataFrame]] = {}
        known: dict[str, int] = dict.fromkeys(paths, 0)
        wanted = [path for path in paths if path not in streamed]
        in_wanted = pl.col("shard").is_in(pl.Series(wanted, dtype=pl.String).implode())
        reviewed = pl.col("shard").is_in(pl.Series(list(by_line), dtype=pl.String).implode())
        for rows in _lineage_files(fs, folder, lineage) if wanted else ():
            rows = rows.filter(in_wanted)
            for shard, count in rows["shard"].value_counts().iter_rows():
                known[shard] += count
            for (shard,), part in rows.filter(reviewed).partition_by("shard", as_dict=True).items():
                held.setdefault(shard, []).append(part)
            self._write_moved_lineage(rows.filter(~reviewed), paths)
        return {shard: pl.concat(parts).sort("line") for shard, parts in held.items()}, known

    def _write_moved_lineage(self, rows: pl.DataFrame, paths: dict[str, str]) -> None:
        """Lineage rows of shards copied whole: the new shard name, and the version they came from."""
        if rows.height:
            moved = rows.with_columns(
                shard=pl.col("shard").replace_strict(paths, return_dtype=pl.String),
                carried_from=pl.lit(self._carried_from, pl.Int64),
            )
            self.lineage.write(moved.to_arrow())

    def _emit(self, series: ShardSeries, lines: Iterable[tuple[bytes, dict[str, Any] | None, bool]]) -> None:
        """Write carried lines to ``series`` in chunks, with a lineage row for each line that has one."""
        chunk: list[tuple[bytes, dict[str, Any] | None, bool]] = []
        size = 0
        for item in lines:
            chunk.append(item)
            size += len(item[0])
            if size >= 1 << 20:
                self._emit_chunk(series, chunk)
                chunk, size = [], 0
        if chunk:
            self._emit_chunk(series, chunk)

    def _emit_chunk(self, series: ShardSeries, chunk: list[tuple[bytes, dict[str, Any] | None, bool]]) -> None:
        placed = series.write(b"".join(line for line, _, _ in chunk))
        shards, lines = _placed_lines(placed, len(chunk), series)
        self._write_carried_lineage(
            [
                (path, line, row)
                for path, line, (_, row, _) in zip(shards.to_pylist(), lines.tolist(), chunk, strict=True)
                if row is not None
            ],
        )

    def _write_carried_lineage(self, placed: list[tuple[str, int, dict[str, Any]]]) -> None:
        if not placed:
            return
        version = self._carried_from
        rows = [{**row, "shard": path, "line": line, "carried_from": version} for path, line, row in placed]
        self.lineage.write(pa.Table.from_pylist(rows, schema=LINEAGE_ARROW))

    def publish(
        self,
        build_manifest: Callable[[int, dict[str, Split], list[str]], Manifest],
        before_visible: Callable[[int], None] = lambda _version: None,
        builds_on: list[int] | None = None,
    ) -> Manifest:
        """Close the shards, write the manifest last and make the version visible at once.

        ``before_visible(version)`` is called right before that (the run records that it is publishing
        and holds SIGTERM off from then on, so the version it publishes is recorded as published).
        ``builds_on``: the versions the run found when it started; if others are there now, it publishes
        nothing (``PublishedMeanwhile``). The staging area is left to ``clean_up``."""
        self.flush()
        self._shut_down()
        for series in (*self.splits.values(), self.set_aside, self.lineage):
            series.close()
        make_dirs(self.fs, self.staging)  # for the report and manifest, where nothing was staged before them
        side_files: dict[str, str] = {}
        for split in SPLITS:
            for name, content in self.format.side_files.items():
                side_files[f"{split}/{name}"] = put_file(self.fs, self.staging, f"{split}/{name}", content, 0).sha256
        existing = published_versions(self.dest, self.dataset)
        if builds_on is not None and existing != builds_on:
            raise PublishedMeanwhile(self._changed_meanwhile(builds_on, existing))
        self._check_staged()
        # Past the last number the state store saw published here too: a latest version deleted since (a rollback)
        # keeps its number, which a training request or a model's lineage may name. A dest without versions (a new
        # one, the store's runs published elsewhere) starts at 1.
        version = max(existing[-1], self.last_published() or 0) + 1 if existing else 1
        target_uri = version_uri(self.dest, self.dataset, version)
        if self._has_manifest(filesystem(target_uri)[1]):
            # Published since the versions were listed, a moment ago (by a run of another state store): a
            # published version is never removed to make room for this one.
            raise PublishedMeanwhile(self._changed_meanwhile(existing, [*existing, version]))
        s3 = is_s3(target_uri)
        if s3:  # the number first: one a stalled run of this store claimed is passed by (``_claim``)
            version = self._claim(version)
        try:
            return self._publish_as(version, existing, build_manifest, side_files, before_visible)
        except BaseException:
            with contextlib.suppress(OSError):  # the store out of reach: the claim stays, as a killed run's
                if s3 and self._claim_holder(version) == self.run_id:  # copying takes its claim away itself
                    self._unclaim(version)
            raise

    def _publish_as(
        self,
        version: int,
        existing: list[int],
        build_manifest: Callable[[int, dict[str, Split], list[str]], Manifest],
        side_files: dict[str, str],
        before_visible: Callable[[int], None],
    ) -> Manifest:
        splits = {
            name: Split(records=sum(s.records for s in shards), shards=shards)
            for name, shards in ((name, self.carried[name] + series.shards) for name, series in self.splits.items())
        }
        manifest = build_manifest(version, splits, list(side_files))
        manifest.side_file_sha256 = {**side_files, **manifest.side_file_sha256}  # and the report's, if built
        manifest.set_aside = self.set_aside.shards
        manifest.lineage = self.lineage.shards
        manifest.files = sorted(self.files.values(), key=lambda shard: shard.path)
        manifest.split = self.splitter.report()
        body = manifest.model_dump_json(indent=2).encode()
        target_uri = version_uri(self.dest, self.dataset, version)
        _, target = filesystem(target_uri)
        # Said when it is raised: whether this run's lock was taken over is known then, not now.
        meanwhile = functools.partial(self._changed_meanwhile, existing, [*existing, version])
        if is_s3(target_uri):
            if self._has_manifest(target):
                # Published whole since the look in ``publish``, before this run's claim (that run's claim is
                # removed once its manifest is written): its files are not what a killed run left. On local
                # disk, one renamed into place since is found by ``_remove_leftover`` or the failed rename.
                raise PublishedMeanwhile(meanwhile())
            self._publish_s3(version, target, body, lambda: before_visible(version), meanwhile)
        else:
            with (
                writing(f"{self.staging}/{MANIFEST_NAME}", fs=self.fs),
                self.fs.open_output_stream(f"{self.staging}/{MANIFEST_NAME}") as out,
            ):
                out.write(body)
            try:
                self._remove_leftover(target, meanwhile)
                before_visible(version)
                self.fs.move(self.staging, target)  # one rename: the version appears whole
            except OSError:
                if not self._has_manifest(target):
                    raise
                # A version renamed into place since ``publish`` looked (by a run of another store, or the one
                # that took over this run's lock): the rename (or the removal) fails on the folder it made, and
                # the reason is the same. Unless the rename happened and only its answer was lost (NFS): the
                # version there is this run's own.
                if not self._holds_manifest(version, target, body):
                    raise PublishedMeanwhile(meanwhile()) from None
        if not splits["train"].records and splits["validation"].records:  # said once the version is there
            self._warn_nothing_to_train_on(version, splits["validation"].records)
        elif (
            splits["train"].records
            and not splits["validation"].records
            and self.splitter.fraction > 0
            and not manifest.holds_only_its_run  # a delta version's few records: the chain holds the rest
        ):
            # The manifest says so too, but a recipe that asked for a validation side expects one.
            log.warning(
                "%s v%d: the validation side is empty (all %d went to train) under validation_fraction %s; "
                "training will split its own, or %s",
                self.dataset,
                version,
                splits["train"].records,
                self.splitter.fraction,
                how_to_fill_validation(self.splitter.group_by),
            )
        return manifest

    def _warn_nothing_to_train_on(self, version: int, records: int) -> None:
        """Every record went to validation (a few records, or groups, hashed under the fraction): training
        refuses such a version, and a group's side is kept for the runs after."""
        group_by = self.splitter.group_by
        how = (
            f"group_by {group_by!r} placed every group there, and later runs keep each group on its side: "
            "a different split_seed with --full-refresh places them again"
            if group_by
            else "publish more records, or another split_seed or a smaller validation_fraction with --full-refresh"
        )
        log.warning(
            "%s v%d: its train split holds no record (all %d went to validation), so training refuses it; %s",
            self.dataset,
            version,
            records,
            how,
        )

    def _has_manifest(self, folder: str) -> bool:
        """Whether ``folder`` is a published version (its manifest is written last)."""
        return self.fs.get_file_info(f"{folder}/{MANIFEST_NAME}").type != pafs.FileType.NotFound

    def _holds_manifest(self, version: int, folder: str, body: bytes) -> bool:
        """Whether the manifest in ``folder`` is this run's ``body`` (its creation time, to the microsecond,
        is this run's): a write or rename that was answered as failed but happened. An error reading it is
        raised, not taken for another run's: not ``PublishedMeanwhile``, the run stays marked publishing
        and the next reads everything again, as the version may be this run's."""
        try:
            with self.fs.open_input_stream(f"{folder}/{MANIFEST_NAME}") as stream:
                return stream.read() == body
        except FileNotFoundError:
            # Not there yet: S3 answers 409 while a write of the key is in flight, this run's own first try
            # (boto3 retried it) as well as another run's. Which lands is not known, so not ``PublishedMeanwhile``.
            raise StorageError(
                f"{join(version_uri(self.dest, self.dataset, version), MANIFEST_NAME)}: this run's write of it was "
                "answered as failed, and no manifest is there: a write of it still in flight (this run's own, retried, or "
                f"another run's) may land, so whether {self.dataset} v{version} is this run's is not known; the run "
                f"stays marked publishing, and the next run reads every input again if v{version} appears"
            ) from None

    def _remove_leftover(self, target: str, meanwhile: Callable[[], str]) -> None:
        """What a killed run left at ``target`` on local disk (a folder without a manifest is no version)
        goes: renamed away first, so a version renamed into place since the check is put back, not removed.
        Not once this run's lock is lost (it stalled past its lease): the run that took over may have renamed
        its version there, and this run, killed between the two renames, would leave it in ``_staging/``."""
        leftover = f"{self.staging}{_LEFTOVER}"
        if self.fs.get_file_info(target).type == pafs.FileType.NotFound:
            return
        self.confirm_lock()
        if self._has_manifest(target):
            raise PublishedMeanwhile(meanwhile())
        try:
            self.fs.move(target, leftover)
        except FileNotFoundError:
            return
        if self._has_manifest(leftover):
            self.fs.move(leftover, target)
            raise PublishedMeanwhile(meanwhile())
        self.fs.delete_dir(leftover)

    def _check_staged(self) -> None:
        """Raise ``PublishedMeanwhile`` unless every file this run staged is still there: a run of another
        state store of a release before this one clears the whole staging area as it ends, and the run that
        took over this run's lock (it stalled) removes the staging folders of runs that are over; the version
        would list files it does not hold."""
        staged = {
            shard.path for series in (*self.splits.values(), self.set_aside, self.lineage) for shard in series.shards
        }
        staged |= {shard.path for shards in self.carried.values() for shard in shards} | set(self.files)
        staged -= {path for _, path in self._carried_files}  # on S3, copied from their version as it is published
        listed = self.fs.get_file_info(pafs.FileSelector(self.staging, recursive=True, allow_not_found=True))
        missing = sorted(staged - {info.path[len(self.staging) + 1 :] for info in listed})
        if missing:
            who = self._who_changed_it(
                ", as it removed the staging folders of runs that are over",
                " (a release before this one clears the whole staging area as it ends)",
            )
            raise PublishedMeanwhile(
                f"{self.staging_uri}: {len(missing)} file(s) this run staged, such as {missing[0]}, were removed "
                f"while this run went on, by {who}"
            )

    def _changed_meanwhile(self, builds_on: list[int], existing: list[int]) -> str:
        appeared = sorted(set(existing) - set(builds_on))
        where = dataset_uri(self.dest, self.dataset)
        if not appeared:  # removed by hand (a rollback) while the run went on: what it built on is gone
            gone = ", ".join(f"v{number}" for number in sorted(set(builds_on) - set(existing)))
            return f"{self.dataset} {gone} was removed from {where} while this run went on; this run published nothing"
        who = self._who_changed_it(other_store=" (its lock keeps apart only the runs that share it)")
        return f"{self.dataset} v{appeared[-1]} was published at {where} while this run went on, by {who}"

    def _who_changed_it(self, taken_over: str = "", other_store: str = "") -> str:
        """Which run changed the dest while this run went on, and that this run published nothing: under one
        state store the dataset's lock keeps runs apart, so the run that took over this run's lock (it stalled)
        if there is one, else a run of another store. ``taken_over`` or ``other_store`` says more of that run."""
        try:
            self.confirm_lock()
        except LockLost:
            return (
                f"the run that took over this run's lock (this run stalled for longer than {LEASE_SETTING} allows)"
                f"{taken_over}, so this run published nothing"
            )
        return (
            f"a run that does not use this run's state store{other_store}, so this run published nothing; the runs "
            "of a dataset that publish to one dest must share one state store (a PostgreSQL URL across hosts)"
        )

    def _publish_s3(
        self,
        version: int,
        target: str,
        manifest_body: bytes,
        before_visible: Callable[[], None],
        meanwhile: Callable[[], str],
    ) -> None:
        """Copies into ``vN/``, whose claim this run holds, and writes the manifest only where there is
        none: no other run writes under ``vN/`` while the claim is there (their copies would mix under the
        same names), and only this run removes it."""
        # A folder without a manifest is no version: what a run killed while copying left there goes first.
        self.fs.delete_dir_contents(target, missing_dir_ok=True)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.staging, recursive=True))
            for info in infos:
                if info.type == pafs.FileType.File:
                    self.fs.copy_file(info.path, f"{target}/{info.path[len(self.staging) + 1 :]}")
            for published, path in self._carried_files:
                copy_published(self.fs, published, f"{target}/{path}")
        except BaseException:
            # Failed or stopped part way (a lost connection, SIGTERM): what was copied is taken away again,
            # or it stays under the version's prefix (carried shards: up to the whole dataset) until a
            # later run publishes that version number.
            self._take_away(target, version)
            raise
        try:
            before_visible()
        except BaseException:
            # Stopped (SIGTERM), or its lock lost, with every copy made: taken away as when stopped while
            # copying. Even with its lock lost, ``vN`` is still this run's: no run takes a claim over.
            with stops_deferred():
                self._take_away(target, version)
            raise
        written = put_if_absent(f"s3://{target}/{MANIFEST_NAME}", manifest_body)
        # Refused to boto3's retry of this run's own write, which landed though its answer was lost, as well.
        if not written and not self._holds_manifest(version, target, manifest_body):
            # Only a run that does not claim (of a release before claims) gets here: its copies and this
            # run's share names, so neither can take them away without breaking the other's version.
            raise PublishedMeanwhile(meanwhile())
        self._unclaim(version)

    def _take_away(self, target: str, version: int) -> None:
        """Remove what this run copied into ``vN/`` and its claim of the number, as far as the store lets it;
        nothing where the number is not known to be this run's still (its claim deleted by hand)."""
        try:
            ours = self._claim_holder(version) == self.run_id and not self._has_manifest(target)
        except OSError:  # the store out of reach (most often why the copy failed): whose it is now is not known
            ours = False
        if not ours:
            # Left as it is: no version without a manifest.
            log.warning("%s v%d is not known to be this run's now: what it copied there is left", self.dataset, version)
            return
        try:
            _delete_or_say(
                lambda: self.fs.delete_dir(target),
                f"what this run copied into {self.dataset} v{version}, s3://{target}/",
                f"it is no version (it has no manifest) but stays there, taking space, until a run publishes "
                f"v{version}: delete it (aws s3 rm --recursive s3://{target}/)",
            )
        finally:
            self._unclaim(version)

    def _unclaim(self, version: int) -> None:
        """Remove this run's claim of ``version``; left behind, it only keeps the number claimed (a run of
        this run's state store passes it by, any other run's is refused until it is deleted)."""
        claim = self._claim_path(version)
        _delete_or_say(
            lambda: self.fs.delete_file(claim),
            f"the claim of {self.dataset} v{version}, s3://{claim}",
            f"no run of another state store publishes v{version} while it is there: delete it (aws s3 rm s3://{claim})",
        )

    def _claim_holder(self, version: int) -> str | None:
        """The run id in the claim of ``version``; None where there is none."""
        try:
            with self.fs.open_input_stream(self._claim_path(version)) as stream:
                return stream.read().decode(errors="replace")
        except FileNotFoundError:
            return None

    def _claim_path(self, version: int) -> str:
        return f"{self.staging.rsplit('/', 1)[0]}/v{version}.claim"

    def _claim(self, version: int) -> int:
        """Take a version number on S3 from ``version`` up (a claim object written only where there is none)
        and return it, or raise ``PublishedMeanwhile``. A number claimed by a run this run's state store
        knows is over is passed by, never taken over: that run was killed, or its lock lapsed while it
        stalled (a paused VM) and it writes under ``vN/`` when it wakes, which no store can stop. A claim of
        any other run stops this one: that run may be copying now."""
        claim, holder, tries = self._claim_path(version), "(unknown)", 0
        while tries < 2:
            if put_if_absent(f"s3://{claim}", self.run_id.encode()):
                return version
            found = self._claim_holder(version)
            if found is None:  # removed since: taken again
                tries += 1
                continue
            if found == self.run_id:  # this run's own write, which landed though boto3's retry of it was refused
                return version
            holder = found
            if not self.ended_runs([holder]):
                break
            target = version_uri(self.dest, self.dataset, version)
            log.warning(
                "%s v%d was claimed by run %s, which this state store counts as over but which may still write "
                "there (its lock lapsed: killed, or stalled), so this run publishes the next number; once that run "
                "is surely over, delete what it left: aws s3 rm --recursive %s/ and aws s3 rm s3://%s",
                self.dataset,
                version,
                holder,
                target,
                claim,
            )
            version += 1
            claim, tries = self._claim_path(version), 0
        who = self._who_changed_it(
            other_store=f" (if it was killed, no run of this store publishes v{version} until its claim "
            f"s3://{claim} is deleted)"
        )
        raise PublishedMeanwhile(
            f"{self.dataset} v{version} is being published at {dataset_uri(self.dest, self.dataset)} by run "
            f"{holder}, {who}"
        )

    def clean_up(self) -> None:
        """Remove this run's staging folder (copied to S3, or already renamed away) and those of the runs
        this run's state store knows are over (killed ones). Any other folder there may be a run of another
        state store writing now (its staging vanishing under it would fail it): it is left. Where the store
        refuses to delete this run's own (a permission), a warning says how to; the run's outcome stands."""
        area = self.staging.rsplit("/", 1)[0]
        s3 = is_s3(self.staging_uri)
        _delete_or_say(  # gone (renamed away, or nothing staged) is fine
            lambda: self.fs.delete_dir(self.staging),
            f"this run's staging folder, {self.staging_uri}{'/' if s3 else ''}",
            "it is no version but stays there, taking space, until a run of this state store deletes it (if the "
            "store lets it): delete it "
            + (f"(aws s3 rm --recursive {self.staging_uri}/)" if s3 else f"(rm -r {self.staging})"),
        )
        with contextlib.suppress(Exception):  # what killed runs left is cleared by a later run otherwise
            folders = [info.base_name for info in self.fs.get_file_info(pafs.FileSelector(area))]
            # A run's folder, and what it moved out of a version folder to delete (``_remove_leftover``).
            ended = self.ended_runs({folder.removesuffix(_LEFTOVER) for folder in folders})
            for folder in (folder for folder in folders if folder.removesuffix(_LEFTOVER) in ended):
                if folder.endswith(_LEFTOVER) and self._has_manifest(f"{area}/{folder}"):
                    self._put_back(f"{area}/{folder}")  # a published version: never deleted
                else:
                    self.fs.delete_dir(f"{area}/{folder}")
        if isinstance(self.fs, pafs.LocalFileSystem):  # S3 has no folders
            with contextlib.suppress(OSError):  # rmdir, not a recursive removal: another run's folder may appear
                os.rmdir(area)

    def _put_back(self, moved: str) -> None:
        """A published version that a run killed between the two renames of ``_remove_leftover`` left in
        ``_staging/``: renamed back to its number where that is free, else left there, said (so is one whose
        manifest cannot be read: never deleted, nor in the way of clearing the other folders)."""
        try:
            with self.fs.open_input_stream(f"{moved}/{MANIFEST_NAME}") as stream:
                number = Manifest.model_validate_json(stream.read()).version
        except (OSError, ValueError) as error:  # pydantic's ValidationError is a ValueError
            log.warning(
                "%s: a folder a run killed as it published left in %s holds a manifest that cannot be read (%s): "
                "it is left; look at it, and delete it once it is not needed (rm -r %s)",
                self.dataset,
                moved,
                str(error).splitlines()[0],
                moved,
            )
            return
        target = f"{moved.rsplit('/', 2)[0]}/v{number}"
        if self.fs.get_file_info(target).type == pafs.FileType.NotFound:
            self.fs.move(moved, target)
            log.warning("%s v%d was found in %s (a run killed as it published): put back", self.dataset, number, moved)
        else:
            log.warning(
                "%s v%d was found in %s (a run killed as it published), but v%d is there again: it is left; "
                "delete it once it is not needed (rm -r %s)",
                self.dataset,
                number,
                moved,
                number,
                moved,
            )

    def abort(self) -> None:
        """Remove what this run staged (and what runs that are over left: see ``clean_up``); nothing of it was
        visible."""
        with contextlib.suppress(Exception):  # the run failed already: with this error, or with another
            self.flush()
        self._shut_down()
        self.lineage.discard()
        for series in (*self.splits.values(), self.set_aside):
            with contextlib.suppress(OSError):
                series.close()
        self.clean_up()
        # A dataset's first run that failed leaves no empty dataset folder behind (made for its staging).
        folder = self.staging.rsplit("/", 2)[0]
        with contextlib.suppress(OSError):
            if not self.fs.get_file_info(pafs.FileSelector(folder)):
                self.fs.delete_dir(folder)
