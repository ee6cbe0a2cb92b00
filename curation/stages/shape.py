"""Shape input rows into records of one kind (instruction pair, document, VQA item).

Each record field is a column name or a Jinja template over the row's columns. Templates made
only of text and ``{{ column }}`` over text columns are joined by Arrow without a Python loop;
anything richer (filters, conditions) renders row by row with Jinja.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes as jn
import pyarrow as pa
import pyarrow.compute as pc

from connectors.base import undecodable_byte, utf8_texts
from curation.split import key_texts
from curation.stages.base import NOT_HELD, StageResult, as_python, is_text, rows_as_python
from schemas.config import RecordShape
from schemas.json_values import decimal_texts, float_texts, rewritten
from schemas.records import CONTENT_COLUMNS, SetAsideExample, input_record_json, location, set_aside_rows

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


_UNDEFINED = re.compile(r"'(.+)' is undefined")  # jinja2's message for a name the row does not have


# Said of a template's failure on a row lacking a value it reads: the data's, not the recipe's (``TemplateErrors``).
_EMPTY = "empty (null)"
_NOT_HELD = "a value Python cannot hold (a year after 9999?)"


class EmptyValue(ValueError):
    pass


def _finalize(value: Any) -> Any:
    """What a template writes for a value: never null, a JSON object or array (a struct or list column,
    an element of one) as JSON, and a boolean as JSON writes it (``true``), as a field naming such a
    column and a column of mixed types give it, and bytes as their UTF-8 text; not as Python writes a
    dict, list, boolean (``True``) or bytes."""
    if value is None:
        raise EmptyValue(f"a value the template uses is {_EMPTY}")
    if isinstance(value, bool):  # as a field naming its column, and a column of mixed types, give it
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return _as_json(value)
    if isinstance(value, bytes):  # a binary column (Parquet): its text, as a field naming it gives, not b'...'
        return _utf8_text(value)
    if isinstance(value, Decimal):  # positional (0.00000010), as a field naming its column gives it: not 1.0E-7
        return format(value, "f")
    return value


def _utf8_text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"a value holds bytes that are not UTF-8 text ({undecodable_byte(error)})") from None


def _as_json(value: Any) -> str:
    """An object or array as JSON, a binary value in it (a Parquet struct's) as its UTF-8 text, not b'...'
    (ValueError when it is not UTF-8), and any other value JSON has no type for (a date) as its text."""
    return json.dumps(value, ensure_ascii=False, default=lambda v: _utf8_text(v) if isinstance(v, bytes) else str(v))


_ROW_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize
)


def _plain_parts(template: str) -> list[tuple[str, str]] | None:
    """[("text", ...), ("column", ...)] if the template is only text and ``{{ name }}``; else None."""
    body = _ENV.parse(template).body
    parts: list[tuple[str, str]] = []
    for node in body:
        if not isinstance(node, jn.Output):
            return None
        for child in node.nodes:
            if isinstance(child, jn.TemplateData):
                parts.append(("text", child.data))
            elif isinstance(child, jn.Name):
                parts.append(("column", child.name))
            else:
                return None
    return parts


# jinja's filters whose value is a number, not the text of the value they take: ``{{ shot.img | length }}``
# renders none of the image.
_NUMBER_FILTERS = frozenset({"abs", "count", "float", "int", "length", "round", "sum", "wordcount"})


def _paths_read(node: jn.Node, names: Collection[str]) -> dict[str, set[tuple[str | int, ...]]]:
    """Each of ``names`` a template certainly renders as text, with the attributes and constant keys it reads it
    along: the expression of an output, or the value a filter there takes (``{{ shot.cap }}``, ``{{ shot['cap'] |
    upper }}``: ("cap",); ``{{ shot }}``: ()), unless a filter gives a number (``| length``). An attribute that is a
    dict's method (``shot.items``) stops there, the dict read whole, as jinja's getattr takes the method first (its
    getitem, ``shot['items']``, the key). Any other use (a test, a condition, ``{% set %}``, a loop, a function's
    argument) is left out: a refusal of what it reads could only be a guess. A name the template also binds itself
    (a loop variable) is taken as the column's all the same: that may only refuse more."""
    paths: dict[str, set[tuple[str | int, ...]]] = {}
    for output in node.find_all(jn.Output):
        for expression in output.nodes:
            while isinstance(expression, jn.Filter) and expression.node is not None:
                # With arguments, ``int``/``float`` give their default where the value is no number: it may be the image.
                if expression.name in _NUMBER_FILTERS and not (expression.args or expression.kwargs):
                    break
                expression = expression.node
            keys: list[str | int] = []
            while isinstance(expression, jn.Getattr | jn.Getitem):
                if isinstance(expression, jn.Getattr):
                    keys = [] if hasattr(dict, expression.attr) else [expression.attr, *keys]
                elif isinstance(expression.arg, jn.Const) and isinstance(expression.arg.value, str | int):
                    keys = [expression.arg.value, *keys]
                else:
                    break
                expression = expression.node
            if isinstance(expression, jn.Name) and expression.ctx == "load" and expression.name in names:
                paths.setdefault(expression.name, set()).add(tuple(keys))
    return paths


def _text_of_bytes(column: str, values: pa.ChunkedArray) -> tuple[pa.Array, list[str | None], str]:
    """A binary column's values as text, each that is not UTF-8 a problem of its record's."""
    texts, problems = utf8_texts(values.to_pylist(), column)
    return pa.array(texts, pa.string()), problems, "schema"


def _json_texts(column: str, values: pa.ChunkedArray) -> tuple[pa.Array, list[str | None], str]:
    """A nested column's values as JSON, each holding bytes that are not UTF-8 a problem of its record's."""
    texts: list[str | None] = []
    problems: list[str | None] = []
    for value in values.to_pylist():
        try:
            texts.append(None if value is None else _as_json(value))
            problems.append(None)
        except ValueError as error:
            texts.append(None)
            problems.append(f"column '{column}': {error}")
    return pa.array(texts, pa.string()), problems, "schema"


def _widened_floats(batch: pa.Table, names: Collection[str] | None = None) -> pa.Table:
    """``batch`` with each float32 (of the columns ``names``, or every one; in a list, struct or map too) (a
    Parquet ``float``) as the float64 its text writes (``0.1``, not ``0.10000000149011612``: Arrow's cast of a
    float32 to text gives its own shortest digits, Python's float the float64 the float32 holds), each float16
    as a float64, and each time64[ns] (in a list, struct or map too) as its text (Python's time holds
    microseconds: a template wrote ``03:04:05.123456`` where a field wrote ``03:04:05.123456789``): a field
    naming the column and a template then write one text, Python's (``0.1``, ``1.0``)."""
    for index, kind in enumerate(batch.schema.types):
        if names is not None and batch.column_names[index] not in names:
            continue
        column = batch.column(index)
        if _holds_nanosecond_times(kind):
            column = _nanosecond_times_as_text(column.combine_chunks())
        via = _floats_replaced(column.type, pa.string())
        if via != column.type:
            wide = _floats_replaced(column.type, pa.float64())
            column = pc.cast(column, via) if via == wide else pc.cast(pc.cast(column, via), wide)
        if column.type != kind:
            batch = batch.set_column(index, batch.schema.field(index).with_type(column.type), column)
    return batch


def _holds_nanosecond_times(kind: pa.DataType) -> bool:
    if pa.types.is_time64(kind):
        return kind.unit == "ns"
    if pa.types.is_struct(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return any(_holds_nanosecond_times(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_fixed_size_list(kind):
        return _holds_nanosecond_times(kind.value_type)
    if pa.types.is_map(kind):
        return _holds_nanosecond_times(kind.key_type) or _holds_nanosecond_times(kind.item_type)
    return False


def _nanosecond_times_as_text(values: pa.Array) -> pa.Array:
    """``values`` with each time64[ns] in them (in a list, struct or map too) as its text (``time_texts``):
    Python's time, which a nested value becomes, would cut it to microseconds."""
    kind = values.type
    if not _holds_nanosecond_times(kind):
        return values
    if values.offset:  # a slice: Arrow builds no list with both a null mask and offsets that start past 0
        values = pa.concat_arrays([values])
    mask = values.is_null() if values.null_count else None
    if pa.types.is_time64(kind):
        return time_texts(pa.chunked_array([values]))
    if pa.types.is_struct(kind):
        children = [_nanosecond_times_as_text(values.field(i)) for i in range(kind.num_fields)]
        fields = [kind.field(i).with_type(child.type) for i, child in enumerate(children)]
        return pa.StructArray.from_arrays(children, fields=fields, mask=mask)
    if pa.types.is_map(kind):
        keys, items = _nanosecond_times_as_text(values.keys), _nanosecond_times_as_text(values.items)
        return pa.MapArray.from_arrays(values.offsets, keys, items, mask=mask)
    if pa.types.is_fixed_size_list(kind):
        size = kind.list_size
        return pa.FixedSizeListArray.from_arrays(_nanosecond_times_as_text(values.values), size, mask=mask)
    array_type = pa.LargeListArray if pa.types.is_large_list(kind) else pa.ListArray
    return array_type.from_arrays(values.offsets, _nanosecond_times_as_text(values.values), mask=mask)


def _floats_replaced(kind: pa.DataType, float32: pa.DataType) -> pa.DataType:
    """``kind`` with each float32 in it (a list's, struct's or map's too) as ``float32``, each float16 as float64."""
    if pa.types.is_float32(kind):
        return float32
    if pa.types.is_float16(kind):
        return pa.float64()
    if pa.types.is_struct(kind):
        return pa.struct(
            [kind.field(i).with_type(_floats_replaced(kind.field(i).type, float32)) for i in range(kind.num_fields)]
        )
    if pa.types.is_map(kind):
        key, item = kind.key_field, kind.item_field
        return pa.map_(
            key.with_type(_floats_replaced(key.type, float32)),
            item.with_type(_floats_replaced(item.type, float32)),
            kind.keys_sorted,
        )
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        item = kind.value_field.with_type(_floats_replaced(kind.value_type, float32))
        if pa.types.is_fixed_size_list(kind):
            return pa.list_(item, kind.list_size)
        return pa.large_list(item) if pa.types.is_large_list(kind) else pa.list_(item)
    return kind


# A timestamp's or time's ticks a second, and the digits of a second's fraction Arrow's cast writes, by unit.
_TICKS = {"ms": (1000, 3), "us": (1_000_000, 6), "ns": (1_000_000_000, 9)}


def time_texts(values: pa.ChunkedArray) -> pa.Array:
    """A timestamp or time of day as a template writes it (Python's ``str``: ``2024-01-02 03:04:05``, a
    fraction of a second only where there is one, in microseconds, or nanoseconds where it has them, as
    pandas writes those; ``+01:00``), not as Arrow's cast writes it (a fraction in the column's unit on
    every value, ``05.000000`` or ``05.000``; ``+0100`` or ``Z``): the text of a value is not its unit's.
    A column with a time zone is written by Python."""
    unit = values.type.unit
    texts = pc.cast(values, pa.string()).combine_chunks()
    if unit == "s" and getattr(values.type, "tz", None) is None:
        return texts
    if getattr(values.type, "tz", None) is not None:
        python = as_python(values.combine_chunks())
        arrows = texts.to_pylist()
        return pa.array(
            [None if v is None else text if v is NOT_HELD else str(v) for v, text in zip(python, arrows, strict=True)],
            pa.string(),
        )
    per_second, digits = _TICKS[unit]
    storage = pa.int32() if values.type.bit_width == 32 else pa.int64()  # a time32's, as Arrow casts it
    ticks = pc.fill_null(pc.cast(values.combine_chunks(), storage), 0).to_numpy()
    whole = ticks % per_second == 0
    # 03:04:05, not 03:04:05.000000; 03:04:05.120000, not 03:04:05.120000000 (nor 03:04:05.120)
    texts = rewritten(texts, whole, lambda some: pc.utf8_slice_codeunits(some, 0, -digits - 1))
    if digits == 9:
        texts = rewritten(texts, ~whole & (ticks % 1000 == 0), lambda some: pc.utf8_slice_codeunits(some, 0, -3))
    elif digits < 6:
        texts = rewritten(texts, ~whole, lambda some: pc.binary_join_element_wise(some, "0" * (6 - digits), ""))
    return texts


def _first_problems(
    problems: list[str | None] | None, reasons: list[str | None], found: list[str | None], reason: str | list[str]
) -> tuple[list[str | None], list[str | None]]:
    """Each record's first problem and its reason, with ``found`` (one per record, ``reason`` for each or one
    per record) given to the records without one yet; the lists are made on the first problem (``problems``
    None before)."""
    if problems is None:
        problems, reasons = [None] * len(found), [None] * len(found)
    each = [reason] * len(found) if isinstance(reason, str) else reason
    for index, problem in enumerate(found):
        if problem and problems[index] is None:
            problems[index], reasons[index] = problem, each[index]
    return problems, reasons


@dataclass
class TemplateErrors:
    """The shape stage's template errors by kind (field and message, ``prompt: template failed: ...``, each record's
    place left out): the first kind, its first record's set-aside row, how many records failed so, and whether another
    kind was seen. No more is kept, as no more is asked (``recipe_template_error``): a message quoting the row's
    value is a kind of its own on every row. A failure on a row lacking a value the template reads (null, or one
    Python cannot hold) is the data's: counted apart (``data``), of no kind."""

    kind: str | None = None
    count: int = 0
    another: bool = False
    example: SetAsideExample | None = None
    data: int = 0

    def add(self, set_aside: pa.Table) -> TemplateErrors:
        """Count the template errors among ``set_aside`` rows, until a second kind is seen."""
        if self.another:
            return self
        failed = set_aside.filter(
            pc.and_(pc.equal(set_aside["stage"], Shape.name), pc.equal(set_aside["reason"], "template"))
        )
        places = (location(source) for source in failed["source"].to_pylist())
        for row, (at, detail) in enumerate(zip(places, failed["detail"].to_pylist(), strict=True)):
            problem = detail.removeprefix(f"{at}: ")
            if _EMPTY in problem or problem.endswith(_NOT_HELD):
                self.data += 1
                continue
            if self.kind is None:
                self.kind, self.example = problem, SetAsideExample.of(failed, row)
            elif problem != self.kind:
                self.another = True
                return self
            self.count += 1
        return self

    def example_as_published(self, scrub: Callable[[pa.Table], pa.Table] | None) -> str | None:
        """The example's detail as its set-aside row is published, which run and check quote alike."""
        return self.example.as_published(scrub) if self.example else None


def recipe_template_error(errors: TemplateErrors, set_aside: int, shaped: int) -> str | None:
    """The template error (``field: message``) that set aside every one of the ``shaped`` records the shape stage
    took (``set_aside`` of them in all), where it is one: the recipe's error (``{{ x.upper(1) }}``), as a misspelt
    column is, not the data's. Records lacking a value the template reads fail it whatever the recipe: beside
    the one kind they do not hide it, alone they are the data's. Records failing in another way, or some
    records made, are the data's too: quarantined one by one."""
    every_one_failed = set_aside == shaped == errors.count + errors.data
    if errors.count and not errors.another and every_one_failed:
        return errors.kind
    return None


# A JSON object or array's first line cut at its first comma: ``{"q": "hi"``, ``[1``, ``[["a"``; not a CSV's
# bracketed column name (``[id]``, ``{x}``).
_JSON_OPENING = re.compile(r'\s*(\{\s*"|\[\s*[\d"\[{\]-])')


def _one_column_header(batch: pa.Table) -> str:
    """A note where the rows have one column whose name holds a likely delimiter (``a;b;c``): a CSV file read
    with another delimiter than its own, each line one value; or where the first column's name opens a JSON
    object or array (``{"q": "hi"``): a JSON Lines file read as CSV, its first line taken for the header."""
    names = [name for name in batch.column_names if name not in ("id", "source")]
    if names and _JSON_OPENING.match(names[0]):
        # Its first key at most, not a value: the header is the file's first record (a name, an e-mail).
        key = re.match(r'\s*\{\s*"[^"]*"', names[0])
        opens = key.group(0).strip() if key else "["
        return f"; the header's first column opens {opens!r}: this looks like JSON Lines: format: jsonl?"
    delimiter = next((d for d in ";\t|" if len(names) == 1 and d in names[0]), None)
    if delimiter is None:
        return ""
    return f"; the header is one column, {names[0]!r}: is the file {delimiter!r}-separated? set the source's csv_delimiter: {delimiter!r}"


class Field:
    """How one record field is made from a row."""

    def __init__(self, target: str, spec: str | None) -> None:
        self.target, self.spec = target, spec
        spec = target if spec is None else spec
        self.is_template = "{{" in spec or "{%" in spec
        self.column = None if self.is_template else spec
        self.template = _ROW_ENV.from_string(spec) if self.is_template else None
        self.parts = _plain_parts(spec) if self.is_template else None
        # The names the template reads (a row holding a value Python cannot hold in one fails the template).
        self.template_columns = (
            jinja2.meta.find_undeclared_variables(_ROW_ENV.parse(spec)) if self.is_template else set()
        )
        # What of each column the field certainly renders: a column whole is (), a template's ``shot.cap``
        # ("cap",). An hf source refuses one that reaches an Image() feature in a dict (``{{ shot.img }}``).
        self.paths: dict[str, set[tuple[str | int, ...]]] = (
            _paths_read(_ROW_ENV.parse(spec), self.template_columns) if self.is_template else {spec: {()}}
        )

    def __reduce__(self) -> tuple[type[Field], tuple[str, str | None]]:
        # Compiled Jinja templates do not pickle; a distributed executor rebuilds the field from its spec.
        return (Field, (self.target, self.spec))


class Shape:
    name = "shape"

    def __init__(self, shape: RecordShape, carry: Mapping[str, str] | None = None) -> None:
        self.kind = shape.kind
        # Input columns passed through unchanged for later steps (the split's group and label columns), and
        # the setting that names each.
        carry = carry or {}
        self.carry = {
            c: by for c, by in carry.items() if c not in CONTENT_COLUMNS[shape.kind] and c not in ("id", "source")
        }
        self.fields = [Field(target, spec) for target, spec in shape.mapping().items()]
        self.required = {
            "document": {"text"},
            "instruction": {"prompt", "completion"},
            "vqa": {"image", "question", "answer"},
        }.get(self.kind, set())
        # The columns a record reads: only those are widened (a float32 column costs about 0.1 us a value; a
        # Parquet file's unread feature columns cost a hundred times the rest of the stage).
        self.reads = {
            *self.carry,
            *(field.column for field in self.fields),
            *(n for f in self.fields for n in f.template_columns),
        }
        # The columns a record lacking the key of becomes another thing than one holding null under it (set
        # aside as ``missing_column``, or a template's ``is defined`` choosing otherwise): a JSONL reader gives
        # each batch those its file holds (``FilesSourceReader``), so batch_rows changes no outcome.
        self.keyed = {
            *self.carry,
            *(f.column for f in self.fields if f.column is not None and f.target in self.required),
            *(n for f in self.fields for n in f.template_columns),
        }

    def __call__(self, batch: pa.Table) -> StageResult:
        batch = _widened_floats(batch, self.reads)
        columns: dict[str, pa.Array] = {}
        problems: list[str | None] | None = None  # per record, made only when a field has a problem
        reasons: list[str | None] = []
        for field in self.fields:
            values, field_problems, reason = self._render(field, batch)
            if values is None:
                continue
            columns[field.target] = values
            if any(field_problems):  # the usual case has none: no per-record step
                found = [problem and f"{field.target}: {problem}" for problem in field_problems]
                problems, reasons = _first_problems(problems, reasons, found, reason)
        for name, setting in self.carry.items():
            # A file without the column the split goes by (a record without the key holds null in it, and is
            # split as one without a value): its records are set aside as for a column a template uses, not
            # split as if the column were there, and a run in which no record has it fails (a misspelt name).
            if name not in batch.column_names:
                found = [f"column {name!r} is missing ({setting} names it)"] * batch.num_rows
                problems, reasons = _first_problems(problems, reasons, found, "missing_column")
        shaped = pa.table({"id": batch["id"], "source": batch["source"], **columns})
        if "image_bytes" in batch.column_names:  # the images connector's verified image goes on to the writer
            shaped = shaped.append_column("image_bytes", batch["image_bytes"])
        for name in self.carry:
            if name in batch.column_names and name not in shaped.column_names:
                shaped = shaped.append_column(name, key_texts(batch[name]))  # an object as one text
        for target in CONTENT_COLUMNS[self.kind]:
            if target not in shaped.column_names:
                shaped = shaped.append_column(target, pa.nulls(batch.num_rows, pa.string()))
        if problems is None:
            return StageResult(kept=shaped)
        keep = pa.array([p is None for p in problems])
        kept = shaped.filter(keep)
        bad = _widened_floats(batch.filter(pc.invert(keep)))  # a set-aside record's floats as a template's
        bad_reasons = [r for r in reasons if r is not None]
        sources = bad["source"].to_pylist()
        details = [f"{location(s)}: {p}" for s, p in zip(sources, (p for p in problems if p is not None), strict=True)]
        # A VQA record's image as its size, not its bytes' repr (``record_json``).
        records = [input_record_json(r) for r in rows_as_python(bad, as_text=True)[0]]
        set_aside = set_aside_rows(bad["id"], bad["source"], self.name, "quarantined", bad_reasons, details, records)
        return StageResult(kept=kept, set_aside=set_aside)

    def _render(self, field: Field, batch: pa.Table) -> tuple[pa.Array | None, list[str | None], str | list[str]]:
        """The field's values, its problem per record (an empty list when there are none) and their reason (one
        for all, or one per record)."""
        count = batch.num_rows
        if field.column is not None:
            if field.column not in batch.column_names:
                if field.target not in self.required:
                    return None, [], ""
                return (
                    None if count == 0 else pa.nulls(count, pa.string()),
                    [f"column '{field.column}' is missing{_one_column_header(batch)}"] * count,
                    "missing_column",
                )
            # Empty values are left to record validation, which owns the "must not be empty" rule.
            values = batch[field.column]
            if pa.types.is_nested(values.type):  # a Parquet struct, list or map (a JSONL one is JSON text already)
                # Arrow casts none of them to text: they are written as JSON, as a column of mixed types is.
                return _json_texts(field.column, values)
            if pa.types.is_float64(values.type):  # as a template writes it (1.0, 1e-07), not as Arrow's cast (1, 1e-7)
                return float_texts(values), [], ""
            if pa.types.is_timestamp(values.type) or pa.types.is_time(values.type):
                return time_texts(values), [], ""
            if pa.types.is_decimal(values.type):
                return decimal_texts(values), [], ""
            if pa.types.is_duration(values.type):  # as a template writes it (0:00:05), not its ticks (5000000)
                texts = [None if v is None else str(v) for v in as_python(values, as_text=True)]
                return pa.array(texts, pa.string()), [], ""
            # One chunk: the reader's many small ones make every later kernel pay per chunk.
            try:
                return pc.cast(values, pa.string()).combine_chunks(), [], ""
            except pa.ArrowInvalid:
                if not (pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)):
                    raise
                return _text_of_bytes(field.column, values)  # a Parquet binary column: some not UTF-8
        if field.parts is not None:
            names = [name for kind, name in field.parts if kind == "column"]
            usable = all(n in batch.column_names and is_text(batch[n].type) for n in names)
            if usable and not any(batch[n].null_count for n in names):
                pieces = [
                    pa.repeat(pa.scalar(text, pa.string()), count)
                    if kind == "text"
                    else batch[text].combine_chunks().cast(pa.string())
                    for kind, text in field.parts
                ]
                if not pieces:
                    return pa.array([""] * count, pa.string()), [], "template"
                if len(pieces) == 1:  # "{{ question }}": nothing to join, no copy of the column
                    return pieces[0], [], "template"
                return pc.binary_join_element_wise(*pieces, ""), [], "template"
        rendered: list[str | None] = []
        problems: list[str | None] = []
        # Each row's own reason: one lacking a name the template uses is a missing (or misspelt) column whatever
        # the rows batched with it (the run fails on a recipe error when no record has the column).
        reasons: list[str] = []
        # Only the columns the template reads become Python objects (a wide table's others cost as much each).
        read = [name for name in batch.column_names if name in field.template_columns and name not in ("id", "source")]
        rows, not_held = rows_as_python(batch.select(read))
        for row, unheld in zip(rows, not_held, strict=True):
            if unheld:  # a column the template reads (``read``)
                rendered.append(None)
                reasons.append("template")
                named = ", ".join(repr(name) for name in unheld)
                problems.append(f"template failed: {named} holds {_NOT_HELD}")
                continue
            # A value the template cannot work with (a division by zero, a key .format() does not find)
            # is the row's problem: it is quarantined by its line, and the run goes on.
            try:
                rendered.append(field.template.render(**row))
                problems.append(None)
                reasons.append("")
            except (jinja2.TemplateError, EmptyValue, TypeError, ValueError, ArithmeticError, LookupError) as error:
                rendered.append(None)
                missing = _UNDEFINED.fullmatch(str(error)) if isinstance(error, jinja2.UndefinedError) else None
                reasons.append("template" if missing is None else "missing_column")
                # Which of the template's values is empty: one of several it writes is no help. Any other error
                # beside one is said to be with it (``None`` has no ``upper``): the data's, not the recipe's.
                empty = ", ".join(repr(name) for name in read if row.get(name) is None)
                if missing:
                    said = f"column '{missing.group(1)}' is missing (the template uses it){_one_column_header(batch)}"
                    problems.append(said)
                elif isinstance(error, EmptyValue):
                    problems.append(f"template failed: {error}{': ' + empty if empty else ''}")
                else:
                    problems.append(f"template failed: {error}{f', with {empty} {_EMPTY}' if empty else ''}")
        return pa.array(rendered, pa.string()), problems, reasons
