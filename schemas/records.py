"""Record contracts: what a row is at each point of a run, as pydantic models and Arrow schemas.

Every record carries a stable ``id`` (a hash of where it came from and what it holds) and a
``source`` (connector, URI, line or page), so any output line can be traced back to its input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from schemas.hashing import hex_digests, prefixed, xxh3_64, xxh3_128_digests

RecordKind = Literal["document", "instruction", "vqa", "table"]

SOURCE_TYPE = pa.struct(
    [
        pa.field("connector", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("page", pa.int64()),
    ]
)


class SourceRef(BaseModel):
    """Where a record came from: enough to open the input and find it again."""

    model_config = ConfigDict(frozen=True)

    connector: str
    uri: str
    line: int | None = None
    page: int | None = None

    def __str__(self) -> str:
        where = f":{self.line}" if self.line is not None else ""
        if self.page is not None:
            where += f" (page {self.page})"
        return f"{self.uri}{where}"


def record_ids(
    uri: str,
    positions: Sequence[int | str | None] | np.ndarray | pa.Array,
    contents: Sequence[bytes] | pa.Array | pa.ChunkedArray,
) -> pa.Array:
    """Stable 128-bit ids from where each record sits and what it holds, as hex strings.

    Each id is ``xxh3_128_hexdigest(uri + "\\x1f" + str(position) + "\\x1f" + content)``. xxh3 is fast
    and its output is fixed by specification, so ids survive library upgrades (unlike polars' row
    hash), which matters because review decisions are keyed by id. Positions and contents given as
    Arrow arrays (integer or string positions without nulls, string or binary contents) are joined
    and hashed by kernels, with no Python step per record.
    """
    return hex_digests(*_record_digests(uri, positions, contents))


def _record_digests(
    uri: str,
    positions: Sequence[int | str | None] | np.ndarray | pa.Array,
    contents: Sequence[bytes] | pa.Array | pa.ChunkedArray,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``record_ids``' digests (``xxh3_128_digests``), before they are written out as hex."""
    if isinstance(positions, np.ndarray):
        positions = pa.array(positions)
    elif not isinstance(positions, pa.Array):
        positions = pa.array([str(position) for position in positions], pa.string())
    if pa.types.is_integer(positions.type):
        positions = pc.cast(positions, pa.string())  # the decimal digits str() writes
    if not isinstance(contents, pa.Array | pa.ChunkedArray):
        contents = pa.array(contents, pa.binary())
    if len(positions) != len(contents):
        raise ValueError(f"{len(positions)} positions for {len(contents)} contents")
    return xxh3_128_digests(_joined(uri, pc.cast(positions, pa.large_binary()), contents))


def _joined(uri: str, positions: pa.Array | int, contents: pa.Array | pa.ChunkedArray) -> pa.Array:
    """What a record id hashes: ``uri``, the position (one for all, or one each) and the content, joined by \\x1f."""
    contents = pc.cast(contents, pa.large_binary())
    if isinstance(positions, int):  # one prefix for all, put in front: half the cost of a join
        return prefixed(f"{uri}\x1f{positions}\x1f".encode(), contents)
    sep = pa.scalar(b"\x1f", pa.large_binary())
    return pc.binary_join_element_wise(pa.scalar(uri.encode(), pa.large_binary()), positions, contents, sep)


_SLOT_BITS = 24  # InputIds' filter at most: 16 MiB of slots, a few percent taken twice by chance at a million


