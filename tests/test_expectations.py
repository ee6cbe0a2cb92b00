"""great-expectations suites: each expectation quarantines exactly the rows that fail it, by name."""

from __future__ import annotations

import decimal
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from curation.published import read_manifest
from curation.stages.expectations import Expectations
from schemas.config import Expectation, RecipeError, parse_recipe
from tests.helpers import lineage_rows, outputs, processed, run, set_aside, sqlite_db, write_jsonl

ROWS = [
    {"q": "Categorise: coffee at Blue Bottle", "a": "food", "tag": "food"},  # passes everything
    {"q": "Categorise: rent", "a": "housing", "tag": "rent"},  # tag not in set
    {"q": "x", "a": "travel", "tag": "travel"},  # prompt too short
    {"q": "categorise: lowercase start", "a": "food", "tag": "food"},  # prompt does not match ^[A-Z]
    {"q": "Categorise: taxi to airport", "a": "travel", "tag": "travel"},  # passes
    {"q": "Categorise: taxi to airport", "a": "travel", "tag": "travel"},  # same prompt as the row above
]

RECIPE = {
    "dataset": "tx",
    "sources": [{"path": "in.jsonl"}],
    "record": {"kind": "instruction", "prompt": "q", "completion": "a", "label": "tag"},
    "stages": [
        {
            "type": "expectations",
            "expect": [
                {"column": "label", "check": "in_set", "values": ["food", "travel", "housing"]},
                {"column": "prompt", "check": "length_between", "min": 5, "max": 200},
                {"column": "prompt", "check": "matches_regex", "regex": "^[A-Z]"},
                {"column": "prompt", "check": "unique"},
                {"column": "completion", "check": "not_null"},
            ],
        }
    ],
}


def test_failing_rows_are_quarantined_with_the_expectation_name(workdir: Path) -> None:
    write_jsonl(workdir / "in.jsonl", ROWS)
    version = Path(run(workdir, RECIPE).version_uri)
    manifest = read_manifest(str(version))
    assert manifest.counts.reasons["quarantined"] == {
        "expect_column_values_to_be_in_set:label": 1,
        "expect_column_value_lengths_to_be_between:prompt": 1,
        "expect_column_values_to_match_regex:prompt": 1,
        "expect_column_values_to_be_unique:prompt": 2,
    }
    assert [r["prompt"] for r in outputs(version)] == ["Categorise: coffee at Blue Bottle"]
    aside = {row["source"]["line"]: row for row in set_aside(version)}
    assert sorted(aside) == [2, 3, 4, 5, 6]
    values = '["food", "travel", "housing"]'
    assert aside[2]["detail"].endswith(f"in.jsonl:2: failed expect_column_values_to_be_in_set:label (values {values})")
    # Which of a column's checks of one kind it failed: their settings tell them apart.
    assert aside[3]["detail"].endswith(
        "failed expect_column_value_lengths_to_be_between:prompt (min 5, max 200), "
        'expect_column_values_to_match_regex:prompt (regex "^[A-Z]")'
    )
    assert aside[4]["detail"].endswith('failed expect_column_values_to_match_regex:prompt (regex "^[A-Z]")')
    assert '"label": "rent"' in aside[2]["record"]  # the reviewer sees the record as it was
    assert aside[6]["detail"].endswith("in.jsonl:6: failed expect_column_values_to_be_unique:prompt")
    stats = manifest.stats["stages"]["expectations"]  # the per-batch checks; unique is over the whole run
    assert stats["rows_checked"] == 6 and stats["rows_failed"] == 3
    assert stats["failed:expect_column_values_to_not_be_null:completion"] == 0


def test_unique_holds_across_batches_and_files(workdir: Path) -> None:
    rows = [{"q": f"Question {n}?", "a": "Yes.", "ref": f"T-{n % 45}"} for n in range(50)]
    write_jsonl(workdir / "in" / "a.jsonl", rows[:30])
    write_jsonl(workdir / "in" / "b.jsonl", rows[30:])
    recipe = {
        "dataset": "tx",
        "sources": [{"path": "in"}],
        "input_schema": {"columns": {"q": "str", "a": "str", "ref": "str"}},
        "record": {"kind": "instruction", "prompt": "{{ q }} ({{ ref }})", "completion": "a"},
        "stages": [
            {
                "type": "expectations",
                "expect": [{"column": "completion", "check": "unique"}, {"column": "prompt", "check": "unique"}],
            }
        ],
        "batch_rows": 8,  # each repeat lies in another batch than its first
    }
    # Every completion is the same: all 50 fail; prompts are all distinct.
    version = Path(run(workdir, recipe).version_uri)
    assert read_manifest(str(version)).counts.reasons == {
        "quarantined": {"expect_column_values_to_be_unique:completion": 50}
    }
    recipe["stages"] = [{"type": "expectations", "expect": [{"column": "ref", "check": "unique"}]}]
    recipe["record"]["label"] = "ref"
    recipe["stages"][0]["expect"][0]["column"] = "label"
    version = Path(run(workdir, recipe, full_refresh=True).version_uri)
    aside = sorted((row["source"]["uri"].rsplit("/", 1)[1], row["source"]["line"]) for row in set_aside(version))
    # T-0..T-4 appear twice: lines 1-5 of a.jsonl and lines 16-20 of b.jsonl (rows 45-49), all of them fail.
    assert aside == [("a.jsonl", n) for n in range(1, 6)] + [("b.jsonl", n) for n in range(16, 21)]
    assert len(outputs(version)) == 40
    (first,) = [row for row in set_aside(version) if row["source"]["line"] == 1]
    assert first["record"] == '{"label": "T-0"}' and first["reason"] == "expect_column_values_to_be_unique:label"


