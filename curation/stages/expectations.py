"""Validation with great-expectations: the recipe's expectations run on every batch; rows that fail
one are quarantined, with the expectation's name as the reason (``expect_column_values_to_not_be_null:prompt``).

Pydantic schema validation stays the first gate; this stage checks what a schema cannot say (value
sets, lengths, patterns, uniqueness). great-expectations validates pandas DataFrames, so each batch's
checked columns are converted (cheap: ~0.02 s per 100k rows); it is imported only when a recipe has
expectations, because the import alone takes seconds. ``unique`` needs the whole run, not a batch:
it is ``UniqueValues``, a global stage right after the others, over the records that passed them;
every occurrence of a repeated value fails it, as great-expectations defines the expectation.
``matches_regex`` runs on RE2 here, not in great-expectations: Python's ``re`` can backtrack for ever
(``schemas.regex``); ``in_set`` runs here too: pandas' ``isin`` finds ``True == 1``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curation.stages.base import (
    StageError,
    StageResult,
    StageSettingError,
    as_python,
    is_text,
    require_columns,
    split_by_mask,
)
from curation.stages.shape import time_texts
from schemas.config import Expectation, between_needs_numbers, length_needs_text, needs_scalars
from schemas.json_values import decimal_text
from schemas.records import SIGNATURE_COLUMN_PREFIX, empty_set_aside, location, record_json, set_aside_rows
from schemas.regex import re2_pattern

_GX_TYPES = {
    "not_null": "ExpectColumnValuesToNotBeNull",
    "unique": "ExpectColumnValuesToBeUnique",
    "length_between": "ExpectColumnValueLengthsToBeBetween",
    "between": "ExpectColumnValuesToBeBetween",
    "matches_regex": "ExpectColumnValuesToMatchRegex",
    "in_set": "ExpectColumnValuesToBeInSet",
}


def _arguments(spec: Expectation) -> dict[str, Any]:
    if spec.check in ("length_between", "between"):
        as_int = spec.check == "length_between"
        low = None if spec.min is None else (int(spec.min) if as_int else spec.min)
        high = None if spec.max is None else (int(spec.max) if as_int else spec.max)
        return {"min_value": low, "max_value": high}
    if spec.check == "matches_regex":
        return {"regex": spec.regex}
    if spec.check == "in_set":
        return {"value_set": spec.values}
    return {}


class _Suite:
    """An ephemeral great-expectations context with one suite and a whole-DataFrame batch definition."""

    def __init__(self, specs: list[Expectation]) -> None:
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,  # no network calls from a pipeline run
            progress_bars=ProgressBarsConfig(globally=False),
        )
        context = gx.get_context(mode="ephemeral", project_config=config)
        asset = context.data_sources.add_pandas("curation").add_dataframe_asset("batch")
        self.batches = asset.add_batch_definition_whole_dataframe("whole")
        suite = gx.ExpectationSuite(name="recipe")
        for spec in specs:
            suite.add_expectation(getattr(gxe, _GX_TYPES[spec.check])(column=spec.column, **_arguments(spec)))
        self.suite = context.suites.add(suite)

    def failures(self, frame: Any) -> list[tuple[str, str, str, list[int]]]:
        """(expectation type, column, its settings as a reader would say them, failing row positions) for
        each expectation."""
        batch = self.batches.get_batch(batch_parameters={"dataframe": frame})
        with warnings.catch_warnings():
            # pandas' str.contains says a regex with groups does not extract them: matching is all we ask.
            warnings.filterwarnings("ignore", "This pattern is interpreted as a regular expression", UserWarning)
            result = batch.validate(self.suite, result_format="COMPLETE")
        found = []
        for item in result.results:
            config = item.expectation_config
            if item.exception_info and item.exception_info.get("raised_exception"):
                message = item.exception_info.get("exception_message")
                raise StageError(
                    f"expectation {config.type} on {config.kwargs.get('column')!r} could not run: {message}"
                )
            rows = list(item.result.get("unexpected_index_list") or [])
            found.append((config.type, config.kwargs["column"], _settings(config.kwargs), rows))
        return found


def _settings(kwargs: dict[str, Any]) -> str:
    """An expectation's own settings (`` (regex "^[A-Z]")``): two of one kind on one column share a name."""
    said = [
        f"{name} {json.dumps(kwargs[key], ensure_ascii=False)}"
        for key, name in (("regex", "regex"), ("value_set", "values"), ("min_value", "min"), ("max_value", "max"))
        if kwargs.get(key) is not None
    ]
    return f" ({', '.join(said)})" if said else ""


