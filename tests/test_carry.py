"""Carry forward: an incremental run's version holds the records of the version it extends as well as
its own, so the latest version is the whole dataset (what ``curation train launch`` hands to SageMaker)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

from curation import writer
from curation.published import published_versions, verify_checksums
from curation.review.app import create_app
from curation.review.auth import add_user
from schemas.config import load_recipe
from schemas.manifest import Manifest
from tests.helpers import lineage_rows, outputs, processed, read_lines, run, set_aside, write_jsonl, write_recipe
from tests.test_cli import curation
from tests.test_formats import png
from tests.test_review_access import token
from train.sagemaker import load_version


def notes(first: int, count: int) -> list[dict[str, Any]]:
    """Questions and answers (instruction records, published in the jumpstart-instruction format)."""
    return [
        {
            "q": f"Where was parcel {i} on day {i}?",
            "a": f"Parcel {i} left the depot and arrived {i % 3 + 1} days later.",
        }
        for i in range(first, first + count)
    ]


def recipe(dest: str, **output: Any) -> dict[str, Any]:
    return {
        "dataset": "notes",
        "sources": [{"path": "in"}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "stages": [{"type": "exact_dedup"}],
        # Small shards, so each version has several, and a validation side: both splits carry.
        "output": {"dest": dest, "shard_max_bytes": 1024, "validation_fraction": 0.25, **output},
    }


def texts(rows: list[dict[str, Any]]) -> list[str]:
    """Input rows and output lines alike, by their question."""
    return sorted(row.get("prompt") or row["q"] for row in rows)


def shards(manifest: Manifest) -> dict[str, Any]:
    return {shard.path: shard for split in manifest.splits.values() for shard in split.shards}


def test_each_version_holds_the_whole_dataset_and_carried_shards_keep_their_checksums(workdir: Path) -> None:
    # v1's input has one record twice: set aside as a duplicate, so v1 has set-aside rows of its own.
    write_jsonl(workdir / "in" / "a.jsonl", [*notes(0, 30), notes(0, 1)[0]])
    v1 = run(workdir, recipe("out"))
    one = Path(v1.version_uri)
    assert v1.manifest.counts.duplicate == 1 and set_aside(one)
    assert len(v1.manifest.splits["train"].shards) > 1 and v1.manifest.splits["validation"].records

    write_jsonl(workdir / "in" / "b.jsonl", notes(30, 12))
    v2 = run(workdir, recipe("out"))
    two = Path(v2.version_uri)
    manifest = v2.manifest
    # This run processed only the new records; the version holds v1's as well, each once.
    assert (manifest.counts.input, manifest.counts.written, manifest.counts.carried) == (12, 12, 30)
    assert manifest.extends == 1 and manifest.carried_from == 1
    assert texts(processed(two)) == texts(notes(30, 12))
    assert texts(outputs(two)) == texts(outputs(one) + notes(30, 12))
    for name, split in manifest.splits.items():
        assert split.records == v1.manifest.splits[name].records + sum(
            s.records for s in split.shards if "-v1-" not in s.path
        )
        assert split.records == sum(s.records for s in split.shards)
    # Carried shards are v1's files under names that say where they came from, with v1's checksums.
    first_shards, second_shards = shards(v1.manifest), shards(manifest)
    for path, shard in first_shards.items():
        carried = second_shards[path.replace("/part-", "/part-v1-")]
        assert (carried.sha256, carried.records, carried.bytes) == (shard.sha256, shard.records, shard.bytes)
        assert (two / carried.path).read_bytes() == (one / path).read_bytes()
        # On local disk the versions share the file (a hard link): a scheduled version is not another copy.
        assert (two / carried.path).stat().st_ino == (one / path).stat().st_ino
    assert verify_checksums(str(two), manifest) == []
    assert load_version(str(two)).version == 2  # training's check: every file against its sha256
    # Set-aside rows describe one run: not carried. Lineage is, marked with the version it came from.
    assert set_aside(two) == []
    lineage = lineage_rows(two)
    assert len(lineage) == 42 and sum(row.get("carried_from") == 1 for row in lineage) == 30
    report = json.loads((two / "report.json").read_text())
    assert report["carried"] == {"records": 30, "from_version": 1} and report["counts"]["input"] == 12
    assert "Carried 30 records from v1" in (two / "report.html").read_text()

    # v3 carries v2, which carried v1: the whole chain, v1's shards keep their names.
    write_jsonl(workdir / "in" / "c.jsonl", notes(42, 3))
    v3 = run(workdir, recipe("out"))
    three = Path(v3.version_uri)
    assert v3.manifest.counts.carried == 42 and v3.manifest.carried_from == 2
    assert texts(outputs(three)) == texts(notes(0, 45))
    third_shards = shards(v3.manifest)
    assert {p for p in first_shards if p.endswith(".jsonl")} <= {p.replace("-v1-", "-") for p in third_shards}
    assert any("/part-v2-" in p for p in third_shards)
    assert verify_checksums(str(three), v3.manifest) == []


def test_carried_shards_are_copied_where_they_cannot_be_linked(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    def across_devices(source: str, target: str) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 30))
    one = Path(run(workdir, recipe("out")).version_uri)
    monkeypatch.setattr(os, "link", across_devices)
    write_jsonl(workdir / "in" / "b.jsonl", notes(30, 3))
    v2 = run(workdir, recipe("out"))
    two = Path(v2.version_uri)
    assert v2.manifest.counts.carried == 30 and verify_checksums(str(two), v2.manifest) == []
    for shard in sorted((one / "train").glob("part-*.jsonl")):
        carried = two / "train" / shard.name.replace("part-", "part-v1-")
        assert carried.read_bytes() == shard.read_bytes() and carried.stat().st_ino != shard.stat().st_ino


def test_a_published_shard_changed_by_hand_is_not_carried_with_its_old_checksum(workdir: Path) -> None:
    from connectors.storage import StorageError

    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 30))
    one = Path(run(workdir, recipe("out")).version_uri)
    shard = sorted((one / "train").glob("part-*.jsonl"))[0]
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[1:]))  # a line taken out by hand, after publishing
    write_jsonl(workdir / "in" / "b.jsonl", notes(30, 3))
    with pytest.raises(StorageError, match=rf"v1/train/{shard.name}: holds \d+ bytes, its manifest says \d+"):
        run(workdir, recipe("out"))
    assert published_versions(str(workdir / "out"), "notes") == [1]  # nothing published that fails its checks


def test_a_file_read_again_without_a_dedup_stage_replaces_its_carried_records(workdir: Path) -> None:
    spec = {**recipe("out"), "stages": []}
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 30))
    v1 = run(workdir, spec)
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 32))  # two lines appended: the file is read again
    v2 = run(workdir, spec)
    assert v2.manifest.counts.written == 32 and v2.manifest.stats["carry"]["replaced"] == 30
    assert texts(outputs(Path(v2.version_uri))) == texts(notes(0, 32))  # each record once, not 30 twice
    assert len(outputs(Path(v1.version_uri))) == 30
    # A new file beside it reads nothing again: nothing to replace, and the carry does not look.
    write_jsonl(workdir / "in" / "b.jsonl", notes(40, 3))
    v3 = run(workdir, spec)
    assert v3.manifest.stats["carry"]["replaced"] == 0 and v3.manifest.counts.carried == 32
    assert texts(outputs(Path(v3.version_uri))) == texts(notes(0, 32) + notes(40, 3))


@pytest.mark.parametrize("stages", [[{"type": "exact_dedup"}], [{"type": "exact_dedup"}, {"type": "near_dedup"}]])
def test_a_changed_file_replaces_the_records_it_gave_before(workdir: Path, stages: list) -> None:
    spec = {**recipe("out"), "stages": stages}
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 10))
    write_jsonl(workdir / "in" / "b.jsonl", notes(10, 5))
    run(workdir, spec)
    old_five = notes(5, 1)[0]
    edited = notes(0, 10)
    del edited[3]  # a line deleted
    edited[4] = {**old_five, "a": "Parcel 5 was returned to the sender."}  # a line edited (note 5)
    edited.append(notes(12, 1)[0])  # a copy of one of b's lines: still an earlier version's
    write_jsonl(workdir / "in" / "a.jsonl", edited)
    v2 = run(workdir, spec)
    published = outputs(Path(v2.version_uri))
    assert texts(published) == texts(edited[:-1] + notes(10, 5))  # each once, neither note 3 nor the old note 5
    assert {"prompt": old_five["q"], "completion": "Parcel 5 was returned to the sender."} in [
        {k: line[k] for k in ("prompt", "completion")} for line in published
    ]
    assert v2.manifest.stats["carry"]["replaced"] == 10 and v2.manifest.counts.carried == 5
    assert v2.manifest.counts.written == 9 and v2.manifest.counts.reasons["duplicate"] == {"earlier_version": 1}
    # What the file no longer holds is no longer published: the old wording of note 5, and note 3, are new
    # content for a later run, not repeats of an earlier version.
    write_jsonl(workdir / "in" / "c.jsonl", [old_five, notes(3, 1)[0]])
    v3 = run(workdir, spec)
    assert v3.manifest.counts.written == 2 and v3.manifest.counts.duplicate == 0
    assert len(outputs(Path(v3.version_uri))) == 16


def lose_a_lineage_row(version: Path, input_name: str) -> None:
    """The first line from ``input_name`` in ``version`` loses its lineage row (a version written before every
    line had one); its manifest still checks."""

    def lose(rows: pa.Table) -> pa.Table:
        lost = next(i for i, row in enumerate(rows.to_pylist()) if row["source"]["uri"].endswith(input_name))
        return pa.concat_tables([rows.slice(0, lost), rows.slice(lost + 1)])

    rewrite_lineage(version, lose)


def rewrite_lineage(version: Path, change: Callable[[pa.Table], pa.Table], **parquet: Any) -> None:
    """``version``'s one lineage file as ``change`` makes it (written with the ``parquet`` options); its manifest
    still checks."""
    manifest = Manifest.model_validate_json((version / "manifest.json").read_text())
    (entry,) = manifest.lineage
    pq.write_table(change(pq.read_table(version / entry.path)), version / entry.path, **parquet)
    body = (version / entry.path).read_bytes()
    manifest.lineage = [entry.model_copy(update={"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()})]
    (version / "manifest.json").write_text(manifest.model_dump_json(indent=2))


def test_a_changed_file_rewrites_the_shards_its_records_share_keeping_the_lines_without_lineage(workdir: Path) -> None:
    spec = recipe("out", shard_max_bytes=1 << 20)  # one shard a split: each holds records of both files
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 10))
    write_jsonl(workdir / "in" / "b.jsonl", notes(10, 10))
    one = Path(run(workdir, spec).version_uri)
    lose_a_lineage_row(one, "b.jsonl")

    edited = notes(0, 10)
    del edited[6]
    write_jsonl(workdir / "in" / "a.jsonl", edited)
    v2 = run(workdir, spec)
    two = Path(v2.version_uri)
    assert texts(outputs(two)) == texts(edited + notes(10, 10))  # a's records once each, all of b's
    assert v2.manifest.stats["carry"]["replaced"] == 10 and v2.manifest.stats["carry"]["lines_without_lineage"] == 1
    assert v2.manifest.counts.carried == 10 and v2.manifest.counts.written == 9
    assert sum(shard.records for path, shard in shards(v2.manifest).items() if "-v1-" in path) == 10
    lineage = lineage_rows(two)
    assert len(lineage) == 18 and sum(row["carried_from"] == 1 for row in lineage) == 9
    for row in lineage:  # each row names the line of its record, in the shard it was rewritten to
        line = json.loads((two / row["shard"]).read_text().splitlines()[row["line"] - 1])
        wrote = edited if row["source"]["uri"].endswith("a.jsonl") else notes(10, 10)
        assert line["prompt"] in texts(wrote) and (row["carried_from"] == 1) == row["source"]["uri"].endswith("b.jsonl")
    assert verify_checksums(str(two), v2.manifest) == []


def test_content_kept_from_a_changed_file_stays_when_another_file_holds_it_too(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 3))
    write_jsonl(workdir / "in" / "b.jsonl", [*notes(10, 2), notes(1, 1)[0]])  # note 1 again: set aside
    v1 = run(workdir, recipe("out"))
    assert v1.manifest.counts.duplicate == 1
    write_jsonl(workdir / "in" / "a.jsonl", [notes(0, 1)[0], notes(2, 1)[0]])  # note 1 leaves a.jsonl
    v2 = run(workdir, recipe("out"))
    # b.jsonl still holds note 1: it is read again, and its copy published.
    assert texts(outputs(Path(v2.version_uri))) == texts([*notes(0, 3), *notes(10, 2)])
    assert sorted(Path(i.uri).name for i in v2.manifest.inputs) == ["a.jsonl", "b.jsonl"]


def test_after_a_full_refresh_a_deleted_line_goes_even_if_a_file_gone_before_held_it_too(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 3))
    write_jsonl(workdir / "in" / "b.jsonl", notes(1, 1))  # note 1 again: set aside in v1
    run(workdir, recipe("out"))
    (workdir / "in" / "b.jsonl").unlink()
    run(workdir, recipe("out"), full_refresh=True)  # v2: the dataset as the input is now, without b.jsonl
    write_jsonl(workdir / "in" / "a.jsonl", [notes(0, 1)[0], notes(2, 1)[0]])  # note 1 leaves a.jsonl
    v3 = run(workdir, recipe("out"))
    # What v1 set aside describes input the full refresh left behind: nothing holds note 1 any more.
    assert texts(outputs(Path(v3.version_uri))) == texts([notes(0, 1)[0], notes(2, 1)[0]])


def test_a_file_emptied_of_its_records_takes_them_out(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 4))
    write_jsonl(workdir / "in" / "b.jsonl", notes(10, 3))
    run(workdir, recipe("out"))
    (workdir / "in" / "a.jsonl").write_text("")
    v2 = run(workdir, recipe("out"))
    assert v2.manifest is not None and v2.manifest.counts.input == 0
    assert texts(outputs(Path(v2.version_uri))) == texts(notes(10, 3))


@pytest.mark.parametrize("stages", [[{"type": "exact_dedup"}], [{"type": "near_dedup"}]])
def test_carry_forward_false_keeps_delta_versions(workdir: Path, stages: list) -> None:
    spec = {**recipe("out", carry_forward=False), "stages": stages}
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 10))
    run(workdir, spec)
    write_jsonl(workdir / "in" / "b.jsonl", notes(10, 4))
    v2 = run(workdir, spec)
    assert v2.manifest.extends == 1 and v2.manifest.carried_from is None and v2.manifest.counts.carried == 0
    assert texts(outputs(Path(v2.version_uri))) == texts(notes(10, 4))
    # A changed file is read again: a delta holds what changed, not its unchanged lines once more.
    edited = notes(0, 10)
    edited[4] = {**edited[4], "a": "Parcel 4 was returned."}
    write_jsonl(workdir / "in" / "a.jsonl", edited)
    v3 = run(workdir, spec)
    assert [line["completion"] for line in outputs(Path(v3.version_uri))] == ["Parcel 4 was returned."]


def test_carrying_again_after_a_delta_version_reads_everything_instead_of_carrying_the_delta_alone(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 10))
    run(workdir, recipe("out"))
    write_jsonl(workdir / "in" / "b.jsonl", notes(10, 4))
    run(workdir, recipe("out", carry_forward=False))  # v2: a delta of b.jsonl's records alone
    write_jsonl(workdir / "in" / "c.jsonl", notes(14, 2))
    with caplog.at_level("WARNING", logger="curation.pipeline"):
        v3 = run(workdir, recipe("out"))  # carry_forward again: v3 must be the whole dataset
    assert "notes v2 holds only what was new since v1 (output.carry_forward was false)" in caplog.text
    assert texts(outputs(Path(v3.version_uri))) == texts(notes(0, 16))  # a.jsonl's records too, each once


def test_a_full_refresh_carries_nothing(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 10))
    run(workdir, recipe("out"))
    write_jsonl(workdir / "in" / "b.jsonl", notes(10, 4))
    v2 = run(workdir, recipe("out"), full_refresh=True)
    assert v2.manifest.extends is None and v2.manifest.carried_from is None and v2.manifest.counts.carried == 0
    assert texts(outputs(Path(v2.version_uri))) == texts(notes(0, 14))  # read again, each once
    assert not any("-v1-" in path for path in shards(v2.manifest))


def test_a_failed_run_leaves_no_partial_copy(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 20))
    run(workdir, recipe("out"))
    write_jsonl(workdir / "in" / "b.jsonl", notes(20, 5))

    def fails(manifest: Manifest, writer: Any) -> Manifest:  # after the copy, before the manifest
        assert any(writer.carried.values())
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr("curation.pipeline.attach_report", fails)
        with pytest.raises(OSError, match="disk full"):
            run(workdir, recipe("out"))
    dataset = workdir / "out" / "notes"
    assert published_versions(str(workdir / "out"), "notes") == [1]
    # Nothing of the failed run is left: no copied shard in staging, no v2.
    assert [p for p in dataset.rglob("*") if p.is_file() and p.relative_to(dataset).parts[0] != "v1"] == []
    v2 = run(workdir, recipe("out"))  # the next run takes the input again and carries v1 in full
    assert v2.manifest.version == 2 and v2.manifest.counts.input == 5 and v2.manifest.counts.carried == 20
    assert texts(outputs(Path(v2.version_uri))) == texts(notes(0, 25))


def s3_texts(s3: Any, bucket: str, prefix: str, manifest: Manifest) -> list[str]:
    rows = []
    for split in manifest.splits.values():
        for shard in split.shards:
            body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{shard.path}")["Body"].read().decode()
            rows += [json.loads(line) for line in body.splitlines()]
    return texts(rows)


def lost_connection(manifest: Manifest, writer: Any) -> Manifest:
    raise OSError("lost connection")  # after the carry, before the version is copied


def staged(s3: Any, bucket: str) -> list[str]:
    """Files left under the staging prefix (its folder marker aside)."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="out/notes/_staging/").get("Contents", [])
    return [o["Key"] for o in listed if not o["Key"].endswith("/")]