def test_unique_on_dates_and_times_shows_them_as_the_output_writes_them() -> None:
    import datetime

    import pyarrow as pa

    from curation.stages.expectations import UniqueValues
    from schemas.records import source_array

    moment = datetime.datetime(2024, 1, 2, 3, 4, 5)
    batch = pa.table(
        {
            "id": list("abc"),
            "source": source_array("files", "/t.parquet", [1, 2, 3]),
            "at": pa.array([moment, moment, moment.replace(microsecond=120000)], pa.timestamp("us")),
            "took": pa.array([datetime.timedelta(seconds=5)] * 2 + [None], pa.duration("ms")),
        }
    )
    stage = UniqueValues(["at", "took"])
    aside = stage.resolve([stage.signatures(batch.slice(0, 1)), stage.signatures(batch.slice(1))])
    assert aside["id"].to_pylist() == ["a", "b"]  # c's fraction of a second makes it another value
    # Arrow's text would be "2024-01-02 03:04:05.000000" and "5000": not what a published record holds.
    assert aside["record"].to_pylist() == ['{"at": "2024-01-02 03:04:05", "took": "0:00:05"}'] * 2


def test_unique_on_the_record_source_a_list_or_an_image_compares_their_values() -> None:
    import pyarrow as pa

    from curation.stages.expectations import UniqueValues
    from schemas.records import source_array

    # The record's source (a struct), a list and binary: Arrow cannot cast them to text (a traceback).
    batch = pa.table(
        {
            "id": list("abcd"),
            "source": source_array("files", "/t.jsonl", [1, 2, 1, 3]),
            "tags": [[1, 2], [2], [1, 2], None],
            "image_bytes": [b"\xff\xd8a", b"\xff\xd8b", b"\xff\xd8c", b"\xff\xd8b"],
        }
    )
    stage = UniqueValues(["source", "tags", "image_bytes"])
    aside = stage.resolve([stage.signatures(batch.slice(0, 2)), stage.signatures(batch.slice(2))])
    reasons = dict(zip(aside["id"].to_pylist(), aside["reason"].to_pylist(), strict=True))
    assert reasons == {
        "a": "expect_column_values_to_be_unique:source",  # and tags: two failed, the first is the reason
        "c": "expect_column_values_to_be_unique:source",
        "b": "expect_column_values_to_be_unique:image_bytes",
        "d": "expect_column_values_to_be_unique:image_bytes",
    }
    (record,) = [r for i, r in zip(aside["id"].to_pylist(), aside["record"].to_pylist(), strict=True) if i == "b"]
    assert '"image_bytes": "sha256:' in record


def test_not_null_and_between_on_a_batch() -> None:
    import pyarrow as pa

    from schemas.records import source_array

    batch = pa.table(
        {
            "id": ["a", "b", "c", "d"],
            "source": source_array("files", "/t.jsonl", [1, 2, 3, 4]),
            "text": ["x", None, "y", "z"],
            "score": [0.5, 0.1, 1.5, None],
        }
    )
    stage = Expectations(
        [Expectation(column="text", check="not_null"), Expectation(column="score", check="between", min=0, max=1)]
    )
    result = stage(batch)
    assert result.kept["id"].to_pylist() == ["a", "d"]  # a null is not "out of range"; only not_null catches nulls
    assert result.set_aside["reason"].to_pylist() == [
        "expect_column_values_to_not_be_null:text",
        "expect_column_values_to_be_between:score",
    ]


def test_a_regex_with_groups_anchors_and_unicode_matches_without_warnings() -> None:
    import warnings

    import pyarrow as pa

    from schemas.records import source_array

    texts = ["Ünïcode first", "ünïcode lower", "東京はどこ?", "plain"]
    batch = pa.table({"id": list("abcd"), "source": source_array("files", "/t.jsonl", [1, 2, 3, 4]), "text": texts})
    stage = Expectations([Expectation(column="text", check="matches_regex", regex=r"^(?P<first>[A-ZÀ-Þ]|\w+\?$)")])
    stage(batch)  # imports great-expectations, which sends warnings to logging (to the user's terminal)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = stage(batch)
    # pandas' note on groups reached the user's terminal as a logged warning, on every batch
    assert not [w for w in caught if "match groups" in str(w.message)]
    assert result.kept["id"].to_pylist() == ["a", "c"]  # \w is Unicode's, as Python's re has it
    assert result.set_aside["reason"].to_pylist() == ["expect_column_values_to_match_regex:text"] * 2


