"""Review decisions reach carried records: a record rejected or edited after it was published is left out
of, or edited in, the next version even when the run does not read it again (it is carried)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from curation.carried_edits import apply_edits
from curation.formats import FormatOptions, output_format
from curation.ndjson import to_ndjson
from curation.published import read_manifest, verify_checksums
from curation.review import decisions as dec
from curation.review.queue import add_items, list_items, review_items
from schemas.config import load_recipe
from schemas.manifest import Manifest
from schemas.records import FLAG_SCHEMA
from tests.helpers import BILLING, as_jsonl_lineage, lineage_rows, outputs, run, set_aside, write_jsonl
from tests.test_carry import asks, notes, recipe, scans, shards, texts
from tests.test_review_decisions import flag
from tests.test_split_sides import side_of_each


def lines_by_id(version: Path) -> dict[str, list[dict[str, Any]]]:
    """Output lines by record id, found through the version's lineage (every line must have a row)."""
    found: dict[str, list[dict[str, Any]]] = {}
    files: dict[str, list[str]] = {}
    lineage = lineage_rows(version)
    for row in lineage:
        lines = files.setdefault(row["shard"], (version / row["shard"]).read_text().splitlines())
        found.setdefault(row["id"], []).append(json.loads(lines[row["line"] - 1]))
    assert len(lineage) == len(outputs(version))
    assert len({(row["shard"], row["line"]) for row in lineage}) == len(lineage)
    return found


def id_of(by_id: dict[str, list[dict[str, Any]]], key: str, value: str) -> str:
    (record,) = [record for record, lines in by_id.items() if lines[0][key] == value]
    return record


def decide(workdir: Path, dataset: str, version: int, actions: dict[str, tuple[str, dict[str, str] | None]]) -> None:
    """Flag each record for review and take the decision on it, as an annotator would on the review page."""
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    flags = pa.Table.from_pylist([flag(record) for record in actions], schema=FLAG_SCHEMA)
    add_items(engine, dataset, version, "review-test", flags)
    with engine.connect() as db:
        items = {row.record_id: row.item_id for row in db.execute(sa.select(review_items))}
    for record, (action, fields) in actions.items():
        dec.decide(engine, items[record], "rita", action, dec.Edit(fields=fields) if fields else None)
    engine.dispose()


def test_carried_records_follow_review_decisions_across_versions(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 30))
    v1 = run(workdir, recipe("out"))
    one = Path(v1.version_uri)
    by_id = lines_by_id(one)
    rejected = id_of(by_id, "prompt", notes(3, 1)[0]["q"])
    edited = id_of(by_id, "prompt", notes(7, 1)[0]["q"])
    labelled = id_of(by_id, "prompt", notes(11, 1)[0]["q"])  # a field this format's lines do not hold
    fixed = "Parcel 7 was lost, then found."
    decide(
        workdir,
        "notes",
        1,
        {rejected: ("reject", None), edited: ("edit", {"completion": fixed}), labelled: ("edit", {"label": "late"})},
    )

    write_jsonl(workdir / "in" / "b.jsonl", notes(30, 5))
    v2 = run(workdir, recipe("out"))
    two = Path(v2.version_uri)
    counts = v2.manifest.counts
    assert (counts.input, counts.written, counts.carried) == (5, 5, 29)
    assert v2.manifest.stats["carry"] == {
        "replaced": 0,
        "review_rejected": 1,
        "review_edited": 1,
        "edits_not_applied": 1,
        "lines_without_lineage": 0,
    }
    expected = [row for row in notes(0, 35) if row["q"] != notes(3, 1)[0]["q"]]
    assert texts(outputs(two)) == texts(expected)
    after = lines_by_id(two)
    assert rejected not in after and after[edited][0]["completion"] == fixed
    assert after[labelled] == by_id[labelled]  # kept as it was
    assert sum(split.records for split in v2.manifest.splits.values()) == 34
    assert verify_checksums(str(two), v2.manifest) == []
    # Only the shards holding the rejected or edited line were rewritten; the others are v1's bytes.
    first = shards(v1.manifest)
    touched = {row["shard"] for row in lineage_rows(one) if row["id"] in (rejected, edited)}
    second = shards(v2.manifest)
    for path, shard in first.items():
        if not path.endswith(".jsonl"):
            continue
        same = second[path.replace("/part-", "/part-v1-")].sha256 == shard.sha256
        assert same == (path not in touched), path

    # v3 carries v2: the lineage v2 carried still names the rejected record's absence and the edit.
    write_jsonl(workdir / "in" / "c.jsonl", notes(35, 2))
    v3 = run(workdir, recipe("out"))
    three = Path(v3.version_uri)
    assert v3.manifest.counts.carried == 34
    # Nothing left to reject or edit: the edit is already in v2's line, so every shard is copied whole.
    assert v3.manifest.stats["carry"]["review_rejected"] == 0 and v3.manifest.stats["carry"]["review_edited"] == 0
    third = shards(v3.manifest)
    for path, shard in second.items():
        if path.endswith(".jsonl"):
            carried = path if "/part-v" in path else path.replace("/part-", "/part-v2-")
            assert third[carried].sha256 == shard.sha256
    final = lines_by_id(three)
    assert rejected not in final and final[edited][0]["completion"] == fixed
    assert texts(outputs(three)) == texts([*expected, *notes(35, 2)])
    assert verify_checksums(str(three), v3.manifest) == []


def test_one_file_text_format_drops_rejected_and_edits_lines(workdir: Path) -> None:
    text = {"dataset": "corpus", "sources": [{"path": "docs"}], "record": {"kind": "document"}}
    text["output"] = {"dest": "out", "format": "text", "validation_fraction": 0.0}
    write_jsonl(workdir / "docs" / "a.jsonl", [{"text": f"Document {i}."} for i in range(6)])
    v1 = run(workdir, text)
    by_id = lines_by_id(Path(v1.version_uri))
    rejected, edited = id_of(by_id, "text", "Document 1."), id_of(by_id, "text", "Document 4.")
    decide(workdir, "corpus", 1, {rejected: ("reject", None), edited: ("edit", {"text": "Document four, fixed."})})

    write_jsonl(workdir / "docs" / "b.jsonl", [{"text": "Document 6."}])
    v2 = run(workdir, text)
    version = Path(v2.version_uri)
    (shard,) = v2.manifest.splits["train"].shards
    assert shard.path == "train/part-00000.jsonl" and shard.records == 6
    assert sorted(line["text"] for line in outputs(version)) == [
        "Document 0.",
        "Document 2.",
        "Document 3.",
        "Document 5.",
        "Document 6.",
        "Document four, fixed.",
    ]
    assert v2.manifest.counts.carried == 5
    assert v2.manifest.stats["carry"]["review_rejected"] == 1 and v2.manifest.stats["carry"]["review_edited"] == 1
    after = lines_by_id(version)
    assert rejected not in after and after[edited] == [{"text": "Document four, fixed."}]
    assert verify_checksums(str(version), v2.manifest) == []


def rendered(fmt: str, system_prompt: str | None = "Be brief.") -> dict[str, Any]:
    """One instruction record as the format writes it."""
    batch = pa.table({"id": ["r1"], "prompt": ["Where is it?"], "completion": ["Here."]})
    rows = output_format(fmt, "instruction", FormatOptions(system_prompt=system_prompt)).rows(batch)
    return json.loads(to_ndjson(rows))


def test_edits_find_the_turn_of_each_conversation_format() -> None:
    for fmt in ("messages", "jumpstart-chat", "bedrock-conversation", "jumpstart-instruction"):
        line = rendered(fmt)
        changed, missed = apply_edits(line, {"completion": "There.", "prompt": "Where now?"}, fmt)
        assert changed and missed == [], fmt
        text = json.dumps(line)
        assert "There." in text and "Where now?" in text and "Here." not in text and "Where is it?" not in text
        assert "Be brief." in text or fmt == "jumpstart-instruction"  # the system turn is left alone
    # Applying the same edit again changes nothing; a field with no place in the line is reported.
    line = rendered("messages")
    apply_edits(line, {"completion": "There."}, "messages")
    assert apply_edits(line, {"completion": "There."}, "messages") == (False, [])
    assert apply_edits(line, {"label": "x"}, "messages") == (False, ["label"])
    vqa = {"file_name": "images/a.png", "prompt": "Colour?", "completion": "red"}
    assert apply_edits(vqa, {"answer": "crimson"}, "jumpstart-vqa") == (True, [])
    assert vqa["completion"] == "crimson"
    # Chunked text: a line holds part of the document, so the edit is not applied.
    assert apply_edits({"text": "part"}, {"text": "whole"}, "text", chunked=True) == (False, ["text"])


