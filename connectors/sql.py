"""Rows from any database SQLAlchemy reaches (SQLite by default, PostgreSQL, ...), in Arrow batches.

The result is streamed through a server-side cursor (``stream_results``) and fetched
``batch_rows`` at a time, so memory stays flat whatever the table's size. With a ``cursor``
column, only rows the last published run did not take are read, in cursor order (``CursorRange``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import closing
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
import xxhash
from sqlparse import lexer
from sqlparse import tokens as sql_tokens

from connectors.base import SourceBatch, reserved_clash, with_lineage
from connectors.batches import batched
from connectors.files import _rows_as_text, raw_cut
from connectors.state import SourceWatermark, decode_cursor, encode_cursor, less_kept, safe_url
from connectors.storage import StorageError
from schemas.config import SqlSource, parameter_places, query_parts
from schemas.json_values import decimal_texts, json_values, value_text
from schemas.manifest import InputFile
from schemas.records import InputIds, reads, record_ids, record_json, set_aside_rows, source_array

log = logging.getLogger(__name__)

CONNECTOR = "sql"
CURSOR_ITEM = "cursor"
# The rows read at the highest cursor value, as xxh3-64 hashes of their contents (packed): a later run reads
# from that value on (a row written after the run may share it: commit timestamps tie) and leaves them out.
TAKEN_ITEM = "cursor_taken"
# The rows read with no cursor value (NULL), hashed as above: quarantined once, as no run can tell when
# such a row is new or edited; later runs leave out those already set aside.
NULL_ITEM = "cursor_null"
# A source without a cursor was read by a published run; the value is the fingerprint of what it held
# (``Fingerprint``), so a run can tell the table has not changed (``True``: read before fingerprints).
READ_ITEM = "read"


# Columns a read by cursor adds to the result (and takes off before anything else sees it): the rank of each row's
# cursor value and whether it equals the watermark, both in the column's collation, which only the database knows
# (a non-deterministic ICU collation ties 'か' and 'カ', or 'a+b' and 'ab'): ``CursorRange.is_new``.
CURSOR_TIES = ("curation_cursor_group", "curation_at_watermark")

# Keys asked of the database in one statement (``_check_keys_elsewhere``): within SQLite's and
# PostgreSQL's limits on bound parameters for keys of a few columns.
_KEYS_ASKED = 30_000


class SqlSourceError(StorageError):
    """The database cannot be reached or the table/query cannot be read; the message names it."""


class Unreadable:
    """A PostgreSQL date or time no Python type holds ('infinity', '-infinity', a year past 9999 or before 1,
    24:00, an interval past 999,999,999 days), as its text: psycopg raised converting it, which failed the
    run naming neither the row nor the column; its row is set aside instead (``unreadable_columns``)."""

    __slots__ = ("oid", "text")
    # How many were made, ever: a read searches its batches for them only once this moved since it began
    # (a search of every value costs more than building the batch's table). From then on it searches each
    # batch: rows are converted as they are fetched, those of the next batch too.
    made = 0

    def __init__(self, text: str, oid: int) -> None:
        self.text, self.oid = text, oid
        Unreadable.made += 1

    def __str__(self) -> str:  # a key's text, a row's content: PostgreSQL's own
        return self.text

    def __repr__(self) -> str:
        return f"Unreadable({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unreadable) and (other.text, other.oid) == (self.text, self.oid)

    def __hash__(self) -> int:
        return hash((self.text, self.oid))


class NotUtf8(Unreadable):
    """SQLite text that is not UTF-8 (SQLite keeps any bytes under a TEXT type), as its text with the other
    bytes escaped ('jane\\xe9'): the driver raised decoding it, which failed the run; its row is set aside."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        super().__init__(data.decode(errors="backslashreplace"), 0)
        self.data = data

    def bound(self) -> sa.ColumnElement[Any]:
        """The value as SQL that gives it back (no text Python binds holds its bytes), for a key asked."""
        return sa.cast(sa.literal(self.data, sa.LargeBinary()), sa.Text())


def _text_or_not_utf8(data: bytes) -> str | NotUtf8:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return NotUtf8(data)


class Mistyped(Unreadable):
    """A SQLite value its column's declared type does not take ('garbage' in a DATE, 'not json' in a JSON, text in
    a NUMERIC or a BOOLEAN), as SQLite holds it: SQLite keeps any value in any column; converted, it failed the
    run, or, text in a BOOLEAN, was published as its truthiness ('false' as true); its row is set aside."""

    __slots__ = ("declared", "value")

    def __init__(self, value: str | bytes | int | float, declared: str) -> None:
        text = value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)
        super().__init__(text, 0)
        self.value, self.declared = value, declared

    def bound(self) -> sa.ColumnElement[Any]:
        """The value as SQLite holds it, for a key asked (through the column's type it would be converted)."""
        return sa.literal(self.value, sa.types.NullType())


def _sqlite_decimal(rounded: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A SQLite NUMERIC or DECIMAL value's reader: the Decimal SQLAlchemy's ``rounded`` gives (to the scale declared,
    else to 10 places: 1200 as 1200.0000000000), which an earlier release published and whose text a keyless row's
    id holds; but where that rounding changed the number SQLite holds (0.123456789012 as 0.1234567890, 1e-12 as 0,
    3.14159 in a DECIMAL(10, 2) as 3.14), that number: SQLite keeps every digit whatever the scale. A float's
    number is its shortest text, the one Python and SQLite write; a rounding that kept the float's exact value
    lost nothing either (a REAL 2**70 as 1180591620717411303424.0000000000, not its shortest 1.1805916207174113e+21)."""

    def read(value: Any) -> Any:
        if not isinstance(value, int | float):
            raise TypeError("text where a number is declared")  # SQLite's NUMERIC affinity made any number's text one
        held = Decimal(value if isinstance(value, int) else repr(value))
        earlier = rounded(value)
        return earlier if earlier in (held, Decimal(value)) else held

    return read


def _sqlite_boolean(value: Any) -> Any:
    """A SQLite BOOLEAN value as SQLite's own IS TRUE takes it: any number but 0 is true. Text there ('false',
    'no') is not SQLite's (which writes a boolean as 0 or 1, and its affinity makes '0' and '1' numbers):
    SQLAlchemy published it by Python's truthiness, 'false' as true."""
    if isinstance(value, int | float):
        return value != 0
    raise TypeError("text where a boolean is declared")


class _AsSqliteHolds(sa.types.TypeDecorator):
    """A SQLite column's type whose values SQLAlchemy converts as it fetches them (DATETIME, DATE, JSON, BOOLEAN,
    NUMERIC), giving ``NotUtf8`` as it is, and a value the type does not take as ``Mistyped``: converted, either
    failed the run ('not of its column's declared type'); kept, its row is set aside as any other such value's."""

    impl = sa.types.NullType
    cache_ok = False  # the type it wraps is no cache key

    def __init__(self, inner: sa.types.TypeEngine[Any]) -> None:
        super().__init__()
        self.inner = inner

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        return dialect.type_descriptor(self.inner)

    def result_processor(self, dialect: sa.Dialect, coltype: object) -> Callable[[Any], Any] | None:
        own = super().result_processor(dialect, coltype)
        if isinstance(self.inner, sa.Boolean):
            own = _sqlite_boolean
        elif isinstance(self.inner, sa.Numeric) and own is not None:  # a Float (REAL) is read as it is
            own = _sqlite_decimal(own)
        if own is None:
            return None
        declared = str(self.inner)

        def read(value: Any) -> Any:
            if value is None or isinstance(value, NotUtf8):
                return value
            try:
                return own(value)
            except (ValueError, TypeError, ArithmeticError):  # its message may quote the value: not kept
                return Mistyped(value, declared)

        return read


def _as_read(column: sa.Column[Any]) -> sa.Label[Any]:
    """A SQLite table's column as a read takes it: converted by its type, but text that is not UTF-8, and a value
    the type does not take, as they are."""
    return sa.type_coerce(column, _AsSqliteHolds(column.type)).label(column.name)


def _lenient_text(connection: Any, _record: Any = None) -> None:
    """Have a sqlite3 connection give text that is not UTF-8 as ``NotUtf8``, decided per value."""
    connection.text_factory = _text_or_not_utf8


_MOMENT_TYPES = ("date", "timestamp", "timestamptz", "time", "timetz", "interval")