def _snake(name: str) -> str:
    """great-expectations' name of an expectation class (``expect_column_values_to_match_regex``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _as_written(column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """A date, time, timestamp or duration column as the text a field naming it writes (Python's:
    ``2024-01-01``, ``2024-01-02 03:04:05``, ``+01:00``, ``1 day, 0:00:05``), other columns as they are:
    ``in_set``'s values are text (an unquoted date is a recipe error), and great-expectations compared
    them with the date objects pandas makes, which no text equals (every row failed)."""
    kind = column.type
    if pa.types.is_timestamp(kind) or pa.types.is_time(kind):
        return time_texts(column)
    if pa.types.is_date(kind):
        return pc.cast(column, pa.string())
    if pa.types.is_duration(kind):
        return pa.array([None if v is None else str(v) for v in as_python(column, as_text=True)], pa.string())
    return column


def _not_matching(column: pa.ChunkedArray, pattern: str) -> list[int]:
    """Positions of the values RE2's ``pattern`` finds nowhere in. Nulls pass, as in great-expectations;
    a value that is not text is matched as its Python text (``1.5``, ``True``), as pandas' ``astype(str)``
    gave great-expectations, a date or time as ``in_set`` compares it (``_as_written``)."""
    column = _as_written(column)
    if not is_text(column.type):
        column = pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())
    matched = pc.match_substring_regex(column, pattern)
    return np.flatnonzero(pc.invert(matched).fill_null(False)).tolist()


def _kind_and_value(value: Any) -> tuple[str, Any]:
    """A value with its kind, for ``in_set``: Python (and pandas' ``isin``) finds ``True == 1``, and an int
    column's 1 passed ``in_set [true]``; equal numbers of two types (1 and 1.0) stay equal."""
    if isinstance(value, bool):
        return "boolean", value
    if isinstance(value, int | float | Decimal):
        return "number", value
    return type(value).__name__, value


def _as_held(value: Any, kind: pa.DataType) -> Any:
    """An allowed number as a column of ``kind`` holds it, so that equal means what the recipe wrote: a
    float32 column's 0.1 is float32(0.1), not the float 0.1; a decimal column's 0.10 is Decimal 0.1 (the
    float 0.1 is not, by exact value). ``None`` where the type cannot hold it (1e300 in float32)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return value
    if pa.types.is_decimal(kind) and isinstance(value, float) and math.isfinite(value):
        return Decimal(repr(value))  # the number as written, which a decimal column holds exactly or not at all
    if pa.types.is_floating(kind) and kind.bit_width < 64:
        with np.errstate(over="ignore"):
            held = float(kind.to_pandas_dtype()(value))
        return None if math.isinf(held) and not math.isinf(value) else held
    return value


def _not_in_set(column: pa.ChunkedArray, values: list[Any]) -> list[int]:
    """Positions of the values not among ``values``, a boolean never equal to a number, a number compared as
    the column's type holds it (``_as_held``). Nulls pass, and so does NaN, as in great-expectations (pandas
    takes NaN for a null); a date or time is compared as its text (``_as_written``)."""
    allowed = {_kind_and_value(held) for value in values if (held := _as_held(value, column.type)) is not None}
    return [
        at
        for at, value in enumerate(_as_written(column).to_pylist())
        if value is not None and value == value and _kind_and_value(value) not in allowed
    ]


def _numbers(kind: pa.DataType) -> bool:
    """Whether ``between``'s numeric bounds compare with values of ``kind`` (a column of nulls alone too)."""
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_null(kind)
        or pa.types.is_boolean(kind)
    )