def test_carry_on_s3(workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body="".join(json.dumps(r) + "\n" for r in notes(0, 25)).encode())
    config = {**recipe(f"s3://{bucket}/out"), "sources": [{"path": f"s3://{bucket}/in/"}]}
    run(workdir, config)
    s3.put_object(Bucket=bucket, Key="in/b.jsonl", Body="".join(json.dumps(r) + "\n" for r in notes(25, 6)).encode())
    import curation.writer

    copied, copy = [], curation.writer.copy_published
    with monkeypatch.context() as patch:
        patch.setattr(curation.writer, "copy_published", lambda fs, a, b: (copied.append(b), copy(fs, a, b))[1])
        v2 = run(workdir, config)
    # Each carried shard is copied once, straight into the version (through the staging area: twice).
    assert copied and all(re.match(rf"{bucket}/out/notes/v2/(train|validation)/part-v1-", path) for path in copied)
    assert v2.version_uri == f"s3://{bucket}/out/notes/v2"
    assert v2.manifest.counts.input == 6 and v2.manifest.counts.carried == 25
    assert s3_texts(s3, bucket, "out/notes/v2", v2.manifest) == texts(notes(0, 31))
    assert verify_checksums(v2.version_uri, v2.manifest) == []
    assert load_version(v2.version_uri).counts.carried == 25
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/notes/")["Contents"]}
    assert staged(s3, bucket) == []
    assert any(key.startswith("out/notes/v2/train/part-v1-") for key in keys)
    assert not any(key.startswith("out/notes/v2/set_aside/part-v1") for key in keys)

    # A run that fails after the carry, before publishing, leaves nothing staged (copies into the version: below).
    s3.put_object(Bucket=bucket, Key="in/c.jsonl", Body=json.dumps(notes(31, 1)[0]).encode() + b"\n")
    with monkeypatch.context() as patch:
        patch.setattr("curation.pipeline.attach_report", lost_connection)
        with pytest.raises(OSError, match="lost connection"):
            run(workdir, config)
    assert staged(s3, bucket) == [] and published_versions(f"s3://{bucket}/out", "notes") == [1, 2]