class InputIds:
    """Record ids for the records of one input, taken in the order the input holds them.

    A record's position in its id is how many records before it in the input hold the same content
    (0 for nearly all), not its line: a line inserted above a record, or deleted, leaves its id as it
    was, so review decisions, queue items and split sides stay with it when its file is read again.
    Equal records of one input still get an id each. Call once per batch, in the input's order.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        # The contents seen so far, as sorted runs of 64-bit keys (the first half of the content's id
        # at position 0), each at least twice as long as the next: a batch's run is merged into the
        # shorter ones, as a binary counter carries, so each key is merged about log2(batches) times and
        # memory stays 8 bytes per record. In front, a flag per value of the key's top bits, 16 or more
        # slots per key seen: a content whose slot no earlier one took is new, with no search (nearly
        # every content, as inputs rarely repeat one).
        self._runs: list[np.ndarray] = []
        self._slots: np.ndarray | None = None
        self._kind: str | None = None  # what it counts: "ids" (``__call__``) or "occurrences"

    def __call__(self, contents: Sequence[bytes] | pa.Array | pa.ChunkedArray) -> pa.Array:
        if not isinstance(contents, pa.Array | pa.ChunkedArray):
            contents = pa.array(contents, pa.binary())
        if contents.null_count:
            raise ValueError(f"{self.uri}: a record's content is null; ids need bytes")
        # Each record's digest as if its content came first, which nearly all do, and the key it is counted by
        # (its first half): one hash per record. Only the others are hashed again, with their position, and
        # every id is written out once.
        digests, _ = xxh3_128_digests(_joined(self.uri, 0, contents))
        before = self._counted(digests[:, 0].astype(np.uint64), "ids")
        where = np.flatnonzero(before)
        if len(where):
            digests[where] = _record_digests(self.uri, before[where], contents.take(pa.array(where)))[0]
        return hex_digests(digests)

    def occurrences(self, contents: Sequence[bytes]) -> np.ndarray:
        """How many records before each one in the input held the same content (0 for a first), counted
        by the content's own hash (no id is made): an instance counts these or gives ids, not both."""
        keys = xxh3_64(pa.array(contents, pa.large_binary())).to_numpy(zero_copy_only=False)
        return self._counted(keys, "occurrences")

    def _counted(self, keys: np.ndarray, kind: str) -> np.ndarray:
        """How many earlier keys (of this batch and the batches before) equal each one."""
        if self._kind not in (None, kind):  # keys of two hashes: equal contents would not be counted equal
            raise ValueError(f"{self.uri}: InputIds counts {self._kind} already, not {kind}")
        self._kind = kind
        # A key two different contents share (a hash collision) only numbers them as one's first and
        # second: the ids, which hash the content, still differ.
        maybe = np.flatnonzero(self._taken(keys))  # an earlier content took the slot: look it up
        before = np.zeros(len(keys), np.int64)  # how often the input held each content before
        if len(maybe) and self._runs:
            maybe = maybe[np.argsort(keys[maybe])]  # searched in key order, each search starts by the last
            found = keys[maybe]
            for run in self._runs:
                before[maybe] += np.searchsorted(run, found, "right") - np.searchsorted(run, found, "left")
        ordered = np.sort(keys)  # not argsort (3 times the cost): the few repeated keys' places are found apart
        self._remember(ordered)
        same = ordered[1:] == ordered[:-1]
        if same.any():  # number the batch's repeated contents within it, in input order
            at = _near(ordered[1:][same], keys)
            at = at[np.argsort(keys[at], kind="stable")]  # input order kept within each key
            repeated = keys[at]
            first = np.flatnonzero(np.r_[True, repeated[1:] != repeated[:-1]])
            before[at] += np.arange(len(at)) - np.repeat(first, np.diff(np.r_[first, len(at)]))
        return before

    def _taken(self, keys: np.ndarray) -> np.ndarray:
        """Which ``keys`` fall in a slot an earlier key took; their slots are taken now. The slots grow
        with the keys seen (from the runs, which hold them all), so a small input zeroes few pages."""
        seen = sum(map(len, self._runs)) + len(keys)  # the runs hold every key before these
        bits = min(_SLOT_BITS, max(16, (16 * seen).bit_length()))
        if self._slots is None or len(self._slots) < 1 << bits:
            self._slots = np.zeros(1 << bits, dtype=bool)
            for run in self._runs:
                self._slots[(run >> np.uint64(64 - bits)).astype(np.intp)] = True
        slots = (keys >> np.uint64(64 - (len(self._slots).bit_length() - 1))).astype(np.intp)
        taken = self._slots[slots]
        self._slots[slots] = True
        return taken

    def _remember(self, ordered: np.ndarray) -> None:
        if not len(ordered):
            return
        run = ordered
        while self._runs and len(self._runs[-1]) <= 2 * len(run):
            # Two sorted runs one after the other: the stable sort (timsort) merges them in one pass, a
            # third of a merge by searchsorted and scatter.
            run = np.sort(np.concatenate([self._runs.pop(), run]), kind="stable")
        self._runs.append(run)


