"""Bad input ends in quarantine with a reason naming file and line; the rest of the run goes on,
and the manifest accounts for every record."""

from __future__ import annotations

import gzip
import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import curation.pipeline as pipeline
from curation.executors.local import Tally
from curation.stages.shape import Shape, TemplateErrors
from schemas.config import RecipeError, RecordShape
from schemas.records import SetAsideExample, source_array
from tests.helpers import lineage_rows, outputs, run, set_aside, strict_json, write_jsonl


def qa_recipe(file: str, prompt: str = "q", completion: str = "a", **more: Any) -> dict[str, Any]:
    """Instruction records from one input file; the dataset takes the file's name."""
    return {
        "dataset": file.split(".")[0],
        "sources": [{"path": file}],
        "record": {"kind": "instruction", "prompt": prompt, "completion": completion},
        **more,
    }


SCHEMA = {"columns": {"description": "str", "amount": "float", "category": "str"}}
RECORD = {
    "kind": "instruction",
    "prompt": "Categorise {{ description }} ({{ amount }})",
    "completion": "{{ category }}",
}


def recipe(*paths: str) -> dict:
    return {"dataset": "tx", "sources": [{"path": p} for p in paths], "input_schema": SCHEMA, "record": RECORD}


def assert_adds_up(counts) -> None:
    assert counts.input == counts.written + counts.filtered + counts.duplicate + counts.quarantined
    for outcome in ("filtered", "duplicate", "quarantined"):
        assert sum(counts.reasons.get(outcome, {}).values()) == getattr(counts, outcome)


def test_malformed_json_lines(workdir: Path) -> None:
    path = write_jsonl(
        workdir / "tx.jsonl",
        [
            {"description": "coffee", "amount": 4.5, "category": "Dining"},
            '{"description": "taxi", "amount": 12',  # cut off
            "[1, 2, 3]",  # JSON, but not an object
            {"description": "rent", "amount": 1200, "category": "Housing"},
        ],
    )
    result = run(workdir, recipe("tx.jsonl"))
    aside = set_aside(Path(result.version_uri))
    assert [(row["reason"], row["source"]["line"]) for row in aside] == [("malformed_json", 2), ("malformed_json", 3)]
    assert aside[0]["detail"].startswith(f"{path}:2: malformed JSON")
    assert aside[1]["detail"] == f"{path}:3: a JSON list, not an object"
    assert aside[0]["record"] == '{"description": "taxi", "amount": 12'
    assert sorted(row["completion"] for row in outputs(Path(result.version_uri))) == ["Dining", "Housing"]
    assert result.manifest.counts.reasons == {"quarantined": {"malformed_json": 2}}
    assert_adds_up(result.manifest.counts)
    assert [(i.uri, i.records) for i in result.manifest.inputs] == [(str(path), 4)]


@pytest.mark.parametrize("mark", [b"", b"\xef\xbb\xbf"])
def test_a_lone_surrogate_escape_is_no_character_and_its_line_is_quarantined(workdir: Path, mark: bytes) -> None:
    lines = [
        rb'{"description": "\ud800 lone", "amount": 1, "category": "Dining"}',  # first: the whole block is read
        rb'{"description": "coffee \ud83d\ude00", "amount": 4.5, "category": "Dining"}',  # a pair: one emoji
        rb'{"description": "a path C:\\udc00", "amount": 2, "category": "Travel"}',  # an escaped backslash
        rb'{"description": "tail \uDC00", "amount": 3, "category": "Dining"}',
        rb'{"description": "C:\\ud83d\ude00", "amount": 5, "category": "Dining"}',  # a "pair" after an escaped \
        rb'{"description": "key", "cat\ud800egory": "x", "amount": 6, "category": "Dining"}',  # in a key
    ]
    (workdir / "tx.jsonl").write_bytes(mark + b"\n".join(lines) + b"\n")
    result = run(workdir, recipe("tx.jsonl"))
    aside = set_aside(Path(result.version_uri))
    path = workdir / "tx.jsonl"
    assert [(row["reason"], row["detail"]) for row in aside] == [
        (
            "malformed_json",
            f"{path}:1: malformed JSON: \\ud800 is half of a UTF-16 surrogate pair, not a character: column 18",
        ),
        (
            "malformed_json",
            f"{path}:4: malformed JSON: \\udc00 is half of a UTF-16 surrogate pair, not a character: column 23",
        ),
        (
            "malformed_json",
            f"{path}:5: malformed JSON: \\ude00 is half of a UTF-16 surrogate pair, not a character: column 27",
        ),
        (
            "malformed_json",
            f"{path}:6: malformed JSON: \\ud800 is half of a UTF-16 surrogate pair, not a character: column 28",
        ),
    ]
    prompts = sorted(row["prompt"] for row in outputs(Path(result.version_uri)))
    assert prompts == ["Categorise a path C:\\udc00 (2.0)", "Categorise coffee \U0001f600 (4.5)"]
    assert_adds_up(result.manifest.counts)


def test_lines_that_are_not_utf8_are_named_and_a_byte_order_mark_is_not_one(workdir: Path) -> None:
    good = json.dumps({"description": "coffee", "amount": 4.5, "category": "Dining"}).encode()
    latin1 = json.dumps({"description": "caf\u00e9", "amount": 3, "category": "Dining"}, ensure_ascii=False)
    # A Windows export's mark before line 1, a Latin-1 line, and a cut-off one: the batch is read line by line.
    (workdir / "tx.jsonl").write_bytes(b"\xef\xbb\xbf" + good + b"\n" + latin1.encode("latin-1") + b'\n{"cut\n')
    result = run(workdir, recipe("tx.jsonl"))
    aside = set_aside(Path(result.version_uri))
    path, column = workdir / "tx.jsonl", latin1.index("\u00e9") + 1
    assert [row["detail"] for row in aside] == [
        f"{path}:2: not UTF-8: byte 0xe9 at column {column}",
        f"{path}:3: malformed JSON: Unterminated string starting at: column 2",
    ]
    assert [row["completion"] for row in outputs(Path(result.version_uri))] == ["Dining"]
    assert_adds_up(result.manifest.counts)


def test_a_damaged_parquet_file_is_named(workdir: Path) -> None:
    (workdir / "tx.parquet").write_bytes(b"PAR1 this is not a Parquet file")
    with pytest.raises(OSError, match=r"tx.parquet: not a readable parquet file: .*magic bytes"):
        run(workdir, recipe("tx.parquet"))
    output = workdir / "output"
    assert not output.exists() or list(output.iterdir()) == []  # the failed first run left no dataset folder