def test_one_file_formats_append_carried_lines_to_the_one_file(workdir: Path) -> None:
    """JumpStart reads metadata.jsonl (VQA) and one text file per channel: carried lines go into that file."""
    colors = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    (workdir / "scans").mkdir()
    for name, color in colors.items():
        (workdir / "scans" / f"{name}.png").write_bytes(png(color))

    def asks(names: list[str], tag: str) -> list[dict[str, str]]:
        image = str(workdir / "scans" / "{}.png")
        return [{"image": image.format(n), "question": f"Colour? ({tag})", "answer": n} for n in names]

    vqa = {"dataset": "scans", "sources": [{"path": "vqa"}], "record": {"kind": "vqa"}}
    vqa["output"] = {"dest": "out", "validation_fraction": 0.0}
    write_jsonl(workdir / "vqa" / "a.jsonl", asks(["red", "green"], "a"))
    run(workdir, vqa)
    write_jsonl(workdir / "vqa" / "b.jsonl", asks(["blue"], "b"))
    v2 = run(workdir, vqa)
    version = Path(v2.version_uri)
    assert [s.path for s in v2.manifest.splits["train"].shards] == ["train/metadata.jsonl"]
    lines = read_lines([version / "train" / "metadata.jsonl"])
    assert sorted(line["completion"] for line in lines) == ["blue", "green", "red"]
    for line in lines:  # every carried line's image was copied too
        pixel = Image.open(version / "train" / line["file_name"]).getpixel((0, 0))
        assert pixel == colors[line["completion"]]
    assert len(v2.manifest.files) == 3 and verify_checksums(str(version), v2.manifest) == []
    # Lineage points at each line: the new record's, and the carried ones at their new place in the file.
    lineage = lineage_rows(version)
    (entry,) = [row for row in lineage if row["carried_from"] is None]
    assert lines[entry["line"] - 1]["completion"] == "blue"
    carried = sorted(lines[row["line"] - 1]["completion"] for row in lineage if row.get("carried_from") == 1)
    assert carried == ["green", "red"] and {row["shard"] for row in lineage} == {"train/metadata.jsonl"}

    text = {"dataset": "corpus", "sources": [{"path": "docs"}], "record": {"kind": "document"}}
    text["output"] = {"dest": "out", "format": "text", "validation_fraction": 0.0}
    write_jsonl(workdir / "docs" / "a.jsonl", [{"text": f"Document {i}."} for i in range(5)])
    run(workdir, text)
    write_jsonl(workdir / "docs" / "b.jsonl", [{"text": f"Document {i}."} for i in range(5, 7)])
    v2 = run(workdir, text)
    assert len(v2.manifest.splits["train"].shards) == 1 and v2.manifest.splits["train"].records == 7
    assert len(outputs(Path(v2.version_uri))) == 7