def sorted_holds(ordered: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which ``values`` the sorted array ``ordered`` holds (a binary search each; ``np.isin`` sorts)."""
    if not len(ordered):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return ordered[at] == values


def _near(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The places, in order, of the ``keys`` whose top 16 bits one of the uint64 ``values`` has: every place
    of a value, and a few of other keys (each alone among its equals there, so numbered 0). A binary search
    of each key among the values cost 10 times this filter."""
    tops = np.zeros(1 << 16, bool)
    tops[(values >> np.uint64(48)).astype(np.intp)] = True
    return np.flatnonzero(tops[(keys >> np.uint64(48)).astype(np.intp)])


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    id: str
    source: SourceRef

    @field_validator("text", "prompt", "completion", "image", "question", "answer", check_fields=False)
    @classmethod
    def _not_blank(cls, value: str) -> str:
        """A field of spaces alone teaches a model nothing, as an empty one does (``SchemaValidation``
        checks the same on its fast path)."""
        if value.isspace():
            raise PydanticCustomError("blank", "only whitespace, no text")
        return value


class DocumentRecord(Record):
    """Domain-adaptation text: a document or a chunk of one."""

    text: str = Field(min_length=1)
    title: str | None = None


class InstructionRecord(Record):
    """An instruction pair: the prompt a model sees and the completion it should give."""

    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)
    label: str | None = None


class VQARecord(Record):
    """Visual question answering: an image with a question about it and its answer."""

    image: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class TableRow(Record):
    """A row of customer data; its columns are declared in the recipe (see ``table_row_model``)."""

    # An infinity (1e400) is no amount: it would be published as "inf USD".
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _nan_is_missing(cls, row: Any) -> Any:
        """NaN is how pandas writes a missing value: in a float column it is missing, as null is."""
        if not isinstance(row, dict):
            return row
        floats = [
            name for name, info in cls.model_fields.items() if float in (info.annotation, *get_args(info.annotation))
        ]
        missing = [name for name in floats if _is_nan(row.get(name))]
        return {**row, **dict.fromkeys(missing)} if missing else row


def _is_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lstrip("+-").lower() == "nan"  # C's printf writes -nan


RECORD_MODELS: dict[str, type[Record]] = {
    "document": DocumentRecord,
    "instruction": InstructionRecord,
    "vqa": VQARecord,
    "table": TableRow,
}

# How an input value is written as a record's text (a field naming its column, a template) changes with
# a release now and then: counted here and kept in the recipe's fingerprint, so the first scheduled run
# after such a release says the recipe changed (records it carries keep their old text, and content sent
# again is not an exact duplicate of its old text: ``--full-refresh`` writes every record the new way).
# 2: floats as Python writes them (10.0, not 10; float32 as its own digits), an integer beside floats in
#    JSONL as its line wrote it, times and timestamps as Python's str (05, not 05.000000), durations as
#    Python's (0:00:05, not 5), unscaled PostgreSQL numerics as each value's own digits.
# 3: a Parquet time64[ns] in a struct, list or map with its nanoseconds (03:04:05.123456789, not .123456).
TEXT_RULES = 3

# The content columns of each kind, in output order (id and source are added to all).
CONTENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "document": ("text", "title"),
    "instruction": ("prompt", "completion", "label"),
    "vqa": ("image", "question", "answer"),
    "table": (),
}


def dedup_fields(kind: str) -> list[str]:
    """What dedup compares unless a recipe names fields: what a record's published line holds (not a
    label; not a document's title, which no format publishes: two sections of one text under other
    titles would be two equal lines)."""
    return [c for c in CONTENT_COLUMNS[kind] if c not in ("label", "title")]


COLUMN_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}


def table_row_model(columns: dict[str, str], required: set[str] | None = None) -> type[TableRow]:
    """A TableRow model for the recipe's declared columns (``{"amount": "float", ...}``)."""
    required = set(columns) if required is None else required
    fields: dict[str, Any] = {}
    for name, type_name in columns.items():
        python_type = COLUMN_TYPES[type_name]
        # An int is checked against the 64 bits its Arrow column holds: a larger one is quarantined
        # by its row, where Arrow would fail the whole run.
        bounds = {"ge": -(2**63), "le": 2**63 - 1} if python_type is int else {}
        annotation: Any = python_type if name in required else python_type | None
        fields[name] = (annotation, Field(..., **bounds) if name in required else Field(None, **bounds))
    return create_model("DeclaredTableRow", __base__=TableRow, **fields)