@pytest.mark.parametrize("suffix", ["parquet", "parquet.gz", "jsonl", "csv", "json"])
def test_a_file_of_0_bytes_holds_no_records_and_the_run_goes_on(
    workdir: Path, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Spark's and crashed jobs' leftovers: a 0-byte .parquet failed the whole run ("Parquet file size is
    # 0 bytes"), where an empty JSONL or CSV file gives no record. Read as one, and named in the log.
    folder = workdir / "tx"
    folder.mkdir()
    table = pa.table({"description": ["Lunch"], "amount": [12.5], "category": ["Dining"]})
    pq.write_table(table, folder / "a.parquet")
    empty = folder / f"b.{suffix}"
    empty.write_bytes(gzip.compress(b"") if suffix.endswith(".gz") else b"")
    with caplog.at_level("WARNING"):
        result = run(workdir, recipe("tx"))
    assert [row["completion"] for row in outputs(Path(result.version_uri))] == ["Dining"]
    assert set_aside(Path(result.version_uri)) == []
    assert_adds_up(result.manifest.counts)
    named = [r.getMessage() for r in caplog.records if str(empty) in r.getMessage()]
    if suffix.startswith("parquet"):
        assert named == [f"{empty}: 0 bytes, not a Parquet file (a writer that stopped?): read as holding no records"]


@pytest.mark.parametrize("packed", ["gz", "zst"])
def test_a_parquet_file_compressed_whole_is_read_as_the_plain_one(workdir: Path, packed: str) -> None:
    # `.parquet.gz` and `.parquet.zst` are among the kinds a files source reads (README, Connectors):
    # Parquet reads its footer first, which a compressed stream does not give.
    table = pa.table({"description": ["Lunch", "Taxi"], "amount": [12.5, 30.0], "category": ["Dining", "Travel"]})
    pq.write_table(table, workdir / "plain.parquet")
    with pa.CompressedOutputStream(str(workdir / f"tx.parquet.{packed}"), {"gz": "gzip", "zst": "zstd"}[packed]) as out:
        out.write((workdir / "plain.parquet").read_bytes())
    result = run(workdir, recipe(f"tx.parquet.{packed}"))
    assert result.manifest.counts.written == 2
    assert sorted(row["completion"] for row in outputs(Path(result.version_uri))) == ["Dining", "Travel"]
    (workdir / "bad.parquet.gz").write_bytes(gzip.compress(b"PAR1 this is not a Parquet file"))
    with pytest.raises(OSError, match=r"bad.parquet.gz: not a readable parquet file: .*magic bytes"):
        run(workdir, {**recipe("bad.parquet.gz"), "dataset": "bad"})


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_rows_that_break_the_schema(workdir: Path, suffix: str) -> None:
    if suffix == "jsonl":
        path = write_jsonl(
            workdir / "tx.jsonl",
            [
                {"description": "coffee", "amount": 4.5, "category": "Dining"},
                {"description": "taxi", "amount": "twelve", "category": "Transport"},
                {"description": "rent", "amount": 1200, "category": "Housing"},
                {"description": None, "amount": 3, "category": "Dining"},
            ],
        )
    else:
        path = workdir / "tx.csv"
        path.write_text(
            "description,amount,category\ncoffee,4.5,Dining\ntaxi,twelve,Transport\nrent,1200,Housing\n,3,Dining\n"
        )
    result = run(workdir, recipe(path.name))
    aside = sorted(set_aside(Path(result.version_uri)), key=lambda row: row["source"]["line"])
    first_data_line = 1 if suffix == "jsonl" else 2
    assert [row["source"]["line"] for row in aside] == [first_data_line + 1, first_data_line + 3]
    assert {row["reason"] for row in aside} == {"schema"}
    assert aside[0]["detail"].startswith(f"{path}:{first_data_line + 1}: amount: ")
    assert aside[1]["detail"] == f"{path}:{first_data_line + 3}: description: no value, and the column is required"
    assert result.manifest.counts.written == 2
    assert_adds_up(result.manifest.counts)


def test_a_json_boolean_is_no_amount(workdir: Path) -> None:
    # A block whose amounts are all booleans was cast to float64: `true` was published as 1.0. (Beside
    # a number in one block the reader makes 1.0 of it, beside text "true": the reader's to fix.)
    rows = [
        {"description": "taxi", "amount": True, "category": "Transport"},
        {"description": "bus", "amount": False, "category": "Transport"},
    ]
    path = write_jsonl(workdir / "tx.jsonl", rows)
    result = run(workdir, recipe("tx.jsonl"))
    aside = sorted(set_aside(Path(result.version_uri)), key=lambda row: row["source"]["line"])
    assert [(row["reason"], row["detail"]) for row in aside] == [
        ("schema", f"{path}:1: amount: a boolean (true), not a number (the input schema declares float)"),
        ("schema", f"{path}:2: amount: a boolean (false), not a number (the input schema declares float)"),
    ]
    assert result.manifest.counts.written == 0
    assert_adds_up(result.manifest.counts)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_float_that_is_not_finite_is_no_amount_and_nan_is_a_missing_value(workdir: Path, suffix: str) -> None:
    rows = [("coffee", "4.5", "-nan"), ("lost", "NaN", "1"), ("huge", "1e400", "NaN"), ("below", "-inf", "2")]
    if suffix == "jsonl":  # JSON's NaN, a number too large for a double, and a string
        template = '{{"description": "{}", "amount": {}, "category": "Dining", "discount": {}}}'
        lines = [template.format(d, a, json.dumps(x) if x == "-nan" else x) for d, a, x in rows[:3]]
        lines.append('{"description": "below", "amount": "-inf", "category": "Dining", "discount": 2}')
        (workdir / "tx.jsonl").write_text("\n".join(lines) + "\n")
    else:
        csv = "".join(f"{d},{a},Dining,{x}\n" for d, a, x in rows)
        (workdir / "tx.csv").write_text("description,amount,category,discount\n" + csv)
    spec = recipe(f"tx.{suffix}")
    # NaN is how pandas writes a missing value: an optional column may miss it, a required one not.
    spec["input_schema"] = {"columns": {**SCHEMA["columns"], "discount": "float"}, "optional": ["discount"]}
    result = run(workdir, spec)
    aside = sorted(set_aside(Path(result.version_uri)), key=lambda row: row["source"]["line"])
    assert [row["detail"].split(": ", 1)[1] for row in aside] == [
        "amount: no value, and the column is required",
        "amount: Input should be a finite number",
        "amount: Input should be a finite number",
    ]
    assert [line["prompt"] for line in outputs(Path(result.version_uri))] == ["Categorise coffee (4.5)"]
    assert_adds_up(result.manifest.counts)


def test_missing_required_column(workdir: Path) -> None:
    write_jsonl(workdir / "good.jsonl", [{"description": "coffee", "amount": 4.5, "category": "Dining"}])
    path = write_jsonl(
        workdir / "old_export.jsonl", [{"description": "taxi", "amount": 12.0}, {"description": "bus", "amount": 2.5}]
    )
    result = run(workdir, recipe("good.jsonl", "old_export.jsonl"))
    aside = set_aside(Path(result.version_uri))
    assert [row["reason"] for row in aside] == ["missing_column", "missing_column"]
    assert [row["detail"] for row in aside] == [
        f"{path}:1: required column 'category' is missing",
        f"{path}:2: required column 'category' is missing",
    ]
    assert result.manifest.counts.written == 1
    assert_adds_up(result.manifest.counts)


def test_template_that_needs_a_missing_value(workdir: Path) -> None:
    rows = [{"q": "What is 2+2?", "a": "4", "n": 1}, {"q": "Empty answer?", "a": None, "n": None}]
    path = write_jsonl(workdir / "qa.jsonl", rows)
    result = run(
        workdir,
        {
            "dataset": "qa",
            "sources": [{"path": "qa.jsonl"}],
            "record": {"kind": "instruction", "prompt": "Q: {{ q }}", "completion": "{{ a }} ({{ n }}, {{ q }})"},
        },
    )
    aside = set_aside(Path(result.version_uri))
    assert len(aside) == 1 and aside[0]["source"]["line"] == 2
    # Which of the values the template writes is empty.
    assert (
        aside[0]["detail"]
        == f"{path}:2: completion: template failed: a value the template uses is empty (null): 'a', 'n'"
    )
    assert_adds_up(result.manifest.counts)


@pytest.mark.parametrize("batch_rows", [1, 50_000])
def test_a_misspelt_template_column_fails_the_run_though_some_rows_also_hold_a_null(
    workdir: Path, batch_rows: int
) -> None:
    # No record has 'ctx' (a misspelt column); line 1's null 'q' fails its template first. Each row's reason is its
    # own: a missing column was counted only when every failure batched with it was one, so a null beside it made
    # every row 'template' and the run published an empty version instead of failing on the recipe.
    write_jsonl(workdir / "qa.jsonl", [{"q": None, "a": "A"}, {"q": "Q?", "a": "B"}, {"q": "Q2?", "a": "C"}])
    spec = qa_recipe("qa.jsonl", prompt="{{ q }} {{ ctx }}", batch_rows=batch_rows)
    with pytest.raises(RecipeError, match=r"none of the 3 records .* 2 lack a column the recipe names"):
        run(workdir, spec)


@pytest.mark.parametrize("batch_rows", [1, 50_000])
def test_a_template_failing_one_way_on_every_record_shaped_fails_the_run(workdir: Path, batch_rows: int) -> None:
    # Line 1 is set aside before the template (its 'q' is no text): the other two, all the shape stage was given,
    # fail it one way. That is the recipe's error, not the data's: no empty version is published.
    write_jsonl(workdir / "qa.jsonl", [{"q": 5, "a": "A"}, {"q": "Q?", "a": "B"}, {"q": "Q2?", "a": "C"}])
    spec = qa_recipe("qa.jsonl", prompt="{{ q.upper(1) }}", batch_rows=batch_rows)
    spec["input_schema"] = {"columns": {"q": "str", "a": "str"}}
    expected = (
        r"record\.prompt \('\{\{ q\.upper\(1\) \}\}'\) failed on every record it was given \(2\), for example "
        r".*qa\.jsonl:2: prompt: template failed: str\.upper\(\) takes no arguments \(1 given\); fix the template"
    )
    with pytest.raises(RecipeError, match=expected):
        run(workdir, spec)
    assert not (workdir / "output" / "qa").exists()


@pytest.mark.parametrize("batch_rows", [1, 50_000])
def test_a_template_failing_one_way_on_every_record_but_a_null_one_fails_the_run(
    workdir: Path, batch_rows: int
) -> None:
    # Line 1's null 'q' fails the template as the data's fault: it hid the recipe's error on the others, and an empty
    # v1 was published, after which the fixed template found nothing new.
    path = write_jsonl(workdir / "qa.jsonl", [{"q": None, "a": "A"}, {"q": "Q?", "a": "B"}, {"q": "Q2?", "a": "C"}])
    spec = qa_recipe("qa.jsonl", prompt="{{ q.upper(1) }}", batch_rows=batch_rows)
    expected = (  # the example is one of the recipe's failures, not the null row's
        r"failed on every record it was given \(3\), for example "
        + re.escape(f"{path}:2:")
        + r" prompt: template failed: str\.upper\(\) takes no arguments \(1 given\); fix the template"
    )
    with pytest.raises(RecipeError, match=expected):
        run(workdir, spec)
    assert not (workdir / "output" / "qa").exists()
    result = run(workdir, {**spec, "record": {**spec["record"], "prompt": "{{ q.upper() }}"}})
    # sorted: which split a record falls in follows its id, which holds the input's (temporary) path
    assert sorted(row["prompt"] for row in outputs(Path(result.version_uri))) == ["Q2?", "Q?"]
    assert [row["source"]["line"] for row in set_aside(Path(result.version_uri))] == [1]


def test_a_template_failing_only_on_null_rows_is_the_datas_error_though_it_would_fail_on_any(workdir: Path) -> None:
    # No row shows the template failing otherwise: nothing says the recipe is wrong, and the rows are quarantined.
    write_jsonl(workdir / "qa.jsonl", [{"q": None, "a": "A"}, {"q": None, "a": "B"}])
    result = run(workdir, qa_recipe("qa.jsonl", prompt="{{ q.upper(1) }}"))
    counts = result.manifest.counts
    assert (result.manifest.version, counts.written, counts.reasons) == (1, 0, {"quarantined": {"template": 2}})


def test_a_template_failing_on_every_new_row_of_an_unchanged_recipe_is_the_rows_fault(workdir: Path) -> None:
    # v1 was made by this recipe's template: a scheduled run whose new rows all lack the colon it splits on failed
    # "fix the template in the recipe", took nothing, and so every later run failed the same way.
    write_jsonl(workdir / "qa" / "a.jsonl", [{"q": f"Q:{n}", "a": "A"} for n in range(5)] + [{"q": "Q", "a": "A"}])
    spec = qa_recipe("qa", prompt="{{ q.split(':')[1] }}")
    v1 = run(workdir, spec).manifest
    first, first_sha = v1.counts, v1.recipe_sha256
    assert (first.input, first.written, first.quarantined) == (6, 5, 1)
    for version, name in enumerate(["b.jsonl", "c.jsonl"], start=2):
        path = write_jsonl(workdir / "qa" / name, [{"q": "no colon", "a": name}])
        result = run(workdir, spec)
        counts = result.manifest.counts
        assert (result.manifest.version, counts.input, counts.quarantined, counts.carried) == (version, 1, 1, 5)
        [aside] = set_aside(Path(result.version_uri))
        assert aside["detail"].startswith(f"{path}:1: prompt: template failed:")
    # Another setting changed, not the templates (the whole recipe's hash did, as a release of curation changes it):
    # still the rows' fault. It failed, and every later run with it, told to fix a template that made v1.
    write_jsonl(workdir / "qa" / "d.jsonl", [{"q": "no colon", "a": "D"}])
    result = run(workdir, {**spec, "batch_rows": 1_000})
    assert result.manifest.recipe_sha256 != first_sha
    assert (result.manifest.version, result.manifest.counts.quarantined, result.manifest.counts.carried) == (4, 1, 5)
    # A changed template failing on every row it reads is still the recipe's error.
    changed = qa_recipe("qa", prompt="{{ q.split(':')[2] }}")
    write_jsonl(workdir / "qa" / "e.jsonl", [{"q": "Q:1", "a": "E"}])
    with pytest.raises(RecipeError, match=r"record\.prompt .* failed on every record it was given \(1\)"):
        run(workdir, changed)
    # A version an earlier release published kept no hash of its templates: taken as made with them, as
    # blocking every scheduled run on a false recipe error is worse than a quarantined row.
    manifest = Path(result.version_uri) / "manifest.json"
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "record_sha256"}))
    last = run(workdir, changed).manifest
    assert (last.version, last.counts.input, last.counts.quarantined, last.record_sha256) == (
        5,
        1,
        1,
        RecordShape.model_validate(changed["record"]).fingerprint(None),
    )


def test_a_version_an_earlier_release_made_with_an_input_schema_left_out_of_its_hash_made_it_with_these_templates(
    workdir: Path,
) -> None:
    # Releases before this one left input_schema out of record_sha256: after an upgrade, a scheduled run whose new
    # rows all fail the unchanged template one way failed "fix the template", and so did every run after it.
    write_jsonl(workdir / "qa" / "a.jsonl", [{"q": f"Q:{n}", "a": "A"} for n in range(5)])
    spec = qa_recipe("qa", prompt="{{ q.split(':')[1] }}", input_schema={"columns": {"q": "str", "a": "str"}})
    v1 = run(workdir, spec)
    manifest = Path(v1.version_uri) / "manifest.json"
    legacy = RecordShape.model_validate(spec["record"]).fingerprint(None)  # as such a release wrote it
    assert v1.manifest.record_sha256 != legacy
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "record_sha256": legacy}))
    path = write_jsonl(workdir / "qa" / "b.jsonl", [{"q": "no colon", "a": "B"}])
    v2 = run(workdir, spec)
    assert (v2.manifest.version, v2.manifest.counts.input, v2.manifest.counts.quarantined) == (2, 1, 1)
    [aside] = set_aside(Path(v2.version_uri))
    assert aside["detail"] == f"{path}:1: prompt: template failed: list object has no element 1"
    # Another template is on trial all the same.
    write_jsonl(workdir / "qa" / "c.jsonl", [{"q": "Q:1", "a": "C"}])
    with pytest.raises(RecipeError, match=r"failed on every record it was given \(1\)"):
        run(workdir, {**spec, "record": {**spec["record"], "prompt": "{{ q.split(':')[2] }}"}})