def scans(workdir: Path, colors: dict[str, tuple[int, int, int]]) -> dict[str, Any]:
    """A VQA recipe over ``vqa/``, with a picture of each colour in ``scans/``."""
    (workdir / "scans").mkdir(exist_ok=True)
    for name, color in colors.items():
        (workdir / "scans" / f"{name}.png").write_bytes(png(color))
    return {
        "dataset": "scans",
        "sources": [{"path": "vqa"}],
        "record": {"kind": "vqa"},
        "output": {"dest": "out", "validation_fraction": 0.0},
    }


def asks(workdir: Path, names: list[str], tag: str) -> list[dict[str, str]]:
    return [
        {"image": str(workdir / "scans" / f"{name}.png"), "question": f"Colour? ({tag}{i})", "answer": name}
        for i, name in enumerate(names)
    ]


def test_a_one_file_format_carries_its_file_in_blocks_keeping_the_lines_without_lineage(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A block of a line or two (a line is about 110 bytes): the carried metadata.jsonl goes in many blocks.
    monkeypatch.setattr(writer, "CARRY_BLOCK_BYTES", 256)
    colors = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}
    vqa = scans(workdir, colors)
    write_jsonl(workdir / "vqa" / "a.jsonl", asks(workdir, ["red", "green", "red"], "a"))
    write_jsonl(workdir / "vqa" / "b.jsonl", asks(workdir, ["blue"] * 6, "b"))
    one = Path(run(workdir, vqa).version_uri)
    lose_a_lineage_row(one, "b.jsonl")
    write_jsonl(workdir / "vqa" / "a.jsonl", asks(workdir, ["white"], "a"))  # a's three records replaced
    v2 = run(workdir, vqa)
    two = Path(v2.version_uri)
    lines = read_lines([two / "train" / "metadata.jsonl"])
    assert sorted(line["prompt"] for line in lines) == sorted(
        ask["question"] for ask in asks(workdir, ["blue"] * 6, "b") + asks(workdir, ["white"], "a")
    )
    assert v2.manifest.stats["carry"]["replaced"] == 3 and v2.manifest.stats["carry"]["lines_without_lineage"] == 1
    assert v2.manifest.counts.carried == 6 and v2.manifest.counts.written == 1
    # Only the images the lines name travel: red and green went with a's records.
    pixels = {Image.open(two / "train" / line["file_name"]).getpixel((0, 0)) for line in lines}
    assert pixels == {colors["blue"], colors["white"]} and len(v2.manifest.files) == 2
    lineage = lineage_rows(two)
    assert len(lineage) == 6 and sum(row["carried_from"] == 1 for row in lineage) == 5
    for row in lineage:  # each row names its record's line, in this run's file
        line = lines[row["line"] - 1]
        wrote = "a.jsonl" if line["completion"] == "white" else "b.jsonl"
        assert row["shard"] == "train/metadata.jsonl" and row["source"]["uri"].endswith(wrote)
    assert verify_checksums(str(two), v2.manifest) == []