def _lenient_moments(connection: Any, _record: Any = None) -> None:
    """Have a psycopg connection give a date or time it cannot convert as ``Unreadable``, elements of an array
    too, and bind one as its text (a key asked for in ``_check_keys_elsewhere``). A ``timestamptz`` comes in UTC:
    psycopg gives it in the session's time zone (the server's TimeZone, or the client's PGTZ), so the same row
    read from another machine was published as other text, under other ids. UTC, not a SET TIME ZONE: the
    user's query keeps the session's zone (``ts::date``)."""
    import psycopg
    from psycopg.adapt import Dumper, Loader
    from psycopg.pq import Format

    adapters = connection.adapters
    for name in _MOMENT_TYPES:
        oid = adapters.types[name].oid
        own = adapters.get_loader(oid, Format.TEXT)  # psycopg's C loader, which cannot be subclassed

        class Lenient(Loader):
            loader = own

            def __init__(self, oid: int, context: Any = None) -> None:
                super().__init__(oid, context)
                self._own = self.loader(oid, context)

            def load(self, data: Any) -> Any:
                try:
                    return self._own.load(data)
                except psycopg.DataError:
                    return Unreadable(bytes(data).decode(), self.oid)

        class InUtc(Lenient):
            def load(self, data: Any) -> Any:
                value = super().load(data)
                if isinstance(value, datetime):
                    try:
                        return value.astimezone(UTC)
                    except OverflowError:  # '9999-12-31 23:30:00-05': in UTC, past 9999
                        value = Unreadable(value.isoformat(" "), self.oid)
                if isinstance(value, Unreadable):
                    moment = _in_utc(value.text)
                    if isinstance(moment, datetime):
                        return moment
                    return value if moment == value.text else Unreadable(moment, self.oid)  # 'infinity' as it is
                return value

        adapters.register_loader(oid, InUtc if name == "timestamptz" else Lenient)

    class AsText(Dumper):
        def dump(self, obj: Unreadable) -> bytes:
            return obj.text.encode()

        def get_key(self, obj: Unreadable, format: Any) -> Any:
            return (Unreadable, obj.oid)

        def upgrade(self, obj: Unreadable, format: Any) -> Dumper:
            dumper = AsText(Unreadable, self.connection)
            dumper.oid = obj.oid  # the value's own type: PostgreSQL compares it as that type
            return dumper

    adapters.register_dumper(Unreadable, AsText)


# A timestamptz as PostgreSQL writes it in DateStyle ISO, its year of any length: '10000-01-01 01:30:00+01',
# '0044-03-15 11:00:00-00:53:28 BC'.
_ZONED_MOMENT = re.compile(
    r"(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?( BC)?"
)


def _in_utc(text: str) -> datetime | str:
    """A timestamptz Python could not hold (its text in the session's time zone) in UTC: the moment when it is one
    Python holds ('10000-01-01 00:30:00+01' is 9999-12-31 23:30 UTC), else its text as PostgreSQL writes it in a UTC
    session ('10000-01-01 00:30:00+00'), so the same row reads alike whatever the zone. Other text ('infinity') is
    returned as it is."""
    found = _ZONED_MOMENT.fullmatch(text)
    if found is None:
        return text
    year, month, day, hour, minute, second, fraction, sign, hours, minutes, seconds, bc = found.groups()
    astronomical = 1 - int(year) if bc else int(year)  # 1 BC is year 0
    # The Gregorian calendar repeats every 400 years: the moment is moved by whole cycles into Python's range.
    shift = (astronomical - 2000) // 400 * 400
    offset = timedelta(hours=int(hours), minutes=int(minutes or 0), seconds=int(seconds or 0))
    zone = timezone(-offset if sign == "-" else offset)
    micro = int((fraction or "").ljust(6, "0"))
    at = datetime(astronomical - shift, int(month), int(day), int(hour), int(minute), int(second), micro, zone)
    moment = at.astimezone(UTC)
    year_utc = moment.year + shift
    if 1 <= year_utc <= 9999:
        return moment.replace(year=year_utc)
    fraction = f".{moment.microsecond:06d}".rstrip("0") if moment.microsecond else ""
    written = year_utc if year_utc > 0 else 1 - year_utc
    return f"{written:04d}-{moment:%m-%d %H:%M:%S}{fraction}+00{'' if year_utc > 0 else ' BC'}"


def unreadable_columns(columns: Sequence[str], rows: Sequence[Sequence[Any]], made: int) -> list[list[str]]:
    """Per row, the columns holding an ``Unreadable`` value (in an array too), an empty list for none;
    ``made`` is ``Unreadable.made`` when the read began."""
    if Unreadable.made == made:
        return [[]] * len(rows)
    return [[name for name, value in zip(columns, row, strict=True) if _holds_unreadable(value)] for row in rows]


def _sqlite_kind(value: Any) -> str:
    """What SQLite holds, by its storage class (not the value: it may be customer data)."""
    if isinstance(value, bytes):
        return "a blob"
    return "text" if isinstance(value, str) else "an integer" if isinstance(value, int) else "a real"


def _columns_named(names: list[str]) -> str:
    return f"column {names[0]!r} holds" if len(names) == 1 else f"columns {', '.join(map(repr, names))} hold"


def _holds_unreadable(value: Any) -> bool:
    if isinstance(value, list):
        return any(_holds_unreadable(item) for item in value)
    return isinstance(value, Unreadable)


