"""JSON lines from Arrow tables by column kernels: the bytes polars' ``write_ndjson`` gives, at about a
third of its CPU time for the writer's tables (text, ids, lineage).

Each line is one ``binary_join_element_wise`` of the columns' values between the literal text around
them (keys, quotes, braces); a column holding one value in a batch (a shard, a connector, an input's
uri, a page that is always null) is written into that literal text once. Strings are escaped as polars
escapes them (serde_json's rules: ``"`` and ``\\``, ``\\b \\t \\n \\f \\r``, other control characters as
``\\u00xx``; everything else as UTF-8), and only when their bytes hold a character to escape. A column
of any other type (floats, lists, dates...) sends the whole table to polars, so the bytes never depend
on which path wrote them (``tests/test_fast_ndjson.py`` compares the two).
"""

from __future__ import annotations

import io
import re

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from schemas.arrow_bytes import string_buffers

# A piece of every line: a column's values, or literal text.
Piece = pa.Array | str

_SHORT = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
_ESCAPES = {
    **{byte: _SHORT.get(byte, f"\\u{byte:04x}") for byte in range(0x20)},
    ord('"'): '\\"',
    ord("\\"): "\\\\",
}
# Escaping can make text up to six times longer; beyond this a batch could overflow Arrow's 32-bit
# string offsets, and goes to polars.
_MAX_BATCH_BYTES = 256 * 1024 * 1024


def to_ndjson(table: pa.Table) -> bytes:
    """JSON lines, UTF-8 unescaped, keys in column order (what polars' ``write_ndjson`` writes)."""
    lines = ndjson_lines(table)
    if isinstance(lines, bytes):
        return lines
    return b"".join(_utf8(chunk) for chunk in lines.chunks)


def ndjson_lines(table: pa.Table) -> bytes | pa.ChunkedArray:
    """``to_ndjson``'s bytes, as a string column of each row's line (its newline included) where the kernels
    write the table: the column's data are those bytes end to end, so a writer takes them without the copy
    that joins them (0.04 CPU s per million lines of 180 bytes), and its offsets are where lines end. Else
    polars' bytes."""
    if not table.num_rows:
        return b""
    lines = []
    for batch in table.to_batches():
        if not batch.num_rows:
            continue
        pieces = _object(batch.columns, batch.schema.names) if batch.nbytes <= _MAX_BATCH_BYTES else None
        if pieces is None:
            return _polars_ndjson(table)
        lines.append(_joined([*pieces, "\n"], batch.num_rows))
    return pa.chunked_array(lines, pa.string())


def _polars_ndjson(table: pa.Table) -> bytes:
    """JSON lines as polars' ``write_ndjson`` writes them."""
    buffer = io.BytesIO()
    pl.from_arrow(table).write_ndjson(buffer)
    return buffer.getvalue()


def _object(columns: list[pa.Array], names: list[str]) -> list[Piece] | None:
    if not names or len(set(names)) != len(names):  # polars' own answer (or error) for these
        return None
    pieces: list[Piece] = ["{"]
    for column, name in zip(columns, names, strict=True):
        value = _value(column)
        if value is None:
            return None
        pieces += [("," if len(pieces) > 1 else "") + f'"{_escape(name)}":', *value]
    return [*pieces, "}"]


def _value(array: pa.Array) -> list[Piece] | None:
    """The JSON of each value of ``array``, as pieces; None for a type left to polars."""
    kind = array.type
    if array.null_count == len(array) and not pa.types.is_dictionary(kind):
        return ["null"] if _supported(kind) else None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if pa.types.is_large_string(kind):
            array = array.cast(pa.string())  # one string type for the join (batches stay small)
        pieces: list[Piece] = ['"', *_text(array), '"']
    elif pa.types.is_integer(kind):
        pieces = [pc.cast(array, pa.string())]
    elif pa.types.is_boolean(kind):
        pieces = [pc.if_else(array, "true", "false")]
    elif pa.types.is_struct(kind):
        found = _object([array.field(i) for i in range(kind.num_fields)], [field.name for field in kind])
        if found is None:
            return None
        pieces = found
    else:
        return None
    if array.null_count:
        return [pc.if_else(pc.is_valid(array), _joined(pieces, len(array)), "null")]
    return pieces


def _supported(kind: pa.DataType) -> bool:
    if pa.types.is_struct(kind):
        return all(_supported(field.type) for field in kind)
    return any(
        check(kind)
        for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_boolean)
    )


def _text(array: pa.Array) -> list[Piece]:
    """A string column escaped: its one value as literal text when every row holds it."""
    offsets, data = string_buffers(array)
    values = data[offsets[0] : offsets[-1]]
    sizes = np.diff(offsets)
    if not array.null_count and sizes.min() == sizes.max():
        size = int(sizes[0])
        first, last = values[:size], values[len(values) - size :]
        if not size or ((first == last).all() and (values.reshape(-1, size) == first).all()):
            return [_escape(values[:size].tobytes().decode())]
    if not len(values):
        return [array]
    control = values[values < 0x20] if values.min() < 0x20 else values[:0]  # the usual text holds none
    backslash, quote = _holds(array, "\\"), _holds(array, '"')
    if backslash:  # first, so the backslashes added next stay as they are
        array = pc.replace_substring(array, "\\", "\\\\")
    if quote:
        array = pc.replace_substring(array, '"', '\\"')
    for byte in np.unique(control).tolist():
        array = pc.replace_substring(array, chr(byte), _ESCAPES[byte])
    return [array]


def _holds(array: pa.Array, char: str) -> bool:
    """Whether a string column's bytes hold ``char``. RE2 finds a literal at memchr's speed in the bytes
    read as one binary value, and an Arrow kernel runs outside the GIL (the writer encodes on its own
    thread): a comparison and a count were two passes writing a mask as large, and NumPy's string find
    holds the GIL."""
    offsets, data = string_buffers(array)
    whole = pa.Array.from_buffers(pa.binary(), 1, [None, pa.py_buffer(offsets[[0, -1]]), pa.py_buffer(data)])
    return bool(pc.match_substring_regex(whole, re.escape(char))[0].as_py())


def _escape(text: str) -> str:
    return text.translate(_ESCAPES)


def _utf8(array: pa.Array) -> np.ndarray:
    """The bytes of a ``pa.string()`` array's values end to end, without a copy."""
    offsets, data = string_buffers(array)
    return data[offsets[0] : offsets[-1]]


def _joined(pieces: list[Piece], rows: int) -> pa.Array:
    merged: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    if all(isinstance(piece, str) for piece in merged):
        return pa.repeat(pa.scalar("".join(merged), pa.string()), rows)  # type: ignore[arg-type]
    return pc.binary_join_element_wise(*merged, "")