def test_unknown_column_is_a_clear_error_and_bad_specs_fail_the_recipe() -> None:
    import pyarrow as pa

    from schemas.records import source_array

    batch = pa.table({"id": ["a"], "source": source_array("files", "/t.jsonl", [1]), "text": ["x"]})
    with pytest.raises(RecipeError, match=r"\['labl'\] are not columns of the records; they have \['text'\]"):
        Expectations([Expectation(column="labl", check="not_null")])(batch)
    with pytest.raises(RecipeError, match="in_set needs values"):
        parse_recipe(
            "dataset: d\nsources: [{path: x}]\nstages:\n  - type: expectations\n    expect: [{column: a, check: in_set}]\n"
        )


def test_a_column_the_records_do_not_have_is_named_at_load() -> None:
    text = "dataset: d\nsources: [{path: x}]\nstages:\n  - type: expectations\n    expect:\n      - {column: labl, check: not_null}\n"
    with pytest.raises(RecipeError, match=r"stages.0.expect.0.column \(line 6\): 'labl' is not a column; instruction"):
        parse_recipe(text)
    # The record's id and source are columns too: unique ids catch two rows of one SQL key.
    for column in ("id", "source"):
        parse_recipe(text.replace("labl", column))


def _expect(spec: str, extra: str = "") -> str:
    return f"dataset: d\nsources: [{{path: x}}]\n{extra}stages:\n  - type: expectations\n    expect:\n      - {spec}\n"


def test_a_regex_that_does_not_compile_is_named_at_load() -> None:
    # great-expectations passed every row against it.
    with pytest.raises(RecipeError, match=r"stages.0.expect.0.regex \(line 6\): .*not a valid regular expression"):
        parse_recipe(_expect("{column: prompt, check: matches_regex, regex: '(['}"))


def test_between_on_text_is_a_recipe_error_where_the_type_is_known_and_on_the_first_batch_otherwise() -> None:
    import pyarrow as pa

    from schemas.records import source_array

    # A record's fields are text, as is a carried column declared str: great-expectations passes it all.
    text = "between compares numbers, and 'prompt' holds text: every row would pass"
    with pytest.raises(RecipeError, match=rf"stages.0.expect.0.check \(line 6\): {text}"):
        parse_recipe(_expect("{column: prompt, check: between, min: 0, max: 1}"))
    declared = "input_schema: {{columns: {{q: str, a: str, team: {}}}}}\noutput: {{group_by: team}}\n"
    with pytest.raises(RecipeError, match="'team' holds text"):
        parse_recipe(_expect("{column: team, check: between, min: 0, max: 1}", declared.format("str")))
    parse_recipe(_expect("{column: team, check: between, min: 0, max: 1}", declared.format("int")))
    # Undeclared, the column's type shows on the first batch.
    stage = Expectations([Expectation(column="team", check="between", min=0, max=1)])
    batch = pa.table({"id": ["a"], "source": source_array("files", "/t.jsonl", [1]), "team": ["7"]})
    with pytest.raises(RecipeError, match="expectations: between compares numbers, and 'team' holds text"):
        stage(batch)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        # A setting of another check changed nothing, unseen.
        (
            "{column: prompt, check: unique, regex: '^Q'}",
            r"expect.0 \(line 6\): .*regex does not apply to unique: it takes no setting",
        ),
        (
            "{column: prompt, check: between, values: [1], min: 1}",
            "values does not apply to between: it takes min and max",
        ),
        ("{column: prompt, check: length_between, min: 1.5}", "its min and max are whole numbers"),  # was cut to 1
        # pydantic said a null is none of a string, an integer, a number and a boolean: four lines.
        (
            "{column: label, check: in_set, values: [a, null]}",
            r"expect.0.values \(line 6\): .*a null is no value to be in a set",
        ),
        # A date YAML read unquoted: four lines too, none saying to quote it.
        (
            "{column: day, check: in_set, values: ['2024-01-02', 2024-01-01]}",
            r"expect.0.values \(line 6\): 2024-01-01 is a date to YAML, not text: quote it \(in_set compares text, ",
        ),
        (
            "{column: day, check: in_set, values: [2024-01-01T10:00:00Z]}",
            r"expect.0.values \(line 6\): 2024-01-01 10:00:00\+00:00 is a date to YAML, not text: quote it",
        ),
    ],
)
def test_an_expectation_setting_that_would_change_nothing_or_not_what_it_says_is_named(spec: str, problem: str) -> None:
    with pytest.raises(RecipeError, match=problem) as error:
        parse_recipe(_expect(spec))
    assert "1 problem(s)" in str(error.value)