def _database_message(error: sa.exc.SQLAlchemyError) -> str:
    # The driver's own first line says what went wrong; SQLAlchemy's text adds the statement and its
    # parameters, which may hold customer data, so it stays out.
    original = getattr(error, "orig", None) or error
    first = str(original).strip().splitlines()[0] if str(original).strip() else ""
    sqlstate = getattr(original, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith("22"):
        # A data exception (PostgreSQL's class 22) quotes the value it could not take ('invalid input syntax
        # for type integer: "jane.roe@example.com"'), a row's: left out, as a row's values are from errors.
        # PostgreSQL writes the value as it is, its own quotes and newlines too: all from the first quote to
        # the last is left out (to the line's end when the value's newline cut the closing quote off).
        start, end = first.find('"'), first.rfind('"')
        if start >= 0:
            first = first[:start] + '"..."' + (first[end + 1 :] if end > start else "")
        first += " (the value is left out: it may be customer data)"
    elif (quoted := first.find(" with text '")) >= 0:
        # SQLite's text it cannot decode ("Could not decode to UTF-8 column 'subject' with text '...'"): a row's.
        first = first[:quoted] + " (the value is left out: it may be customer data)"
    return f"{type(original).__name__}: {first}"


def row_contents(table: pa.Table) -> list[bytes]:
    """Each row's values as bytes, the content part of its record id."""
    try:
        return _rows_as_text(table)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # nested or binary columns do not cast to text
        return [json.dumps(row, sort_keys=True, default=str).encode() for row in table.to_pylist()]


def own_scales(values: list[Any], array: pa.Array) -> pa.Array:
    """A decimal column whose values differ in scale (PostgreSQL's ``numeric`` without one: 1.5 beside 1.25)
    as the text each value has alone: Arrow writes a decimal by its batch's scale (1.5 is '1.50' beside
    1.25), so a row's published value, and its id without a key, changed with the rows read beside it. A
    column of one scale (``numeric(10, 2)``) is left as it is, so the ids of its rows stay as published."""
    at_scale: dict[int, list[int]] = {}
    for row, value in enumerate(values):
        if value is not None:  # a decimal, or an integer beside them (scale 0)
            exponent = int(value.as_tuple().exponent) if isinstance(value, Decimal) else 0
            at_scale.setdefault(max(0, -exponent), []).append(row)
    if len(at_scale) < 2:
        return array
    texts: list[str | None] = [None] * len(values)
    for at in at_scale.values():  # the values of one scale, as Arrow writes them in a batch of their own
        own = decimal_texts(pa.array([values[row] for row in at])).to_pylist()
        for row, text in zip(at, own, strict=True):
            texts[row] = text
    return pa.array(texts, pa.string())


def _mixed_zones(values: list[Any]) -> dict[Any, list[int]] | None:
    """The rows of each zone (a UTC offset, or None for a moment without one) of a column of moments holding more
    than one, else None. SQLite holds each DATETIME value as the text it was written as ('2026-01-01 10:00:00'
    beside '2026-01-01 10:00:00+02:00', or '...Z'): Arrow gives a column one zone, its first value's, so a
    value of another was published as another moment's text (naive beside a naive one) or in another offset, and
    a row's id without a key changed with the rows read beside it."""
    at_zone: dict[Any, list[int]] = {}
    for row, value in enumerate(values):
        if isinstance(value, datetime):
            at_zone.setdefault(value.tzinfo, []).append(row)
        elif value is not None:
            return None
    return at_zone if len(at_zone) > 1 else None


def _mixed_numbers(values: list[Any]) -> dict[Any, list[int]] | None:
    """The rows of integers and of reals of a column holding both, else None. SQLite holds each number as one or
    the other whatever the column (a query's expression, a column without a type, an INTEGER one keeping a 0.5):
    Arrow types such a column double, so 1200 was published as '1200.0' beside a 0.5 and '1200' alone, an integer
    past 2**53 was hashed as another number, and a row's text and id without a key changed with the rows read
    beside it."""
    at_kind: dict[Any, list[int]] = {}
    for row, value in enumerate(values):
        if isinstance(value, int | float) and not isinstance(value, bool):
            at_kind.setdefault(type(value), []).append(row)
        elif value is not None:
            return None
    return at_kind if len(at_kind) > 1 else None


def own_texts(values: list[Any]) -> tuple[pa.Array, pa.Array] | None:
    """For a column of moments of more than one zone (``_mixed_zones``), or of integers beside reals
    (``_mixed_numbers``), each value as text, as it is published when read alone (Python's str, as a template and
    a field write a moment or a number), and as its row's content has it when read alone (Arrow's text in a column
    of its zone or kind), so the row's id and value are its own whatever rows share its batch; None for a column of
    one zone or kind, left as it is (its rows' ids stay as published)."""
    at_kind = _mixed_zones(values) or _mixed_numbers(values)
    if at_kind is None:
        return None
    contents: list[str | None] = [None] * len(values)
    for at in at_kind.values():
        for row, text in zip(at, pa.array([values[row] for row in at]).cast(pa.string()).to_pylist(), strict=True):
            contents[row] = text
    published = [None if value is None else str(value) for value in values]
    return pa.array(published, pa.string()), pa.array(contents, pa.string())


def table_and_contents(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[pa.Table, list[bytes]]:
    """``arrow_table`` and each row's content (``row_contents``), a column of moments of more than one zone, or of
    integers beside reals, hashed as each value is read alone (``own_texts``)."""
    table = arrow_table(columns, rows)
    as_read = table
    for index, name in enumerate(columns):
        if pa.types.is_string(table.schema.field(index).type):  # a column of mixed kinds is published as text
            own = own_texts([row[index] for row in rows])
            if own is not None:
                as_read = as_read.set_column(index, name, own[1])
    return table, row_contents(as_read)


class Fingerprint:
    """What a result holds, whatever order its rows come in (SQL gives none without ORDER BY): the
    row count and the sum of the rows' xxh3-128, modulo 2**128."""

    def __init__(self) -> None:
        self.rows = 0
        self.total = 0

    def add(self, contents: list[bytes]) -> None:
        self.rows += len(contents)
        self.total = (self.total + sum(map(xxhash.xxh3_128_intdigest, contents))) % 2**128

    def __str__(self) -> str:
        return f"{self.rows}:{self.total:032x}"


def _holds_json_objects(values: list[Any]) -> bool:
    """Whether the values are objects (a JSON column's), or arrays holding an object, array or decimal: as an
    Arrow struct, each row would get the keys of every row of its batch, and as an Arrow list of decimals
    each value the scale of the batch's (``numeric[]``: [1.5] is ["1.50"] beside [1.25]), so its text (and
    its record id) would change with the rows read beside it. As JSON, a decimal is its own text."""
    kinds = {type(value) for value in values if value is not None}
    if kinds == {dict}:
        return True
    return kinds == {list} and any(
        isinstance(item, dict | list | Decimal) for value in values if value for item in value
    )


def _zoned_times_as_text(values: list[Any]) -> list[Any] | None:
    """The values with each time of day that has a UTC offset (PostgreSQL's ``timetz``, in an array too) as
    its text with the offset ('03:04:05+02:00'), or None if there is none: Arrow's time type holds no offset,
    so it was dropped from the published value and the row's content (an edit of the offset alone was no
    change)."""

    def zoned(value: Any) -> bool:
        if isinstance(value, list):
            return any(zoned(item) for item in value)
        return isinstance(value, time) and value.tzinfo is not None

    def text(value: Any) -> Any:
        if isinstance(value, list):
            return [text(item) for item in value]
        return str(value) if isinstance(value, time) else value

    return [text(value) for value in values] if any(zoned(value) for value in values) else None


def arrow_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> pa.Table:
    """Rows of Python values as an Arrow table; a column whose values Arrow cannot type becomes text."""
    arrays = {}
    for index, name in enumerate(columns):
        values = [row[index] for row in rows]
        if _holds_json_objects(values):  # a JSON column: each value as it is, not a struct of every row's keys
            arrays[name] = json_values(values)
            continue
        values = _zoned_times_as_text(values) or values
        try:
            arrays[name] = pa.array(values)
            if pa.types.is_decimal(arrays[name].type):
                arrays[name] = own_scales(values, arrays[name])
            elif (pa.types.is_timestamp(arrays[name].type) or pa.types.is_floating(arrays[name].type)) and (
                own := own_texts(values)
            ) is not None:
                arrays[name] = own[0]
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):  # TypeError: a decimal Infinity (PostgreSQL's)
            # An object or array (a JSON column's, beside other types) as JSON, not as Python writes a dict.
            arrays[name] = pa.array([None if v is None else _as_text(v) for v in values], pa.string())
    return pa.table(arrays)


def _without_final_semicolons(query: str) -> str:
    """The query less the semicolons ending it, whatever whitespace and comments follow them ('...; -- nightly'),
    as a subquery holds none. Told by SQL's tokens, so a ';' in a string, name or comment stays."""
    parts = list(lexer.tokenize(query))
    for at in reversed(range(len(parts))):
        kind, text = parts[at]
        if kind in sql_tokens.Punctuation and text == ";":
            parts[at] = (kind, "")
        elif kind not in sql_tokens.Whitespace and kind not in sql_tokens.Comment:
            break
    return "".join(text for _, text in parts).strip()


# The prefix of a query parameter's bind name: SQLAlchemy names the binds it adds (the cursor's bound) after
# their column ('updated_at_1'), and refuses a statement whose two binds share a name.
_BOUND = "curation_query_"


def _bound_query(query: str) -> str:
    """The query as SQLAlchemy's text() is to read it: each `:name` parameter as its bind (apart from the
    tokens beside it: text() takes no ':name' followed by a colon, ':since::date'), any other colon escaped."""
    return "".join(
        text.replace(":", "\\:") if name is None else f" :{_BOUND}{name} " for text, name in query_parts(query)
    )


def _as_text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=value_text)
    return value_text(value)


def source_uri(config: SqlSource) -> str:
    """The URI of a table or query in records' ``source`` and the watermarks (no password)."""
    # A query's parameters are part of what it reads: the same query with other values is another source.
    query = (config.query or "") + (json.dumps(config.params, sort_keys=True, default=str) if config.params else "")
    what = config.table or "query-" + hashlib.sha256(query.encode()).hexdigest()[:12]
    return f"{safe_url(config.url)}#{what}"


def key_texts(rows: Sequence[Sequence[Any]], at: list[int]) -> tuple[list[str], list[bytes]]:
    """Each row's key as the text its record id hashes (its values' str(), joined), and a mark that
    tells apart what the text alone cannot: a text value 'None' from a NULL (which str() spells the
    same). The mark is empty for every other key, so their ids stay as published."""
    keys, marks = [], []
    for row in rows:
        values = [row[i] for i in at]
        keys.append("\x1f".join(str(value) for value in values))
        spelt_as_null = [str(n) for n, value in enumerate(values) if isinstance(value, str) and value == "None"]
        marks.append(("\x00text:" + ",".join(spelt_as_null)).encode() if spelt_as_null else b"")
    return keys, marks


def _untyped(value: float | str) -> sa.BindParameter:
    """A value bound as untyped text (a float as its repr, which round-trips), read by PostgreSQL as the type
    of what it is compared with."""
    return sa.bindparam(None, value if isinstance(value, str) else repr(value), type_=sa.types.NullType())


def _no_value(value: Any) -> bool:
    """NULL, NaN (PostgreSQL's float and numeric hold it; it equals nothing in Python, and a decimal NaN
    does not compare at all) or an infinity (of a number too: a watermark at it would take no later row):
    no place in the cursor's order. SQLite text that is not UTF-8 has one (its bytes'): its row is set aside
    for what it holds, and the watermark may be it (``cursor_encoded``); so is one of a ``Mistyped`` value, which
    has none (``CursorRange.is_new_unplaced``)."""
    if isinstance(value, float | Decimal):
        return value != value or math.isinf(value)
    return value is None or (isinstance(value, Unreadable) and not isinstance(value, NotUtf8 | Mistyped))


