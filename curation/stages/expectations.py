"""Validation with great-expectations: the recipe's expectations run on every batch; rows that fail
one are quarantined, with the expectation's name as the reason (``expect_column_values_to_not_be_null:prompt``).

Pydantic schema validation stays the first gate; this stage checks what a schema cannot say (value
sets, lengths, patterns, uniqueness). great-expectations validates pandas DataFrames, so each batch's
checked columns are converted (cheap: ~0.02 s per 100k rows); it is imported only when a recipe has
expectations, because the import alone takes seconds. ``unique`` holds within a batch
(``batch_rows``), and every occurrence of a repeated value fails it, as great-expectations defines it.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa

from curation.stages.base import StageError, StageResult, split_by_mask
from schemas.config import Expectation
from schemas.records import SIGNATURE_COLUMN_PREFIX, location, set_aside_rows

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

    def failures(self, frame: Any) -> list[tuple[str, str, list[int]]]:
        """(expectation type, column, failing row positions) for each expectation."""
        batch = self.batches.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(self.suite, result_format="COMPLETE")
        found = []
        for item in result.results:
            config = item.expectation_config
            if item.exception_info and item.exception_info.get("raised_exception"):
                message = item.exception_info.get("exception_message")
                raise StageError(
                    f"expectation {config.type} on {config.kwargs.get('column')!r} could not run: {message}"
                )
            found.append((config.type, config.kwargs["column"], list(item.result.get("unexpected_index_list") or [])))
        return found


class Expectations:
    """Quarantine the rows of each batch that fail any of the recipe's expectations."""

    name = "expectations"

    def __init__(self, specs: list[Expectation]) -> None:
        self.specs = specs
        self.columns = sorted({s.column for s in specs})
        self._suite: _Suite | None = None

    def __call__(self, batch: pa.Table) -> StageResult:
        missing = [c for c in self.columns if c not in batch.column_names]
        if missing:
            have = [c for c in batch.column_names if c not in ("id", "source")]
            raise StageError(f"expectations name columns the records do not have: {missing}; records have {have}")
        if self._suite is None:
            self._suite = _Suite(self.specs)
        failed: dict[int, list[str]] = {}
        counts: Counter[str] = Counter()
        for kind, column, rows in self._suite.failures(batch.select(self.columns).to_pandas()):
            name = f"{kind}:{column}"
            counts[name] += len(rows)
            for row in rows:
                failed.setdefault(int(row), []).append(name)
        keep = pa.array([row not in failed for row in range(batch.num_rows)])
        kept, bad = split_by_mask(batch, keep)
        bad_rows = sorted(failed)
        reasons = [failed[row][0] for row in bad_rows]
        sources = bad["source"].to_pylist()
        details = [
            f"{location(source)}: failed {', '.join(failed[row])}"
            for row, source in zip(bad_rows, sources, strict=True)
        ]
        # The raw record: its fields, not the id, source or signatures a dedup stage carries on.
        own = [c for c in bad.column_names if c not in ("id", "source") and not c.startswith(SIGNATURE_COLUMN_PREFIX)]
        records = [json.dumps(r, default=str) for r in bad.select(own).to_pylist()]
        aside = set_aside_rows(bad["id"], bad["source"], self.name, "quarantined", reasons, details, records)
        stats = {
            "rows_checked": batch.num_rows,
            "rows_failed": len(bad_rows),
            **{f"failed:{k}": v for k, v in counts.items()},
        }
        return StageResult(kept=kept, set_aside=aside, stats=stats)