@pytest.mark.parametrize("check", ["length_between", "between"])
def test_bounds_that_no_value_fits_are_a_recipe_error(check: str) -> None:
    # min above max: great-expectations quarantined every record.
    with pytest.raises(RecipeError, match=r"stages.0.expect.0 \(line 6\): .*min \(10\) is more than max \(2\)"):
        parse_recipe(_expect(f"{{column: prompt, check: {check}, min: 10, max: 2}}"))
    parse_recipe(_expect("{column: prompt, check: length_between, min: 2, max: 2}"))  # one length fits


def test_checks_that_cannot_judge_a_column_of_its_type_are_recipe_errors() -> None:
    import datetime

    import pyarrow as pa

    from schemas.records import source_array

    # great-expectations passed every date between any numbers, failed every number's length, and
    # measured a list's length wrongly ([] passed 1..3, [1, 2] failed).
    declared = "input_schema: {columns: {q: str, a: str, team: int}}\noutput: {group_by: team}\n"
    with pytest.raises(
        RecipeError, match=r"expect.0.check \(line 8\): length_between measures text, and 'team' holds int"
    ):
        parse_recipe(_expect("{column: team, check: length_between, min: 1, max: 2}", declared))
    with pytest.raises(RecipeError, match=r"between compares numbers, and 'source' holds struct"):
        parse_recipe(_expect("{column: source, check: between, min: 1, max: 2}"))
    batch = pa.table(
        {
            "id": ["a"],
            "source": source_array("files", "/t.parquet", [1]),
            "day": [datetime.date(2024, 1, 1)],
            "n": [20],
            "tags": [[1, 2]],
        }
    )
    problems = {
        ("day", "between"): "between compares numbers, and 'day' holds date32[day]: every row would pass",
        ("n", "length_between"): "length_between measures text, and 'n' holds int64",
        ("tags", "length_between"): "length_between measures text, and 'tags' holds list<item: int64>",
    }
    for (column, check), problem in problems.items():
        stage = Expectations([Expectation(column=column, check=check, min=0, max=1)])
        with pytest.raises(RecipeError, match=re.escape(f"expectations: {problem}")):
            stage(batch)
    assert Expectations([Expectation(column="n", check="between", min=0, max=10)])(batch).kept.num_rows == 0
    # in_set failed every object or list; matches_regex matched Python's text of it ({'x': 1}).
    with pytest.raises(RecipeError, match=r"expect.0.check \(line 6\): in_set checks text or numbers, and 'source'"):
        parse_recipe(_expect("{column: source, check: in_set, values: [a]}"))
    for spec in (
        Expectation(column="tags", check="in_set", values=[1]),
        Expectation(column="tags", check="matches_regex", regex="1"),
    ):
        with pytest.raises(
            RecipeError, match=rf"{spec.check} checks text or numbers, and 'tags' holds list<item: int64>"
        ):
            Expectations([spec])(batch)


def test_in_set_with_values_that_are_not_text_on_a_text_column_is_a_recipe_error() -> None:
    # YAML reads `values: [1, 2]` as numbers, and a record's label is text: every row failed the check.
    problem = r"stages.0.expect.0.values \(line 6\): \[1, true\] are not text, and \'label\' holds text: every row"
    with pytest.raises(RecipeError, match=problem + r'.*quote them: \["1", "true"\]'):
        parse_recipe(_expect("{column: label, check: in_set, values: [1, '2', true]}"))
    parse_recipe(_expect("{column: label, check: in_set, values: ['1', '2', 'true']}"))
    declared = "input_schema: {columns: {q: str, a: str, team: int}}\noutput: {group_by: team}\n"
    parse_recipe(_expect("{column: team, check: in_set, values: [1, 2]}", declared))  # an int column: numbers


def dates_in_set(source: dict[str, Any], days: list[str]) -> dict[str, Any]:
    """A recipe checking that the ``day`` column is one of ``days`` and ``at`` is 2024-01-02 03:04:05 (both
    carried to the stages as the input holds them, by the split's settings)."""
    return {
        "dataset": "tx",
        "sources": [source],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "output": {"stratify_by": "day", "group_by": "at"},
        "stages": [
            {
                "type": "expectations",
                "expect": [
                    {"column": "day", "check": "in_set", "values": days},
                    {"column": "at", "check": "in_set", "values": ["2024-01-02 03:04:05"]},
                ],
            }
        ],
    }


def test_in_set_compares_a_parquet_date_or_timestamp_column_as_its_text(workdir: Path) -> None:
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    # pandas gave great-expectations date and datetime objects, which no quoted value equals: every row failed.
    days = [datetime.date(2024, 1, 1), datetime.date(2024, 1, 2), None]
    moments = [datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.datetime(2024, 1, 2, 3, 4, 5, 120000), None]
    table = pa.table(
        {
            "q": ["Question one?", "Question two?", "Question three?"],
            "a": ["Yes.", "No.", "Maybe."],
            "day": pa.array(days, pa.date32()),
            "at": pa.array(moments, pa.timestamp("ns")),
        }
    )
    pq.write_table(table, workdir / "in.parquet")
    version = Path(run(workdir, dates_in_set({"path": "in.parquet"}, ["2024-01-01", "2024-01-03"])).version_uri)
    (aside,) = set_aside(version)  # nulls pass in_set
    assert aside["detail"].endswith(
        'in.parquet:2: failed expect_column_values_to_be_in_set:day (values ["2024-01-01", "2024-01-03"]), '
        'expect_column_values_to_be_in_set:at (values ["2024-01-02 03:04:05"])'
    )
    assert sorted(r["prompt"] for r in outputs(version)) == ["Question one?", "Question three?"]