def test_a_template_failing_on_every_row_since_the_input_schema_changed_is_the_recipes_error(workdir: Path) -> None:
    # The templates see the values as input_schema reads them: v1's templates read 'q' as text, and the changed schema
    # gives them a float. Every row of the next run failed one way, each quarantined, and an empty v2 was published.
    (workdir / "qa").mkdir()
    (workdir / "qa" / "a.csv").write_text("q,a\n1.5,A\n2.5,B\n")
    spec = qa_recipe("qa", prompt="{{ q.upper() }}", input_schema={"columns": {"q": "str", "a": "str"}})
    assert run(workdir, spec).manifest.counts.written == 2
    (workdir / "qa" / "b.csv").write_text("q,a\n3.5,C\n4.5,D\n")
    as_float = {**spec, "input_schema": {"columns": {"q": "float", "a": "str"}}}
    with pytest.raises(RecipeError, match=r"failed on every record it was given \(2\), .*'float object' has no attr"):
        run(workdir, as_float)
    fixed = run(workdir, {**as_float, "record": {**spec["record"], "prompt": "{{ q * 2 }}"}})
    published = sorted(row["prompt"] for row in outputs(Path(fixed.version_uri)))
    assert (fixed.manifest.version, published) == (2, ["1.5", "2.5", "7.0", "9.0"])  # v1's, and the new rows'


def test_a_run_whose_rows_fail_a_template_each_its_own_way_keeps_one_kind_of_template_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every message quotes the row's value: the tally held each one all run (~280 bytes a row) to ask only whether
    # there was one kind. It keeps the first kind and its count, and that another was seen, whatever the rows.
    tallies: list[Tally] = []

    class KeptTally(Tally):
        def __init__(self) -> None:
            super().__init__()
            tallies.append(self)

    monkeypatch.setattr(pipeline, "Tally", KeptTally)
    rows = [{"q": "ok", "a": "A"}] + [{"q": f"Q{n}", "a": "A"} for n in range(1_000)]
    path = write_jsonl(workdir / "qa.jsonl", rows)
    result = run(workdir, qa_recipe("qa.jsonl", prompt="{{ {'ok': 'fine'}[q] }}", batch_rows=100))
    assert (result.manifest.counts.written, result.manifest.counts.quarantined) == (1, 1_000)
    [tally] = tallies
    assert len(pickle.dumps(tally.template_errors)) < 1_000
    kind = "prompt: template failed: 'dict object' has no attribute 'Q0'"
    example = SetAsideExample(f"{path}:2: {kind}", {})  # its row is not compared
    assert tally.template_errors == TemplateErrors(kind=kind, count=1, another=True, example=example)


@pytest.mark.parametrize("questions", [[None, "q?", None], [None, None]])
def test_a_template_failing_on_a_null_is_the_datas_error_whatever_records_fail_so(
    workdir: Path, questions: list[str | None]
) -> None:
    # The records lacking a value the template reads are quarantined one by one, even where no record is left.
    rows = [{"q": q, "a": f"A{n}"} for n, q in enumerate(questions)]
    path = write_jsonl(workdir / "qa.jsonl", rows)
    result = run(workdir, qa_recipe("qa.jsonl", prompt="{{ q.upper() }}"))
    published = [row["prompt"] for row in outputs(Path(result.version_uri))]
    assert published == [q.upper() for q in questions if q is not None]
    assert [row["detail"] for row in set_aside(Path(result.version_uri))] == [
        f"{path}:{n + 1}: prompt: template failed: 'None' has no attribute 'upper', with 'q' empty (null)"
        for n, q in enumerate(questions)
        if q is None
    ]


def test_a_row_lacking_a_template_column_is_missing_column_whatever_rows_are_batched_with_it() -> None:
    shape = Shape(RecordShape(kind="instruction", prompt="{{ q }} {{ ctx }}", completion="a"))

    def reasons(lines: list[int], q: list[str | None]) -> dict[str, str]:
        batch = pa.table({"id": [f"r{i}" for i in lines], "source": source_array("files", "/in.jsonl", lines), "q": q})
        aside = shape(batch.append_column("a", pa.array(["A"] * len(lines)))).set_aside
        return dict(zip(aside["id"].to_pylist(), aside["reason"].to_pylist(), strict=True))

    assert reasons([2], ["Q?"]) == {"r2": "missing_column"}
    assert reasons([1, 2], [None, "Q?"]) == {"r1": "template", "r2": "missing_column"}


def test_quarantined_records_join_the_review_queue(workdir: Path) -> None:
    import sqlalchemy as sa

    from curation.review.queue import list_items

    write_jsonl(workdir / "tx.jsonl", [{"description": "coffee", "amount": 4.5, "category": "Dining"}, "{oops"])
    result = run(workdir, recipe("tx.jsonl"))
    items = list_items(sa.create_engine(f"sqlite:///{workdir}/state.db"), dataset="tx")
    assert [(i["kind"], i["detail"], i["version"], i["status"]) for i in items] == [
        ("quarantined", "malformed_json", 1, "open")
    ]
    assert json.loads(items[0]["payload"])["record"] == "{oops"
    assert json.loads(items[0]["source"])["line"] == 2
    assert result.manifest.counts.quarantined == 1


def test_a_value_that_is_not_a_string_in_a_declared_str_column_is_quarantined(workdir: Path) -> None:
    rows = [
        {"description": "coffee", "amount": 4.5, "category": "Dining"},
        {"description": ["tea", "cake"], "amount": 6, "category": "Dining"},  # a list where text is declared
        {"description": "taxi", "amount": 12, "category": {"main": "Transport"}},
        {"description": "[not a list]", "amount": 3, "category": "Dining"},  # text that looks like one
        {"description": "rent", "amount": 1200, "category": 7},
        {"description": "bus", "amount": 2, "category": "Transport", "meta": {"category": 1}},  # nested: fine
    ]
    path = write_jsonl(workdir / "tx.jsonl", rows)
    result = run(workdir, recipe("tx.jsonl"))
    aside = set_aside(Path(result.version_uri))
    assert [(row["reason"], row["source"]["line"], row["detail"]) for row in aside] == [
        ("schema", 2, f"{path}:2: description: a JSON array, not a string (the input schema declares str)"),
        ("schema", 3, f"{path}:3: category: a JSON object, not a string (the input schema declares str)"),
        ("schema", 5, f"{path}:5: category: a JSON number, not a string (the input schema declares str)"),
    ]
    assert json.loads(aside[0]["record"]) == rows[1]  # the raw line, as it came
    written = sorted(row["prompt"] for row in outputs(Path(result.version_uri)))
    assert written == ["Categorise [not a list] (3.0)", "Categorise bus (2.0)", "Categorise coffee (4.5)"]
    assert_adds_up(result.manifest.counts)


def test_a_key_the_first_line_lacks_is_kept_when_a_bad_line_sends_the_block_line_by_line(workdir: Path) -> None:
    (workdir / "faq.jsonl").write_text('{"q": "Where is it?"}\n{"q": "When?", "a": "Tomorrow."}\n{broken\n')
    spec = qa_recipe("faq.jsonl", completion="{{ a or 'unknown' }}")
    result = run(workdir, spec)
    assert sorted(line["completion"] for line in outputs(Path(result.version_uri))) == ["Tomorrow.", "unknown"]
    assert result.manifest.counts.quarantined == 1


def test_an_integer_past_64_bits_keeps_its_digits_as_text(workdir: Path) -> None:
    # Account numbers and u64 hashes: no Arrow integer holds them; the run failed with an OverflowError.
    (workdir / "acc.jsonl").write_text(
        '{"q": "Balance of", "account": 18446744073709551615, "ref": {"n": 123456789012345678901234567890}}\n'
        '{"q": "Small", "account": 42, "ref": null}\n'
        '{"q": "Mixed", "account": 1.5}\n'
    )
    spec = qa_recipe("acc.jsonl", completion="{{ account }} {{ ref or '-' }}", output={"validation_fraction": 0})
    result = run(workdir, spec)
    assert sorted(line["completion"] for line in outputs(Path(result.version_uri))) == [
        "1.5 -",
        '18446744073709551615 {"n": 123456789012345678901234567890}',
        "42 -",
    ]
    assert_adds_up(result.manifest.counts)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_an_int_column_value_past_64_bits_is_quarantined_by_its_row(workdir: Path, suffix: str) -> None:
    rows = [("coffee", "4"), ("card", "18446744073709551615"), ("rent", "-9223372036854775809"), ("bus", "2")]
    if suffix == "jsonl":
        lines = [f'{{"description": "{d}", "amount": 1.5, "category": "Dining", "points": {p}}}' for d, p in rows]
        path = workdir / "tx.jsonl"
        path.write_text("\n".join(lines) + "\n")
    else:
        path = workdir / "tx.csv"
        path.write_text("description,amount,category,points\n" + "".join(f"{d},1.5,Dining,{p}\n" for d, p in rows))
    spec = recipe(path.name)
    spec["input_schema"] = {"columns": {**SCHEMA["columns"], "points": "int"}}
    result = run(workdir, spec)
    aside = sorted(set_aside(Path(result.version_uri)), key=lambda row: row["source"]["line"])
    first = 1 if suffix == "jsonl" else 2
    assert [(row["reason"], row["source"]["line"]) for row in aside] == [("schema", first + 1), ("schema", first + 2)]
    assert aside[0]["detail"].startswith(f"{path}:{first + 1}: points: Input should be less than or equal to")
    assert sorted(line["prompt"] for line in outputs(Path(result.version_uri))) == [
        "Categorise bus (1.5)",
        "Categorise coffee (1.5)",
    ]
    assert_adds_up(result.manifest.counts)


def test_a_template_that_fails_on_a_row_quarantines_that_row(workdir: Path) -> None:
    rows = [
        {"item": "coffee", "total": 9, "count": 3, "a": "ok"},
        {"item": "nothing", "total": 5, "count": 0, "a": "ok"},  # a ratio of zero items
        {"item": "tea", "total": 4, "count": 2, "a": "ok"},
    ]
    path = write_jsonl(workdir / "tx.jsonl", rows)
    spec = qa_recipe("tx.jsonl", prompt="{{ item }} at {{ total / count }} each")
    result = run(workdir, spec)
    [row] = set_aside(Path(result.version_uri))
    assert (row["reason"], row["detail"]) == ("template", f"{path}:2: prompt: template failed: division by zero")
    assert sorted(line["prompt"] for line in outputs(Path(result.version_uri))) == [
        "coffee at 3.0 each",
        "tea at 2.0 each",
    ]
    assert_adds_up(result.manifest.counts)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_an_id_column_beside_an_input_id_column_is_refused_by_name(workdir: Path, suffix: str) -> None:
    # `id` is read as `input_id`: a file with both had two columns of one name, and a stage failed on it
    # with a KeyError from Arrow.
    if suffix == "jsonl":
        write_jsonl(workdir / "tx.jsonl", [{"id": 7, "input_id": "A-7", "q": "Hello?", "a": "Hi."}])
    else:
        (workdir / "tx.csv").write_text("id,input_id,q,a\n7,A-7,Hello?,Hi.\n")
    spec = qa_recipe(f"tx.{suffix}", prompt="{{ input_id }}: {{ q }}")
    with pytest.raises(OSError, match=rf"tx.{suffix}: column 'id' is read as 'input_id' .* rename one of them"):
        run(workdir, spec)


def test_a_parquet_binary_column_that_is_not_utf8_does_not_fail_the_file(workdir: Path) -> None:
    # A checksum or thumbnail column: bytes, not text. Record ids cast every value to text, and the
    # file was refused as "not a readable parquet file: Invalid UTF8 payload".
    table = pa.table(
        {"q": ["Hello?", "Bye?"], "a": ["Hi.", "Bye."], "digest": pa.array([b"\xff\x00\xfe", b"ok"], pa.binary())}
    )
    pq.write_table(table, workdir / "faq.parquet")
    spec = qa_recipe("faq.parquet")
    result = run(workdir, spec)
    assert sorted(line["prompt"] for line in outputs(Path(result.version_uri))) == ["Bye?", "Hello?"]
    assert_adds_up(result.manifest.counts)