def test_decisions_reach_records_carried_on_s3(workdir: Path, bucket: str, aws_env: str) -> None:
    s3 = boto3.client("s3", endpoint_url=aws_env)

    def put(key: str, rows: list[dict[str, Any]]) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body="".join(json.dumps(r) + "\n" for r in rows).encode())

    def lines(prefix: str, manifest: Manifest) -> dict[str, dict[str, Any]]:
        """Output lines by record id, through the version's lineage on S3."""

        def read(path: str) -> list[str]:
            return s3.get_object(Bucket=bucket, Key=f"{prefix}/{path}")["Body"].read().decode().splitlines()

        return {
            row["id"]: json.loads(read(row["shard"])[row["line"] - 1])
            for row in lineage_rows(f"s3://{bucket}/{prefix}")
        }

    put("in/a.jsonl", notes(0, 20))
    config = {**recipe(f"s3://{bucket}/out"), "sources": [{"path": f"s3://{bucket}/in/"}]}
    v1 = run(workdir, config)
    by_id = lines("out/notes/v1", v1.manifest)
    (rejected,) = [record for record, line in by_id.items() if line["prompt"] == notes(5, 1)[0]["q"]]
    (edited,) = [record for record, line in by_id.items() if line["prompt"] == notes(9, 1)[0]["q"]]
    decide(workdir, "notes", 1, {rejected: ("reject", None), edited: ("edit", {"completion": "Fixed."})})

    put("in/b.jsonl", notes(20, 3))
    v2 = run(workdir, config)
    assert v2.manifest.counts.carried == 19 and v2.manifest.stats["carry"]["review_rejected"] == 1
    after = lines("out/notes/v2", v2.manifest)
    assert rejected not in after and after[edited]["completion"] == "Fixed." and len(after) == 22
    assert verify_checksums(v2.version_uri, v2.manifest) == []


def test_a_damaged_carried_line_is_named_in_the_error(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 4))
    v1 = run(workdir, recipe("out", validation_fraction=0.0))
    one = Path(v1.version_uri)
    (row, *_) = lineage_rows(one)
    decide(workdir, "notes", 1, {row["id"]: ("edit", {"completion": "Fixed."})})
    shard = one / row["shard"]
    lines = shard.read_text().splitlines()
    lines[row["line"] - 1] = '{"prompt": "cut off'
    shard.write_text("\n".join(lines) + "\n")
    write_jsonl(workdir / "in" / "b.jsonl", notes(4, 1))
    with pytest.raises(ValueError, match=rf"v1/{row['shard']} line {row['line']}: not a JSON object"):
        run(workdir, recipe("out", validation_fraction=0.0))


def test_a_damaged_lineage_line_is_named_in_the_error(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 4))
    one = Path(run(workdir, recipe("out", validation_fraction=0.0)).version_uri)
    as_jsonl_lineage(one)  # published before lineage was Parquet
    (lineage,) = sorted((one / "lineage").glob("*.jsonl"))
    lines = lineage.read_text().splitlines()
    lines[2] = lines[2][:20]
    lineage.write_text("\n".join(lines) + "\n")
    write_jsonl(workdir / "in" / "b.jsonl", notes(4, 1))
    with pytest.raises(ValueError, match=r"lineage/part-00000.jsonl: line 3 is not JSON"):
        run(workdir, recipe("out", validation_fraction=0.0))
    lines[2] = json.dumps({"shard": "train/part-00000.jsonl", "line": 3})  # JSON, but whose record?
    lineage.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"lineage/part-00000.jsonl: lineage row 3 has no shard, line or id"):
        run(workdir, recipe("out", validation_fraction=0.0))


def test_a_broken_parquet_lineage_file_is_named_in_a_one_line_error(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 4))
    one = Path(run(workdir, recipe("out", validation_fraction=0.0)).version_uri)
    (lineage,) = sorted((one / "lineage").glob("*"))
    assert lineage.name == "part-00000.parquet"
    good = pq.read_table(lineage)
    write_jsonl(workdir / "in" / "b.jsonl", notes(4, 1))
    cut = lineage.read_bytes()
    for broken, said in [
        (
            lambda: lineage.write_bytes(cut[: len(cut) // 2]),
            r"not a readable Parquet file of lineage rows \(Parquet magic",
        ),
        (lambda: lineage.write_bytes(cut[:8] + b"\0" * (len(cut) - 16) + cut[-8:]), "not a readable Parquet file"),
        (lambda: pq.write_table(good.drop_columns(["id"]), lineage), "not a readable Parquet file .*no column id"),
        (
            lambda: pq.write_table(good.set_column(2, "id", pa.array(["a", "b", None, "d"])), lineage),
            "lineage row 3 has no shard, line or id",
        ),
    ]:
        broken()
        with pytest.raises(ValueError, match=rf"v1/lineage/part-00000.parquet: {said}") as raised:
            run(workdir, recipe("out", validation_fraction=0.0))
        assert "\n" not in str(raised.value)


def test_a_version_with_jsonl_lineage_is_carried_into_parquet_lineage(workdir: Path) -> None:
    # A version published before lineage was Parquet: a scheduled run carries it (shards copied whole, and one
    # a rejection rewrites), and the new version's Parquet lineage has its rows at their new places.
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 30))
    v1 = run(workdir, recipe("out"))
    one = Path(v1.version_uri)
    as_jsonl_lineage(one)
    assert {shard.path.rsplit(".", 1)[1] for shard in read_manifest(str(one)).lineage} == {"jsonl"}
    assert verify_checksums(str(one), read_manifest(str(one))) == []
    before, sources = lines_by_id(one), {row["id"]: row["source"] for row in lineage_rows(one)}
    rejected = id_of(before, "prompt", notes(3, 1)[0]["q"])
    decide(workdir, "notes", 1, {rejected: ("reject", None)})

    write_jsonl(workdir / "in" / "b.jsonl", notes(30, 5))
    v2 = run(workdir, recipe("out"))
    two = Path(v2.version_uri)
    assert v2.manifest.counts.carried == 29 and v2.manifest.stats["carry"]["lines_without_lineage"] == 0
    assert {shard.path.rsplit(".", 1)[1] for shard in v2.manifest.lineage} == {"parquet"}
    rows = lineage_rows(two)
    carried = [row for row in rows if row["carried_from"] == 1]
    assert len(carried) == 29 and len(rows) == 34 and {row["carried_from"] for row in rows} == {None, 1}
    after = lines_by_id(two)  # every row points at the line holding its record
    assert rejected not in after
    for row in carried:
        assert after[row["id"]] == before[row["id"]] and row["source"] == sources[row["id"]]
    assert verify_checksums(str(two), v2.manifest) == []
    # Rows come in output order: the run's own, then the carried ones, each shard's in line order.
    assert [row["carried_from"] for row in rows] == [None] * 5 + [1] * 29
    for shard in {row["shard"] for row in rows}:
        lines = [row["line"] for row in rows if row["shard"] == shard]
        assert lines == list(range(1, len(lines) + 1))


def test_decisions_alone_publish_a_version_and_then_nothing_is_new(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 10))
    one = Path(run(workdir, recipe("out")).version_uri)
    rejected = id_of(lines_by_id(one), "prompt", notes(4, 1)[0]["q"])
    decide(workdir, "notes", 1, {rejected: ("reject", None)})

    # No new input, but an annotator rejected a record: the next run publishes v2 without it.
    v2 = run(workdir, recipe("out"))
    assert v2.manifest is not None and v2.manifest.extends == 1
    assert (v2.manifest.counts.input, v2.manifest.counts.carried) == (0, 9)
    assert rejected not in lines_by_id(Path(v2.version_uri))
    assert v2.manifest.stats["carry"]["review_rejected"] == 1

    # Nothing new since v2, decisions included: nothing is published.
    v3 = run(workdir, recipe("out"))
    assert v3.manifest is None and "nothing new since notes v2" in v3.message


def test_an_edit_of_a_carried_record_goes_through_clean_and_pii_as_a_record_read_again_would(workdir: Path) -> None:
    spec = recipe("out")
    spec["stages"] = [
        {"type": "clean"},
        {"type": "exact_dedup"},
        {"type": "pii", "entities": ["PHONE_NUMBER", "EMAIL_ADDRESS", "US_SSN"], "operators": {"US_SSN": "drop"}},
    ]
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 6))
    v1 = run(workdir, spec)
    by_id = lines_by_id(Path(v1.version_uri))
    typed, dropped = (id_of(by_id, "prompt", notes(i, 1)[0]["q"]) for i in (2, 4))
    decide(
        workdir,
        "notes",
        1,
        {
            typed: ("edit", {"completion": "Parcel 2 is <b>late</b>; call  +1 415 555 0132 or mail ana@example.com."}),
            dropped: ("edit", {"completion": "Customer SSN 536-22-8726 on file."}),
        },
    )
    v2 = run(workdir, spec)  # no new input: the decisions alone make the version
    after = lines_by_id(Path(v2.version_uri))
    assert after[typed][0]["completion"] == "Parcel 2 is late ; call <PHONE_NUMBER> or mail <EMAIL_ADDRESS>."
    assert dropped not in after  # as a record read again with that text would be: filtered by the drop operator
    assert v2.manifest.stats["carry"]["edits_set_aside"] == 1 and v2.manifest.counts.carried == 5


def sources_by_id(version: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row["source"] for row in lineage_rows(version)}