def test_in_set_compares_a_sql_date_or_datetime_column_as_its_text(workdir: Path) -> None:
    url = sqlite_db(
        workdir / "crm.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, q TEXT, a TEXT, day DATE, at DATETIME)",
        "INSERT INTO t VALUES (1, 'Question one?', 'Yes.', '2024-01-01', '2024-01-02 03:04:05'), "
        "(2, 'Question two?', 'No.', '2024-01-02', '2024-01-02 03:04:06')",
    )
    source = {"type": "sql", "url": url, "table": "t"}
    version = Path(run(workdir, dates_in_set(source, ["2024-01-01", "2024-01-02"])).version_uri)
    assert read_manifest(str(version)).counts.reasons == {"quarantined": {"expect_column_values_to_be_in_set:at": 1}}
    assert [r["prompt"] for r in outputs(version)] == ["Question one?"]


def test_in_set_with_values_that_are_not_text_on_a_date_column_is_named_on_the_first_batch() -> None:
    import datetime

    import pyarrow as pa

    from schemas.records import source_array

    batch = pa.table(
        {"id": ["a"], "source": source_array("files", "/t.parquet", [1]), "day": [datetime.date(2024, 1, 1)]}
    )
    stage = Expectations([Expectation(column="day", check="in_set", values=[20240101, "2024-01-01"])])
    with pytest.raises(
        RecipeError, match=r"in_set compares 'day' \(date32\[day\]\) as its text, and \[20240101\] are not text"
    ):
        stage.check_columns(batch)