class Expectations:
    """Quarantine the rows of each batch that fail any of the recipe's expectations."""

    name = "expectations"

    def __init__(self, specs: list[Expectation], *, name: str | None = None) -> None:
        self.name = name or self.name  # a second expectations entry's (``own_name``)
        self.specs = specs
        self.columns = sorted({s.column for s in specs})
        self._suite: _Suite | None = None
        self._patterns = {s.regex: re2_pattern(s.regex) for s in specs if s.regex is not None}

    def check_columns(self, batch: pa.Table) -> None:
        """Raise ``StageSettingError`` where a column is not there or holds values its checks cannot judge:
        where the recipe could not tell its type (else checked at load). ``curation check`` asks it of the
        head of the input."""
        require_columns(batch, self.columns, f"{self.name} columns")
        for spec in self.specs:
            kind = batch[spec.column].type
            if spec.check == "between" and is_text(kind):
                raise StageSettingError(
                    f"{self.name}: {between_needs_numbers(spec.column)}; declare it int or float in input_schema "
                    "(a value that is no number, as JSONL or CSV can hold, is then quarantined)"
                )
            if spec.check == "between" and not _numbers(kind):
                raise StageSettingError(f"{self.name}: {between_needs_numbers(spec.column, str(kind))}")
            if spec.check in ("in_set", "matches_regex") and pa.types.is_nested(kind):
                raise StageSettingError(f"{self.name}: {needs_scalars(spec.check, spec.column, str(kind))}")
            if spec.check == "length_between" and not (is_text(kind) or pa.types.is_null(kind)):
                raise StageSettingError(f"{self.name}: {length_needs_text(spec.column, str(kind))}")
            if spec.check == "in_set" and pa.types.is_temporal(kind):
                not_text = [value for value in spec.values or [] if not isinstance(value, str)]
                if not_text:  # compared as the column's text (``_as_written``): no number or boolean is ever one
                    raise StageSettingError(
                        f"{self.name}: in_set compares {spec.column!r} ({kind}) as its text, and "
                        f"{json.dumps(not_text)} are not text: every row would fail (quote them, as a field "
                        "naming the column writes its values: '2024-01-01', '2024-01-02 03:04:05')"
                    )

    def _failures(self, batch: pa.Table) -> list[tuple[str, str, str, list[int]]]:
        """``_Suite.failures`` of every expectation, in the recipe's order; ``matches_regex`` by RE2,
        ``in_set`` by ``_not_in_set``."""
        found = {}
        others = [s for s in self.specs if s.check not in ("matches_regex", "in_set")]
        if others:
            if self._suite is None:
                self._suite = _Suite(others)
            checked = batch.select(sorted({s.column for s in others}))
            frame = pa.table({name: _as_written(checked[name]) for name in checked.column_names}).to_pandas()
            try:
                results = self._suite.failures(frame)
            except StageError as error:  # named as the run names the stage, which the CLI finds in the recipe
                raise StageError(f"{self.name}: {error}") from None
            found = {(kind, column, settings): rows for kind, column, settings, rows in results}
        keys = [(_snake(_GX_TYPES[s.check]), s.column, _settings(_arguments(s))) for s in self.specs]
        for spec, key in zip(self.specs, keys, strict=True):
            if spec.check == "matches_regex":
                found[key] = _not_matching(batch[spec.column], self._patterns[spec.regex])
            elif spec.check == "in_set":
                found[key] = _not_in_set(batch[spec.column], spec.values or [])
        # The recipe's order, which names a row's first failure its reason.
        ordered = dict.fromkeys(k for k in keys if k in found) | dict.fromkeys(found)
        return [(*key, found[key]) for key in ordered]

    def __call__(self, batch: pa.Table) -> StageResult:
        self.check_columns(batch)
        failed: dict[int, list[tuple[str, str]]] = {}
        counts: Counter[str] = Counter()
        for kind, column, settings, rows in self._failures(batch):
            name = f"{kind}:{column}"
            counts[name] += len(rows)
            for row in rows:
                failed.setdefault(int(row), []).append((name, settings))
        keep = pa.array([row not in failed for row in range(batch.num_rows)])
        kept, bad = split_by_mask(batch, keep)
        bad_rows = sorted(failed)
        reasons = [failed[row][0][0] for row in bad_rows]
        sources = bad["source"].to_pylist()
        details = [
            f"{location(source)}: failed {', '.join(name + settings for name, settings in failed[row])}"
            for row, source in zip(bad_rows, sources, strict=True)
        ]
        # The raw record: its fields, not the id, source or signatures a dedup stage carries on.
        own = [c for c in bad.column_names if c not in ("id", "source") and not c.startswith(SIGNATURE_COLUMN_PREFIX)]
        records = [record_json(r) for r in bad.select(own).to_pylist()]
        aside = set_aside_rows(bad["id"], bad["source"], self.name, "quarantined", reasons, details, records)
        stats = {
            "rows_checked": batch.num_rows,
            "rows_failed": len(bad_rows),
            **{f"failed:{k}": v for k, v in counts.items()},
        }
        return StageResult(kept=kept, set_aside=aside, stats=stats)