def queue(workdir: Path, dataset: str, version: int, records: dict[str, dict[str, Any]]) -> dict[str, int]:
    """A review item for each record (with its real source), as a stage would flag it; item id per record."""
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    flags = [{**flag(record), "source": source} for record, source in records.items()]
    add_items(engine, dataset, version, "review-test", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))
    with engine.connect() as db:
        items = {row.record_id: row.item_id for row in db.execute(sa.select(review_items))}
    engine.dispose()
    return items


def edit_note_2_and_reject_note_5(workdir: Path) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """Run the recipe, then, as an annotator, edit note 2's completion and reject note 5: their lines in
    v1 by id, v1's sources by id, and the two record ids."""
    one = Path(run(workdir, recipe("out")).version_uri)
    by_id, sources = lines_by_id(one), sources_by_id(one)
    edited, rejected = (id_of(by_id, "prompt", notes(i, 1)[0]["q"]) for i in (2, 5))
    items = queue(workdir, "notes", 1, {edited: sources[edited], rejected: sources[rejected]})
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    dec.decide(engine, items[edited], "rita", "edit", dec.Edit(fields={"completion": "Lost."}))
    dec.decide(engine, items[rejected], "rita", "reject")
    engine.dispose()
    return by_id, sources, edited, rejected


def test_an_undone_decision_reads_the_records_input_again_and_the_record_is_as_it_was(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 8))
    write_jsonl(workdir / "in" / "b.jsonl", notes(20, 3))
    by_id, sources, edited, rejected = edit_note_2_and_reject_note_5(workdir)
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    v2 = run(workdir, recipe("out"))  # the decisions reach the carried lines
    after = lines_by_id(Path(v2.version_uri))
    assert after[edited][0]["completion"] == "Lost." and rejected not in after
    dec.undo_last(engine, "rita")
    dec.undo_last(engine, "rita")
    # Undone: the carried lines hold the edit and lack the record, not the input's values; the run
    # reads a.jsonl again (and only it), and both records are as the input has them.
    v3 = run(workdir, recipe("out"))
    assert v3.manifest.counts.input == 8 and [Path(i.uri).name for i in v3.manifest.inputs] == ["a.jsonl"]
    final = lines_by_id(Path(v3.version_uri))
    assert final[edited] == by_id[edited] and final[rejected] == by_id[rejected]
    assert texts(outputs(Path(v3.version_uri))) == texts(notes(0, 8) + notes(20, 3))
    # An input moved away since: the decision cannot take effect, and the run says so.
    items = queue(workdir, "notes", 3, {rejected: sources[rejected]})
    dec.decide(engine, items[rejected], "rita", "reject")
    v4 = run(workdir, recipe("out"))
    assert rejected not in lines_by_id(Path(v4.version_uri))
    (workdir / "in" / "a.jsonl").rename(workdir / "a.jsonl")
    dec.undo_last(engine, "rita")
    with caplog.at_level(logging.WARNING):
        assert run(workdir, recipe("out")).manifest is None  # nothing new to read
    assert "a.jsonl: review decisions on its records" in caplog.text and "no longer there" in caplog.text
    engine.dispose()


def test_a_decision_on_a_set_aside_near_duplicate_reads_its_input_again(workdir: Path) -> None:
    base = BILLING
    rows = [{"q": f"{base}.", "a": "Done."}, {"q": f"{base}!", "a": "Done, updated."}, *notes(0, 3)]
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    spec = {**recipe("out"), "stages": [{"type": "near_dedup", "threshold": 0.7}]}
    v1 = run(workdir, spec)
    assert v1.manifest.counts.duplicate == 1
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    with engine.connect() as db:
        (item,) = db.execute(sa.select(review_items).where(review_items.c.kind == "near_duplicate")).all()
    dec.decide(engine, item.item_id, "rita", "approve")  # yes, a duplicate: nothing to read again
    assert run(workdir, spec).manifest is None
    # The annotator rewrites the set-aside one so it is no longer a near duplicate: it is published
    # by the next scheduled run, which reads its input again for it (no --full-refresh needed).
    dec.decide(engine, item.item_id, "rita", "edit", dec.Edit(fields={"prompt": "How do I change my e-mail address?"}))
    v2 = run(workdir, spec)
    prompts = [line["prompt"] for line in outputs(Path(v2.version_uri))]
    assert "How do I change my e-mail address?" in prompts and len(prompts) == 5
    engine.dispose()


def test_decisions_stay_with_their_records_when_lines_are_inserted_above_them(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 8))
    _, _, edited, rejected = edit_note_2_and_reject_note_5(workdir)
    # The export comes again with new rows on top and one row gone: the file is read again whole.
    write_jsonl(workdir / "in" / "a.jsonl", [*notes(20, 2), *notes(0, 1), *notes(2, 6)])
    v2 = run(workdir, recipe("out"))
    assert v2.manifest.counts.input == 9 and v2.manifest.counts.reasons["filtered"] == {"review": 1}
    after = lines_by_id(Path(v2.version_uri))
    assert rejected not in after and after[edited][0]["completion"] == "Lost."
    assert texts(outputs(Path(v2.version_uri))) == texts([*notes(20, 2), *notes(0, 1), *notes(2, 3), *notes(6, 2)])


def test_a_later_approve_ends_a_rejection_and_an_edit_of_carried_records(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 8))
    write_jsonl(workdir / "in" / "b.jsonl", notes(20, 3))
    by_id, _, edited, rejected = edit_note_2_and_reject_note_5(workdir)
    after = lines_by_id(Path(run(workdir, recipe("out")).version_uri))
    assert rejected not in after and after[edited][0]["completion"] == "Lost."
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    with engine.connect() as db:
        items = {row.record_id: row.item_id for row in db.execute(sa.select(review_items))}
    for record in (edited, rejected):  # an admin approves both records as the input has them
        dec.decide(engine, items[record], "adm", "approve")
    engine.dispose()
    v3 = run(workdir, recipe("out"))
    assert [Path(i.uri).name for i in v3.manifest.inputs] == ["a.jsonl"]  # the carried lines cannot take it
    final = lines_by_id(Path(v3.version_uri))
    assert final[edited] == by_id[edited] and final[rejected] == by_id[rejected]
    assert texts(outputs(Path(v3.version_uri))) == texts(notes(0, 8) + notes(20, 3))


def test_undoing_a_later_decision_puts_the_one_before_it_back_in_force(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 8))
    _, _, edited, rejected = edit_note_2_and_reject_note_5(workdir)  # rita: "Lost.", and a rejection
    run(workdir, recipe("out"))
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    with engine.connect() as db:
        items = {row.record_id: row.item_id for row in db.execute(sa.select(review_items))}
    dec.decide(engine, items[edited], "sam", "edit", dec.Edit(fields={"completion": "Found."}))
    dec.decide(engine, items[rejected], "adm", "approve")
    three = lines_by_id(Path(run(workdir, recipe("out")).version_uri))
    assert three[edited][0]["completion"] == "Found." and rejected in three
    dec.undo_last(engine, "sam")
    dec.undo_last(engine, "adm")
    engine.dispose()
    v4 = run(workdir, recipe("out"))  # no new input: the decisions alone make the version
    assert v4.manifest is not None
    four = lines_by_id(Path(v4.version_uri))
    assert four[edited][0]["completion"] == "Lost." and rejected not in four


# While v2's run is under way: before it is recorded, after, and as it publishes.
@pytest.mark.parametrize("moment", ["pipeline.build_sources", "pipeline.build_stages", "DatasetWriter.publish"])
def test_a_run_applies_the_decisions_of_one_moment_and_the_next_run_compares_with_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    import curation.pipeline as pipeline
    from curation.writer import DatasetWriter

    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 8))
    one = Path(run(workdir, recipe("out")).version_uri)
    by_id, sources = lines_by_id(one), sources_by_id(one)
    rejected = id_of(by_id, "prompt", notes(5, 1)[0]["q"])
    items = queue(workdir, "notes", 1, {rejected: sources[rejected]})
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    owner_name, name = moment.split(".")
    owner = {"pipeline": pipeline, "DatasetWriter": DatasetWriter}[owner_name]
    step = getattr(owner, name)

    def decided_meanwhile(*args: Any, **kwargs: Any) -> Any:
        dec.decide(engine, items[rejected], "rita", "reject")  # while v2's run is under way
        return step(*args, **kwargs)

    monkeypatch.setattr(owner, name, decided_meanwhile)
    write_jsonl(workdir / "in" / "b.jsonl", notes(20, 2))
    assert rejected in lines_by_id(Path(run(workdir, recipe("out")).version_uri))  # after its moment
    monkeypatch.undo()
    three = run(workdir, recipe("out"))  # no new input: the rejection alone makes v3
    assert three.manifest is not None and rejected not in lines_by_id(Path(three.version_uri))
    assert run(workdir, recipe("out")).manifest is None  # and then nothing is new
    dec.undo_last(engine, "rita")
    assert rejected in lines_by_id(Path(run(workdir, recipe("out")).version_uri))  # undone: back in v4
    engine.dispose()