def _above(value: Any, other: Any) -> bool:
    """``value > other``; text that is not UTF-8 by its bytes, as SQLite's BINARY collation compares text (the
    order of UTF-8's bytes is that of the code points Python compares)."""
    if isinstance(value, NotUtf8) or isinstance(other, NotUtf8):
        return _text_bytes(value) > _text_bytes(other)
    return value > other


def _text_bytes(value: Any) -> bytes:
    if isinstance(value, NotUtf8):
        return value.data
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"{type(value).__name__} is no text")  # 7 and text that is not UTF-8 do not compare


# A watermark that is text not UTF-8, kept as its bytes in hex: as text (its escaped form) it binds as other text.
_NOT_UTF8_CURSOR = "not_utf8"


def cursor_encoded(value: Any) -> dict[str, str] | None:
    """``encode_cursor``, and text that is not UTF-8 as its bytes."""
    if isinstance(value, NotUtf8):
        return {"type": _NOT_UTF8_CURSOR, "value": value.data.hex()}
    return encode_cursor(value)


def cursor_decoded(encoded: dict[str, str]) -> Any:
    if encoded["type"] == _NOT_UTF8_CURSOR:
        return NotUtf8(bytes.fromhex(encoded["value"]))
    return decode_cursor(encoded)


# The forms SQLite's date functions read a date or moment in ('2026-01-01', '2026-01-01 10:00', '...T10:00:00.5Z',
# '... 10:00:00+02:00'): text of one of them is a moment whatever form the other values are in.
_SQLITE_MOMENT = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?: ?(?:Z|[+-]\d{2}:?\d{2}))?")


def sqlite_moment(value: Any) -> Any:
    """Text in a SQLite date form as the moment it spells (as SQLAlchemy reads a SQLite DATETIME column:
    with its UTC offset if written with one); any other value as it is."""
    if isinstance(value, str) and _SQLITE_MOMENT.fullmatch(value):
        try:
            return datetime.fromisoformat(value)
        except ValueError:  # no such day ('2026-02-30'): text like any other
            return value
    return value


def sqlite_utc(value: Any) -> Any:
    """A moment SQLite holds without a UTC offset as the UTC moment it is by SQLite's own convention (its
    date functions read it so), so that it compares with one written with an offset ('...T10:00:00Z')."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def pack_hashes(hashes: list[int]) -> str:
    return base64.b64encode(np.array(sorted(hashes), dtype="<u8").tobytes()).decode()


def unpack_hashes(packed: str) -> Counter[int]:
    return Counter(np.frombuffer(base64.b64decode(packed), dtype="<u8").tolist())


class CursorRange:
    """Which rows of a read by cursor are new: those past the highest value the last run read, and those
    at that value it did not read (a row written after the run with the value of the last row it took:
    commit timestamps tie). The database gives the rows at or past the value; the rows at it that the
    watermark says were taken (by their contents: an edited row is new) are left out here. The highest
    value is the last the database gives (rows come in cursor order): its order, not Python's, is what
    its comparison with the watermark follows (text in a linguistic collation)."""

    def __init__(self, watermark: SourceWatermark | None) -> None:
        committed = watermark.get(CURSOR_ITEM) if watermark is not None else None
        self.last = cursor_decoded(committed) if committed is not None else None
        taken = watermark.get(TAKEN_ITEM) if watermark is not None else None
        # A watermark from before the rows at the value were kept: all of them were taken (read past it).
        self.taken = unpack_hashes(taken) if isinstance(taken, str) else None
        self.inclusive = self.last is not None and self.taken is not None
        # Values the database holds as text of any form (``_sqlite_text``): it was asked for a bound below
        # the value, not the range itself, and its order is not theirs; they are compared here.
        self.as_moments = False
        self.highest: Any = None
        self.group: Any = None  # the highest value's rank (``is_new``)
        self.at_highest: list[int] = []
        nulls = watermark.get(NULL_ITEM) if watermark is not None else None
        self.nulls_before = unpack_hashes(nulls) if isinstance(nulls, str) else Counter()
        self.nulls: list[int] = []  # the rows without a value this read
        self.unplaced: list[int] = []  # text that is not UTF-8 among moments this read (``is_new_unplaced``)
        self.new_nulls = 0

    def is_new_null(self, content: bytes) -> bool | None:
        """For a row without a cursor value: None if it is to be set aside, False if an earlier run did."""
        if self._set_aside_before(content, self.nulls):
            return False
        self.new_nulls += 1
        return None

    def is_new_unplaced(self, content: bytes) -> bool:
        """For a row whose cursor value is text that is not UTF-8 among moments (``as_moments``): it spells no moment,
        so it has no place in their order (compared, the run failed: 'values of types that do not compare'). True
        if it is to be set aside (as such text is), False if an earlier run did (kept as the rows without a value)."""
        return not self._set_aside_before(content, self.unplaced)

    def _set_aside_before(self, content: bytes, into: list[int]) -> bool:
        """Whether an earlier run set aside a row of this content that had no place in the cursor's order (each
        such row of the watermark's ``NULL_ITEM`` answers once); the row is noted in ``into`` for the next run."""
        identity = xxhash.xxh3_64_intdigest(content)
        into.append(identity)
        if self.nulls_before[identity] > 0:
            self.nulls_before[identity] -= 1
            return True
        return False

    def is_new(self, value: Any, content: bytes, group: Any = None, at_last: Any = None) -> bool:
        """Whether a row with a cursor value is new; notes the highest value read and the rows at it. ``group`` is
        the value's rank among those read (``DENSE_RANK``) and ``at_last`` whether it equals the watermark, both as
        the database's collation has it (``CURSOR_TIES``): text it holds equal, though Python tells it apart ('a'
        and 'A' in NOCASE or citext, 'か' and 'カ' at ICU's level 1), ties. Both are None where Python compares
        (``as_moments``)."""
        if (
            self.as_moments
            and self.last is not None
            and not (value >= self.last if self.inclusive else value > self.last)
        ):
            return False
        identity = xxhash.xxh3_64_intdigest(content)
        if self.highest is None:
            self.highest, self.group, self.at_highest = value, group, [identity]
            return self._not_taken(value, identity, at_last)
        later = _above(value, self.highest)  # raises TypeError for values that do not compare (SQLite: 7 and '8')
        if value == self.highest if self.as_moments else group == self.group:
            # Any of the values tying is the watermark: the database gives all of them again (>=), the rows
            # taken at it among them.
            self.highest = value
            self.at_highest.append(identity)
        elif later or not self.as_moments:
            # Rows come in the database's order, which decides what is highest: text compares by the
            # column's collation there ('a' < 'B' in most, not in Python). Not for text-held datetimes.
            self.highest, self.group, self.at_highest = value, group, [identity]
        return self._not_taken(value, identity, at_last)

    def _not_taken(self, value: Any, identity: int, at_last: Any) -> bool:
        tied = value == self.last if at_last is None else bool(at_last)
        if self.inclusive and tied and self.taken[identity] > 0:
            self.taken[identity] -= 1  # equal rows: as many are new as the value holds more of them now
            return False
        return True