@pytest.mark.parametrize("layout", ["as written", "reversed", "interleaved", "without statistics"])
def test_a_one_file_format_carries_lineage_rows_read_in_pieces_to_their_lines(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    """A text file's lineage rows are read a few at a time, in step with its lines, each row moved to its
    record's new line; rows not in line order (not as this writer writes them) are held and sorted instead.
    Each split's rows are read past the row groups whose statistics say they hold the other's alone: rows of
    both splits interleaved in small groups (each split over several), or groups without statistics, are read."""
    monkeypatch.setattr(writer, "CARRY_BLOCK_BYTES", 64)
    monkeypatch.setattr(writer, "LINEAGE_READ_ROWS", 3)
    text = {"dataset": "corpus", "sources": [{"path": "docs"}], "record": {"kind": "document"}}
    text["output"] = {"dest": "out", "format": "text", "validation_fraction": 0.4}
    write_jsonl(workdir / "docs" / "a.jsonl", [{"text": f"Document {i}."} for i in range(20)])
    one = Path(run(workdir, text).version_uri)
    if layout == "reversed":
        rewrite_lineage(one, lambda rows: rows.take(list(range(rows.num_rows - 1, -1, -1))))
    elif layout == "interleaved":  # train's line 1, validation's line 1, train's line 2, ...: each in line order
        rewrite_lineage(one, lambda rows: rows.sort_by("line"), row_group_size=3)
    elif layout == "without statistics":
        rewrite_lineage(one, lambda rows: rows, row_group_size=3, write_statistics=False)

    def texts_by_id(version: Path) -> dict[str, str]:
        return {
            row["id"]: read_lines([version / row["shard"]])[row["line"] - 1]["text"] for row in lineage_rows(version)
        }

    before = texts_by_id(one)
    write_jsonl(workdir / "docs" / "b.jsonl", [{"text": "Document 20."}])
    v2 = run(workdir, text)
    after = texts_by_id(Path(v2.version_uri))
    assert len(before) == 20 and {record: after[record] for record in before} == before
    assert v2.manifest.counts.carried == 20 and v2.manifest.stats["carry"]["lines_without_lineage"] == 0


@pytest.mark.parametrize(
    ("damaged", "said"),
    [
        ('{"file_name": "images/', "line 2 is not JSON"),
        ("\n", "line 2 is blank, not a JSON object"),
        # Python's json takes NaN, polars does not: the line is named all the same.
        ('{"file_name": "images/x.png", "score": NaN}\n', r"line 2 is not JSON \(NaN is not a JSON value\)"),
    ],
)
def test_a_damaged_line_of_a_carried_metadata_file_is_named(workdir: Path, damaged: str, said: str) -> None:
    vqa = scans(workdir, {"red": (255, 0, 0)})
    write_jsonl(workdir / "vqa" / "a.jsonl", asks(workdir, ["red"] * 3, "a"))
    one = Path(run(workdir, vqa).version_uri)
    metadata = one / "train" / "metadata.jsonl"
    lines = metadata.read_text().splitlines(keepends=True)
    metadata.write_text(lines[0] + damaged + lines[2])  # line 2 cut short, or emptied, by hand
    write_jsonl(workdir / "vqa" / "b.jsonl", asks(workdir, ["red"], "b"))
    with pytest.raises(ValueError, match=rf"v1/train/metadata.jsonl: {said}"):
        run(workdir, vqa)


def test_a_changed_format_cannot_be_carried(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 5))
    run(workdir, recipe("out"))
    write_jsonl(workdir / "in" / "b.jsonl", notes(5, 2))
    with pytest.raises(
        ValueError,
        match=r"instruction records in the jumpstart-instruction format, this run writes instruction records in messages.*full-refresh",
    ):
        run(workdir, recipe("out", format="messages"))
    assert published_versions(str(workdir / "out"), "notes") == [1]