def test_a_decision_and_an_undo_stamped_before_the_last_run_by_a_clock_behind_take_effect_in_the_next(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A review server whose clock is an hour behind the scheduler's (or a decision whose transaction
    # commits long after it was stamped) stamps decisions before the run that could not see them.
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 8))
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"{BILLING}.", "a": "Done."}, {"q": f"{BILLING}!", "a": "Ok."}])
    spec = {**recipe("out"), "stages": [{"type": "near_dedup", "threshold": 0.7}]}
    one = Path(run(workdir, spec).version_uri)
    engine, rejected = reject(workdir, one, notes(5, 1)[0]["q"])
    assert rejected not in lines_by_id(Path(run(workdir, spec).version_uri))  # v2 applies the rejection
    behind = dec._now() - timedelta(hours=1)
    monkeypatch.setattr(dec, "_now", lambda: behind)
    dec.undo_last(engine, "rita")  # undone after v2's run, stamped before it started
    (near,) = _near_duplicate_items(engine)
    dec.decide(engine, near.item_id, "rita", "keep")  # not a duplicate, stamped before v2's run too
    three = run(workdir, spec)
    assert three.manifest is not None, "the undo and the keep were taken as applied already"
    published = lines_by_id(Path(three.version_uri))
    assert rejected in published and near.record_id in published
    assert run(workdir, spec).manifest is None  # and then nothing is new
    engine.dispose()


def test_a_store_an_earlier_release_made_keeps_the_decisions_its_last_version_read_by_their_stamps(
    workdir: Path,
) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 8))
    one = Path(run(workdir, recipe("out")).version_uri)
    engine, rejected = reject(workdir, one, notes(5, 1)[0]["q"])
    early = reject(workdir, one, notes(2, 1)[0]["q"])[1]
    dec.undo_last(engine, "rita")  # undone before v2: it was never in force in a version
    assert rejected not in lines_by_id(Path(run(workdir, recipe("out")).version_uri))
    dec.undo_last(engine, "rita")  # after v2: the next run puts the record back
    # As an earlier release left the store: no marks on runs, no numbers on undos.
    with engine.begin() as db:
        for table, column in [("runs", "decisions_through"), ("runs", "undos_through")]:
            db.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        db.execute(sa.text("ALTER TABLE review_decisions DROP COLUMN undo_seq"))
    engine.dispose()
    three = run(workdir, recipe("out"))
    assert three.manifest is not None and [Path(i.uri).name for i in three.manifest.inputs] == ["a.jsonl"]
    published = lines_by_id(Path(three.version_uri))
    assert rejected in published and early in published
    assert run(workdir, recipe("out")).manifest is None  # and then nothing is new
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    with engine.connect() as db:  # the undos numbered in the order they were made
        numbered = db.execute(sa.text("SELECT undo_seq FROM review_decisions ORDER BY undone_at")).scalars().all()
    assert numbered == [1, 2]
    engine.dispose()


def reject(workdir: Path, version: Path, question: str) -> tuple[sa.Engine, str]:
    """As an annotator, reject the record of ``version`` that asks ``question``; the engine and its id."""
    record = id_of(lines_by_id(version), "prompt", question)
    items = queue(workdir, "notes", 1, {record: sources_by_id(version)[record]})
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    dec.decide(engine, items[record], "rita", "reject")
    return engine, record


def adds_up(manifest: Manifest) -> bool:
    c = manifest.counts
    return c.input == c.written + c.filtered + c.duplicate + c.quarantined


def test_a_rejection_covers_its_content_read_from_another_input_until_it_is_undone(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 5))
    v1 = Path(run(workdir, recipe("out")).version_uri)
    rejected_question = notes(2, 1)[0]["q"]
    engine, record = reject(workdir, v1, rejected_question)
    v2 = run(workdir, recipe("out"))
    assert rejected_question not in texts(outputs(Path(v2.version_uri)))
    # The same records in another file: new ids (an id includes its input), the content the same. In another
    # order: a file holding the bytes of one taken before is not read again (its records are published).
    (workdir / "in" / "a.jsonl").unlink()
    write_jsonl(workdir / "in" / "b.jsonl", notes(0, 5)[::-1])
    v3 = run(workdir, recipe("out"))
    assert texts(outputs(Path(v3.version_uri))) == texts(notes(0, 5)[:2] + notes(0, 5)[3:])
    counts = v3.manifest.counts
    assert counts.reasons["filtered"] == {"review": 1} and adds_up(v3.manifest)
    assert v3.manifest.stats["stages"]["review"] == {"rejected_content": 1}
    (aside,) = [row for row in set_aside(Path(v3.version_uri)) if row["stage"] == "review"]
    assert aside["duplicate_of"] == record and aside["source"]["uri"].endswith("b.jsonl")
    # Undone: the copy's input is read again, and the content is published once more.
    dec.undo_last(engine, "rita")
    v4 = run(workdir, recipe("out"))
    assert texts(outputs(Path(v4.version_uri))) == texts(notes(0, 5))
    assert [Path(i.uri).name for i in v4.manifest.inputs] == ["b.jsonl"] and adds_up(v4.manifest)
    # Rejected again: the copy, carried now, leaves with it.
    dec.decide(engine, _item(engine, record), "rita", "reject")
    v5 = run(workdir, recipe("out"))
    assert rejected_question not in texts(outputs(Path(v5.version_uri)))
    assert v5.manifest.stats["carry"]["review_rejected"] == 1
    engine.dispose()


def _item(engine: sa.Engine, record: str) -> int:
    with engine.connect() as db:
        return db.execute(sa.select(review_items.c.item_id).where(review_items.c.record_id == record)).scalar_one()


def test_a_rejection_covers_the_exact_twin_set_aside_as_its_duplicate(workdir: Path) -> None:
    rows = [*notes(0, 3), notes(1, 1)[0]]  # line 4 repeats line 2: set aside as its duplicate
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    first = run(workdir, recipe("out"))
    assert first.manifest.counts.duplicate == 1
    engine, _ = reject(workdir, Path(first.version_uri), notes(1, 1)[0]["q"])
    run(workdir, recipe("out"))
    write_jsonl(workdir / "in" / "a.jsonl", [*notes(10, 1), *rows])  # a line inserted at the top
    v3 = run(workdir, recipe("out"))
    assert texts(outputs(Path(v3.version_uri))) == texts([notes(0, 1)[0], notes(2, 1)[0], notes(10, 1)[0]])
    assert v3.manifest.counts.reasons["filtered"] == {"review": 2} and adds_up(v3.manifest)
    report = json.loads((Path(v3.version_uri) / "report.json").read_text())
    assert report["duplicate_cluster_sizes"] == {}  # the twin names the record it copies: not a duplicate
    dec.undo_last(engine, "rita")  # undone: the record is back, once, and its twin a duplicate again
    v4 = run(workdir, recipe("out"))
    assert texts(outputs(Path(v4.version_uri))) == texts([*notes(0, 3), *notes(10, 1)])
    assert v4.manifest.counts.reasons == {"duplicate": {"exact_duplicate": 1}} and adds_up(v4.manifest)
    engine.dispose()


def test_without_a_dedup_stage_a_rejection_covers_the_copies_a_run_reads_with_the_record(workdir: Path) -> None:
    spec = {**recipe("out"), "stages": []}
    write_jsonl(workdir / "in" / "a.jsonl", [notes(1, 1)[0], *notes(0, 3)])  # a copy above the record
    v1 = Path(run(workdir, spec).version_uri)
    lineage = lineage_rows(v1)
    (record,) = [row["id"] for row in lineage if row["source"]["line"] == 3]
    items = queue(workdir, "notes", 1, {record: sources_by_id(v1)[record]})
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    dec.decide(engine, items[record], "rita", "reject")
    v2 = run(workdir, spec, full_refresh=True)
    # Both lines hold the rejected content, the copy read first: both are filtered.
    assert texts(outputs(Path(v2.version_uri))) == texts([notes(0, 1)[0], notes(2, 1)[0]])
    assert v2.manifest.counts.reasons["filtered"] == {"review": 2} and adds_up(v2.manifest)
    # Kept from then on: the content read from a new input is filtered too.
    write_jsonl(workdir / "in" / "c.jsonl", notes(1, 1))
    v3 = run(workdir, spec)
    assert notes(1, 1)[0]["q"] not in texts(outputs(Path(v3.version_uri)))
    assert v3.manifest.counts.reasons["filtered"] == {"review": 1}
    engine.dispose()


@pytest.mark.parametrize(
    "stages",
    [[], [{"type": "clean"}, {"type": "exact_dedup"}], [{"type": "exact_dedup", "across_runs": False}]],
    ids=["no-dedup", "clean-first", "dedup-within-runs"],
)
def test_a_carried_record_rejected_covers_its_content_whatever_the_recipes_stages(
    workdir: Path, stages: list[dict[str, Any]]
) -> None:
    spec = {**recipe("out"), "stages": stages}
    rows = notes(0, 3)
    rows[1] = {**rows[1], "q": f"<b>{rows[1]['q']}</b>"}  # text clean changes, when the recipe has it
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    v1 = Path(run(workdir, spec).version_uri)
    record = [row["id"] for row in lineage_rows(v1) if row["source"]["line"] == 2]
    items = queue(workdir, "notes", 1, {record[0]: sources_by_id(v1)[record[0]]})
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    dec.decide(engine, items[record[0]], "rita", "reject")
    assert len(outputs(Path(run(workdir, spec).version_uri))) == 2  # carried, the record is left out
    write_jsonl(workdir / "in" / "copy.jsonl", [rows[1]])  # its content, as it was read, in another input
    v3 = run(workdir, spec)
    assert len(outputs(Path(v3.version_uri))) == 2
    assert v3.manifest.counts.reasons == {"filtered": {"review": 1}} and adds_up(v3.manifest)
    engine.dispose()