def _comparable(column: pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A column's values as text that is equal where they are, after their kind (``number:2``, ``text:2``):
    text, a number and a boolean of the same Arrow text (``2``, ``true``) from two files are no repeat;
    two equal numbers are one value whatever their type (1 and 1.0 are ``number:1``). A number or boolean
    as Arrow writes it (a decimal without its trailing zeros); a date or time is text, as the output writes
    it (``_as_written``: ``2024-01-02 03:04:05``, not Arrow's ``2024-01-02 03:04:05.000000``); JSON of a
    struct, list or map (the record's ``source``), which Arrow cannot cast to text; a binary value (an
    image) by its sha256, which needs no UTF-8 and spares the set-aside record its megabytes; a float's NaN
    is null."""
    kind = column.type
    if pa.types.is_temporal(kind):
        tag, text = "text", _as_written(column)
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        digests = [None if v is None else f"sha256:{hashlib.sha256(v).hexdigest()}" for v in column.to_pylist()]
        tag, text = "bytes", pa.array(digests, pa.string())
    elif pa.types.is_nested(kind):
        texts = [None if v is None else json.dumps(v, sort_keys=True, default=str) for v in column.to_pylist()]
        tag, text = "json", pa.array(texts, pa.string())
    elif pa.types.is_decimal(kind):
        tag, text = "number", pa.array([_number_text(v) for v in column.to_pylist()], pa.string())
    elif pa.types.is_floating(kind):  # Arrow's shortest text for the type: a float32's 0.1 is 0.1
        # NaN is no value, as a null is: great-expectations (pandas) passes every NaN, and not_null fails it.
        tag, text = "number", _float_texts(pc.if_else(pc.is_nan(column), None, column))
    elif pa.types.is_integer(kind):  # an integer's text is already the canonical one
        tag, text = "number", pc.cast(column, pa.string())
    elif pa.types.is_boolean(kind):
        tag, text = "boolean", pc.cast(column, pa.string())
    else:
        tag, text = "text", pc.cast(column, pa.string())
    return pc.binary_join_element_wise(f"{tag}:", text, "")  # a null stays null: no value


def _float_texts(column: pa.ChunkedArray) -> pa.Array:
    """``_number_text`` of each float of ``column`` as Arrow writes it: only its exponent forms (``1e+30``,
    ``1e-07``) and ``-0`` differ from that text, so only those rows are made in Python, not one per row."""
    texts = pc.cast(column, pa.string()).combine_chunks()
    redo = pc.fill_null(pc.or_(pc.match_substring(texts, "e"), pc.equal(texts, "-0")), False)
    if not pc.any(redo).as_py():
        return texts
    redone = [_number_text(Decimal(v)) for v in texts.filter(redo).to_pylist()]
    return pc.replace_with_mask(texts, redo, pa.array(redone, pa.string()))


def _number_text(number: Decimal | None) -> str | None:
    """One text for every number of one value, as an integer column writes it where it is whole: Arrow
    writes a decimal's scale (1 as 1.00), a float as 1e+16 or 1e-07 and its zero as -0, and two files that
    held one value as two types were no repeat. An infinity as Arrow writes a float's (inf)."""
    if number is None:
        return None
    if not number.is_finite():
        return str(float(number))
    return decimal_text(number)


def _shown(comparable: str | None) -> Any:
    """The value a ``_comparable`` text stands for, as the set-aside record shows it: a number or boolean
    as JSON has them (``2``, ``true``), any other as its text."""
    if comparable is None:
        return None
    tag, _, text = comparable.partition(":")
    if tag in ("number", "boolean"):
        try:
            return json.loads(text)
        except ValueError:  # nan, inf: no JSON number
            return text
    return text


class UniqueValues:
    """``unique`` expectations over the whole run: each record whose value in one of ``columns`` another
    record also has is quarantined (all occurrences, as great-expectations defines it; nulls and NaN are
    not values). A global stage: ``signatures`` per batch, ``resolve`` over them all, on either executor."""

    name = "expectations"

    def __init__(self, columns: list[str], *, name: str | None = None) -> None:
        self.name = name or self.name  # as ``Expectations.name``
        self.columns = list(dict.fromkeys(columns))

    def signatures(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, self.columns, f"{self.name} columns")
        values = {f"value:{c}": _comparable(batch[c]) for c in self.columns}
        return pa.table({"id": batch["id"], "source": batch["source"], **values})

    def resolve(self, signatures: Iterable[pa.Table]) -> pa.Table:
        tables = [t for t in signatures if t.num_rows]
        if not tables:
            return empty_set_aside()
        table = pa.concat_tables(tables)
        frame = pl.from_arrow(table.select([f"value:{c}" for c in self.columns]))
        assert isinstance(frame, pl.DataFrame)
        failed = {
            column: (frame[f"value:{column}"].is_duplicated() & frame[f"value:{column}"].is_not_null()).to_numpy()
            for column in self.columns
        }
        rows = np.flatnonzero(np.logical_or.reduce(list(failed.values())))
        if not len(rows):
            return empty_set_aside()
        bad = table.take(pa.array(rows))
        names = [
            [f"expect_column_values_to_be_unique:{c}" for c in self.columns if failed[c][row]] for row in rows.tolist()
        ]
        sources = bad["source"].to_pylist()
        details = [
            f"{location(source)}: failed {', '.join(found)}" for source, found in zip(sources, names, strict=True)
        ]
        values = {c: [_shown(v) for v in bad[f"value:{c}"].to_pylist()] for c in self.columns}
        # The values the expectation is about, not the whole record: the resolve sees only these.
        records = [json.dumps({c: values[c][i] for c in self.columns}) for i in range(bad.num_rows)]
        reasons = [found[0] for found in names]
        return set_aside_rows(bad["id"], bad["source"], self.name, "quarantined", reasons, details, records)