def test_great_expectations_is_imported_only_when_a_recipe_uses_it(workdir: Path) -> None:
    # A fresh interpreter: importing great-expectations takes seconds, so a recipe without
    # expectations must not pay for it.
    check = (
        "import sys; from schemas.config import parse_recipe; from curation.pipeline import build_stages; "
        "build_stages(parse_recipe(sys.argv[1])); print('great_expectations' in sys.modules)"
    )
    recipes = {
        "without": "dataset: d\nsources: [{path: x}]\nstages: [{type: clean}]\n",
        "with": "dataset: d\nsources: [{path: x}]\nstages: [{type: expectations, expect: [{column: prompt, check: unique}]}]\n",
    }
    root = Path(__file__).resolve().parent.parent
    seen = {
        name: subprocess.run(
            [sys.executable, "-c", check, text], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        or "error"
        for name, text in recipes.items()
    }
    assert seen == {"without": "False", "with": "False"}  # building the stage does not import it either


def test_a_second_expectations_entry_names_itself_for_a_column_the_records_lack() -> None:
    """A run's recipe error is placed in the recipe by the stage name it opens with (``stage_place``):
    "expectations columns" named the first entry where the second's column was missing."""
    import pyarrow as pa

    from curation.stages.base import StageSettingError
    from curation.stages.expectations import UniqueValues

    batch = pa.table({"id": ["a"], "source": [{"uri": "x.jsonl", "line": 1}], "prompt": ["hi"]})
    spec = Expectation(column="team", check="not_null")
    for stage in (Expectations([spec], name="expectations_2"), UniqueValues(["team"], name="expectations_2")):
        with pytest.raises(StageSettingError, match=r"^expectations_2 columns: \['team'\] are not columns"):
            stage(batch) if isinstance(stage, Expectations) else stage.signatures(batch)


@pytest.mark.timeout(60)
def test_a_pattern_that_backtracks_forever_in_python_finishes() -> None:
    import pyarrow as pa

    from schemas.records import source_array

    # Python's re tries 2**40 ways to split the a's before it fails this value: a run hung on it. (pandas
    # hands most patterns to RE2 already, but Python's re runs them where RE2 would read them otherwise:
    # a $ on text with a newline, \w on text that is not ASCII.)
    texts = ["note:\n" + "a" * 40 + "!", "a" * 40]
    batch = pa.table({"id": ["x", "y"], "source": source_array("files", "/t.jsonl", [1, 2]), "text": texts})
    result = Expectations([Expectation(column="text", check="matches_regex", regex="(a+)+$")])(batch)
    assert result.kept["id"].to_pylist() == ["y"]
    assert result.set_aside["reason"].to_pylist() == ["expect_column_values_to_match_regex:text"]


def test_ordinary_patterns_match_what_pythons_re_search_matches() -> None:
    import pyarrow as pa

    from schemas.records import source_array

    texts = [
        "Café au lait",
        "naïve\n\b",
        "line one\nline two",
        "٣ apples",
        "tab\there",
        "a\u00a0b",
        "東京 2024",
        "",
        None,
    ]
    patterns = [r"^\w+$", r"\w+$", r"e$", r"\d", r"^\d", r"\s", r"\S+\s\S+", r"[\w\s]+\Z", r"(?i)CAFÉ", r"^$"]
    patterns += [
        r"(?m)^line two$",
        r"[^\d\s]{5}",
        r"\u00e9",
        r"[]x]|b",
        r"o\nl",
        r"^.{4,}$",
        r"(?s)one.line",
        r"^\S{,4}$",
        r"[\b]",  # a backspace, as RE2 spells it \x08
    ]
    source = source_array("files", "/t.jsonl", list(range(1, len(texts) + 1)))
    batch = pa.table({"id": [str(i) for i in range(len(texts))], "source": source, "text": texts})
    for pattern in patterns:
        kept = Expectations([Expectation(column="text", check="matches_regex", regex=pattern)])(batch).kept
        expected = [str(i) for i, t in enumerate(texts) if t is None or re.search(pattern, t)]
        assert kept["id"].to_pylist() == expected, pattern


def test_a_pattern_re2_cannot_run_is_refused_at_load_saying_why() -> None:
    why = r"matches_regex runs RE2, in linear time so that no pattern can hang a run, and RE2 cannot run this one"
    for pattern, found in (
        (r"(a)\1", r"invalid escape sequence: \\1"),
        ("a(?=b)", r"invalid perl operator: \(\?="),
        ("(?<!a)b", r"invalid perl operator: \(\?<!"),
    ):
        with pytest.raises(RecipeError, match=rf"stages.0.expect.0.regex \(line 6\): .*{why}.*{found}"):
            parse_recipe(_expect(f"{{column: prompt, check: matches_regex, regex: '{pattern}'}}"))


def test_a_regex_and_other_expectations_name_the_first_failure_in_the_recipes_order() -> None:
    import pyarrow as pa

    from schemas.records import source_array

    batch = pa.table({"id": ["a"], "source": source_array("files", "/t.jsonl", [1]), "text": ["x"]})
    specs = [
        Expectation(column="text", check="matches_regex", regex="^[A-Z]"),
        Expectation(column="text", check="length_between", min=2, max=9),
    ]
    for order in (specs, specs[::-1]):
        aside = Expectations(order)(batch).set_aside.to_pylist()
        assert aside[0]["reason"] == _gx_name(order[0].check) + ":text"
        assert aside[0]["detail"].count("failed expect_") == 1 and aside[0]["detail"].count(", expect_") == 1


def _gx_name(check: str) -> str:
    return {"matches_regex": "expect_column_values_to_match_regex"}.get(
        check, "expect_column_value_lengths_to_be_between"
    )


def test_in_set_with_values_that_are_not_numbers_on_a_number_column_is_a_recipe_error() -> None:
    # The mirror of the text case: quoted numbers loaded, then every row of an int column was quarantined.
    declared = (
        "input_schema: {columns: {q: str, a: str, team: int, ok: bool}}\noutput: {group_by: team, stratify_by: ok}\n"
    )
    problem = r"stages.0.expect.0.values \(line 8\): \[\"1\", \"2\"\] are not numbers, and 'team' holds int: every row"
    with pytest.raises(RecipeError, match=problem + r".*unquote them: \[1, 2\]"):
        parse_recipe(_expect("{column: team, check: in_set, values: ['1', '2']}", declared))
    with pytest.raises(RecipeError, match=r"\[true\] are not numbers, and 'team' holds int"):
        parse_recipe(_expect("{column: team, check: in_set, values: [1, true]}", declared))
    with pytest.raises(RecipeError, match=r"\[1, \"true\"\] are not true or false, and 'ok' holds bool"):
        parse_recipe(_expect("{column: ok, check: in_set, values: [true, 1, 'true']}", declared))
    parse_recipe(_expect("{column: team, check: in_set, values: [1, 2.0]}", declared))
    parse_recipe(_expect("{column: ok, check: in_set, values: [true]}", declared))


def test_in_set_tells_booleans_from_numbers() -> None:
    import pyarrow as pa

    from schemas.records import source_array

    # pandas' isin found 1 == True: an int column's 1 passed in_set [true], and true passed [1].
    batch = pa.table(
        {
            "id": list("abcd"),
            "source": source_array("files", "/t.jsonl", [1, 2, 3, 4]),
            "n": pa.array([1, 2, None, 1], pa.int64()),
            "x": pa.array([1.0, 2.5, float("nan"), None]),
            "ok": [True, False, None, True],
        }
    )
    failed = lambda spec: Expectations([spec])(batch).set_aside["id"].to_pylist()  # noqa: E731
    assert failed(Expectation(column="n", check="in_set", values=[True])) == ["a", "b", "d"]  # nulls pass
    assert failed(Expectation(column="ok", check="in_set", values=[1])) == ["a", "b", "d"]
    assert failed(Expectation(column="ok", check="in_set", values=[True])) == ["b"]
    # Numbers stay numbers whatever their type: 1.0 is 1; NaN passes, as pandas' null did.
    assert failed(Expectation(column="x", check="in_set", values=[1])) == ["b"]
    assert failed(Expectation(column="n", check="in_set", values=[1.0, "2"])) == ["b"]


def test_in_set_compares_a_number_as_the_columns_type_holds_it() -> None:
    import decimal

    import pyarrow as pa

    from schemas.records import source_array

    # A Parquet FLOAT column's 0.1 is float32(0.1), no float 0.1; a decimal(10,2) column's 0.10 is no float 0.1
    # by exact value: every such row failed in_set [0.1].
    batch = pa.table(
        {
            "id": list("abc"),
            "source": source_array("files", "/t.parquet", [1, 2, 3]),
            "f": pa.array([0.1, 0.5, float("inf")], pa.float32()),
            "d": pa.array([decimal.Decimal(v) for v in ("0.10", "1.00", "0.12")], pa.decimal128(10, 2)),
            "n": pa.array([1, 2, 3], pa.int64()),
        }
    )
    failed = lambda spec: Expectations([spec])(batch).set_aside["id"].to_pylist()  # noqa: E731
    assert failed(Expectation(column="f", check="in_set", values=[0.1, 0.5])) == ["c"]
    assert failed(Expectation(column="f", check="in_set", values=[0.1, 1e300])) == ["b", "c"]  # float32 has no 1e300
    assert failed(Expectation(column="d", check="in_set", values=[0.1, 1])) == ["c"]
    assert failed(Expectation(column="d", check="in_set", values=[0.123])) == ["a", "b", "c"]  # not rounded to 0.12
    assert failed(Expectation(column="n", check="in_set", values=[1.5, 2.0, True])) == ["a", "c"]


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ([10**16], [1e16]),  # Arrow wrote the float 1e+16
        ([decimal.Decimal("0.0000001")], [1e-7]),  # and 1e-07
        ([0], [-0.0]),  # and -0
        ([decimal.Decimal("-0.00")], [0]),
        ([0.1], [decimal.Decimal("0.100")]),
    ],
)
def test_unique_over_the_run_takes_equal_numbers_of_two_types_for_one_value(first: list[Any], then: list[Any]) -> None:
    import pyarrow as pa

    from curation.stages.expectations import UniqueValues
    from schemas.records import source_array

    def file(name: str, values: list[Any]) -> pa.Table:
        source = source_array("files", f"/{name}.parquet", [1])
        return pa.table({"id": [f"{name}1"], "source": source, "k": pa.array(values)})

    stage = UniqueValues(["k"])
    aside = stage.resolve([stage.signatures(file("a", first)), stage.signatures(file("b", then))])
    assert aside["id"].to_pylist() == ["a1", "b1"]