def test_a_copy_published_beside_the_record_before_its_rejection_leaves_with_it(workdir: Path) -> None:
    spec = {**recipe("out"), "stages": []}  # no dedup: the same content in two inputs is published twice
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 3))
    write_jsonl(workdir / "in" / "b.jsonl", notes(1, 1))
    v1 = Path(run(workdir, spec).version_uri)
    assert len(outputs(v1)) == 4
    record = [row["id"] for row in lineage_rows(v1) if row["source"]["line"] == 2]
    items = queue(workdir, "notes", 1, {record[0]: sources_by_id(v1)[record[0]]})
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    dec.decide(engine, items[record[0]], "rita", "reject")
    v2 = run(workdir, spec)
    assert texts(outputs(Path(v2.version_uri))) == texts([notes(0, 1)[0], notes(2, 1)[0]])
    assert v2.manifest.stats["carry"]["review_rejected"] == 2
    dec.undo_last(engine, "rita")  # both inputs are read again: the content is back, twice as before
    v3 = run(workdir, spec)
    assert texts(outputs(Path(v3.version_uri))) == texts([*notes(0, 3), *notes(1, 1)])
    assert sorted(Path(i.uri).name for i in v3.manifest.inputs) == ["a.jsonl", "b.jsonl"]
    engine.dispose()


def test_a_copy_an_annotator_edited_stays_when_the_record_it_copied_is_rejected(workdir: Path) -> None:
    spec = {**recipe("out"), "stages": []}  # no dedup: the same content in two inputs is published twice
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 3))
    write_jsonl(workdir / "in" / "b.jsonl", notes(1, 1))
    v1 = Path(run(workdir, spec).version_uri)
    lineage = lineage_rows(v1)
    (record,) = [r["id"] for r in lineage if r["source"]["line"] == 2]
    (copy,) = [r["id"] for r in lineage if r["source"]["uri"].endswith("b.jsonl")]
    sources = sources_by_id(v1)  # the copy's own edit is in force: judged by it, as a copy read is
    items = queue(workdir, "notes", 1, {record: sources[record], copy: sources[copy]})
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    dec.decide(engine, items[copy], "rita", "edit", dec.Edit(fields={"completion": "Fixed."}))
    v2 = Path(run(workdir, spec).version_uri)
    assert len(outputs(v2)) == 4
    dec.decide(engine, items[record], "rita", "reject")
    v3 = run(workdir, spec)
    published = outputs(Path(v3.version_uri))
    assert notes(1, 1)[0]["q"] in texts(published), "the edited copy is gone"
    assert [row["completion"] for row in published if row["prompt"] == notes(1, 1)[0]["q"]] == ["Fixed."]
    assert adds_up(v3.manifest)
    engine.dispose()


@pytest.mark.parametrize(
    "stages",
    [[], [{"type": "clean"}, {"type": "exact_dedup"}], [{"type": "exact_dedup", "across_runs": False}]],
    ids=["no-dedup", "clean-first", "dedup-within-runs"],
)
def test_a_copy_read_by_the_run_that_first_applies_a_rejection_is_filtered(
    workdir: Path, stages: list[dict[str, Any]]
) -> None:
    # The rejected record is carried: its key was looked up once the run had read its input, and a copy
    # read meanwhile was published (then left with it in the next version).
    spec = {**recipe("out"), "stages": stages}
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 3))
    v1 = Path(run(workdir, spec).version_uri)
    lineage = lineage_rows(v1)
    (record,) = [r["id"] for r in lineage if r["source"]["line"] == 2]
    items = queue(workdir, "notes", 1, {record: sources_by_id(v1)[record]})
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    dec.decide(engine, items[record], "rita", "reject")
    write_jsonl(workdir / "in" / "b.jsonl", notes(1, 1))  # a copy, new with the run that applies the rejection
    v2 = run(workdir, spec)
    assert notes(1, 1)[0]["q"] not in texts(outputs(Path(v2.version_uri)))
    assert adds_up(v2.manifest)
    engine.dispose()


@pytest.mark.parametrize("across_runs", [True, False])
def test_a_near_duplicate_marked_not_a_duplicate_is_published_until_the_decision_is_undone(
    workdir: Path, across_runs: bool
) -> None:
    base = BILLING
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"{base}.", "a": "Done."}, *notes(0, 3)])
    # Two near duplicates of a.jsonl's first record, in another input.
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"{base}!", "a": "Done, updated."}, {"q": f"{base}?", "a": "Ok."}])
    spec = {**recipe("out"), "stages": [{"type": "near_dedup", "threshold": 0.7, "across_runs": across_runs}]}
    v1 = run(workdir, spec)
    assert v1.manifest.counts.reasons["duplicate"] == {"near_duplicate": 2}
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    items = _near_duplicate_items(engine)
    item = next(row for row in items if json.loads(row.source)["line"] == 1)
    dec.decide(engine, item.item_id, "rita", "keep")  # not a duplicate: publish it as it is
    v2 = run(workdir, spec)
    # Read again for the decision: its input, and the input of the record its cluster kept (without
    # near-dedup across runs, nothing else would set it aside beside that record again).
    assert [Path(i.uri).name for i in v2.manifest.inputs] == ["a.jsonl", "b.jsonl"]
    assert v2.manifest.stats["stages"]["review"]["kept_apart"] == 1
    # The other near duplicate still names the record its cluster kept.
    assert v2.manifest.counts.reasons["duplicate"] == {"near_duplicate": 1}
    assert item.record_id in lines_by_id(Path(v2.version_uri))
    assert f"{base}!" in texts(outputs(Path(v2.version_uri))) and len(outputs(Path(v2.version_uri))) == 5
    dec.undo_last(engine, "rita")
    engine.dispose()
    v3 = run(workdir, spec)
    assert [Path(i.uri).name for i in v3.manifest.inputs] == ["a.jsonl", "b.jsonl"]
    assert v3.manifest.counts.reasons["duplicate"] == {"near_duplicate": 2}
    assert item.record_id not in lines_by_id(Path(v3.version_uri)) and len(outputs(Path(v3.version_uri))) == 4


@pytest.mark.parametrize("across_runs", [True, False])
def test_two_near_copies_each_marked_not_a_duplicate_of_one_record_are_asked_about_each_other(
    workdir: Path, across_runs: bool
) -> None:
    base = BILLING
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"{base}.", "a": "Done."}, *notes(0, 3)])
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"{base}!", "a": "Done, updated."}, {"q": f"{base}?", "a": "Ok."}])
    spec = {**recipe("out"), "stages": [{"type": "near_dedup", "threshold": 0.7, "across_runs": across_runs}]}
    run(workdir, spec)
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)

    def near_duplicates() -> list[Any]:
        with engine.connect() as db:
            query = sa.select(review_items).where(review_items.c.kind == "near_duplicate")
            return db.execute(query.order_by(review_items.c.item_id)).all()

    first, second = near_duplicates()  # b.jsonl's two records, each beside a.jsonl's first
    for item in (first, second):
        dec.decide(engine, item.item_id, "rita", "keep")
    # Each is not a copy of a.jsonl's record; nobody said the second is not a copy of the first.
    v2 = run(workdir, spec)
    published = lines_by_id(Path(v2.version_uri))
    assert first.record_id in published and second.record_id not in published
    assert v2.manifest.counts.reasons["duplicate"] == {"near_duplicate": 1}
    again = near_duplicates()[-1]
    assert len(near_duplicates()) == 3 and again.record_id == second.record_id and again.status == "open"
    assert json.loads(again.payload)["kept"]["id"] == first.record_id
    dec.decide(engine, again.item_id, "rita", "keep")
    v3 = run(workdir, spec)
    published = lines_by_id(Path(v3.version_uri))
    assert first.record_id in published and second.record_id in published and len(published) == 6
    assert "duplicate" not in v3.manifest.counts.reasons
    engine.dispose()