def test_cli_summary_shows_what_was_carried(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 8))
    path = write_recipe(workdir, recipe("out"))
    assert curation("run", "--quiet", str(path), cwd=workdir).returncode == 0
    write_jsonl(workdir / "in" / "b.jsonl", notes(8, 2))
    second = curation("run", "--quiet", str(path), cwd=workdir)
    assert second.returncode == 0, second.stderr
    rows = {tuple(cell.strip() for cell in line.split("│")[1:4]) for line in second.stdout.splitlines() if "│" in line}
    assert {("input", "", "2"), ("written", "this run", "2"), ("carried", "from v1", "8")} <= rows
    in_version = {split: int(count) for outcome, split, count in rows if outcome == "in version"}
    assert sum(in_version.values()) == 10 and set(in_version) == {"train", "validation"}
    assert "2 new record(s) and 8 carried from v1" in second.stdout


def test_review_page_shows_what_was_carried(workdir: Path) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", notes(0, 6))
    run(workdir, recipe("out"))
    write_jsonl(workdir / "in" / "b.jsonl", notes(6, 3))
    run(workdir, recipe("out"))
    loaded = load_recipe(workdir / "recipe.yaml")
    app = create_app(loaded.state, [loaded])
    add_user(sa.create_engine(loaded.state), "ada", "admin", "a long enough password")
    client = TestClient(app, base_url="https://testserver")
    csrf = token(client.get("/login").text)
    client.post("/login", data={"username": "ada", "password": "a long enough password", "csrf_token": csrf})
    page = client.get("/datasets/notes/v2").text
    assert re.search(r'<td id="carried">6 <small>from v1</small>', page)
    assert "carried" not in client.get("/datasets/notes/v1").text.split("<h2>Manifest")[0]