@pytest.mark.parametrize(
    "values",
    [
        [float("nan"), 1.0, float("nan"), 2.0],  # pandas takes NaN for a null: no value, so never a repeat
        [float("nan"), None, -float("nan"), 3.0],
        [0.0, 1.5, -0.0, 2.5],  # one value, two signs
        [1e3, 7.0, 1000.0, float("inf"), 8.0, float("inf")],  # JSON's 1e3 and 1000.0 are one float
    ],
)
@pytest.mark.parametrize("kind", ["float64", "float32"])
def test_unique_over_the_run_fails_the_rows_great_expectations_fails_in_batches_of_any_size(
    values: list[Any], kind: str
) -> None:
    import pyarrow as pa

    from curation.stages.expectations import UniqueValues, _Suite
    from schemas.records import source_array

    column = pa.array(values, kind)
    frame = pa.table({"k": column}).to_pandas()
    (result,) = _Suite([Expectation(column="k", check="unique")]).failures(frame)
    expected = [f"r{row}" for row in result[3]]  # great-expectations over the whole column at once
    batch = pa.table(
        {
            "id": [f"r{row}" for row in range(len(values))],
            "source": source_array("files", "/k.parquet", list(range(1, len(values) + 1))),
            "k": column,
        }
    )
    stage = UniqueValues(["k"])
    for size in range(1, len(values) + 1):  # a NaN in one batch and one in the next: as in a single batch
        parts = [batch.slice(start, size) for start in range(0, len(values), size)]
        assert sorted(stage.resolve([stage.signatures(p) for p in parts])["id"].to_pylist()) == expected, size


def test_unique_over_the_run_tells_apart_decimals_that_differ_past_28_digits() -> None:
    import pyarrow as pa

    from curation.stages.expectations import UniqueValues
    from schemas.records import source_array

    # Normalised in Python's default context (28 digits), the two decimal128(38) values were one text.
    values = [
        decimal.Decimal("0.12345678901234567890123456789012345678"),
        decimal.Decimal("0.12345678901234567890123456789012345679"),
    ]
    column = pa.array(values, pa.decimal128(38, 38))
    batch = pa.table({"id": ["a1", "a2"], "source": source_array("files", "/a.parquet", [1, 2]), "k": column})
    stage = UniqueValues(["k"])
    assert stage.resolve([stage.signatures(batch)]).num_rows == 0