def arrow_schema(kind: RecordKind) -> pa.Schema:
    """The canonical Arrow schema of a record kind (table rows add their declared columns)."""
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("source", SOURCE_TYPE)]
    fields += [pa.field(name, pa.string()) for name in CONTENT_COLUMNS[kind]]
    return pa.schema(fields)


# Rows a stage sets aside, and why. ``record`` holds the input row as JSON for quarantined rows,
# so a reviewer sees exactly what came in; for filtered and duplicate rows it is left empty.
Outcome = Literal["filtered", "duplicate", "quarantined"]
OUTCOMES: tuple[Outcome, ...] = ("filtered", "duplicate", "quarantined")

SET_ASIDE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("source", SOURCE_TYPE),
        pa.field("stage", pa.string()),
        pa.field("outcome", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("record", pa.string()),
        pa.field("duplicate_of", pa.string()),  # the kept record of a duplicate's cluster
    ]
)


@dataclass(frozen=True)
class SetAsideExample:
    """A set-aside row a run's or check's message quotes as an example (the first of a reason, of a kind of template
    error): its detail can quote the row's values (a template's error, a one-column CSV header), so it is quoted as
    the row is published. Its row as Python values, not a slice of the table, which would hold its whole batch."""

    detail: str | None
    row: dict[str, Any] = field(compare=False, repr=False)

    @classmethod
    def of(cls, table: pa.Table, at: int) -> SetAsideExample:
        row = table.slice(at, 1).to_pylist()[0]
        return cls(row["detail"], row)

    def as_published(self, scrub: Callable[[pa.Table], pa.Table] | None) -> str | None:
        """The detail as the row is published: with a PII stage, redacted by ``scrub`` (the pipeline's
        ``set_aside_scrub``) with the row's raw input beside it."""
        if scrub is None:
            return self.detail
        return scrub(pa.Table.from_pylist([self.row], schema=SET_ASIDE_SCHEMA))["detail"][0].as_py()


def source_array(
    connector: str,
    uri: str,
    lines: Sequence[int | None] | np.ndarray,
    pages: Sequence[int | None] | None = None,
) -> pa.StructArray:
    """The ``source`` column for rows of one input file."""
    count = len(lines)
    return pa.StructArray.from_arrays(
        [
            pa.repeat(pa.scalar(connector, pa.string()), count),  # no Python list per row
            pa.repeat(pa.scalar(uri, pa.string()), count),
            pa.array(lines, pa.int64()),  # a NumPy array of lines goes in whole
            pa.array(pages, pa.int64()) if pages is not None else pa.nulls(count, pa.int64()),
        ],
        fields=list(SOURCE_TYPE),
    )


# Rows kept by a cross-run dedup stage carry the signatures it computed in a column named with this
# prefix and the stage's name, from its resolve to the recorder that stores them (and takes the column
# off before the writer); a stage that publishes whole rows leaves such columns out.
SIGNATURE_COLUMN_PREFIX = "_signatures:"

# A JSONL block is read as one table, a column for each key any of its lines has: a line without a key
# holds null under it, as one that writes null does. Where a column holds a null, the reader hands each
# row's line on in this column (as bytes: the block's lines are copied once for the ids already), so a
# quarantined row's ``record`` holds its own line's keys (``input_record_json``); shaping drops it.
INPUT_LINE_COLUMN = "_input:line"


def location(source: dict[str, Any] | None) -> str:
    """Where a record came from as details begin with it: ``uri:line``, or the uri alone."""
    if not source:
        return ""
    return f"{source['uri']}:{source['line']}" if source.get("line") is not None else str(source["uri"])


def shortened(value: str, room: int = 40) -> str:
    """``value`` cut to ``room`` characters, ``...`` ending it, for a detail or an error that quotes a value."""
    return value if len(value) <= room else f"{value[: room - 3]}..."


def _as_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{value.nbytes if isinstance(value, memoryview) else len(value)} bytes>"
    return str(value)


