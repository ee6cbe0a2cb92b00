"""A JSON object or array from a JSONL line (or a SQL JSON column), kept as the line wrote it.

An Arrow struct has one set of fields for the whole column, in one order, and one type per field: a
row gets every key any row has (null where it had none), the keys in the column's order, and a
number beside a string in another row becomes text. The same line then gave another value read in
another block, or whole (polars) rather than line by line (Python's json). So a JSONL column whose
values are all objects, or all arrays, holds each value's JSON as Python writes it from the line
(its keys, in their order, its numbers), as this extension type (a SQL column of objects too, whose
rows share a batch as lines share a block): ``as_py`` (and so ``to_pylist``, a
template's row) gives the object back, and a cast to text gives the JSON.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from decimal import Context, Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class JsonScalar(pa.ExtensionScalar):
    def as_py(self, **_: Any) -> Any:
        if self.value is None:
            return None
        text = self.value.as_py()
        try:
            return json.loads(text)
        except ValueError:  # plain text cast to this type (a batch's column of text cast to another's type)
            return text


class JsonType(pa.ExtensionType):
    def __init__(self) -> None:
        super().__init__(pa.string(), "curation.json")

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> JsonType:
        return cls()

    def __arrow_ext_scalar_class__(self) -> type[JsonScalar]:
        return JsonScalar

    def __reduce__(self) -> tuple[type[JsonType], tuple[()]]:
        return JsonType, ()


JSON_TYPE = JsonType()
with contextlib.suppress(pa.ArrowKeyError):  # registered already (the module loaded twice)
    pa.register_extension_type(JSON_TYPE)


def value_text(value: Any) -> str:
    """A value JSON has no type for (a date or decimal from a database) as text: a decimal in positional
    notation, as PostgreSQL writes it and ``decimal_texts`` a decimal column (``0.00000010``), not as str()
    writes a small one (``1.0E-7``); any other as str()."""
    return format(value, "f") if isinstance(value, Decimal) else str(value)


# json.dumps(value, ensure_ascii=False), made once.
_ENCODE = json.JSONEncoder(ensure_ascii=False, default=value_text).encode


def json_values(values: Sequence[Any]) -> pa.ExtensionArray:
    """Parsed JSON values (objects, arrays, None) as a column that keeps each as it is."""
    texts = [None if value is None else _ENCODE(value) for value in values]
    return pa.ExtensionArray.from_storage(JSON_TYPE, pa.array(texts, pa.string()))


def is_json(kind: pa.DataType) -> bool:
    return isinstance(kind, JsonType)


# Python's repr writes a float whose magnitude lies in [1e-4, 1e16), and zero, in positional notation
# (``0.0001``, ``1234.5``), any other in scientific notation with an exponent of two digits or more.
_POSITIONAL = (1e-4, 1e16)


def decimal_texts(values: pa.Array | pa.ChunkedArray) -> pa.StringArray:
    """Each decimal of ``values`` in positional notation, as PostgreSQL writes it (``0.00000010``), not as Arrow's
    cast writes a small one (``1.0E-7``, Java's rule); the cast's text where it holds none (nearly always)."""
    texts = pc.cast(values, pa.string())
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    if not pc.any(pc.match_substring(texts, "E")).as_py():
        return texts
    return pa.array([None if value is None else format(value, "f") for value in values.to_pylist()], pa.string())


def float_texts(values: pa.Array | pa.ChunkedArray, text: Callable[[float], str] = repr) -> pa.StringArray:
    """Each float64 of ``values`` as Python's ``repr`` writes it (``1.0``, ``0.1``, ``1e-07``, ``1e+16``),
    without a Python call per value: Arrow's cast gives the same digits (the shortest that read back as the
    value) laid out its own way (``1``, ``1e-7``, ``1e+10`` for ``10000000000.0``, ``0.00001`` for
    ``1e-05``), set out again here as Python's. A value whose notation differs (about 1e-6 to 1e-4 and 1e10
    to 1e16, nan and inf) is written by ``text``: ``repr``, or ``json.dumps`` (``NaN``) for JSON."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    texts = pc.cast(values, pa.string())
    magnitude = pc.abs(values)
    positional = pc.or_(
        pc.and_(pc.greater_equal(magnitude, _POSITIONAL[0]), pc.less(magnitude, _POSITIONAL[1])),
        pc.equal(magnitude, 0),
    )
    scientific = pc.match_substring(texts, "e")
    # Arrow writes a whole value without its fraction (``1``, ``-0``), and an exponent with one digit or
    # more (``1e-7``) where Python writes two or more (``1e-07``): each set out again apart (a kernel over
    # the whole column cost more than the cast).
    whole = pc.and_(pc.and_(positional, pc.invert(scientific)), pc.equal(pc.floor(values), values))
    texts = rewritten(texts, whole, lambda some: pc.binary_join_element_wise(some, ".0", ""))
    exponent = pc.and_(scientific, pc.invert(positional))
    texts = rewritten(texts, exponent, lambda some: pc.replace_substring_regex(some, r"e([-+])([0-9])$", r"e\10\2"))
    elsewise = pc.fill_null(pc.equal(positional, scientific), False)  # notations that differ, nan and inf
    return rewritten(
        texts, elsewise, lambda _: pa.array([text(v) for v in values.filter(elsewise).to_pylist()], pa.string())
    )


def rewritten(
    texts: pa.StringArray, where: pa.BooleanArray | np.ndarray, rewrite: Callable[[pa.Array], pa.Array]
) -> pa.StringArray:
    """``texts`` with those ``where`` marks (null: not marked) replaced by ``rewrite`` of them."""
    where = pc.fill_null(pa.array(where) if isinstance(where, np.ndarray) else where, False)
    if not pc.any(where).as_py():
        return texts
    return pc.replace_with_mask(texts, where, rewrite(texts.filter(where)))


def decimal_text(value: Decimal) -> str:
    """A finite decimal written in full, without trailing zeros (``7.00`` is ``7``, ``5.50`` is ``5.5``),
    every digit it holds kept: normalised in Python's default context, a decimal128(38)'s value was
    rounded to 28 digits, and two values became one. A zero is ``0`` whatever its sign or scale (``-0.00``).
    A whole value is its integer's text (``5.00`` is ``5``, ``1E+30`` written out)."""
    if value.is_zero():
        return "0"
    return format(value.normalize(Context(prec=max(1, len(value.as_tuple().digits)))), "f")
