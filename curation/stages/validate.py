"""Schema validation, the first gate: rows that break the contract are quarantined, never dropped.

A vectorised check clears clean batches at Arrow speed; a batch with any problem is validated
row by row with pydantic, so each quarantined row carries pydantic's own message and its line.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ValidationError

from curation.stages.base import StageResult, rows_as_python, split_by_mask
from schemas.records import Record, input_record_json, location, set_aside_rows

ARROW_TYPES: dict[Any, pa.DataType] = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _field_type(annotation: Any) -> tuple[Any, bool]:
    """(python type, nullable) of a simple field annotation such as ``float`` or ``str | None``."""
    args = getattr(annotation, "__args__", None)
    if args:
        concrete = [a for a in args if a is not type(None)]
        return concrete[0], len(concrete) < len(args)
    return annotation, False


def _describe(error: ValidationError, own: dict[str, str]) -> str:
    # A null is a value missing from its row (an empty CSV field, a JSONL line without the key), which
    # pydantic calls the wrong type. ``own``: this stage's words for a column's problem (``_not_a_number``).
    return "; ".join(
        own.get(str(e["loc"][0]) if e["loc"] else "")
        or f"{'.'.join(str(p) for p in e['loc'])}: "
        + ("no value, and the column is required" if "input" in e and e["input"] is None else e["msg"])
        for e in error.errors()
    )


_NUMBER_NAMES = {pa.int64(): "int", pa.float64(): "float"}


def _not_a_number(column: str, value: Any, declared: pa.DataType) -> str | None:
    """What is wrong when a number column holds a boolean, array or object, or an int column a fraction:
    pydantic and Arrow take a boolean as 1 (or 1.0), and a JSON reader makes text of such a value where
    the column's other values are text (``true`` as "true", ``1.5`` as "1.5"), which pydantic called
    "unable to parse string as a number" (or "as an integer")."""
    written = None
    if isinstance(value, str) and value.strip() in ("true", "false"):
        value = value.strip() == "true"
    elif isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    elif isinstance(value, str) and declared == pa.int64():
        try:
            written, value = value.strip(), float(value)
        except ValueError:
            return None
    if declared == pa.int64() and isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        said = written or repr(value)  # as the line wrote it
        return f"{column}: a number ({said}), not a whole number (the input schema declares int)"
    if not isinstance(value, bool | dict | list):
        return None
    return f"{column}: {_kind(value)}, not a number (the input schema declares {_NUMBER_NAMES[declared]})"


def _not_a_string(column: str, value: Any) -> str | None:
    """What is wrong when a text column holds a number, boolean, list or object (a Parquet or SQL column
    of another type: a JSONL line's is named by the reader), which pydantic called "Input should be a
    valid string", naming neither."""
    kind = _kind(value)
    return None if kind is None else f"{column}: {kind}, not a string (the input schema declares str)"


def _kind(value: Any) -> str | None:
    """A value of the wrong kind as a problem names it, in one wording whether it came from JSON text or
    from Arrow (a JSONL block's array reaches the stage as a list too): ``a list``, not ``a JSON array``."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    return None


class SchemaValidation:
    """Check each row against a pydantic model; cast the model's columns to their types."""

    def __init__(self, model: type[Record], name: str = "validate") -> None:
        self.name = name
        self.model = model
        self._finite_only = not model.model_config.get("allow_inf_nan", True)
        self.columns: dict[str, tuple[pa.DataType, bool, int]] = {}
        for column, info in model.model_fields.items():
            if column in ("id", "source"):
                continue
            python_type, nullable = _field_type(info.annotation)
            min_length = next((m.min_length for m in info.metadata if hasattr(m, "min_length")), 0)
            self.columns[column] = (ARROW_TYPES[python_type], nullable or not info.is_required(), min_length or 0)
        self.numbers = {c: kind for c, (kind, _, _) in self.columns.items() if kind in _NUMBER_NAMES}
        self.texts = [c for c, (kind, _, _) in self.columns.items() if kind == pa.string()]

    def __call__(self, batch: pa.Table) -> StageResult:
        missing = [c for c, (_, nullable, _) in self.columns.items() if c not in batch.column_names and not nullable]
        if missing:
            return self._all_missing(batch, missing)
        for column, (arrow_type, _, _) in self.columns.items():
            if column not in batch.column_names:
                batch = batch.append_column(column, pa.nulls(batch.num_rows, arrow_type))
            elif self._finite_only and pa.types.is_floating(batch[column].type):
                # NaN is how pandas writes a missing value: missing, as a null is (an infinity is an error).
                values = batch[column]
                batch = batch.set_column(
                    batch.column_names.index(column), column, pc.if_else(pc.is_nan(values), None, values)
                )
        cast = self._fast_cast(batch)
        if cast is not None:
            return StageResult(kept=cast)
        return self._row_by_row(batch)

    def _fast_cast(self, batch: pa.Table) -> pa.Table | None:
        """The batch with columns cast, or None if any row might fail (then pydantic decides)."""
        for column, (arrow_type, nullable, min_length) in self.columns.items():
            values = batch[column]
            if values.type == pa.null() or (pa.types.is_string(arrow_type) and not pa.types.is_string(values.type)):
                return None
            if pa.types.is_boolean(values.type) != pa.types.is_boolean(arrow_type) and not pa.types.is_string(
                values.type
            ):
                return None  # Arrow casts true to 1.0 and 5 to true: the rows say which holds what
            try:
                values = pc.cast(values, arrow_type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return None
            if not nullable and values.null_count:
                return None
            if (
                self._finite_only
                and pa.types.is_floating(arrow_type)
                and pc.any(pc.invert(pc.is_finite(values))).as_py()
            ):
                return None
            if min_length and (_shorter_than(values, min_length) or pc.any(pc.utf8_is_space(values)).as_py()):
                return None  # Record._not_blank: a field of spaces alone is no text
            batch = batch.set_column(batch.column_names.index(column), column, values)
        return batch

    def _row_by_row(self, batch: pa.Table) -> StageResult:
        # A value Python cannot hold (a Parquet timestamp after 9999) as Arrow's text: to_pylist raised for the batch.
        rows = rows_as_python(batch, as_text=True)[0]
        valid: list[bool] = []
        clean: list[BaseModel] = []
        details, records = [], []
        for row in rows:
            own = {c: p for c, kind in self.numbers.items() if (p := _not_a_number(c, row.get(c), kind)) is not None}
            own |= {c: p for c in self.texts if (p := _not_a_string(c, row.get(c))) is not None}
            problem = "; ".join(own.values()) or None  # a boolean pydantic would take as 1 too
            try:
                model = self.model.model_validate(row)
            except ValidationError as error:
                problem = _describe(error, own)
            valid.append(problem is None)
            if problem is None:
                clean.append(model)
            else:
                details.append(f"{location(row['source'])}: {problem}")
                records.append(input_record_json(row))
        kept, bad = split_by_mask(batch, pa.array(valid))
        kept_columns = {
            column: pa.array([getattr(m, column) for m in clean], arrow_type)
            for column, (arrow_type, _, _) in self.columns.items()
        }
        for column, values in kept_columns.items():
            kept = kept.set_column(kept.column_names.index(column), column, values)
        set_aside = set_aside_rows(bad["id"], bad["source"], self.name, "quarantined", "schema", details, records)
        return StageResult(kept=kept, set_aside=set_aside)

    def _all_missing(self, batch: pa.Table, missing: list[str]) -> StageResult:
        names = ", ".join(repr(m) for m in missing)
        sources = batch["source"].to_pylist()
        details = [f"{location(s)}: required column {names} is missing" for s in sources]
        records = [input_record_json(r) for r in rows_as_python(batch, as_text=True)[0]]
        set_aside = set_aside_rows(
            batch["id"], batch["source"], self.name, "quarantined", "missing_column", details, records
        )
        return StageResult(kept=batch.slice(0, 0), set_aside=set_aside)


def _shorter_than(values: pa.Array | pa.ChunkedArray, min_length: int) -> bool:
    """Whether any value has fewer than ``min_length`` characters. A value has at least one character
    exactly when it has a byte, and byte lengths come from the offsets without reading the text."""
    lengths = pc.binary_length(values) if min_length == 1 else pc.utf8_length(values)
    return pc.any(pc.less(lengths, min_length)).as_py()