def test_a_parquet_text_value_that_is_not_utf8_quarantines_its_row(workdir: Path) -> None:
    # Parquet readers do not check text is UTF-8: a lone surrogate written as its three bytes (as CESU-8
    # writes one) failed the whole run in a later stage ("Cannot normalize utf8 string"), naming no file.
    texts = [b"Hello?", b"half \xed\xa0\x80 a pair?", b"Bye?"]
    offsets = pa.array(np.cumsum([0] + [len(t) for t in texts]), pa.int32()).buffers()[1]
    questions = pa.Array.from_buffers(pa.string(), len(texts), [None, offsets, pa.py_buffer(b"".join(texts))])
    pq.write_table(pa.table({"q": questions, "a": ["Hi.", "Half.", "Bye."]}), workdir / "faq.parquet")
    for schema in (None, {"columns": {"q": "str", "a": "str"}}):
        spec = qa_recipe("faq.parquet", **({"input_schema": schema} if schema else {}))
        result = run(workdir, spec, full_refresh=True)
        assert sorted(line["prompt"] for line in outputs(Path(result.version_uri))) == ["Bye?", "Hello?"]
        (aside,) = set_aside(Path(result.version_uri))
        assert aside["reason"] == "schema" and aside["detail"].startswith(f"{workdir / 'faq.parquet'}:2: ")
        assert_adds_up(result.manifest.counts)


def test_a_float_json_cannot_hold_is_null_in_a_set_aside_record_which_any_json_parser_reads(workdir: Path) -> None:
    # Python's json wrote NaN and Infinity as those bare words, in the record of a row set aside as read
    # (text in a struct not UTF-8) or by a later stage: jq, a browser or SageMaker refused the line.
    inf, nan = float("inf"), float("nan")
    notes = pa.array([b"ok", b"fine", b"caf\xe9"], pa.binary()).view(pa.string())
    table = pa.table(
        {
            "q": ["Fine?", "No answer?", "Cafe?"],
            "a": ["Yes.", None, "Oui."],
            "score": [nan, inf, -inf],
            "meta": pa.StructArray.from_arrays([notes, pa.array([[1.5], [-inf, nan], [inf]])], names=["note", "xs"]),
        }
    )
    pq.write_table(table, workdir / "faq.parquet")
    result = run(workdir, qa_recipe("faq.parquet", "{{ q }} {{ meta.note }}", "{{ a }}"))
    version = Path(result.version_uri)
    assert [line["prompt"] for line in outputs(version)] == ["Fine? ok"]
    lines = [strict_json(line) for line in (version / "set_aside" / "part-00000.jsonl").read_text().splitlines()]
    records = {line["source"]["line"]: (line["reason"], strict_json(line["record"])) for line in lines}
    assert records == {
        2: ("template", {"q": "No answer?", "a": None, "score": None, "meta": {"note": "fine", "xs": [None, None]}}),
        3: ("schema", {"q": "Cafe?", "a": "Oui.", "score": None, "meta": {"note": "caf\ufffd", "xs": [None]}}),
    }
    assert_adds_up(result.manifest.counts)


