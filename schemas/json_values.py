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
from collections.abc import Sequence
from typing import Any

import pyarrow as pa


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


# json.dumps(value, ensure_ascii=False), made once; a value JSON has no type for (a date from a
# database) as its text.
_ENCODE = json.JSONEncoder(ensure_ascii=False, default=str).encode


def json_values(values: Sequence[Any]) -> pa.ExtensionArray:
    """Parsed JSON values (objects, arrays, None) as a column that keeps each as it is."""
    texts = [None if value is None else _ENCODE(value) for value in values]
    return pa.ExtensionArray.from_storage(JSON_TYPE, pa.array(texts, pa.string()))


def is_json(kind: pa.DataType) -> bool:
    return isinstance(kind, JsonType)