def record_json(row: dict[str, Any], ensure_ascii: bool = True, default: Callable[[Any], str] = _as_text) -> str:
    """A set-aside record's fields as JSON text (its ``record``): a binary value (a VQA record's
    ``image_bytes``) as its size, not as Python's bytes repr, which spells every byte as an escape:
    megabytes of text in ``set_aside/``, the review queue and the page, for one photo. A float JSON
    cannot hold (NaN, an infinity) is null: Python writes the bare words NaN and Infinity, which no
    other JSON parser reads (jq, a browser, SageMaker), and this is a copy of a row not published."""
    try:
        return json.dumps(row, ensure_ascii=ensure_ascii, default=default, allow_nan=False)
    except ValueError:  # rare: only then is the row walked
        return json.dumps(_finite(row), ensure_ascii=ensure_ascii, default=default, allow_nan=False)


def _finite(value: Any) -> Any:
    """``value`` with each float that is NaN or infinite, at any depth, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def input_record_json(row: dict[str, Any]) -> str:
    """An input row's ``record_json`` (its ``id`` and ``source`` left out): what its own line held, not
    a null for each key only other lines of its JSONL block have (read from its ``INPUT_LINE_COLUMN``,
    only for the rows set aside)."""
    left_out = {"id", "source", INPUT_LINE_COLUMN}
    line = row.get(INPUT_LINE_COLUMN)
    if line is not None:
        try:
            value = json.loads(line.decode("utf-8-sig"))
        except ValueError:  # a line polars took and Python's json does not: shown with its block's keys
            value = None
        if isinstance(value, dict):
            # The reader names an input column "id" or "source" input_id or input_source (``with_lineage``).
            held = {input_name(key) for key in value}
            left_out |= {key for key, found in row.items() if found is None and key not in held}
    return record_json({key: value for key, value in row.items() if key not in left_out})


RESERVED = ("id", "source")  # the record's own columns


def input_name(name: str) -> str:
    """The name an input column is read under: ``id`` and ``source`` are the record's own, so an input's
    are ``input_id`` and ``input_source``."""
    return f"input_{name}" if name in RESERVED else name


def reads(name: str, used: Collection[str] | None) -> bool:
    """Whether a recipe reading ``used`` (None: all) reads an input's column ``name``: ``used`` are the names
    the recipe reads them under, a file's ``id`` its ``input_id`` (compared as is, a nested ``id`` was never
    checked for text that is not UTF-8)."""
    return used is None or input_name(name) in used


def set_aside_rows(
    ids: Sequence[str | None] | pa.Array,
    sources: pa.Array | pa.ChunkedArray,
    stage: str,
    outcome: Outcome,
    reasons: Sequence[str] | str,
    details: Sequence[str | None] | None = None,
    records: Sequence[str | None] | None = None,
    duplicate_of: Sequence[str | None] | pa.Array | None = None,
) -> pa.Table:
    """Rows a stage sets aside, in the one schema every stage and connector uses."""
    count = len(ids)

    # A value of every row made by Arrow, not from a Python list of it (a tenth of a second per million rows).
    def each(values: Sequence[str | None] | pa.Array | str | None) -> pa.Array:
        if values is None:
            return pa.nulls(count, pa.string())
        return pa.repeat(pa.scalar(values), count) if isinstance(values, str) else pa.array(values, pa.string())

    return pa.table(
        {
            "id": pa.array(ids, pa.string()) if not isinstance(ids, pa.Array) else ids,
            "source": sources,
            "stage": each(stage),
            "outcome": each(outcome),
            "reason": each(reasons),
            "detail": each(details),
            "record": each(records),
            "duplicate_of": each(duplicate_of),
        },
        schema=SET_ASIDE_SCHEMA,
    )


def empty_set_aside() -> pa.Table:
    return _EMPTY_SET_ASIDE  # Arrow tables are immutable: one empty table serves every stage result


_EMPTY_SET_ASIDE = SET_ASIDE_SCHEMA.empty_table()


# What a stage flags for the annotators' review queue. ``payload`` is JSON for the review page
# (text, spans, scores, cluster members) and may hold PII: it goes to the state store only, never
# to logs or published files. ``detail`` is a short PII-free summary.
FLAG_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("source", SOURCE_TYPE),
        pa.field("stage", pa.string()),
        pa.field("kind", pa.string()),  # pii, near_duplicate, quarantined, vqa, ...
        pa.field("detail", pa.string()),
        pa.field("payload", pa.string()),
    ]
)


def empty_flags() -> pa.Table:
    return _EMPTY_FLAGS


_EMPTY_FLAGS = FLAG_SCHEMA.empty_table()