def test_a_record_kept_apart_then_corrected_in_its_input_is_queued_to_be_marked_again(workdir: Path) -> None:
    # "Not a duplicate" is decided on a record id; a corrected input line is a new record, which the next
    # scheduled run sets aside as an earlier version of the record the annotator kept it apart from.
    base = BILLING
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"{base}.", "a": "Done."}, *notes(0, 3)])
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"{base}!", "a": "Done, updatd."}])
    spec = {**recipe("out"), "stages": [{"type": "near_dedup", "threshold": 0.7}]}
    v1 = run(workdir, spec)
    assert v1.manifest.counts.reasons["duplicate"] == {"near_duplicate": 1}
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)

    def near_duplicates() -> list[Any]:
        with engine.connect() as db:
            query = sa.select(review_items).where(review_items.c.kind == "near_duplicate")
            return db.execute(query.order_by(review_items.c.item_id)).all()

    (first,) = near_duplicates()
    dec.decide(engine, first.item_id, "rita", "keep")
    v2 = run(workdir, spec)
    assert first.record_id in lines_by_id(Path(v2.version_uri))

    write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"{base}!", "a": "Done, updated."}])  # the typo corrected
    v3 = run(workdir, spec)
    assert v3.manifest.counts.reasons["duplicate"] == {"earlier_version": 1}
    # Set aside beside the record it was kept apart from, and asked again: the annotator sees both texts.
    assert len(near_duplicates()) == 2
    again = near_duplicates()[1]
    assert again.record_id != first.record_id and again.status == "open" and again.version == 3
    payload, before = json.loads(again.payload), json.loads(first.payload)
    assert payload["kept"]["id"] == before["kept"]["id"] and payload["kept"]["text"] == before["kept"]["text"]
    assert payload["member"]["fields"]["completion"] == "Done, updated."
    assert payload["similarity"] is not None and payload["similarity"] >= 0.7

    dec.decide(engine, again.item_id, "rita", "keep")
    v4 = run(workdir, spec)
    published = lines_by_id(Path(v4.version_uri))
    assert again.record_id in published and first.record_id not in published and len(published) == 5
    assert "Done, updated." in json.dumps(published[again.record_id])
    assert "duplicate" not in v4.manifest.counts.reasons
    engine.dispose()


def test_the_record_a_near_duplicate_was_kept_apart_from_stays_when_its_input_is_read_again_alone(
    workdir: Path,
) -> None:
    # "Not a duplicate" holds both ways: read again alone, the record the item kept sorts after the one
    # kept apart from it (published, it comes first in their cluster) and must not be set aside beside it.
    base = BILLING
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"{base}.", "a": "Done."}, *notes(0, 3)])
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"{base}!", "a": "Done, updated."}])
    spec = {**recipe("out"), "stages": [{"type": "near_dedup", "threshold": 0.7}]}
    run(workdir, spec)
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    with engine.connect() as db:
        (item,) = db.execute(sa.select(review_items).where(review_items.c.kind == "near_duplicate")).all()
    kept = json.loads(item.payload)["kept"]["id"]
    dec.decide(engine, item.item_id, "rita", "keep")
    engine.dispose()
    run(workdir, spec)
    # A full refresh starts the chain over: no version's set-aside rows tie b.jsonl to a.jsonl any more.
    assert len(lines_by_id(Path(run(workdir, spec, full_refresh=True).version_uri))) == 5
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"{base}.", "a": "Done."}, *notes(0, 2), *notes(10, 1)])
    v4 = run(workdir, spec)
    assert [Path(i.uri).name for i in v4.manifest.inputs] == ["a.jsonl"]
    assert "duplicate" not in v4.manifest.counts.reasons
    published = lines_by_id(Path(v4.version_uri))
    assert kept in published and item.record_id in published and len(published) == 5


def test_two_near_dedup_stages_of_one_recipe_keep_their_signatures_items_and_decisions_apart(workdir: Path) -> None:
    base = BILLING
    answer = "We updated the billing address on your account, and the next invoice goes to the new one"
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"{base}.", "a": "Done."}, {"q": "Where is it?", "a": answer}])
    # Near a.jsonl's first prompt, and near its second completion.
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"{base}!", "a": "Ok."}, {"q": "And now?", "a": f"{answer}."}])
    stages = [{"type": "near_dedup", "fields": ["prompt"]}, {"type": "near_dedup", "fields": ["completion"]}]
    spec = {**recipe("out"), "stages": stages}
    v1 = run(workdir, spec)  # both stages across runs: their signatures travelled in one column name
    assert v1.manifest.counts.reasons["duplicate"] == {"near_duplicate": 2}
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    with engine.connect() as db:
        items = {row.stage: row for row in db.execute(sa.select(review_items))}
    assert sorted(items) == ["near_dedup", "near_dedup_2"]
    # Not a duplicate of a.jsonl's second completion: says nothing of the prompts the first stage compares.
    dec.decide(engine, items["near_dedup_2"].item_id, "rita", "keep")
    engine.dispose()
    v2 = run(workdir, spec)
    published = lines_by_id(Path(v2.version_uri))
    assert items["near_dedup_2"].record_id in published and items["near_dedup"].record_id not in published
    assert v2.manifest.counts.reasons["duplicate"] == {"near_duplicate": 1}
    write_jsonl(workdir / "in" / "c.jsonl", [{"q": f"{base}?", "a": "Fine."}])
    v3 = run(workdir, spec)  # compared with each stage's own published signatures
    assert v3.manifest.counts.reasons["duplicate"] == {"earlier_version": 1} and len(outputs(Path(v3.version_uri))) == 3


def test_a_not_a_duplicate_in_one_stage_does_not_queue_another_stages_earlier_versions(workdir: Path) -> None:
    base = BILLING
    answer = "We updated the billing address on your account, and the next invoice goes to the new one"
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"{base}.", "a": answer}, *notes(0, 2)])
    # Near a.jsonl's first record by its completion only.
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": "Can you check where my parcel is?", "a": f"{answer}."}])
    stages = [{"type": "near_dedup", "fields": ["prompt"]}, {"type": "near_dedup", "fields": ["completion"]}]
    spec = {**recipe("out"), "stages": stages}
    run(workdir, spec)
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    (item,) = _near_duplicate_items(engine)
    assert item.stage == "near_dedup_2"
    dec.decide(engine, item.item_id, "rita", "keep")  # says nothing of the prompts near_dedup compares
    run(workdir, spec)
    write_jsonl(workdir / "in" / "c.jsonl", [{"q": f"{base}!", "a": "Fine."}])  # near a.jsonl's first prompt
    v3 = run(workdir, spec)
    assert v3.manifest.counts.reasons["duplicate"] == {"earlier_version": 1}
    # An earlier version in near_dedup, as any: not queued as though an annotator kept a pair apart there.
    assert [row.item_id for row in _near_duplicate_items(engine)] == [item.item_id]
    engine.dispose()


def test_a_delta_run_does_not_ask_whether_a_kept_record_read_again_unchanged_is_a_copy_of_itself(
    workdir: Path,
) -> None:
    # carry_forward: false sets an unchanged record of a changed input aside as an earlier version of
    # itself; the record a near duplicate was kept apart from is no exception, and no near duplicate.
    base = BILLING
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"{base}.", "a": "Done."}, *notes(0, 3)])
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"{base}!", "a": "Done, updated."}])
    spec = {**recipe("out", carry_forward=False), "stages": [{"type": "near_dedup", "threshold": 0.7}]}
    run(workdir, spec)
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    query = sa.select(review_items).where(review_items.c.kind == "near_duplicate")
    with engine.connect() as db:
        (item,) = db.execute(query).all()
    dec.decide(engine, item.item_id, "rita", "keep")
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"{base}!", "a": "Done, updated."}, *notes(20, 1)])
    assert item.record_id in lines_by_id(Path(run(workdir, spec).version_uri))
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"{base}.", "a": "Done."}, *notes(0, 2), *notes(10, 1)])
    v3 = run(workdir, spec)
    assert v3.manifest.counts.reasons["duplicate"] == {"earlier_version": 3}
    with engine.connect() as db:
        assert [row.item_id for row in db.execute(query)] == [item.item_id]
    engine.dispose()


def _near_duplicate_items(engine: sa.Engine) -> list[Any]:
    with engine.connect() as db:
        query = sa.select(review_items).where(review_items.c.kind == "near_duplicate")
        return db.execute(query.order_by(review_items.c.item_id)).all()


def test_the_record_the_item_kept_corrected_in_its_input_is_asked_again_beside_the_one_kept_apart(
    workdir: Path,
) -> None:
    # The mirror of the test above: the record the item kept is corrected (a new record) and read alone,
    # after a full refresh (no set-aside row ties b.jsonl to it), beside the published record kept apart.
    base = BILLING
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"{base}.", "a": "Done."}, *notes(0, 3)])
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"{base}!", "a": "Done, updated."}])
    spec = {**recipe("out"), "stages": [{"type": "near_dedup", "threshold": 0.7}]}
    run(workdir, spec)
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    (first,) = _near_duplicate_items(engine)
    dec.decide(engine, first.item_id, "rita", "keep")
    run(workdir, spec)
    run(workdir, spec, full_refresh=True)
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"{base}.", "a": "Done, fixed."}, *notes(0, 3)])
    v4 = run(workdir, spec)
    assert v4.manifest.counts.reasons["duplicate"] == {"earlier_version": 1}
    # Not set aside unseen: asked beside the record kept apart, as the first item showed it.
    again = _near_duplicate_items(engine)[-1]
    payload, before = json.loads(again.payload), json.loads(first.payload)
    assert again.item_id != first.item_id and again.status == "open" and again.version == 4
    assert payload["kept"]["id"] == first.record_id and payload["kept"]["text"] == before["member"]["text"]
    assert payload["kept"]["uri"] == json.loads(first.source)["uri"]
    assert payload["member"]["fields"]["completion"] == "Done, fixed."
    engine.dispose()


