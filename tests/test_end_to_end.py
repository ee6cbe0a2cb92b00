"""One honest run, end to end on local disk: the demo's transactions become JumpStart instruction
data that Hugging Face ``datasets`` loads unchanged, and every input record is accounted for."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets

from curation.demo import CATEGORIES, PAYEES, PHONES, write_demo
from curation.pipeline import run_recipe
from curation.published import published_versions, read_manifest, verify_checksums
from schemas.config import load_recipe
from tests.helpers import lineage_rows, outputs, run, set_aside, write_jsonl, write_recipe


def test_demo_recipe_publishes_jumpstart_instruction_data(workdir: Path) -> None:
    recipe = load_recipe(write_demo(workdir, rows=800))
    result = run_recipe(recipe)
    version = Path(result.version_uri)
    manifest = read_manifest(str(version))

    with (workdir / "input" / "transactions.csv").open() as handle:
        physical_rows = sum(1 for _ in handle) - 1
    counts = manifest.counts
    assert counts.input == physical_rows
    assert counts.input == counts.written + counts.filtered + counts.duplicate + counts.quarantined
    assert counts.duplicate > 0 and counts.quarantined > 0
    assert counts.reasons["quarantined"]["malformed_csv"] > 0
    assert counts.reasons["quarantined"]["schema"] > 0

    # JumpStart instruction tuning: JSON lines plus template.json beside them in the channel.
    template = json.loads((version / "train" / "template.json").read_text())
    assert template == {"prompt": "{prompt}", "completion": "{completion}"}
    rows = outputs(version)
    assert len(rows) == counts.written
    assert all(set(row) == {"prompt", "completion"} for row in rows)
    assert rows[0]["prompt"].startswith("Categorise this bank transaction")
    assert verify_checksums(str(version), manifest) == []

    # Transfers name people: none of their names or phone numbers reach the training set.
    text = "\n".join(row["prompt"] for row in rows)
    assert "ZELLE PAYMENT TO" in text
    assert not [value for value in [*PAYEES, *PHONES] if value in text]
    stages = manifest.stats["stages"]
    assert stages["pii"]["PERSON"] > 0 and stages["clean"]["records_changed"] > 0

    # Stratified by category: each one is on the validation side too.
    assert set(manifest.split["labels"]["validation"]) == {*CATEGORIES, "Transfers"}

    # The split is deterministic and both sides are used.
    assert manifest.splits["train"].records + manifest.splits["validation"].records == counts.written
    assert 0 < manifest.splits["validation"].records < manifest.splits["train"].records


def test_shards_load_unchanged_with_hugging_face_datasets(workdir: Path) -> None:
    result = run_recipe(load_recipe(write_demo(workdir, rows=300)))
    version = Path(result.version_uri)
    files = {split: sorted(str(p) for p in (version / split).glob("*.jsonl")) for split in ("train", "validation")}
    loaded = datasets.load_dataset("json", data_files=files)
    for split, paths in files.items():
        ours = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines()]
        assert loaded[split].to_list() == ours
    assert loaded["train"].column_names == ["prompt", "completion"]


def test_text_records_with_unicode_round_trip(workdir: Path) -> None:
    texts = ["Zürich café ☕ naïve", "第一章 内部文件", "plain text", "Plain   TEXT"]
    write_jsonl(workdir / "docs.jsonl", [{"body": t} for t in texts])
    result = run(
        workdir,
        {"dataset": "docs", "sources": [{"path": "docs.jsonl"}], "record": {"kind": "document", "text": "body"}},
    )
    version = Path(result.version_uri)
    written = {row["text"] for row in outputs(version)}
    # "Plain   TEXT" normalises to "plain text": an exact duplicate of the first occurrence.
    assert written == set(texts[:3])
    assert result.manifest.counts.reasons == {"duplicate": {"exact_duplicate": 1}}
    loaded = datasets.load_dataset(
        "json", data_files=sorted(str(p) for s in ("train", "validation") for p in version.glob(f"{s}/part-*.jsonl"))
    )
    assert set(loaded["train"]["text"]) == written


def test_split_is_deterministic_across_runs(workdir: Path) -> None:
    write_jsonl(workdir / "a.jsonl", [{"text": f"document number {i}"} for i in range(400)])
    recipe = {"dataset": "d", "sources": [{"path": "a.jsonl"}], "record": {"kind": "document"}, "stages": []}
    first = run(workdir, recipe)
    second = run(workdir, recipe, full_refresh=True)  # the same input again, not only what is new
    assert [p for p in published_versions(str(workdir / "output"), "d")] == [1, 2]
    for split in ("train", "validation"):
        a = outputs_of(Path(first.version_uri), split)
        b = outputs_of(Path(second.version_uri), split)
        assert a == b and a


def outputs_of(version: Path, split: str) -> list[str]:
    return [line for path in sorted((version / split).glob("*.jsonl")) for line in path.read_text().splitlines()]


def test_shards_are_bounded_and_lineage_points_at_each_line(workdir: Path) -> None:
    rows = [{"text": f"record {i} " + "x" * 200, "answer": "ok"} for i in range(300)]
    write_jsonl(workdir / "big.jsonl", rows)
    result = run(
        workdir,
        {  # instruction pairs: a document split (format text) is one file whatever its size
            "dataset": "big",
            "sources": [{"path": "big.jsonl"}],
            "record": {"kind": "instruction", "prompt": "text", "completion": "answer"},
            "output": {"shard_max_bytes": 8192, "validation_fraction": 0.0},
        },
    )
    version = Path(result.version_uri)
    shards = result.manifest.splits["train"].shards
    assert len(shards) > 5
    assert all(shard.bytes <= 8192 for shard in shards)
    assert sum(shard.records for shard in shards) == 300
    lineage = lineage_rows(version)
    assert len(lineage) == 300
    for entry in lineage[::37]:
        line = (version / entry["shard"]).read_text().splitlines()[entry["line"] - 1]
        source_line = entry["source"]["line"]
        assert json.loads(line)["prompt"] == rows[source_line - 1]["text"]


def test_set_aside_rows_keep_their_source(workdir: Path) -> None:
    write_jsonl(workdir / "in.jsonl", [{"text": "kept"}, "{not json", {"text": "kept"}])
    result = run(workdir, {"dataset": "s", "sources": [{"path": "in.jsonl"}], "record": {"kind": "document"}})
    aside = {row["reason"]: row for row in set_aside(Path(result.version_uri))}
    assert aside["malformed_json"]["source"]["line"] == 2
    assert aside["exact_duplicate"]["source"]["line"] == 3
    assert aside["exact_duplicate"]["outcome"] == "duplicate"


def test_csv_all_rows_accounted(workdir: Path) -> None:
    path = workdir / "t.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["q", "a"])
        for i in range(50):
            writer.writerow([f"question {i}", f"answer {i}"])
    result = run(
        workdir,
        {
            "dataset": "qa",
            "sources": [{"path": "t.csv"}],
            "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        },
    )
    assert result.manifest.counts.input == 50 == result.manifest.counts.written


def test_input_columns_named_id_or_source_are_kept_as_input_id_and_input_source(workdir: Path) -> None:
    rows = [{"id": f"T-{n}", "source": "crm", "question": f"Question {n}?", "answer": f"Answer {n}."} for n in range(4)]
    write_jsonl(workdir / "tickets.jsonl", rows)
    recipe = {
        "dataset": "tickets",
        "sources": [{"path": "tickets.jsonl"}],
        "record": {"kind": "instruction", "prompt": "[{{ input_id }} from {{ input_source }}] {{ question }}"},
        "output": {"validation_fraction": 0.0},
    }
    recipe["record"]["completion"] = "answer"
    result = run(workdir, recipe)
    written = sorted(row["prompt"] for row in outputs(Path(result.version_uri)))
    assert written == [f"[T-{n} from crm] Question {n}?" for n in range(4)]


def test_progress_reports_bytes_read_then_records_written(workdir: Path) -> None:
    rows = [{"text": f"record {i % 900} " + "x" * 50} for i in range(1000)]  # 100 exact duplicates
    path = write_jsonl(workdir / "in.jsonl", rows)
    recipe = {
        "dataset": "progress",
        "sources": [{"path": "in.jsonl"}],
        "record": {"kind": "document"},
        "stages": [{"type": "exact_dedup"}],
        "batch_rows": 100,
    }
    events: list[tuple[str, int]] = []
    result = run_recipe(
        load_recipe(write_recipe(workdir, recipe)),
        on_start=lambda total: events.append(("start", total)),
        on_input=lambda done: events.append(("read", done)),
        on_written=lambda records: events.append(("written", records)),
    )
    assert events[0] == ("start", path.stat().st_size)
    assert sum(n for kind, n in events if kind == "read") == path.stat().st_size
    written = [n for kind, n in events if kind == "written"]
    assert len(written) > 1 and written == sorted(written) and written[-1] == result.manifest.counts.written == 900
    # The dedup stage is a barrier: every byte is read before the first record is written.
    first_write = next(i for i, (kind, _) in enumerate(events) if kind == "written")
    assert all(kind == "written" for kind, _ in events[first_write:])