def test_a_field_naming_a_column_of_json_objects_or_arrays_writes_them_as_json(workdir: Path) -> None:
    # Arrow casts no struct or list to text: the run failed with ArrowNotImplementedError.
    write_jsonl(
        workdir / "faq.jsonl",
        [
            {"q": "Which tags?", "tags": ["billing", "café"], "meta": {"lang": "en", "ok": True}},
            {"q": "None?", "tags": [], "meta": None},
        ],
    )
    spec = {
        "dataset": "faq",
        "sources": [{"path": "faq.jsonl"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "tags", "label": "meta"},
        "output": {"validation_fraction": 0},
    }
    result = run(workdir, spec)
    lines = outputs(Path(result.version_uri))
    assert sorted(line["completion"] for line in lines) == ['["billing", "café"]', "[]"]
    assert_adds_up(result.manifest.counts)


def test_an_object_in_a_column_of_mixed_types_reads_the_same_beside_a_malformed_line(workdir: Path) -> None:
    # Read whole, the block gives the object as polars writes it; read line by line (a malformed line
    # in the block), it came with its non-ASCII text as \u escapes: "caf\u00e9".
    lines = ['{"q": "a", "meta": {"city": "Zürich 日本", "n": 1}}', '{"q": "b", "meta": "plain"}']
    spec = qa_recipe("faq.jsonl", completion="meta", output={"validation_fraction": 0})
    published = []
    for extra in ([], ["{broken"]):
        (workdir / "faq.jsonl").write_text("\n".join(lines + extra) + "\n")
        result = run(workdir, spec, full_refresh=True)
        published.append(sorted(line["completion"] for line in outputs(Path(result.version_uri))))
    assert published[0] == published[1] == ["plain", '{"city": "Zürich 日本", "n": 1}']


def test_a_template_writes_an_object_or_array_as_json_whether_its_column_mixes_types_or_not(workdir: Path) -> None:
    # A column of objects only (a struct) rendered as Python writes a dict, "{'city': 'Zürich'}", and
    # ['x'] for a list; beside a plain string (a column of mixed types) the same object came as JSON.
    spec = qa_recipe(
        "faq.jsonl", prompt="{{ q }}: {{ meta }}", completion="{{ tags }}", output={"validation_fraction": 0}
    )
    first = '{"q": "a", "meta": {"city": "Zürich", "n": 1}, "tags": ["x", "y"]}'
    published = []
    for second in (
        '{"q": "b", "meta": {"city": "Bern", "n": 2}, "tags": []}',
        '{"q": "b", "meta": "Bern", "tags": []}',
    ):
        (workdir / "faq.jsonl").write_text(first + "\n" + second + "\n")
        result = run(workdir, spec, full_refresh=True)
        published.append(sorted((line["prompt"], line["completion"]) for line in outputs(Path(result.version_uri))))
    assert published[0] == [('a: {"city": "Zürich", "n": 1}', '["x", "y"]'), ('b: {"city": "Bern", "n": 2}', "[]")]
    assert published[1] == [('a: {"city": "Zürich", "n": 1}', '["x", "y"]'), ("b: Bern", "[]")]
    # A member of an object is still reached by name.
    (workdir / "faq.jsonl").write_text(first + "\n")
    result = run(workdir, {**spec, "record": {**spec["record"], "prompt": "{{ meta.city }}"}}, full_refresh=True)
    assert [line["prompt"] for line in outputs(Path(result.version_uri))] == ["Zürich"]


@pytest.mark.parametrize("others", [[], ["{broken"]])  # the block read whole (polars), and line by line
def test_an_object_or_array_is_written_as_its_line_wrote_it_on_every_path(workdir: Path, others: list[str]) -> None:
    # A column of objects was an Arrow struct: a row got the keys other rows have, in the column's
    # order, and its numbers the column's type: 'a {"a": 1, "b": null, "z": null}', 'd {"b": 7.0, ...}';
    # read whole, an array's number beside text in another row became text ('["1"]'), and so did an
    # object's ('{"b": "2.5"}').
    lines = [
        '{"q": "a", "meta": {"a": 1}, "tags": ["x"]}',
        '{"q": "b", "meta": {"b": 2.5, "a": null}, "tags": [1]}',
        '{"q": "c", "meta": {"z": 1.0, "a": 3}, "tags": []}',
        '{"q": "d", "meta": {"b": 7}, "tags": null}',
        *others,
    ]
    (workdir / "faq.jsonl").write_text("\n".join(lines) + "\n")
    spec = qa_recipe(
        "faq.jsonl", prompt="{{ q }} {{ meta }}", completion="{{ tags }}.", output={"validation_fraction": 0}
    )
    result = run(workdir, spec)
    assert sorted((line["prompt"], line["completion"]) for line in outputs(Path(result.version_uri))) == [
        ('a {"a": 1}', '["x"].'),
        ('b {"b": 2.5, "a": null}', "[1]."),
        ('c {"z": 1.0, "a": 3}', "[]."),
    ]
    quarantined = {row["source"]["line"]: row for row in set_aside(Path(result.version_uri))}
    assert json.loads(quarantined[4]["record"]) == {"q": "d", "meta": {"b": 7}, "tags": None}
    # A field naming the column writes the same; a member is reached by name, and a key the object
    # lacks is its row's problem.
    lines.insert(4, '{"q": "e", "meta": {"b": "s", "a": {"y": 1, "x": [true]}}, "tags": []}')
    (workdir / "faq.jsonl").write_text("\n".join(lines) + "\n")
    spec["record"] = {"kind": "instruction", "prompt": "meta", "completion": "{{ meta.a }}"}
    result = run(workdir, spec, full_refresh=True)
    assert sorted((line["prompt"], line["completion"]) for line in outputs(Path(result.version_uri))) == [
        ('{"a": 1}', "1"),
        ('{"b": "s", "a": {"y": 1, "x": [true]}}', '{"y": 1, "x": [true]}'),
        ('{"z": 1.0, "a": 3}', "3"),
    ]
    assert {row["source"]["line"] for row in set_aside(Path(result.version_uri))} >= {2, 4}
    assert_adds_up(result.manifest.counts)


@pytest.mark.parametrize("order", [("1", "2"), ("2", "1")])
def test_a_group_by_column_of_objects_in_one_file_and_of_mixed_types_in_another_splits(
    workdir: Path, order: tuple[str, str]
) -> None:
    # Objects only, a file's column was a struct, and the other's text: the run failed with a traceback
    # (Arrow casts no text to a struct), and then when it parsed the text cast to JSON ("x").
    (workdir / "in").mkdir()
    (workdir / "in" / f"{order[0]}.jsonl").write_text('{"q": "a", "meta": {"k": 1}}\n{"q": "b", "meta": {"k": 2}}\n')
    (workdir / "in" / f"{order[1]}.jsonl").write_text('{"q": "c", "meta": "x"}\n{"q": "d", "meta": {"k": 1}}\n')
    result = run(workdir, {**qa_recipe("in/", completion="q"), "dataset": "g", "output": {"group_by": "meta"}})
    assert sorted(line["prompt"] for line in outputs(Path(result.version_uri))) == ["a", "b", "c", "d"]
    assert_adds_up(result.manifest.counts)


@pytest.mark.parametrize(
    "others",
    [
        [],  # the block read whole (polars kept the first value)
        ["{broken"],  # read line by line (Python's json kept the last)
        ['{"q": "Null?", "a": "Yes.", "n": null}'],  # a key given null: the block gets the exact check
        ['{"q": "Number?", "a": "Yes.", "n": 1}', '{"q": "Text?", "a": "Yes.", "n": "one"}'],  # types that change
    ],
)
def test_a_json_object_that_names_a_key_twice_is_quarantined_naming_the_key(workdir: Path, others: list[str]) -> None:
    lines = [
        '{"q": "Which?", "a": "first", "a": "last"}',
        '{"q": "Deep?", "a": "Yes.", "meta": {"k": 1, "k": 2}}',
        '{"q": "Where?", "a": "Here.", "meta": {"k": 3}}',
        *others,
    ]
    path = workdir / "faq.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run(workdir, qa_recipe("faq.jsonl", output={"validation_fraction": 0}))
    quarantined = {(row["source"]["line"], row["detail"]) for row in set_aside(Path(result.version_uri))}
    assert {
        (1, f'{path}:1: malformed JSON: the key "a" appears twice in one object'),
        (2, f'{path}:2: malformed JSON: the key "k" appears twice in one object'),
    } <= quarantined
    assert len(quarantined) == 2 + (others == ["{broken"])
    assert "Where?" in {line["prompt"] for line in outputs(Path(result.version_uri))}
    assert_adds_up(result.manifest.counts)
    assert result.manifest.counts.written == len(lines) - len(quarantined)


def test_a_key_named_twice_in_an_object_beside_text_in_its_column_is_quarantined(workdir: Path) -> None:
    # polars writes an object in a column that mixes types as its JSON text, both keys kept: their
    # colons were counted as a string's, and the line was published.
    lines = ['{"q": "Deep?", "a": "Yes.", "meta": {"k": 1, "k": 2}}', '{"q": "Plain?", "a": "Yes.", "meta": "plain"}']
    path = workdir / "faq.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run(workdir, qa_recipe("faq.jsonl", output={"validation_fraction": 0}))
    quarantined = {(row["source"]["line"], row["detail"]) for row in set_aside(Path(result.version_uri))}
    assert quarantined == {(1, f'{path}:1: malformed JSON: the key "k" appears twice in one object')}
    assert [line["prompt"] for line in outputs(Path(result.version_uri))] == ["Plain?"]
    assert_adds_up(result.manifest.counts)


def test_a_block_that_names_no_key_twice_is_read_whole_without_a_second_read() -> None:
    from connectors.files import _may_repeat_a_key, read_json_objects

    rows = [{"q": f"Q{n}: what?", "a": "A: this.", "n": n, "meta": {"k": [{"x": "1:2"}]}} for n in range(300)]
    text = "".join(json.dumps(row) + "\n" for row in rows).encode()
    assert not _may_repeat_a_key(text, read_json_objects(text, len(rows)))  # the usual block: no exact check
    twice = text.replace(b'"n": 7,', b'"n": 7, "n": 8,')
    assert _may_repeat_a_key(twice, read_json_objects(twice, len(rows)))


def test_a_flat_block_is_checked_for_a_repeated_key_without_counting_colons_in_its_strings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import connectors.files as files
    from connectors.files import _may_repeat_a_key, read_json_objects

    rows = [{"q": f"Q{n} what?", "a": "A this.", "n": n} for n in range(300)]
    text = "".join(json.dumps(row) + "\n" for row in rows).encode()
    twice = text.replace(b'"n": 7}', b'"n": 7, "n": 8}')
    given_null = text.replace(b'"n": 7}', b'"n": null, "n": 7}')
    with_colon = text.replace(b"Q7 what?", b"Q7: what?")
    monkeypatch.setattr(files, "_values_and_colons", lambda _: pytest.fail("counted value by value"))
    assert not _may_repeat_a_key(text, read_json_objects(text, len(rows)))
    monkeypatch.undo()
    # More colons than values: a key named twice (or given null), or a colon in a string, is looked at.
    for block, repeats in ((twice, True), (given_null, True), (with_colon, False)):
        assert block != text
        assert _may_repeat_a_key(block, read_json_objects(block, len(rows))) is repeats


def test_a_json_line_nested_thousands_deep_is_quarantined_not_fatal(workdir: Path) -> None:
    # Python's json gave up with a RecursionError, which failed the whole run.
    deep = '{"q": "deep", "a": "x", "z": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = workdir / "faq.jsonl"
    path.write_text('{"q": "Where?", "a": "Here."}\n' + deep + "\n")
    spec = qa_recipe("faq.jsonl")
    result = run(workdir, spec)
    [row] = set_aside(Path(result.version_uri))
    assert (row["reason"], row["detail"]) == ("malformed_json", f"{path}:2: malformed JSON: nested too deeply to read")
    assert [line["prompt"] for line in outputs(Path(result.version_uri))] == ["Where?"]
    assert_adds_up(result.manifest.counts)


def test_json_lines_that_end_in_cr_alone_are_one_record_each(workdir: Path) -> None:
    # As a CSV file's lines may (classic Mac line ends): the whole file was one malformed line.
    (workdir / "faq.jsonl").write_bytes(b'{"q": "Where?", "a": "Here."}\r{"q": "When?", "a": "Now."}\r{broken\r')
    spec = qa_recipe("faq.jsonl")
    result = run(workdir, spec)
    assert sorted(line["prompt"] for line in outputs(Path(result.version_uri))) == ["When?", "Where?"]
    assert [(row["reason"], row["source"]["line"]) for row in set_aside(Path(result.version_uri))] == [
        ("malformed_json", 3)
    ]
    assert_adds_up(result.manifest.counts)


def test_a_field_naming_a_binary_column_quarantines_the_rows_that_are_not_utf8(workdir: Path) -> None:
    # The run failed with "Invalid UTF8 payload", naming neither file nor row.
    table = pa.table({"q": pa.array([b"Hello?", b"caf\xe9?", b"Bye?"], pa.binary()), "a": ["Hi.", "Oui.", "Bye."]})
    pq.write_table(table, workdir / "faq.parquet")
    spec = qa_recipe("faq.parquet")
    result = run(workdir, spec)
    [row] = set_aside(Path(result.version_uri))
    assert (row["reason"], row["detail"]) == (
        "schema",
        f"{workdir / 'faq.parquet'}:2: prompt: column 'q' holds bytes that are not UTF-8 text (byte 0xe9 at 4)",
    )
    assert sorted(line["prompt"] for line in outputs(Path(result.version_uri))) == ["Bye?", "Hello?"]
    assert_adds_up(result.manifest.counts)


def test_text_that_is_not_utf8_inside_a_parquet_struct_or_list_quarantines_its_row(workdir: Path) -> None:
    # The run failed with a UnicodeDecodeError from deep inside pyarrow, naming neither file nor row.
    text = pa.array([b"ok", b"caf\xe9", b"fine", b"done"], pa.binary()).view(pa.string())
    meta = pa.StructArray.from_arrays([text], names=["note"])
    tags = pa.ListArray.from_arrays(pa.array([0, 1, 2, 3, 4], pa.int32()), text[::-1])
    table = pa.table({"q": ["Hello?", "Cafe?", "Bye?", "Done?"], "a": ["Hi.", "Oui.", "Bye.", "Yes."]})
    table = table.append_column("meta", meta).append_column("tags", tags)
    pq.write_table(table, workdir / "faq.parquet")
    spec = qa_recipe("faq.parquet", prompt="Q: {{ q }} {{ meta.note }}")
    result = run(workdir, spec)
    aside = set_aside(Path(result.version_uri))
    problem = "holds bytes that are not UTF-8 text (byte 0xe9 at 4 of a value)"
    assert [(row["reason"], row["detail"]) for row in aside] == [
        ("schema", f"{workdir / 'faq.parquet'}:2: column 'meta' {problem}"),
    ]
    assert json.loads(aside[0]["record"])["meta"] == {"note": "caf\ufffd"}
    # 'tags', which the recipe does not read, is not published: its text quarantined row 3 all the same.
    written = sorted(line["prompt"] for line in outputs(Path(result.version_uri)))
    assert written == ["Q: Bye? fine", "Q: Done? done", "Q: Hello? ok"]
    assert_adds_up(result.manifest.counts)
    # A row's id does not change with the rows read beside it: those whose text is all UTF-8 keep theirs.
    pq.write_table(table.take([0, 3]), workdir / "faq.parquet")
    again = run(workdir, {**spec, "dataset": "faq2"})
    assert written_ids(Path(again.version_uri)) < written_ids(Path(result.version_uri))


def test_text_that_is_not_utf8_in_a_parquet_struct_named_id_read_as_input_id_quarantines_its_row(
    workdir: Path,
) -> None:
    # The recipe reads a file's `id` as `input_id`: compared with the file's names, `id` went unchecked and its
    # text failed the template later, nothing naming the column.
    text = pa.array([b"ok", b"caf\xe9"], pa.binary()).view(pa.string())
    table = pa.table({"q": ["Hello?", "Cafe?"], "a": ["Hi.", "Oui."]})
    pq.write_table(table.append_column("id", pa.StructArray.from_arrays([text], names=["note"])), workdir / "f.parquet")
    result = run(workdir, qa_recipe("f.parquet", prompt="Q: {{ q }} {{ input_id.note }}"))
    assert [(row["stage"], row["reason"], row["detail"]) for row in set_aside(Path(result.version_uri))] == [
        (
            "read",
            "schema",
            f"{workdir / 'f.parquet'}:2: column 'id' holds bytes that are not UTF-8 text (byte 0xe9 at 4 of a value)",
        )
    ]
    assert [line["prompt"] for line in outputs(Path(result.version_uri))] == ["Q: Hello? ok"]


def test_a_parquet_row_set_aside_for_its_struct_keeps_its_text_as_it_is_for_the_pii_scrub(workdir: Path) -> None:
    # Escaped (\u00e9, six characters each), a long row was cut at MAX_RAW_CHARS into text that is no JSON, which
    # the scrub reads as one string, and whose escaped name it does not recognise: published in clear.
    text = pa.array([b"ok", b"caf\xe9"], pa.binary()).view(pa.string())
    question = "é" * 1500 + "Write to José Müller about the loan." + "é" * 3000
    table = pa.table({"q": ["Hello?", question], "a": ["Hi.", "Oui."]})
    pq.write_table(
        table.append_column("meta", pa.StructArray.from_arrays([text], names=["note"])), workdir / "f.parquet"
    )
    stages = [{"type": "pii", "entities": ["PERSON"]}]
    spec = qa_recipe("f.parquet", prompt="Q: {{ q }} {{ meta.note }}", stages=stages)
    [row] = set_aside(Path(run(workdir, spec).version_uri))
    assert row["reason"] == "schema"
    record = json.loads(row["record"])
    # (The model takes the "loan.ééé…" after it for a name too.)
    assert record["q"].startswith("é" * 1500 + "Write to <PERSON> about the ") and "Jos" not in row["record"]
    assert record["meta"] == {"note": "caf\ufffd"}


def test_a_parquet_row_set_aside_for_its_struct_shows_a_binary_column_as_its_text(workdir: Path) -> None:
    # A template reads a binary column as its text: its row set aside showed it as its size ("<12 bytes>").
    text = pa.array([b"ok", b"caf\xe9"], pa.binary()).view(pa.string())
    table = pa.table({"q": ["Hello?", "Cafe?"], "a": ["Hi.", "Oui."]})
    table = table.append_column("blob", pa.array([b"x", b"Jos\xc3\xa9 secret"], pa.binary()))
    pq.write_table(
        table.append_column("meta", pa.StructArray.from_arrays([text], names=["note"])), workdir / "f.parquet"
    )
    spec = qa_recipe("f.parquet", prompt="Q: {{ q }} {{ meta.note }} {{ blob }}")
    [row] = set_aside(Path(run(workdir, spec).version_uri))
    assert row["reason"] == "schema"
    assert json.loads(row["record"])["blob"] == "José secret"


def test_a_set_aside_record_cut_inside_an_email_drops_the_cut_word_for_the_pii_scrub(workdir: Path) -> None:
    # Cut at MAX_RAW_CHARS, a record kept the start of the address it split ("dana.whitfield@exa"), which the
    # scrub does not recognise: published in clear.
    from connectors.files import MAX_RAW_CHARS

    text = pa.array([b"ok", b"caf\xe9"], pa.binary()).view(pa.string())
    email = "dana.whitfield@example.com"
    lead = ("Please write back. " * 600)[: MAX_RAW_CHARS - len('{"q": "Contact dana.whitfield@exa')]
    table = pa.table({"q": ["Hello?", f"{lead}Contact {email} or Jose Martinez Garcia."], "a": ["Hi.", "Oui."]})
    table = table.append_column("meta", pa.StructArray.from_arrays([text], names=["note"]))
    pq.write_table(table, workdir / "f.parquet")
    stages = [{"type": "pii", "entities": ["PERSON", "EMAIL_ADDRESS"]}]
    spec = qa_recipe("f.parquet", prompt="Q: {{ q }} {{ meta.note }}", stages=stages)
    [row] = set_aside(Path(run(workdir, spec).version_uri))
    assert row["reason"] == "schema" and "whitfield" not in row["record"]
    assert row["record"].endswith("Contact [cut]") and len(row["record"]) <= MAX_RAW_CHARS


@pytest.mark.parametrize(
    ("said", "cut_in", "entity"),
    [
        ("Call +1 415 555 0199", "Call +1 415 555 01", "PHONE_NUMBER"),
        ("Card 4111 1111 1111 1111", "Card 4111 1111 1111 11", "CREDIT_CARD"),
    ],
)
def test_a_set_aside_record_cut_inside_a_number_in_groups_drops_its_groups(
    workdir: Path, said: str, cut_in: str, entity: str
) -> None:
    # Only the group the cut fell in was dropped: "Call +1 415 555 [cut]" was left, which the scrub does not
    # recognise as a number, published in clear.
    from connectors.files import MAX_RAW_CHARS

    text = pa.array([b"ok", b"caf\xe9"], pa.binary()).view(pa.string())
    lead = ("Please write back. " * 600)[: MAX_RAW_CHARS - len(" [cut]") - len(f'{{"q": "{cut_in}')]
    table = pa.table({"q": ["Hello?", f"{lead}{said} today."], "a": ["Hi.", "Oui."]})
    table = table.append_column("meta", pa.StructArray.from_arrays([text], names=["note"]))
    pq.write_table(table, workdir / "f.parquet")
    spec = qa_recipe("f.parquet", prompt="Q: {{ q }} {{ meta.note }}", stages=[{"type": "pii", "entities": [entity]}])
    [row] = set_aside(Path(run(workdir, spec).version_uri))
    first = said.split()[1]
    assert row["reason"] == "schema" and f"{first} " not in row["record"], row["record"][-80:]
    assert row["record"].endswith(f"{said.split()[0]} [cut]") and len(row["record"]) <= MAX_RAW_CHARS


def test_a_cut_record_without_spaces_or_with_a_long_word_or_gap_at_its_end_is_cut_as_before() -> None:
    # The cut word is looked for in the record's end only (over the whole text: ~50 ms a record without spaces):
    # what is dropped is the same.
    from connectors.files import MAX_RAW_CHARS, raw_cut

    kept = MAX_RAW_CHARS - len(" [cut]")
    for solid in ("Q" * 20_000, "\u6587" * 20_000):  # base64, Chinese: the word bounded, not the text dropped
        assert raw_cut(solid) == solid[: kept - 256] + " [cut]"
    words = "a " * 4_000
    gap = f"{words}{' ' * 1_800}{'x' * 300}"  # spaces before the cut word reaching past the end looked at
    assert raw_cut(gap) == words.rstrip() + " [cut]"
    assert raw_cut(f"{'a' * (kept - 3)} Bob{'b' * 50}") == "a" * (kept - 3) + " [cut]"
    assert raw_cut("short text") == "short text"


def written_ids(version_dir: Path) -> set[str]:
    return {row["id"] for row in lineage_rows(version_dir)}


def test_a_template_writes_a_binary_column_as_its_text_not_as_python_bytes(workdir: Path) -> None:
    # A field naming the column wrote its text; a template wrote Python's repr: "Q: b'Hello?'".
    table = pa.table({"q": pa.array([b"Hello?", b"caf\xe9?"], pa.binary()), "a": ["Hi.", "Oui."]})
    pq.write_table(table, workdir / "faq.parquet")
    result = run(workdir, qa_recipe("faq.parquet", prompt="Q: {{ q }}"))
    assert [line["prompt"] for line in outputs(Path(result.version_uri))] == ["Q: Hello?"]
    [row] = set_aside(Path(result.version_uri))
    assert (row["reason"], row["detail"]) == (
        "template",
        f"{workdir / 'faq.parquet'}:2: prompt: template failed: a value holds bytes that are not UTF-8 text "
        "(byte 0xe9 at 4)",
    )
    assert_adds_up(result.manifest.counts)


def test_a_json_array_file_is_refused_by_name_not_quarantined_line_by_line(workdir: Path) -> None:
    from connectors.storage import StorageError

    rows = [{"q": f"Question {n}?", "a": "Yes."} for n in range(3)]
    (workdir / "export.json").write_text("\ufeff" + json.dumps(rows, indent=2))  # as exports write them
    (workdir / "lines.json").write_text("".join(json.dumps(row) + "\n" for row in rows))  # JSON Lines named .json
    recipe = {"dataset": "qa", "record": {"kind": "instruction", "prompt": "q", "completion": "a"}}
    with pytest.raises(StorageError, match=r"export\.json: holds a JSON array, not JSON Lines"):
        run(workdir, {**recipe, "sources": [{"path": "export.json"}]})
    assert not (workdir / "output" / "qa").exists()  # nothing published, not an empty version
    assert run(workdir, {**recipe, "sources": [{"path": "lines.json"}]}).manifest.counts.written == 3


@pytest.mark.parametrize(
    "others",
    [
        [],  # the block read whole: a column of booleans, which Arrow cast to 1.0
        ['{"description": "tea", "amount": 2.5, "category": "Dining"}'],  # beside a number: 1.0 line by line
        ['{"description": "tea", "amount": "2.5", "category": "Dining"}'],  # beside text: "true"
        ["{broken"],  # read line by line
    ],
)
def test_a_boolean_array_or_object_where_a_number_is_declared_is_quarantined_in_words_that_fit(
    workdir: Path, others: list[str]
) -> None:
    """A JSON ``true`` for a float was published as 1.0 (a block of booleans, or one after a float read
    line by line) or quarantined as "unable to parse string as a number" (beside text, the reader makes
    it "true"): the same line, two outcomes, and a message about a string the line does not hold."""
    lines = [
        '{"description": "gift", "amount": true, "category": "Dining"}',
        '{"description": "list", "amount": [1], "category": "Dining"}',
        '{"description": "obj", "amount": {"v": 1}, "category": "Dining"}',
        *others,
    ]
    path = workdir / "tx.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    result = run(workdir, recipe(path.name))
    details = {row["source"]["line"]: row["detail"] for row in set_aside(Path(result.version_uri))}
    declared = "not a number (the input schema declares float)"
    assert details[1] == f"{path}:1: amount: a boolean (true), {declared}"
    # Named as a Parquet list or struct in a text column is: one wording, wherever the value came from.
    assert details[2] == f"{path}:2: amount: a list, {declared}"
    assert details[3] == f"{path}:3: amount: an object, {declared}"
    assert "gift" not in json.dumps(outputs(Path(result.version_uri)))
    assert_adds_up(result.manifest.counts)


def test_a_parquet_boolean_where_a_number_is_declared_is_quarantined(workdir: Path) -> None:
    path = workdir / "tx.parquet"
    pq.write_table(pa.table({"description": ["gift", "tea"], "amount": [True, None], "category": ["D", "D"]}), path)
    result = run(workdir, {**recipe(path.name), "input_schema": {**SCHEMA, "optional": ["amount"]}})
    [row] = [row for row in set_aside(Path(result.version_uri)) if row["source"]["line"] == 1]
    assert row["detail"] == f"{path}:1: amount: a boolean (true), not a number (the input schema declares float)"


def test_a_template_writes_a_boolean_as_a_field_and_a_column_of_mixed_types_give_it(workdir: Path) -> None:
    """One line gave "ok=True" where its block's column held booleans only and "ok=true" beside text (the
    reader makes the column text), and a field naming the column gave "true": the same line, two texts."""
    (workdir / "in").mkdir()
    (workdir / "in" / "a.jsonl").write_text('{"q": "a", "ok": true}\n')
    (workdir / "in" / "b.jsonl").write_text('{"q": "b", "ok": false}\n{"q": "c", "ok": "maybe"}\n')
    spec = {**qa_recipe("in/", prompt="{{ q }} ok={{ ok }}", completion="ok"), "dataset": "b"}
    written = outputs(Path(run(workdir, spec).version_uri))
    assert sorted((row["prompt"], row["completion"]) for row in written) == [
        ("a ok=true", "true"),
        ("b ok=false", "false"),
        ("c ok=maybe", "maybe"),
    ]


def test_a_number_publishes_as_its_line_wrote_it_whatever_other_lines_hold(workdir: Path) -> None:
    """A float elsewhere in the column made every integer of the block a float (``1`` published as ``1.0``
    by a template): the same line published one text or another by its neighbours, on both read paths."""
    one, two = '{"q": "How many?", "n": 1}', '{"q": "How much?", "n": 2.0}'
    inputs = {
        "ints": [one, '{"q": "x", "n": 3}'],
        "floats": [two, '{"q": "y", "n": 4.5}'],
        "mixed": [one, two, '{"q": "z", "n": null}'],  # one column of both: read whole
        "by_line": [one, two, "{broken"],  # a bad line sends the block line by line
        "many": [one, two] + [f'{{"q": "q{i}", "n": {i / 4}}}' for i in range(300)],  # past polars' first rows
    }
    published: dict[str, set[tuple[str, str]]] = {}
    for name, lines in inputs.items():
        write_jsonl(workdir / f"{name}.jsonl", lines)
        spec = qa_recipe(f"{name}.jsonl", prompt="n", completion="{{ q }} {{ n }}", output={"validation_fraction": 0})
        for line in outputs(Path(run(workdir, spec).version_uri)):
            if line["completion"].startswith("How"):
                published.setdefault(line["completion"].split("?")[0], set()).add((line["prompt"], line["completion"]))
    assert published == {"How many": {("1", "How many? 1")}, "How much": {("2.0", "How much? 2.0")}}


def test_a_parquet_time_or_float32_publishes_one_text_as_a_field_and_in_a_template(workdir: Path) -> None:
    """A field naming the column wrote Arrow's text (``05.000000`` for a whole second, ``05.120`` in
    milliseconds, ``+0100``, a float32's ``0.1``), a template Python's (``05``, ``05.120000``, ``+01:00``,
    ``0.10000000149011612``): both write Python's text, a float32 as its own digits (``0.1``)."""
    import datetime as dt

    whole, fraction = dt.datetime(2024, 1, 2, 3, 4, 5), dt.datetime(2024, 1, 2, 3, 4, 5, 120000)
    columns = {
        "us": (pa.array([whole, fraction], pa.timestamp("us")), ["2024-01-02 03:04:05", "2024-01-02 03:04:05.120000"]),
        "ms": (pa.array([whole, fraction], pa.timestamp("ms")), ["2024-01-02 03:04:05", "2024-01-02 03:04:05.120000"]),
        "zoned": (
            pa.array([whole, fraction], pa.timestamp("us", "Europe/Zurich")),
            ["2024-01-02 04:04:05+01:00", "2024-01-02 04:04:05.120000+01:00"],
        ),
        "time": (pa.array([whole.time(), fraction.time()], pa.time64("us")), ["03:04:05", "03:04:05.120000"]),
        "f32": (pa.array([0.1, 2.0], pa.float32()), ["0.1", "2.0"]),
    }
    published = {}
    for name, (values, _) in columns.items():
        pq.write_table(pa.table({name: values}), workdir / f"{name}.parquet")
        spec = qa_recipe(
            f"{name}.parquet", prompt=name, completion=f"At {{{{ {name} }}}}", output={"validation_fraction": 0}
        )
        lines = outputs(Path(run(workdir, spec).version_uri))
        published[name] = sorted((line["prompt"], line["completion"]) for line in lines)
    assert published == {name: [(text, f"At {text}") for text in texts] for name, (_, texts) in columns.items()}


def test_a_parquet_moment_python_cannot_hold_quarantines_its_row_not_the_run(workdir: Path) -> None:
    """A timestamp after the year 9999 (Parquet holds it; Python's datetime does not): ``to_pylist`` of
    the batch raised, a traceback failing the run. A template reading it quarantines the row; a field
    naming the column writes Arrow's text of it; the other rows are published."""
    moments = pa.array([0, 253402300800 * 1_000_000 + 86_400_000_000], pa.int64())  # 1970, 10000-01-02 in us
    table = pa.table(
        {
            "q": ["first", "second"],
            "ts": moments.cast(pa.timestamp("us")),
            "tz": moments.cast(pa.timestamp("us", "UTC")),
        }
    )
    pq.write_table(table, workdir / "moments.parquet")
    spec = qa_recipe("moments.parquet", prompt="q", completion="At {{ ts }}", output={"validation_fraction": 0})
    result = run(workdir, spec)
    assert [line["completion"] for line in outputs(Path(result.version_uri))] == ["At 1970-01-01 00:00:00"]
    (aside,) = set_aside(Path(result.version_uri))
    assert aside["reason"] == "template" and aside["source"]["line"] == 2
    assert "'ts' holds a value Python cannot hold" in aside["detail"]
    assert json.loads(aside["record"])["ts"].startswith("10000-01-02 00:00:00")
    fields = qa_recipe("moments.parquet", prompt="ts", completion="tz", output={"validation_fraction": 0})
    lines = outputs(Path(run(workdir, fields, full_refresh=True).version_uri))
    assert sorted(line["prompt"] for line in lines) == ["10000-01-02 00:00:00", "1970-01-01 00:00:00"]
    assert sorted(line["completion"][:19] for line in lines) == ["10000-01-02 00:00:0", "1970-01-01 00:00:00"]


@pytest.mark.parametrize("split", ["group_by", "stratify_by"])
def test_a_parquet_moment_python_cannot_hold_fails_no_later_stage(workdir: Path, split: str) -> None:
    """A timestamp after the year 9999 in a column the split groups or stratifies by, in a batch validated
    row by row (an empty prompt, an amount that is no number): the input schema's and the record's checks
    and the split called ``to_pylist`` on the batch or column, which raised (a traceback failed the run)."""
    moments = pa.array([0, 253402300800 * 1_000_000 + 86_400_000_000, 0, 0], pa.int64())  # 10000-01-02 second
    table = pa.table(
        {"q": ["first", "second", "", "fourth"], "amount": ["1", "2", "3", "x"], "ts": moments.cast(pa.timestamp("us"))}
    )
    pq.write_table(table, workdir / "moments.parquet")
    spec = qa_recipe(
        "moments.parquet",
        completion="amount",
        input_schema={"columns": {"q": "str", "amount": "float"}},
        output={"validation_fraction": 0.5, split: "ts"},
    )
    result = run(workdir, spec)
    assert sorted(line["prompt"] for line in outputs(Path(result.version_uri))) == ["first", "second"]
    asides = {aside["source"]["line"]: aside for aside in set_aside(Path(result.version_uri))}
    assert sorted(asides) == [3, 4] and asides[4]["stage"] == "validate_input"
    counts = result.manifest.counts
    assert (counts.input, counts.written, counts.quarantined) == (4, 2, 2)


def test_a_duration_publishes_one_text_as_a_field_and_in_a_template(workdir: Path) -> None:
    """A duration (a Parquet one, a PostgreSQL interval) named by a field wrote its ticks in the column's unit
    (``5000000`` for five seconds in microseconds), a template Python's text (``0:00:05``)."""
    import datetime as dt

    texts = {dt.timedelta(seconds=5): "0:00:05", dt.timedelta(days=1, microseconds=120000): "1 day, 0:00:00.120000"}
    for unit in ("s", "ms", "us"):
        values = [value for value in texts if unit != "s" or not value.microseconds]
        pq.write_table(pa.table({"d": pa.array(values, pa.duration(unit))}), workdir / f"{unit}.parquet")
        spec = qa_recipe(f"{unit}.parquet", prompt="d", completion="Took {{ d }}", output={"validation_fraction": 0})
        lines = outputs(Path(run(workdir, spec).version_uri))
        assert sorted((line["prompt"], line["completion"]) for line in lines) == sorted(
            (texts[value], f"Took {texts[value]}") for value in values
        )


def test_the_float32_columns_a_record_does_not_read_are_left_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each float32 column was written to text and read back (about 0.1 us a value) whether a field or
    template read it or not: a Parquet file's 40 unread feature columns made the stage about 100 times slower."""
    import pyarrow.compute as pc

    from curation.stages.shape import Shape
    from schemas.config import RecordShape
    from schemas.records import SOURCE_TYPE

    cast_from: list[pa.DataType] = []
    cast = pc.cast

    def counting(values: Any, *args: Any, **kwargs: Any) -> Any:
        cast_from.append(values.type)
        return cast(values, *args, **kwargs)

    monkeypatch.setattr(pc, "cast", counting)
    features = {f"f{j}": pa.array([0.1, 0.2], pa.float32()) for j in range(40)}
    table = pa.table(
        {
            "id": ["a", "b"],
            "source": pa.array(
                [{"connector": "files", "uri": "x", "line": n, "page": None} for n in (1, 2)], SOURCE_TYPE
            ),
            "q": ["first", "second"],
            "score": pa.array([0.1, 2.0], pa.float32()),
            **features,
        }
    )
    shaped = Shape(RecordShape(kind="instruction", prompt="q", completion="Scored {{ score }}"))(table).kept
    assert shaped["completion"].to_pylist() == ["Scored 0.1", "Scored 2.0"]
    assert cast_from.count(pa.float32()) == 1  # the score's, not the 40 features'


def test_a_parquet_nanosecond_time_and_a_nested_float32_publish_one_text_as_a_field_and_in_a_template(
    workdir: Path,
) -> None:
    """A time64[ns] with nanoseconds: a field wrote ``03:04:05.123456789``, a template ``03:04:05.123456``
    (Python's time holds microseconds). A float32 in a list or struct was written with its float64's digits
    (``0.10000000149011612``) where a float32 column is ``0.1``."""
    nanoseconds = (3 * 3600 + 4 * 60 + 5) * 10**9
    columns = {
        "time": (
            pa.array([nanoseconds, nanoseconds + 123_456_789, nanoseconds + 120_000_000], pa.time64("ns")),
            ["03:04:05", "03:04:05.123456789", "03:04:05.120000"],
        ),
        "scores": (pa.array([[0.1, 2.5], [], None], pa.list_(pa.float32())), ["[0.1, 2.5]", "[]"]),
        "point": (
            pa.array([{"x": 0.1, "y": [0.2]}], pa.struct([("x", pa.float32()), ("y", pa.list_(pa.float32()))])),
            ['{"x": 0.1, "y": [0.2]}'],
        ),
    }
    published = {}
    for name, (values, _) in columns.items():
        pq.write_table(pa.table({name: values}), workdir / f"{name}.parquet")
        spec = qa_recipe(
            f"{name}.parquet", prompt=name, completion=f"At {{{{ {name} }}}}", output={"validation_fraction": 0}
        )
        lines = outputs(Path(run(workdir, spec).version_uri))
        published[name] = sorted((line["prompt"], line["completion"]) for line in lines)
    assert published == {name: sorted((text, f"At {text}") for text in texts) for name, (_, texts) in columns.items()}


def test_a_parquet_nanosecond_time_in_a_struct_or_list_keeps_its_nanoseconds(workdir: Path) -> None:
    """A time64[ns] in a struct or list became Python's time (microseconds) before it was written as JSON:
    ``03:04:05.123456789`` was published ``03:04:05.123456``, as a field and in a template, where a
    time64[ns] column keeps its nanoseconds."""
    moment = (3 * 3600 + 4 * 60 + 5) * 10**9
    times = pa.array([moment + 123_456_789, moment, moment + 120_000_000], pa.time64("ns"))
    table = pa.table(
        {
            "q": ["a", "b", "c"],
            "at": pa.StructArray.from_arrays([times, pa.array([1, 2, 3])], names=["t", "n"]),
            "ticks": pa.array([[moment + 1, moment + 123_456_789], [], [moment]], pa.list_(pa.time64("ns"))),
        }
    )
    pq.write_table(table, workdir / "times.parquet")
    spec = qa_recipe(
        "times.parquet", prompt="{{ q }} {{ at }} {{ ticks }}", completion="at", output={"validation_fraction": 0}
    )
    lines = outputs(Path(run(workdir, spec).version_uri))
    assert sorted((line["prompt"], line["completion"]) for line in lines) == [
        (
            'a {"t": "03:04:05.123456789", "n": 1} ["03:04:05.000000001", "03:04:05.123456789"]',
            '{"t": "03:04:05.123456789", "n": 1}',
        ),
        ('b {"t": "03:04:05", "n": 2} []', '{"t": "03:04:05", "n": 2}'),
        ('c {"t": "03:04:05.120000", "n": 3} ["03:04:05"]', '{"t": "03:04:05.120000", "n": 3}'),
    ]


@pytest.mark.parametrize("input_schema", [None, {"columns": {"q": "str", "a": "str"}}])
def test_a_quarantined_jsonl_line_is_stored_with_its_own_keys_not_its_blocks(
    workdir: Path, input_schema: dict | None
) -> None:
    """A JSONL block is read as one table: a line's stored ``record`` held null for every key another
    line of its block had (``{"q": "only", "a": null, "extra": null, "meta": null, "id": null}``), not
    what the line held. A null the line wrote stays (line 3); so do keys the reader renames (``input_id``)."""
    rows = [
        {"q": "first", "a": "yes", "extra": 1, "meta": {"x": 1}, "id": 7},
        {"q": "only"},
        {"q": "written", "a": None},
        '{"q": "esc\\"aped", "a": null, "id": 3}',  # an escaped quote: the line is parsed to tell
    ]
    path = write_jsonl(workdir / "qa.jsonl", rows)
    spec = qa_recipe("qa.jsonl", prompt="{{ q }}", completion="{{ a }}")
    if input_schema:
        spec["input_schema"] = input_schema
    aside = set_aside(Path(run(workdir, spec).version_uri))
    assert [(row["detail"].split(":")[1], json.loads(row["record"])) for row in aside] == [
        ("2", {"q": "only"}),
        ("3", {"q": "written", "a": None}),
        ("4", {"q": 'esc"aped', "a": None, "input_id": 3}),
    ]
    assert all(row["detail"].startswith(f"{path}:") for row in aside)


def test_a_record_field_of_whitespace_alone_is_quarantined_as_an_empty_one_is(workdir: Path) -> None:
    # No empty value in the batch: the fast path alone must see the blanks, and the rows then say which.
    rows = [
        {"q": "Refund?", "a": "Yes"},
        {"q": "Blank?", "a": "  "},
        {"q": "Tab?", "a": "\t\n"},
        {"q": "Ok?", "a": "No"},
    ]
    path = write_jsonl(workdir / "qa.jsonl", rows)
    result = run(workdir, qa_recipe("qa.jsonl", prompt="Q: {{ q }}", completion="{{ a }}"))
    aside = set_aside(Path(result.version_uri))
    assert [(row["reason"], row["detail"]) for row in aside] == [
        ("schema", f"{path}:2: completion: only whitespace, no text"),
        ("schema", f"{path}:3: completion: only whitespace, no text"),
    ]
    assert sorted(line["completion"] for line in outputs(Path(result.version_uri))) == ["No", "Yes"]
    assert_adds_up(result.manifest.counts)


def test_json_lines_that_end_in_cr_alone_then_in_lf_are_one_record_each(workdir: Path) -> None:
    # Rows appended by a script to an export whose lines end in CR alone: "CR alone" was decided from
    # the first read, which saw an LF, so every CR-ended row before it became one malformed line.
    (workdir / "faq.jsonl").write_bytes(
        b'{"q": "Where?", "a": "Here."}\r{"q": "When?", "a": "Now."}\r{broken\r{"q": "Who?", "a": "Me."}\n'
        b'{"q": "Why?", "a": "So."}\r\n{"q": "How?", "a": "Thus."}'
    )
    result = run(workdir, qa_recipe("faq.jsonl"))
    assert sorted(line["prompt"] for line in outputs(Path(result.version_uri))) == [
        "How?",
        "When?",
        "Where?",
        "Who?",
        "Why?",
    ]
    assert [(row["reason"], row["source"]["line"]) for row in set_aside(Path(result.version_uri))] == [
        ("malformed_json", 3)
    ]
    assert_adds_up(result.manifest.counts)


def test_a_crlf_split_between_two_reads_is_one_line_end_and_lines_are_counted_alike() -> None:
    # A CR ending one read and its LF opening the next were two line ends (a blank line between).
    import io

    from connectors.files import _LineFeeds, lines_in

    data = b'{"n": 1}\r\n{"n": 2}\r{"n": 3}\n\r\r{"n": 4}\r'
    expected = b'{"n": 1}\r\n{"n": 2}\n{"n": 3}\n\n\n{"n": 4}\n'
    for size in [-1, *range(2, len(data) + 2)]:
        stream, out = _LineFeeds(io.BytesIO(data)), []
        while chunk := stream.read(size):
            assert size < 0 or len(chunk) <= size
            out.append(chunk)
        assert b"".join(out) == expected, size
    # The lines an images sidecar's earlier run read are counted as the reader numbers them.
    assert [lines_in(data[:end]) for end in (8, 10, 18, 27)] == [1, 1, 2, 3]
    assert lines_in(data) == expected.count(b"\n") == 6


def test_a_parquet_value_that_is_not_a_string_in_a_declared_str_column_says_what_it_is(workdir: Path) -> None:
    # pydantic said "Input should be a valid string", naming neither the value's kind nor the declaration.
    good = {"description": ["coffee"], "amount": [4.5], "category": ["Dining"]}
    pq.write_table(pa.table({**good, "description": [7]}), workdir / "a_number.parquet")
    pq.write_table(pa.table({**good, "description": [True]}), workdir / "b_boolean.parquet")
    pq.write_table(pa.table({**good, "category": [["Dining", "Out"]]}), workdir / "c_list.parquet")
    pq.write_table(pa.table({**good, "category": [{"main": "Dining"}]}), workdir / "d_struct.parquet")
    pq.write_table(pa.table(good), workdir / "e_good.parquet")
    names = ["a_number.parquet", "b_boolean.parquet", "c_list.parquet", "d_struct.parquet", "e_good.parquet"]
    result = run(workdir, recipe(*names))
    declared = "not a string (the input schema declares str)"
    assert [(row["reason"], row["detail"]) for row in set_aside(Path(result.version_uri))] == [
        ("schema", f"{workdir / 'a_number.parquet'}:1: description: a number (7), {declared}"),
        ("schema", f"{workdir / 'b_boolean.parquet'}:1: description: a boolean (true), {declared}"),
        ("schema", f"{workdir / 'c_list.parquet'}:1: category: a list, {declared}"),
        ("schema", f"{workdir / 'd_struct.parquet'}:1: category: an object, {declared}"),
    ]
    assert result.manifest.counts.written == 1
    assert_adds_up(result.manifest.counts)


@pytest.mark.parametrize("others", [['{"description": "x", "amount": "ten", "category": "D"}'], []])
def test_a_fraction_where_a_whole_number_is_declared_is_quarantined_as_one(workdir: Path, others: list[str]) -> None:
    """Beside text the reader makes 1.5 "1.5", which pydantic called "unable to parse string as an
    integer": the line holds a number, only not a whole one."""
    lines = ['{"description": "tea", "amount": 1.5, "category": "D"}', *others]
    path = workdir / "tx.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    schema = {"columns": {**SCHEMA["columns"], "amount": "int"}}
    result = run(workdir, {**recipe(path.name), "input_schema": schema})
    details = {row["source"]["line"]: row["detail"] for row in set_aside(Path(result.version_uri))}
    assert details[1] == f"{path}:1: amount: a number (1.5), not a whole number (the input schema declares int)"
    assert_adds_up(result.manifest.counts)


# A part of the recipe that names a column, and the rows of a new export that lack it (each also lacks nothing else).
MADE_WITH = {
    "a template's column": ({}, {"a": "A"}),
    "a required input_schema column": (
        {"input_schema": {"columns": {"q": "str", "a": "str", "n": "int"}}},
        {"q": "Q", "a": "A"},
    ),
    "output.group_by": ({"output": {"group_by": "g"}}, {"q": "Q", "a": "A"}),
}


@pytest.mark.parametrize("part", MADE_WITH)
def test_new_rows_all_lacking_a_column_the_extended_version_was_made_with_are_the_rows_fault(
    workdir: Path, part: str
) -> None:
    # A scheduled run whose only new file (a bad export) lacks a column failed "fix the column name in the recipe",
    # took nothing, and so every later run failed on the same file until someone deleted it.
    more, lacking = MADE_WITH[part]
    write_jsonl(workdir / "qa" / "a.jsonl", [{"q": f"Q{n}", "a": "A", "n": n, "g": "x"} for n in range(3)])
    spec = qa_recipe("qa", prompt="{{ q }}", **more)
    assert run(workdir, spec).manifest.counts.written == 3
    path = write_jsonl(workdir / "qa" / "b.jsonl", [lacking, lacking])
    v2 = run(workdir, spec)
    counts = v2.manifest.counts
    assert (v2.manifest.version, counts.input, counts.written, counts.carried) == (2, 2, 0, 3)
    assert counts.reasons == {"quarantined": {"missing_column": 2}}
    aside = set_aside(Path(v2.version_uri))
    assert [(row["reason"], row["detail"].split(": ")[0]) for row in aside] == [
        ("missing_column", f"{path}:1"),
        ("missing_column", f"{path}:2"),
    ]
    # Taken: the next run does not read the file again.
    again = run(workdir, spec)
    assert again.manifest is None and "nothing new since qa v2" in again.message


def test_new_rows_all_lacking_a_column_a_changed_recipe_names_fail_the_run(workdir: Path) -> None:
    # The column is new to the recipe (v1 was made without it): a misspelt name, the recipe's error as on a first run.
    write_jsonl(workdir / "qa" / "a.jsonl", [{"q": f"Q{n}", "a": "A", "g": "x"} for n in range(3)])
    schema = {"columns": {"q": "str", "a": "str"}}
    spec = qa_recipe("qa", prompt="{{ q }}", input_schema=schema)
    run(workdir, spec)
    write_jsonl(workdir / "qa" / "b.jsonl", [{"q": "Q", "a": "B", "g": "y"}])
    for changed in (
        {"record": {**spec["record"], "prompt": "{{ q }} {{ ctx }}"}},
        {"input_schema": {"columns": {**schema["columns"], "ctx": "str"}}},
        {"output": {"group_by": "grp"}},
        {"output": {"stratify_by": "topic"}},
    ):
        with pytest.raises(RecipeError, match=r"none of the 1 records .* 1 lack a column the recipe names"):
            run(workdir, {**spec, **changed})


def test_a_version_of_an_earlier_release_was_made_with_the_columns_the_recipe_names(workdir: Path) -> None:
    # A manifest without record_sha256 (or without a split's settings) cannot say what made it: taken as made by
    # this recipe, as blocking every scheduled run on a false recipe error is worse than a quarantined row.
    write_jsonl(workdir / "qa" / "a.jsonl", [{"q": f"Q{n}", "a": "A", "g": "x"} for n in range(3)])
    spec = qa_recipe("qa", prompt="{{ q }}", output={"group_by": "g"})
    manifest = Path(run(workdir, spec).version_uri) / "manifest.json"
    earlier = {k: v for k, v in json.loads(manifest.read_text()).items() if k not in ("record_sha256", "split")}
    manifest.write_text(json.dumps(earlier))
    write_jsonl(workdir / "qa" / "b.jsonl", [{"a": "B"}])
    counts = run(workdir, spec).manifest.counts
    assert (counts.input, counts.reasons) == (1, {"quarantined": {"missing_column": 1}})


def test_an_input_schema_added_to_a_recipe_names_its_columns_for_the_first_time(workdir: Path) -> None:
    # v1 was made with no input_schema: its hash is the one earlier releases gave a recipe with one, which made a
    # misspelt required column new to the recipe look like a bad export, quarantined, and its file taken.
    write_jsonl(workdir / "qa" / "a.jsonl", [{"q": f"Q{n}", "a": "A", "category": "x"} for n in range(3)])
    spec = qa_recipe("qa", prompt="{{ q }}")
    run(workdir, spec)
    write_jsonl(workdir / "qa" / "b.jsonl", [{"q": "Q", "a": "B", "category": "y"}])
    misspelt = {"input_schema": {"columns": {"q": "str", "a": "str", "catgory": "str"}}}
    with pytest.raises(RecipeError, match=r"none of the 1 records .* required column 'catgory' is missing"):
        run(workdir, {**spec, **misspelt})
    fixed = run(workdir, {**spec, "input_schema": {"columns": {"q": "str", "a": "str", "category": "str"}}})
    assert (fixed.manifest.counts.input, fixed.manifest.counts.written) == (1, 1)  # nothing taken by the failed run


def test_an_earlier_releases_version_of_an_unchanged_recipe_with_an_input_schema_was_made_naming_it(
    workdir: Path,
) -> None:
    # Its record hash left the input_schema out (the hash of a recipe without one): with the recipe as it was (its
    # own hash), a bad export is the data's fault, as ever, not a failed run on every schedule after an upgrade.
    write_jsonl(workdir / "qa" / "a.jsonl", [{"q": f"Q{n}", "a": "A"} for n in range(3)])
    spec = qa_recipe("qa", prompt="{{ q }}", input_schema={"columns": {"q": "str", "a": "str"}})
    manifest = Path(run(workdir, spec).version_uri) / "manifest.json"
    earlier = RecordShape.model_validate(spec["record"]).fingerprint(None)
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "record_sha256": earlier}))
    write_jsonl(workdir / "qa" / "b.jsonl", [{"a": "B"}])
    assert run(workdir, spec).manifest.counts.reasons == {"quarantined": {"missing_column": 1}}


def test_a_source_new_to_the_dataset_whose_rows_all_lack_a_column_fails_the_run(workdir: Path) -> None:
    # The version extended never read the added source: its rows lacking a column are a misspelt name or the wrong
    # folder, as on a first run, not a bad export of a source the dataset was made from.
    write_jsonl(workdir / "qa" / "a.jsonl", [{"q": f"Q{n}", "a": "A"} for n in range(3)])
    spec = qa_recipe("qa", prompt="{{ q }}")
    run(workdir, spec)
    path = write_jsonl(workdir / "qb" / "a.jsonl", [{"question": "Q", "a": "B"}])
    added = {**spec, "sources": [{"path": "qa"}, {"path": "qb"}]}
    with pytest.raises(RecipeError, match=rf"none of the 1 records .* {path}:1: prompt: column 'q' is missing"):
        run(workdir, added)
    write_jsonl(workdir / "qb" / "a.jsonl", [{"q": "Q", "a": "B"}])
    counts = run(workdir, added).manifest.counts
    assert (counts.input, counts.written) == (1, 1)