def test_a_record_kept_apart_read_alone_beside_a_published_near_copy_shows_its_text_and_is_asked_once(
    workdir: Path,
) -> None:
    from tests.test_neardup import _PAIRS  # a, and d and e: near a and near each other

    write_jsonl(workdir / "in" / "a.jsonl", [{"q": _PAIRS["a"], "a": "Ok."}, *notes(0, 2)])
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": _PAIRS["d"], "a": "Ok."}])
    write_jsonl(workdir / "in" / "c.jsonl", [{"q": _PAIRS["e"], "a": "Ok."}, *notes(5, 1)])
    spec = {**recipe("out"), "stages": [{"type": "near_dedup", "threshold": 0.7}]}
    run(workdir, spec)
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    for item in _near_duplicate_items(engine):  # d and e, each not a copy of a
        dec.decide(engine, item.item_id, "rita", "keep")
    run(workdir, spec)  # d is published; e, a near copy of it, is set aside beside it and asked about
    asked = _near_duplicate_items(engine)[-1]
    assert json.loads(asked.payload)["kept"]["text"] == _PAIRS["d"] + "\nOk."
    run(workdir, spec, full_refresh=True)
    write_jsonl(workdir / "in" / "c.jsonl", [{"q": _PAIRS["e"], "a": "Ok."}, *notes(6, 1)])
    v4 = run(workdir, spec)  # e read alone: set aside as an earlier version of published d, not read
    assert [Path(i.uri).name for i in v4.manifest.inputs] == ["c.jsonl"]
    assert v4.manifest.counts.reasons["duplicate"] == {"earlier_version": 1}
    # The item it makes is the one open already (d's text as the item showed it), not a second one.
    assert _near_duplicate_items(engine)[-1].item_id == asked.item_id
    engine.dispose()


def test_a_delta_run_says_a_decision_on_a_set_aside_near_duplicate_needs_a_full_refresh(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = BILLING
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"{base}.", "a": "Done."}, *notes(0, 3)])
    write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"{base}!", "a": "Done, updated."}])
    spec = {**recipe("out", carry_forward=False), "stages": [{"type": "near_dedup", "threshold": 0.7}]}
    run(workdir, spec)
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    (item,) = _near_duplicate_items(engine)
    dec.decide(engine, item.item_id, "rita", "keep")
    engine.dispose()
    caplog.clear()  # the first run's warnings (its tiny train split) are not this run's
    with caplog.at_level(logging.WARNING, logger="curation.pipeline"):
        assert run(workdir, spec).manifest is None  # nothing new: the decision waits for b.jsonl to change
    (warning,) = [r.getMessage() for r in caplog.records if "--full-refresh" in r.getMessage()]
    assert "b.jsonl" in warning and "carry_forward false" in warning
    refreshed = run(workdir, spec, full_refresh=True)
    assert item.record_id in lines_by_id(Path(refreshed.version_uri))


def test_an_edit_of_a_document_cut_into_pieces_by_an_earlier_recipe_is_not_written_on_each_piece(
    workdir: Path,
) -> None:
    # The recipe no longer cuts documents (chunk_chars gone): the carried version still holds the edited
    # document as three pieces, and the edited text was written on each of them, three times over.
    long = "First paragraph here.\n\nSecond paragraph there.\n\nThird one."
    spec = {"dataset": "corpus", "sources": [{"path": "docs"}], "record": {"kind": "document"}}
    spec["output"] = {"dest": "out", "format": "text", "validation_fraction": 0.0, "chunk_chars": 25}
    write_jsonl(workdir / "docs" / "a.jsonl", [{"text": long}, {"text": "Short."}])
    before = lines_by_id(Path(run(workdir, spec).version_uri))
    (pieces,) = [record for record, lines in before.items() if len(lines) > 1]
    (whole,) = [record for record, lines in before.items() if len(lines) == 1]
    decide(workdir, "corpus", 1, {pieces: ("edit", {"text": "Fixed whole text."}), whole: ("edit", {"text": "Long."})})
    del spec["output"]["chunk_chars"]
    write_jsonl(workdir / "docs" / "b.jsonl", [{"text": "New doc."}])
    two = run(workdir, spec)
    after = lines_by_id(Path(two.version_uri))
    assert after[pieces] == before[pieces]  # left as they were, the edit said not applied
    assert after[whole] == [{"text": "Long."}]  # a document on one line takes its edit
    assert two.manifest.stats["carry"]["edits_not_applied"] == 1
    assert two.manifest.stats["carry"]["review_edited"] == 1


def test_a_span_marked_not_pii_does_not_bring_its_record_back_for_the_spans_already_asked(workdir: Path) -> None:
    spec = recipe("out")
    spec["stages"] = [{"type": "pii", "entities": ["PHONE_NUMBER", "PERSON"], "review_below": 1.0}]
    write_jsonl(
        workdir / "in" / "a.jsonl", [{"q": "Who handles transfers?", "a": "Ask Dana Whitfield on +1 415 555 0132."}]
    )
    run(workdir, spec)
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    (item,) = list_items(engine)
    spans = json.loads(item["payload"])["spans"]
    assert len(spans) == 2
    # The name is not PII (as a Label Studio approve with its span removed says); the phone number stays asked.
    name = next(s for s in spans if s["entity"] == "PERSON")
    dec.decide(engine, item["item_id"], "pia", "edit", dec.Edit(not_pii=[("completion", name["start"], name["end"])]))
    for full_refresh in (False, True):
        write_jsonl(
            workdir / "in" / "a.jsonl", [{"q": "Who handles transfers?", "a": "Ask Dana Whitfield on +1 415 555 0132."}]
        )
        version = run(workdir, spec, full_refresh=full_refresh)
        assert [i["item_id"] for i in list_items(engine)] == [item["item_id"]]
    assert next(iter(lines_by_id(Path(version.version_uri)).values()))[0]["completion"].startswith("Ask Dana Whitfield")
    # A span not asked before (the number changed, same offsets) is asked.
    write_jsonl(
        workdir / "in" / "a.jsonl", [{"q": "Who handles transfers?", "a": "Ask Dana Whitfield on +1 415 555 0199."}]
    )
    run(workdir, spec)
    assert len(list_items(engine)) == 2
    engine.dispose()


@pytest.mark.parametrize("then", [{}, {"split_seed": "another"}])
def test_a_rejection_undone_brings_the_record_back_on_its_side_counted_once(
    workdir: Path, then: dict[str, Any]
) -> None:
    """The latest version left the rejected record out, so the run that reads its input again finds its side in
    the version before: dealt as a new unit it came back on train, and its label's ``dealt`` counted it twice."""
    write_jsonl(workdir / "in" / "a.jsonl", [{**note, "label": "x"} for note in notes(0, 8)])
    spec = {**recipe("out", stratify_by="label"), "record": {"kind": "instruction", "prompt": "q", "completion": "a"}}
    spec["record"]["label"] = "label"
    v1 = run(workdir, spec)
    dealt = {"x": [8, 2]}  # units dealt, of them to validation
    assert v1.manifest.split["dealt"] == dealt
    first = side_of_each(Path(v1.version_uri))
    (rejected, *_) = [record for record, side in first.items() if side == "validation"]
    engine = sa.create_engine(load_recipe(workdir / "recipe.yaml").state)
    items = queue(workdir, "notes", 1, {rejected: sources_by_id(Path(v1.version_uri))[rejected]})
    dec.decide(engine, items[rejected], "rita", "reject")
    v2 = run(workdir, spec)
    assert rejected not in side_of_each(Path(v2.version_uri)) and v2.manifest.split["dealt"] == dealt
    dec.undo_last(engine, "rita")
    spec["output"] = {**spec["output"], **then}
    v3 = run(workdir, spec)
    assert side_of_each(Path(v3.version_uri)) == first
    assert v3.manifest.split["dealt"] == dealt
    engine.dispose()


def _third_metadata_line_edited(workdir: Path, edit: Callable[[list[str]], str], decided: bool) -> dict:
    """A VQA dataset of three lines whose v1 had its third metadata line edited by hand (``edit`` of the lines
    makes it), and a new input for the next run (``decided``: the first line's record rejected, so that the file
    is read line by line, not as a column); its recipe."""
    vqa = scans(workdir, {"red": (255, 0, 0), "green": (0, 255, 0)})
    write_jsonl(workdir / "vqa" / "a.jsonl", asks(workdir, ["red", "green", "red"], "a"))
    one = Path(run(workdir, vqa).version_uri)
    metadata = one / "train" / "metadata.jsonl"
    lines = metadata.read_text().splitlines(keepends=True)
    lines[2] = edit(lines)
    metadata.write_text("".join(lines))
    if decided:
        first = next(row["id"] for row in lineage_rows(one) if row["line"] == 1)
        decide(workdir, "scans", 1, {first: ("reject", None)})
    write_jsonl(workdir / "vqa" / "b.jsonl", asks(workdir, ["red"], "b"))
    return vqa