def test_a_run_failing_while_it_copies_into_the_version_on_s3_leaves_nothing_there(
    workdir: Path, bucket: str, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Carried shards are copied straight into the new version as it is published: a run that fails (a
    lost connection, SIGTERM) part way leaves none of them under that version's prefix."""
    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body="".join(json.dumps(r) + "\n" for r in notes(0, 25)).encode())
    config = {**recipe(f"s3://{bucket}/out"), "sources": [{"path": f"s3://{bucket}/in/"}]}
    run(workdir, config)
    s3.put_object(Bucket=bucket, Key="in/b.jsonl", Body="".join(json.dumps(r) + "\n" for r in notes(25, 6)).encode())
    import curation.writer

    copy, calls = curation.writer.copy_published, []

    def fails_once_started(fs: Any, source: str, target: str) -> None:
        calls.append(target)
        if len(calls) == 2:
            raise OSError("lost connection")
        copy(fs, source, target)

    with monkeypatch.context() as patch:
        patch.setattr(curation.writer, "copy_published", fails_once_started)
        with pytest.raises(OSError, match="lost connection"):
            run(workdir, config)
    assert published_versions(f"s3://{bucket}/out", "notes") == [1]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="out/notes/v2/").get("Contents", [])
    assert [o["Key"] for o in listed] == [] and staged(s3, bucket) == []


def test_a_published_shard_deleted_on_s3_is_named_as_missing(workdir: Path, bucket: str, aws_env: str) -> None:
    from connectors.storage import StorageError

    s3 = boto3.client("s3", endpoint_url=aws_env)
    s3.put_object(Bucket=bucket, Key="in/a.jsonl", Body="".join(json.dumps(r) + "\n" for r in notes(0, 25)).encode())
    config = {**recipe(f"s3://{bucket}/out"), "sources": [{"path": f"s3://{bucket}/in/"}]}
    v1 = run(workdir, config)
    gone = v1.manifest.splits["train"].shards[0].path
    s3.delete_object(Bucket=bucket, Key=f"out/notes/v1/{gone}")
    s3.put_object(Bucket=bucket, Key="in/b.jsonl", Body=json.dumps(notes(25, 1)[0]).encode() + b"\n")
    # Carried shards are copied only as the version is published: the check before says what is wrong.
    with pytest.raises(StorageError, match=rf"v1/{gone}: is missing") as raised:
        run(workdir, config)
    assert "None bytes" not in str(raised.value)
    assert published_versions(f"s3://{bucket}/out", "notes") == [1]