def test_unique_over_the_run_tells_text_from_numbers_and_booleans_but_not_1_from_1_0() -> None:
    import decimal

    import pyarrow as pa

    from curation.stages.expectations import UniqueValues
    from schemas.records import source_array

    def file(name: str, values: list[Any]) -> pa.Table:
        ids = [f"{name}{line}" for line in range(1, len(values) + 1)]
        source = source_array("files", f"/{name}.jsonl", list(range(1, len(values) + 1)))
        return pa.table({"id": ids, "source": source, "k": pa.array(values)})

    # One column read as int in one file and as text in another: compared as Arrow's text, 2 was "2".
    stage = UniqueValues(["k"])
    files = [file("a", [2, 7]), file("b", ["2", "true"]), file("c", [True]), file("d", [decimal.Decimal("7.00")])]
    aside = stage.resolve([stage.signatures(f) for f in files])
    # Equal numbers are one value whatever their type: 7 and 7.00; the text "2" is not the number 2.
    assert aside["id"].to_pylist() == ["a2", "d1"]
    assert aside["record"].to_pylist() == ['{"k": 7}', '{"k": 7}']
    aside = stage.resolve([stage.signatures(file("a", [1, 3])), stage.signatures(file("b", [1.0, 3.5, None, None]))])
    assert aside["id"].to_pylist() == ["a1", "b1"]  # nulls are no value


@pytest.mark.parametrize("kind", ["float64", "float32"])
def test_a_float_columns_comparable_texts_are_each_values_number_text(kind: str) -> None:
    """A float column's texts for uniqueness are each value's ``_number_text`` (the one text of every number
    of one value): Arrow's exponent forms (1e+30, 1e-07) written out, its -0 as 0, inf as Arrow writes it,
    null and NaN no value. Values chosen where Arrow's text and that one differ, or nearly do."""
    from decimal import Decimal

    import pyarrow as pa
    import pyarrow.compute as pc

    from curation.stages.expectations import _comparable, _number_text

    values = [1e30, 1e-07, -0.0, 0.0, 0.1, 2.5, -2.5, 100.0, 1e16, 1e15, 123456789.0, 1e-05, 5e-324]
    values += [1.7976931348623157e308, float("nan"), -float("nan"), float("inf"), -float("inf"), None, -1e-07]
    column = pa.chunked_array([pa.array(values[:7], kind), pa.array(values[7:], kind)])
    each = [
        None if v in (None, "nan", "-nan") else f"number:{_number_text(Decimal(v))}"
        for v in pc.cast(column, pa.string()).to_pylist()
    ]
    assert _comparable(column).to_pylist() == each
    assert each[:5] == ["number:" + "1" + "0" * 30, "number:0.0000001", "number:0", "number:0", "number:0.1"]
    assert each[-2] is None


# One JSONL file whose column "x" mixes numbers and text (and a line that does not parse, which sends its
# block line by line): its values are typed over the read block, whatever rows share a batch with them.
MIXED = ['{"x": 1}', '{"x": 2}', '{"x": "1"}', '{"x": NaN}', '{"x": "NaN"}', '{"x": 1e3}', '{"x": "1000.0"}']


@pytest.mark.parametrize("broken", [False, True])
def test_a_jsonl_column_mixing_numbers_and_text_gives_the_same_records_at_any_batch_rows(
    workdir: Path, broken: bool
) -> None:
    lines = MIXED + (['{"x": 3'] if broken else [])
    write_jsonl(workdir / "in.jsonl", lines)
    results = {}
    for batch_rows in (100, 3, 2, 1):  # each run reads the whole file again
        recipe = {
            "dataset": "mixed",
            "sources": [{"path": "in.jsonl"}],
            "record": {"kind": "instruction", "prompt": "value {{ x }}", "completion": "x", "label": "x"},
            "stages": [{"type": "expectations", "expect": [{"column": "label", "check": "unique"}]}],
            "batch_rows": batch_rows,
        }
        version = Path(run(workdir, recipe, full_refresh=True).version_uri)
        lineage = [row for row in lineage_rows(version) if row["carried_from"] is None]
        published = {
            row["id"]: (row["source"]["line"], out) for row, out in zip(lineage, processed(version), strict=True)
        }
        aside = {row["id"]: (row["source"]["line"], row["reason"], row["record"]) for row in set_aside(version)}
        results[batch_rows] = published, aside
    # Every value of the column is text as Python's JSON writes it: 1 and "1", NaN and "NaN", 1e3 and
    # "1000.0" are one value each, and only 2 is left.
    published, aside = results[100]
    assert list(published.values()) == [(2, {"prompt": "value 2", "completion": "2"})]
    repeated = sorted((line, reason) for line, reason, _ in aside.values())
    assert repeated[:6] == [(n, "expect_column_values_to_be_unique:label") for n in (1, 3, 4, 5, 6, 7)]
    assert [reason for _, reason in repeated[6:]] == (["malformed_json"] if broken else [])
    for batch_rows in (3, 2, 1):
        assert results[batch_rows] == results[100], batch_rows