class SqlSourceReader:
    name = CONNECTOR

    def __init__(
        self,
        config: SqlSource,
        batch_rows: int,
        watermark: SourceWatermark | None = None,
        used_columns: Collection[str] | None = None,
    ) -> None:
        self.config, self.batch_rows, self.watermark = config, batch_rows, watermark
        self.used_columns = used_columns  # as the files connector's (``_unread_mistyped``)
        self.uri = source_uri(config)
        self.listed_uris = [self.uri]  # also when it has nothing new: another source may not take it
        self._unchanged = False
        self._held_now: str | None = None  # the table's fingerprint, read once per run
        self._text_moments = False  # a SQLite cursor whose values come as text (``_statement``)
        self._ties = 0  # how many of ``CURSOR_TIES`` the statement adds (``_statement``)
        # The key columns of the rows a read by cursor does not return (those before its range), for
        # ``_check_keys_elsewhere``; None when it returns every row (no watermark).
        self._not_returned: tuple[sa.Select, list[Any]] | None = None
        self._db: sa.Connection | None = None
        self._engine: sa.Engine | None = None
        self._keys_compare = True  # whether the database has `=` for the key's columns (``_keys_asked``)
        # New rows' keys (their text, as ids tell them) not yet asked of the rows before the watermark, with their
        # values and their line (``_check_keys_elsewhere``).
        self._keys_pending: dict[bytes, tuple[tuple[Any, ...], int]] = {}
        if config.cursor is not None and watermark is not None and self.uri in watermark.read_again:
            log.warning(
                "%s: review decisions on its rows (one that ended since the last version, or one on a set-aside row) "
                "take effect when the rows are read again: the cursor reads only new rows, so run with --full-refresh",
                self.uri,
            )

    def records_again(self) -> set[str]:
        """Its URI where a run may write a published record again under its id: a keyed row edited since,
        read by its cursor (without one the table is read whole, replacing what it gave)."""
        taken = self.watermark is not None and bool(self.watermark.committed)
        return {self.uri} if taken and self.config.key and self.config.cursor is not None else set()

    def inputs(self) -> list[InputFile]:
        # Asked again when the run must read more (an input that held a duplicate of a replaced
        # record): the answer may change from nothing new to read whole.
        watermark = self.watermark
        self._unchanged = False
        if self.config.cursor is None and watermark is not None and watermark.committed:
            # Read whole each run, its rows now are the table's records: unless it holds what the last
            # version took from it (a scheduled run on a table that did not change publishes nothing).
            held = watermark.get(READ_ITEM)
            if isinstance(held, str) and self.uri not in watermark.read_again and self._fingerprint() == held:
                self._unchanged = True
                return []
            watermark.replaced.add(self.uri)
        return [InputFile(uri=self.uri)]

    def _fingerprint(self) -> str:
        if self._held_now is None:
            fingerprint = Fingerprint()
            made = Unreadable.made
            with closing(self._result()) as result:  # closed at once on an error, not when collected
                columns = next(result)
                for rows in result:
                    fingerprint.add(self._contents(columns, rows, unreadable_columns(columns, rows, made))[1])
            self._held_now = str(fingerprint)
        return self._held_now

    def probe(self) -> list[str]:
        """Connect and ask for the result's columns, no rows: what `curation check` tells before a run (a
        database it cannot reach, no such table, a query that does not run, a cursor or key column the
        result lacks); the columns, as the database names them."""
        with closing(self._result(no_rows=True)) as result:
            return self._columns_checked(next(result))

    def _columns_checked(self, columns: list[str]) -> list[str]:
        for missing in [c for c in (self.config.cursor, *self.config.key) if c and c not in columns]:
            raise SqlSourceError(f"{self.uri}: column {missing!r} is not in the result; it has {columns}")
        # A name twice kept only the last column's values, as a CSV header naming a column twice would.
        twice = {name for name in columns if columns.count(name) > 1}
        if self.config.query is not None and self.config.url.startswith("sqlite"):
            # SQLite renames the query's (a subquery's) second column of a name `name:1`, its third `name:2`.
            renamed = (re.fullmatch(r"(.+):\d+", name) for name in columns)
            twice |= {found.group(1) for found in renamed if found and found.group(1) in columns}
        if twice:
            raise SqlSourceError(
                f"{self.uri}: column(s) {', '.join(map(repr, sorted(twice)))} appear more than once in the result: "
                "name each column once (AS)"
            )
        clash = reserved_clash(self.uri, columns)  # said here, so `curation check` says it too
        if clash is not None:
            raise SqlSourceError(clash)
        return columns

    def _result(self, no_rows: bool = False) -> Iterator[Any]:
        """The result's column names, then its rows, ``batch_rows`` at a time (a server-side cursor)."""
        url = sa.engine.make_url(self.config.url)
        missing = _missing_sqlite_file(url)
        if missing is not None:
            raise SqlSourceError(f"{self.uri}: no SQLite database file {missing!r}")
        try:
            engine = sa.create_engine(url)
        except (sa.exc.SQLAlchemyError, ImportError) as error:  # no such dialect, or its driver not installed
            raise SqlSourceError(f"{self.uri}: cannot connect: {type(error).__name__}: {error}") from None
        if engine.dialect.driver == "psycopg":
            sa.event.listen(engine, "connect", _lenient_moments)
        elif engine.dialect.driver == "pysqlite":
            sa.event.listen(engine, "connect", _lenient_text)
        statement, read = None, 0
        try:
            with engine.connect() as db:
                self._db, self._engine = db, engine  # for ``_check_keys_elsewhere``, asked between batches
                options = db.execution_options(stream_results=True, max_row_buffer=self.batch_rows)
                statement = self._statement(engine)
                self._keys_compare = self._database_compares_keys(engine)
                result = options.execute(statement.limit(0) if no_rows else statement)
                columns = list(result.keys())
                yield columns[: len(columns) - self._ties]
                rows = result.partitions(self.batch_rows)
                while True:
                    try:
                        batch = next(rows, None)
                    except (ValueError, TypeError) as error:
                        # The dialect turns a value into its column's declared type as it is fetched (SQLite:
                        # a DATETIME column holding text that is no date); its message holds the value.
                        raise SqlSourceError(
                            f"{self.uri}: cannot read rows {read + 1} to {read + self.batch_rows}: a value there is not "
                            f"of its column's declared type ({type(error).__name__} converting it)"
                        ) from None
                    if batch is None:
                        self._ask_keys()  # the keys of the last batches, while the connection is open
                        break
                    read += len(batch)
                    yield batch
        except sa.exc.SQLAlchemyError as error:
            said = _database_message(error) if no_rows else self._read_error(statement, error)
            where = f" (after row {read})" if read else ""
            raise SqlSourceError(f"{self.uri}: cannot read{where}: {said}") from None
        finally:
            self._db = self._engine = None
            engine.dispose()

    def _database_compares_keys(self, engine: sa.Engine) -> bool:
        """Whether the database can compare the key's columns with `=`, asked once a run (a statement planned,
        no row read): PostgreSQL has none for ``point`` or ``json``, and asking for the keys read failed the
        run after a first one that read the same rows well."""
        if self._not_returned is None or engine.dialect.name != "postgresql":
            return True
        before, keys = self._not_returned
        try:
            with engine.connect() as db:
                db.execute(before.where(sa.and_(*(key == key for key in keys))).limit(0))
        except sa.exc.ProgrammingError:  # UndefinedFunction: "operator does not exist: point = point"
            return False
        return True

    def _read_error(self, statement: sa.Select | None, error: sa.exc.SQLAlchemyError) -> str:
        """What to say of an error reading ``statement``'s rows. PostgreSQL's message may quote a row's value
        (customer data) whatever its class: a cast to ``regclass`` or ``regproc`` of a row's text says 'relation
        "jane.roe@example.com" does not exist', or names it unquoted. So the statement is run again without
        rows (LIMIT 0): an error it raises too is the query's own, whose message names the query's parts (a
        table it lacks); else the error arose from the rows, and only its kind is said. A data exception (class
        22) keeps its message less the value (``_database_message``)."""
        original = getattr(error, "orig", None)
        engine = self._engine
        sqlstate = getattr(original, "sqlstate", None)
        if (
            statement is None
            or engine is None
            or engine.dialect.name != "postgresql"
            or not (sqlstate or isinstance(error, sa.exc.DataError))  # the server's, or converting a value
            or (isinstance(sqlstate, str) and sqlstate.startswith("22"))
        ):
            return _database_message(error)
        try:
            with engine.connect() as db:
                db.execute(statement.limit(0))
        except sa.exc.SQLAlchemyError as again:
            return _database_message(again)
        code = f" (SQLSTATE {sqlstate})" if sqlstate else ""
        return (
            f"{type(original).__name__}{code} reading the rows (the query alone, without rows, raises none): its message "
            "is left out, as it may quote a row's value (customer data); run the query in psql to see it"
        )

    def _statement(self, engine: sa.Engine) -> sa.Select:
        config = self.config
        if config.table is not None:
            schema, name = _table_name(self.uri, config.table)
            try:
                with warnings.catch_warnings():
                    # A column of a type SQLAlchemy does not know (point, a domain) is read as the driver
                    # gives it: its warning names no problem of the run.
                    warnings.filterwarnings("ignore", "Did not recognize type", sa.exc.SAWarning)
                    table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=engine)
            except sa.exc.NoSuchTableError:
                raise SqlSourceError(f"{self.uri}: no table {config.table!r} in the database") from None
            source: Any = table
            statement = sa.select(table)
            if engine.dialect.name == "sqlite":
                statement = sa.select(*(_as_read(c) for c in table.c))
            column = table.c.__getitem__
            if config.cursor is not None and config.cursor not in table.c:
                raise SqlSourceError(
                    f"{self.uri}: the cursor column {config.cursor!r} is not in table {config.table!r}"
                )
        else:
            # The query is the user's own SQL, run as a subquery so the cursor condition can wrap it.
            query = _without_final_semicolons(config.query or "")
            # Verbatim but for its `:name` parameters (``query_parts``): another colon ('{"n":3}', LIKE '%:1%') is
            # no bind parameter (SQLAlchemy's text() takes ':name' for one, unless escaped), and the closing
            # parenthesis is on a line of its own, not in a '-- comment' ending the query's last line.
            # A list written `IN :name` is bound one value each (SQLAlchemy writes the parentheses); elsewhere whole,
            # as an array (PostgreSQL's `= ANY(:name)`: ``SqlSource`` refuses it for other databases).
            places = parameter_places(query)
            source = sa.text(f"({_bound_query(query)}\n) AS curation_source").bindparams(
                *(
                    sa.bindparam(_BOUND + name, value, expanding=isinstance(value, list) and places[name] == {"IN"})
                    for name, value in config.params.items()
                )
            )
            statement = sa.select(sa.literal_column("*")).select_from(source)
            column = sa.column
        self._not_returned = None
        self._ties = 0
        at_last: Any = None
        if config.cursor is not None:
            # The table's own column binds the watermark with the column's type; a query's is quoted as is.
            cursor = column(config.cursor)
            self._range = span = CursorRange(self.watermark)
            if self.watermark is not None and self.watermark.committed:
                self.watermark.reread = True  # rows read before (a table read whole, an edited row) may come again
            span.as_moments = self._sqlite_text(engine, cursor)
            # SQLite gives the values of a column not declared a date (TEXT, none, a query's) as the text they
            # hold: those in a date form are compared as moments too (``sqlite_moment``), and so is the
            # watermark they left (kept as text by a release before this one).
            self._text_moments = engine.dialect.name == "sqlite" and not span.as_moments
            if self._text_moments:
                span.last = sqlite_moment(span.last)
                span.as_moments = isinstance(span.last, date)
            if engine.dialect.name == "sqlite":
                span.last = sqlite_utc(span.last)
            if span.last is not None:
                if span.as_moments and isinstance(span.last, date):
                    # Compared as text, the stored value and the bound one need not be written alike: the
                    # rows from two days before on (any UTC offset's date) are read, the range taken here.
                    since = (span.last.date() if isinstance(span.last, datetime) else span.last) - timedelta(days=2)
                    past = sa.type_coerce(cursor, sa.String()) >= since.isoformat()
                else:
                    # A float4 (REAL) column compared with a bound double is widened first: 0.7 stored is
                    # 0.69999998..., below the 0.7 the watermark holds, and the tie at it would be lost.
                    last = sa.cast(span.last, cursor.type) if isinstance(cursor.type, sa.REAL) else span.last
                    last = last.bound() if isinstance(last, NotUtf8) else last
                    if config.query is not None and engine.dialect.name == "postgresql" and isinstance(last, float):
                        # A query's column has no type here: the bound goes as untyped text, which PostgreSQL
                        # reads as the column's own type (a real's 0.7 too, as psycopg read it from the text '0.7').
                        last = _untyped(last)
                    past = cursor >= last if span.inclusive else cursor > last
                    at_last = cursor == last if span.inclusive else None
                if config.key and (config.table is None or all(k in table.c for k in config.key)):
                    keys = [column(k) for k in config.key]
                    if config.table is not None and engine.dialect.name == "sqlite":  # as the read takes them
                        keys = [_as_read(c) for c in keys]
                    before = sa.select(*keys).select_from(source).where(sa.not_(past))
                    self._not_returned = (before, keys)
                # A row without a value is read each run too (set aside once, see ``CursorRange``).
                statement = statement.where(sa.or_(past, cursor.is_(None)))
            # Computed as the rows stream, in the order they come in (the window's order is the statement's).
            ties = [sa.func.dense_rank().over(order_by=cursor)]
            if at_last is not None and not span.as_moments:  # moments are compared in Python (``_sqlite_text``)
                ties.append(at_last)
            # Untyped: SQLAlchemy converts a result's values by column name, so a Boolean here turned a query's own
            # column of that name into true (its rows then read as edited, published again).
            statement = statement.add_columns(
                *(
                    sa.type_coerce(tie, sa.types.NullType()).label(name)
                    for tie, name in zip(ties, CURSOR_TIES, strict=False)
                )
            )
            self._ties = len(ties)
            statement = statement.order_by(cursor)
        return statement

    @staticmethod
    def _sqlite_text(engine: sa.Engine, cursor: Any) -> bool:
        """Whether the cursor is a SQLite date or datetime column, which SQLite holds as text of whatever
        form it was written in ('2026-01-01T10:00:00Z', '2026-01-01 10:00:00') and compares as text,
        while a bound datetime is written '2026-01-01 10:00:00.000000': the same moment compares as
        another ('T' sorts after ' '; a value without microseconds before the bound one), and the rows
        come in the order of their text, not of their moments."""
        return engine.dialect.name == "sqlite" and isinstance(getattr(cursor, "type", None), sa.DateTime | sa.Date)

    def _check_keys_unique(self, keys: list[str], marks: list[bytes], lines: list[int]) -> None:
        """Fail on a row whose key an earlier row of the read holds: the key is its record id, so both would
        be published under one id, and a later edit of either (read alone, through the cursor) would
        replace the other's published version. Failing, not quarantining: which of the two is the row
        the key names cannot be told, in this read or any later one, until the key is made unique."""
        seen = self._keys_read.occurrences(
            [key.encode() + b"\x1f" + mark for key, mark in zip(keys, marks, strict=True)]
        )
        if seen.any():
            line = lines[int(seen.nonzero()[0][0])]
            columns = ", ".join(self.config.key)
            raise SqlSourceError(
                f"{self.uri}: row {line} of the result has the same key ({columns}) as an earlier row: a key must "
                "identify one row (rows sharing one would be published as one record, and an edit of one would "
                "replace the other); add columns to `key` to make it unique, or remove the duplicate row"
            )

    def _check_keys_elsewhere(
        self, rows: Sequence[Sequence[Any]], at: list[int], keys: list[str], marks: list[bytes], lines: list[int]
    ) -> None:
        """Fail on a new row whose key a row the read does not return holds (one before the watermark, read
        by an earlier run): as within a read, the two would be one record, and the new one would replace
        the published one though both are in the table. The keys of new rows are gathered and the database
        asked for them ``_KEYS_ASKED`` at a time, and at the read's end (``_ask_keys``): asked per batch,
        a source without an index on its key was scanned once per batch."""
        if self._not_returned is None or not rows or self._db is None:
            return
        # Each key once, told by its text as ids are (a JSON or array column's value is a dict or list: no dict key).
        for key, mark, row, line in zip(keys, marks, rows, lines, strict=True):
            self._keys_pending[key.encode() + b"\x1f" + mark] = (tuple(row[i] for i in at), line)
        if len(self._keys_pending) >= _KEYS_ASKED:
            self._ask_keys()

    def _ask_keys(self) -> None:
        """Ask the database whether rows before the watermark hold the keys gathered (``_keys_asked``); the rows
        it finds are compared by the key's text, as ids are, so a match only the database's collation makes
        (case-insensitive text) is no duplicate."""
        pending, self._keys_pending = self._keys_pending, {}
        if not pending or self._not_returned is None or self._db is None:
            return
        before, columns = self._not_returned
        lines: list[int] = []
        for condition in self._keys_asked(columns, [value for value, _ in pending.values()]):
            try:
                found = self._db.execute(before.where(condition)).all()
            except (sa.exc.SQLAlchemyError, ValueError, TypeError) as error:  # a value not of its declared type too
                raise SqlSourceError(
                    f"{self.uri}: cannot ask whether rows before the watermark hold the keys read: "
                    f"{self._read_error(before.where(condition), error)}"
                ) from None
            found_keys, found_marks = key_texts(found, list(range(len(columns))))
            for key, mark in zip(found_keys, found_marks, strict=True):
                held = pending.get(key.encode() + b"\x1f" + mark)
                lines += [held[1]] if held is not None else []
        if lines:
            raise SqlSourceError(
                f"{self.uri}: row {min(lines)} of the result has the same key ({', '.join(self.config.key)}) as a "
                "row an earlier run read (before the watermark, not read again): a key must identify one row "
                "(the new row would replace the other's published record though both are in the table); "
                "add columns to `key` to make it unique, or remove the duplicate row"
            )

    def _keys_asked(self, columns: list[Any], values: list[tuple[Any, ...]]) -> Iterator[Any]:
        """Conditions that find the rows holding one of the keys ``values``. One key column's values go as one
        bound array where the database takes one (PostgreSQL's ANY, SQLite's json_each: binding thousands of
        values one by one costs more than the query); else ``key IN (...)``, ``_KEYS_ASKED`` values at a time
        (within SQLite's and PostgreSQL's limits on bound values); keys holding a NULL, which equals
        nothing in an IN, 100 at a time."""
        if not self._keys_compare or any(isinstance(part, dict | list) for value in values for part in value):
            # A JSON or array key (PostgreSQL's json, jsonb, int[]): no bound value the database compares it to
            # as the key's text does, or a key the database has no `=` for (point, json): the keys of every row
            # before the watermark are read, compared by their text.
            yield sa.true()
            return
        values = [
            tuple(part.bound() if isinstance(part, NotUtf8 | Mistyped) else part for part in value) for value in values
        ]
        dialect = self._db.dialect.name if self._db is not None else ""
        if dialect == "postgresql":
            # A float goes as untyped text, which PostgreSQL reads as the key column's own type: bound as a
            # double, a real key (0.69999998 stored, 0.7 as psycopg reads it) is widened and equals no value asked.
            values = [tuple(_untyped(part) if isinstance(part, float) else part for part in value) for value in values]
        whole = [value for value in values if all(part is not None for part in value)]
        if whole and len(columns) == 1:
            flat = [value[0] for value in whole]
            floats = [part.value for part in flat if isinstance(part, sa.BindParameter)]
            if dialect == "postgresql" and not floats:
                yield columns[0] == sa.any_(sa.bindparam("curation_keys", flat))
                whole = []
            elif dialect == "postgresql" and len(floats) == len(flat):
                # The array as untyped text too ('{0.7,0.5}'), read as an array of the column's type.
                yield columns[0] == sa.any_(_untyped("{" + ",".join(floats) + "}"))
                whole = []
            elif dialect == "sqlite" and all(type(value) in (int, str) for value in flat):
                listed = sa.func.json_each(sa.bindparam("curation_keys", json.dumps(flat), sa.String()))
                yield columns[0].in_(sa.select(sa.column("value")).select_from(listed))
                whole = []
        for chunk in batched(whole, max(1, _KEYS_ASKED // len(columns))):
            if len(columns) == 1:
                yield columns[0].in_([value[0] for value in chunk])
            elif any(isinstance(part, sa.BindParameter) for value in chunk for part in value):
                # An untyped value is no literal an IN's list can bind: each key is written as a tuple of its own.
                yield sa.tuple_(*columns).in_([sa.tuple_(*value) for value in chunk])
            else:
                yield sa.tuple_(*columns).in_(chunk)
        for chunk in batched([value for value in values if any(part is None for part in value)], 100):
            yield sa.or_(
                *(
                    sa.and_(*(c.is_(None) if v is None else c == v for c, v in zip(columns, value, strict=True)))
                    for value in chunk
                )
            )

    def _new_rows(
        self, values: list[Any], rows: Sequence[Sequence[Any]], ties: Sequence[Sequence[Any]]
    ) -> list[bool | None]:
        """Which rows of a batch are new (True), taken before (False), or new without a value (None); ``ties``
        are each row's ``CURSOR_TIES`` values."""
        span = self._range
        if self._text_moments:
            values = [sqlite_moment(value) for value in values]
            span.as_moments = span.as_moments or any(isinstance(value, date) for value in values)
        if self._db is not None and self._db.dialect.name == "sqlite":
            values = [sqlite_utc(value) for value in values]
        contents = (_values_text(row) for row in rows)
        try:
            return [
                span.is_new_null(content)
                if _no_value(value)
                else span.is_new_unplaced(content)
                if isinstance(value, Mistyped) or (span.as_moments and isinstance(value, NotUtf8))
                else span.is_new(value, content, *tie)
                for value, content, tie in zip(values, contents, ties, strict=True)
            ]
        except TypeError:  # SQLite keeps any type in any column: 7 and '8' do not compare
            seen = [*(v for v in values if not _no_value(v)), *([span.highest] if span.highest is not None else [])]
            kinds = sorted({"str" if isinstance(v, NotUtf8) else type(v).__name__ for v in seen})
            if kinds == ["datetime"]:
                kinds = ["datetime with a UTC offset", "datetime without one"]
            if self._text_moments and "datetime" in kinds:  # SQLite gave text: say which text is which
                kinds = [
                    "text in a date form (compared as the moment it spells)" if k == "datetime" else k for k in kinds
                ]
            raise SqlSourceError(
                f"{self.uri}: the cursor column {self.config.cursor!r} holds values of types that "
                f"do not compare ({', '.join(kinds)}); a cursor needs one type, e.g. CAST it in a query"
            ) from None

    def _contents(
        self, columns: list[str], rows: Sequence[Sequence[Any]], unreadable: list[list[str]]
    ) -> tuple[pa.Table, Any]:
        """The rows as an Arrow table and each row's content (the part of its record id that is not its place).
        A value Python cannot hold is null in the table, and its row's content is its values' text (as
        ``_new_rows`` writes them): the row is set aside, and an edit of such a value is a change."""
        if not any(unreadable):
            return table_and_contents(columns, rows)
        at = [i for i, names in enumerate(unreadable) if names]
        clean = list(rows)
        for i in at:
            clean[i] = [None if _holds_unreadable(value) else value for value in rows[i]]
        table, contents = table_and_contents(columns, clean)
        contents = [c if isinstance(c, bytes) else c.as_py().encode() for c in contents]
        for i in at:
            contents[i] = _values_text(rows[i])
        return table, contents

    def _unread_mistyped(
        self, table: pa.Table, columns: list[str], rows: Sequence[Sequence[Any]], unreadable: list[list[str]]
    ) -> tuple[pa.Table, list[list[str]]]:
        """The table and each row's unreadable columns less a ``Mistyped`` value in a column the recipe does not
        read (not its key or cursor, nor in ``used_columns``): as a Parquet column it does not read, it is in no
        record, so its row is not set aside (read by a query, untyped, it was published). Such a column is text in
        this batch, each value as SQLite holds it, as a set-aside row's ``record`` shows it; the row's content, its
        id without a key, holds the value as ``_contents`` wrote it."""
        if self.used_columns is None or not any(unreadable):
            return table, unreadable
        read = {self.config.cursor, *self.config.key}

        def loose(row: Sequence[Any], name: str) -> bool:
            unread = name not in read and not reads(name, self.used_columns)
            return unread and isinstance(row[columns.index(name)], Mistyped)

        kept = [[n for n in names if not loose(row, n)] for row, names in zip(rows, unreadable, strict=True)]
        for name in {n for names, left in zip(unreadable, kept, strict=True) for n in names if n not in left}:
            at = columns.index(name)
            texts = pa.array([None if row[at] is None else _as_text(row[at]) for row in rows], pa.string())
            table = table.set_column(at, name, texts)
        return table, kept

    def _unreadable(
        self, rows: pa.Table, columns: list[str], values: list[Sequence[Any]], unreadable: list[list[str]]
    ) -> pa.Table:
        """Rows holding a value Python cannot hold (a date or time, text that is not UTF-8), quarantined, each
        with its values as the database writes them, and named by its key or cursor value (its line is only
        its place in this run's result)."""
        records = [dict(zip(columns, row, strict=True)) for row in values]

        def said(line: int, at: int) -> str:
            record, names = records[at], unreadable[at]
            text = [n for n in names if isinstance(record[n], NotUtf8)]
            mistyped = [n for n in names if isinstance(record[n], Mistyped)]
            moments = [n for n in names if n not in text and n not in mistyped]
            parts = [f"{_columns_named(text)} text that is not UTF-8"] if text else []
            parts += [
                f"column {n!r} holds {_sqlite_kind(record[n].value)} that is no {record[n].declared} value"
                for n in mistyped
            ]
            if moments:
                parts.append(
                    f"{_columns_named(moments)} a date or time Python cannot hold (infinity, a year before 1 or "
                    "after 9999, 24:00, an interval past 999,999,999 days)"
                )
            cast = "text" if moments or mistyped else "BLOB"
            where = f"{self.uri}:{line}{self._row_named(record)}"
            return f"{where}: {'; '.join(parts)}; CAST it to {cast} in a query to read such rows"

        return _quarantined(rows, "schema", said, records)

    def _row_named(self, record: dict[str, Any]) -> str:
        """The row's key, else its cursor value, as ' (key id=7)', or nothing without either."""
        columns, by = (self.config.key, "key") if self.config.key else ([self.config.cursor], "cursor")
        if columns == [None]:
            return ""
        return f" ({by} {', '.join(f'{c}={record[c]}' for c in columns)})"

    def _no_value(self, rows: pa.Table) -> pa.Table:
        """Rows without a cursor value, quarantined: no later run could tell when one is new or edited."""
        columns = [c for c in rows.column_names if c not in ("id", "source")]
        return _quarantined(
            rows,
            "no_cursor_value",
            lambda line, _: (
                f"{self.uri}:{line}: no value (NULL, or NaN), or one Python cannot hold (infinity), in the cursor column "
                f"{self.config.cursor!r}: no run can tell "
                "when such a row is new or edited, so it is set aside once; give it a value to have it read"
            ),
            rows.select(columns).to_pylist(),
        )

    def batches(self, ends_read: bool = True) -> Iterator[SourceBatch]:
        """Its batches; with ``ends_read`` false, a read before the run's own, which alone stages the watermark
        and says what it set aside (said by both, it was said twice)."""
        for batch in self._batches(ends_read):
            yield less_kept(self.watermark, batch)

    def batches_of(self, uris: set[str]) -> Iterator[SourceBatch]:
        """Its rows, where the table is read whole again (in ``uris``), read before the run (``keep_archived``).
        None of a keyed source: a row's id is its key, which an edited row (a corrected answer) keeps, so its
        stale published record would be kept in its place; quarantined, the row's record leaves the dataset."""
        return self.batches(ends_read=False) if self.uri in uris and not self.config.key else iter(())

    def _batches(self, ends_read: bool = True) -> Iterator[SourceBatch]:
        if self._unchanged:
            return
        ordinal = 0
        row_ids = InputIds(self.uri)
        self._keys_read = InputIds(self.uri)  # the keys read so far, to tell a key two rows share
        self._keys_pending = {}  # new rows' keys not yet asked of the rows before the watermark
        fingerprint = Fingerprint()
        made = Unreadable.made
        with closing(self._result()) as result:  # closed at once on an error, not when collected
            columns = self._columns_checked(next(result))
            key_at = [columns.index(k) for k in self.config.key]
            width = len(columns)
            for rows in result:
                ties = [row[width:] for row in rows]
                if self._ties:
                    rows = [row[:width] for row in rows]
                unreadable = unreadable_columns(columns, rows, made)
                table, contents = self._contents(columns, rows, unreadable)
                table, unreadable = self._unread_mistyped(table, columns, rows, unreadable)
                lines = list(range(ordinal + 1, ordinal + 1 + table.num_rows))
                ordinal += table.num_rows
                # Without a key, ids number equal rows in the order read: the rows taken before count too, so a
                # row written since that equals one of them (the same cursor value) gets an id of its own.
                ids = None if self.config.key else row_ids(contents)
                if self.config.key:
                    keys, marks = key_texts(rows, key_at)
                    # Every row the database returned, those taken before too (a row at the watermark, one of the
                    # days a SQLite date text is read again for): a new row may share its key.
                    self._check_keys_unique(keys, marks, lines)
                no_value: list[bool] = []
                if self.config.cursor is None:
                    fingerprint.add(contents)
                else:
                    states = self._new_rows([row[columns.index(self.config.cursor)] for row in rows], rows, ties)
                    new = [state is not False for state in states]
                    no_value = [state is None for state in states if state is not False]
                    if not all(new):
                        unreadable = [names for names, n in zip(unreadable, new, strict=True) if n]
                        kept = pa.array(new)
                        table = table.filter(kept)
                        ids = ids.filter(kept) if ids is not None else None
                        rows = [row for row, n in zip(rows, new, strict=True) if n]
                        lines = [line for line, n in zip(lines, new, strict=True) if n]
                        if self.config.key:
                            keys = [key for key, n in zip(keys, new, strict=True) if n]
                            marks = [mark for mark, n in zip(marks, new, strict=True) if n]
                if self.config.key:
                    self._check_keys_elsewhere(rows, key_at, keys, marks, lines)
                    # The row's identity, not its content: an edited row keeps its id, so its new
                    # version replaces the one carried from earlier versions, and review decisions
                    # stay with it.
                    ids = record_ids(self.uri, keys, marks)
                read = with_lineage(table, ids, source_array(CONNECTOR, self.uri, lines))
                # A row without a cursor value is set aside for that; else one holding a value Python cannot.
                no_value = no_value or [False] * read.num_rows
                unreadable = [[] if none else names for names, none in zip(unreadable, no_value, strict=True)]
                if not any(no_value) and not any(unreadable):
                    yield SourceBatch(rows=read)
                    continue
                none, bad = pa.array(no_value), pa.array([bool(names) for names in unreadable])
                set_aside = [self._no_value(read.filter(none))]
                if any(unreadable):
                    values = [row for row, names in zip(rows, unreadable, strict=True) if names]
                    set_aside.append(self._unreadable(read.filter(bad), columns, values, [n for n in unreadable if n]))
                kept = pc.invert(pc.or_(none, bad))
                yield SourceBatch(rows=read.filter(kept), set_aside=pa.concat_tables(set_aside))
        if not ends_read:
            return
        if self.config.cursor is not None:
            self._cursor_read(self._range)
        elif self.watermark is not None:
            # Read whole, yet read before: the next version extends this one (other sources' records
            # carried, this table's replaced by what it holds now) instead of holding only this run's.
            self.watermark.set(READ_ITEM, str(fingerprint))

    def _cursor_read(self, span: CursorRange) -> None:
        """Stage the watermark of a read by cursor, and say what it set aside for want of a value."""
        if self.watermark is not None and span.highest is not None:
            self.watermark.set(CURSOR_ITEM, cursor_encoded(span.highest))
            self.watermark.set(TAKEN_ITEM, pack_hashes(span.at_highest))
        if self.watermark is not None:
            self.watermark.set(NULL_ITEM, pack_hashes(span.nulls + span.unplaced))
        if span.nulls:
            # Each run meets again the rows set aside before (until they get a value): say which are new.
            earlier = len(span.nulls) - span.new_nulls
            if not earlier:
                by = "quarantined by this run (no_cursor_value)"
            elif not span.new_nulls:
                by = "quarantined by an earlier run (no_cursor_value)"
            else:
                by = f"{span.new_nulls} quarantined by this run (no_cursor_value), the others by an earlier one"
            log.warning(
                "%s: %d %s no value (NULL, or NaN), or one Python cannot hold (infinity), in the cursor column %r: "
                "%s; give them a value to have them read",
                self.uri,
                len(span.nulls),
                "row has" if len(span.nulls) == 1 else "rows have",
                self.config.cursor,
                by,
            )


# A part of a table's name: bare, or in double quotes as SQL writes one holding a dot or a quote (doubled).
_NAME_PART = re.compile(r'"((?:[^"]|"")+)"|([^."]+)')


def _table_name(uri: str, table: str) -> tuple[str | None, str]:
    """The schema and name of a ``table`` setting: 'finance.tx', or with parts in double quotes
    ('"Fin Ance"."Tx.Log"'), which were taken for part of the name ('no table')."""
    parts, at = [], 0
    while (found := _NAME_PART.match(table, at)) is not None:
        quoted, bare = found.groups()
        parts.append(bare if quoted is None else quoted.replace('""', '"'))
        at = found.end()
        if at == len(table):
            return ".".join(parts[:-1]) or None, parts[-1]
        if table[at] != ".":
            break
        at += 1
    raise SqlSourceError(
        f"{uri}: table {table!r} is not a name: write schema.table, with a part holding a dot or a quote in "
        'double quotes ("Fin Ance"."Tx.Log")'
    )


def _missing_sqlite_file(url: sa.URL) -> str | None:
    """The path of a SQLite database file that is not there, else None: SQLite creates the file it opens, so a
    mistyped path was left as an empty database, and the run said the table was not in it."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or url.query.get("uri"):
        return None
    return None if Path(url.database).exists() else url.database


def _values_text(row: Sequence[Any]) -> bytes:
    """A row's content as its own values write it (not as Arrow does, whose text of a decimal depends on
    the other rows of its batch: 1.5 is '1.50' beside 1.25), an Unreadable one as PostgreSQL's text."""
    return json.dumps(list(row), default=str, ensure_ascii=False).encode()


def _quarantined(
    rows: pa.Table, reason: str, detail: Callable[[int, int], str], records: list[dict[str, Any]]
) -> pa.Table:
    """``rows`` quarantined by the reader with ``reason``; ``detail(line, position)`` says why for each,
    and each keeps its values (``records``) as read."""
    lines = rows["source"].combine_chunks().field("line").to_pylist()
    return set_aside_rows(
        rows["id"].combine_chunks(),
        rows["source"].combine_chunks(),
        stage="read",
        outcome="quarantined",
        reasons=reason,
        details=[detail(line, at) for at, line in enumerate(lines)],
        records=[raw_cut(record_json(record, ensure_ascii=False, default=str)) for record in records],
    )