@pytest.mark.parametrize("decided", [False, True])
@pytest.mark.parametrize("edited", ["[1, 2]", '{"file_name": "x.png", "prompt": ', '{"file_name": x}', '{"a": NaN}'])
def test_a_carried_metadata_line_that_is_no_json_object_is_named_by_its_line(
    workdir: Path, decided: bool, edited: str
) -> None:
    # A hand edit: read line by line (a decision reaching the file), it failed with an AttributeError ('list' object
    # has no attribute 'get') or a bare JSON error, where the lines read as a column name the line.
    vqa = _third_metadata_line_edited(workdir, lambda lines: edited + "\n", decided)
    with pytest.raises(ValueError, match=r"v1/train/metadata.jsonl: line 3 is not "):
        run(workdir, vqa)


# What a hand edit puts before a line's own keys (GREEN: the other image's name), and whether the line is refused.
TWICE = {
    "file_name twice": ('"file_name": GREEN, ', True),
    "after another key twice": ('"a": 1, "a": 2, "file_name": GREEN, ', True),
    "after a nested key twice": ('"m": {"k": 1, "k": 2}, "file_name": GREEN, ', True),
    "spelt with an escape": ('"\\u0066ile_name": GREEN, ', True),
    "twice in a nested object only": ('"m": {"file_name": 1, "file_name": 2}, ', False),
}


@pytest.mark.parametrize("decided", [False, True])
@pytest.mark.parametrize("edit", TWICE)
def test_a_carried_metadata_line_naming_file_name_twice_is_refused_by_its_line(
    workdir: Path, decided: bool, edit: str
) -> None:
    # A hand edit: polars (the lines carried as columns) takes the first file_name, Python's json (the lines a
    # decision reaches, read one by one) the last, so which image travels depended on the path; neither is told.
    prefix, refused = TWICE[edit]

    def named_twice(lines: list[str]) -> str:
        green = json.dumps(json.loads(lines[1])["file_name"])
        return lines[2].replace("{", "{" + prefix.replace("GREEN", green), 1)

    vqa = _third_metadata_line_edited(workdir, named_twice, decided)
    if not refused:
        assert run(workdir, vqa).manifest.counts.carried == 3 - decided
        return
    with pytest.raises(ValueError, match=r'v1/train/metadata.jsonl line 3: the key "file_name" appears twice'):
        run(workdir, vqa)


PIN = {
    "q": "How do I reset the PIN number on my debit card when I have forgotten it completely",
    "a": "Open the banking app, choose the card, then select Reset PIN and follow the steps shown",
}


@pytest.mark.parametrize("across_runs", [True, False])
@pytest.mark.parametrize("layout", ["one-input", "another-input"])
def test_a_rejected_kept_record_has_its_cluster_resolved_again_by_the_next_run(
    workdir: Path, layout: str, across_runs: bool
) -> None:
    # A cluster of three: the record kept, its content in other case and spacing (a copy of its content,
    # filtered once it is rejected), and a near duplicate that a full refresh publishes in its place.
    copy = {"q": f"  {PIN['q'].replace('reset', 'RESET')}   ", "a": PIN["a"].upper()}
    near = {"q": PIN["q"].replace(" ", ", ") + "!!!", "a": f"{PIN['a']}."}
    cluster = [copy, near]
    write_jsonl(workdir / "in" / "a.jsonl", [PIN, *(cluster if layout == "one-input" else []), *notes(0, 1)])
    if layout == "another-input":
        write_jsonl(workdir / "in" / "b.jsonl", cluster)
    spec = {**recipe("out"), "stages": [{"type": "near_dedup", "across_runs": across_runs}]}
    v1 = run(workdir, spec)
    assert v1.manifest.counts.reasons["duplicate"] == {"near_duplicate": 2}
    reject(workdir, Path(v1.version_uri), PIN["q"])[0].dispose()
    write_jsonl(workdir / "in" / "c.jsonl", notes(5, 1))
    v2 = run(workdir, spec)
    published = texts(outputs(Path(v2.version_uri)))
    assert near["q"] in published and PIN["q"] not in published and copy["q"] not in published
    # Read again: the cluster's inputs (the rejected record's and its duplicates'), beside the new file.
    cluster_inputs = ["a.jsonl"] if layout == "one-input" else ["a.jsonl", "b.jsonl"]
    assert sorted(Path(i.uri).name for i in v2.manifest.inputs) == [*cluster_inputs, "c.jsonl"]
    assert adds_up(v2.manifest)
    refreshed = run(workdir, spec, full_refresh=True)
    assert texts(outputs(Path(refreshed.version_uri))) == published
    # A rejected record whose cluster set nothing aside has no input read again: its carried line is left out.
    reject(workdir, Path(refreshed.version_uri), notes(5, 1)[0]["q"])[0].dispose()
    v4 = run(workdir, spec)
    assert v4.manifest.inputs == [] and v4.manifest.stats["carry"]["review_rejected"] == 1
    assert texts(outputs(Path(v4.version_uri))) == [t for t in published if t != notes(5, 1)[0]["q"]]


def test_a_rejected_kept_record_whose_input_is_gone_is_no_earlier_version_of_its_near_duplicate(
    workdir: Path,
) -> None:
    # Its near duplicate's input is read again, and compared across runs with the published records: the
    # rejected one, still among them, set it aside again as its earlier version, and neither was published.
    near = {"q": PIN["q"].replace(" ", ", ") + "!!!", "a": f"{PIN['a']}."}
    write_jsonl(workdir / "in" / "a.jsonl", [PIN, *notes(0, 1)])
    write_jsonl(workdir / "in" / "b.jsonl", [near])
    spec = {**recipe("out"), "stages": [{"type": "near_dedup", "across_runs": True}]}
    v1 = run(workdir, spec)
    reject(workdir, Path(v1.version_uri), PIN["q"])[0].dispose()
    (workdir / "in" / "a.jsonl").rename(workdir / "a.jsonl")
    v2 = run(workdir, spec)
    assert [Path(i.uri).name for i in v2.manifest.inputs] == ["b.jsonl"]
    assert texts(outputs(Path(v2.version_uri))) == sorted([near["q"], notes(0, 1)[0]["q"]])
    assert v2.manifest.counts.duplicate == 0 and adds_up(v2.manifest)


@pytest.mark.parametrize("across_runs", [True, False])
def test_an_undone_rejection_of_a_kept_record_has_its_cluster_resolved_again(workdir: Path, across_runs: bool) -> None:
    # Rejected, its near duplicate was published in its place; undone, only its own input was read again:
    # without dedup across runs both were published, with it the record was set aside as the other's earlier
    # version. A full refresh publishes the record and sets the near duplicate aside again.
    near = {"q": PIN["q"].replace(" ", ", ") + "!!!", "a": f"{PIN['a']}."}
    write_jsonl(workdir / "in" / "a.jsonl", [PIN, *notes(0, 1)])
    write_jsonl(workdir / "in" / "b.jsonl", [near])
    spec = {**recipe("out"), "stages": [{"type": "near_dedup", "across_runs": across_runs}]}
    v1 = run(workdir, spec)
    engine = reject(workdir, Path(v1.version_uri), PIN["q"])[0]
    v2 = run(workdir, spec)
    assert texts(outputs(Path(v2.version_uri))) == sorted([near["q"], notes(0, 1)[0]["q"]])
    dec.undo_last(engine, "rita")
    engine.dispose()
    v3 = run(workdir, spec)
    published = texts(outputs(Path(v3.version_uri)))
    assert published == sorted([PIN["q"], notes(0, 1)[0]["q"]]) and adds_up(v3.manifest)
    # Read again: its own input and that of the record its cluster had set aside.
    assert sorted(Path(i.uri).name for i in v3.manifest.inputs) == ["a.jsonl", "b.jsonl"]
    refreshed = run(workdir, spec, full_refresh=True)
    assert texts(outputs(Path(refreshed.version_uri))) == published


def test_an_undone_rejection_in_delta_versions_keeps_a_later_copy_from_being_published_twice(workdir: Path) -> None:
    # A rejected record was retired from the cross-run signatures for good, though a delta version leaves it in
    # the version that published it: once the rejection was undone, an exact copy read later was published too.

    spec = recipe("out", carry_forward=False)
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 3))
    first = run(workdir, spec)
    engine, _ = reject(workdir, Path(first.version_uri), notes(1, 1)[0]["q"])
    write_jsonl(workdir / "in" / "b.jsonl", notes(10, 1))
    second = run(workdir, spec)
    dec.undo_last(engine, "rita")
    write_jsonl(workdir / "in" / "c.jsonl", notes(1, 1))  # an exact copy of the record, its rejection undone
    third = run(workdir, spec)
    chain = [text for result in (first, second, third) for text in texts(outputs(Path(result.version_uri)))]
    assert chain.count(notes(1, 1)[0]["q"]) == 1
