"""Across runs: content published in v1 and resubmitted (as is, or with small edits) is not in v2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bench.corpus import generate
from curation.executors.local import LocalExecutor, Spill, _kept_rows
from curation.pipeline import RunResult, run_recipe
from curation.published import read_manifest
from schemas.config import load_recipe
from schemas.records import SOURCE_TYPE
from tests.helpers import outputs, processed, set_aside, write_jsonl, write_recipe


def run(folder: Path, recipe: dict[str, Any], full_refresh: bool = False) -> RunResult:
    return run_recipe(load_recipe(write_recipe(folder, recipe)), full_refresh=full_refresh)


def _edit(text: str) -> str:
    words = text.split()
    words[len(words) // 2] = "changed"
    return " ".join(words) + " Thanks."


RECIPE = {
    "dataset": "notes",
    "sources": [{"path": "input"}],
    "record": {"kind": "document"},
    "stages": [{"type": "exact_dedup"}, {"type": "near_dedup"}],
    "batch_rows": 50,
}


def test_second_version_does_not_repeat_exact_or_near_content_of_the_first(workdir: Path) -> None:
    texts = generate(80, duplicate_share=0.0, seed=21, related_share=0.0).texts
    first, fresh = texts[:60], texts[60:]
    write_jsonl(workdir / "input" / "part1.jsonl", [{"text": t} for t in first])
    v1 = Path(run(workdir, RECIPE).version_uri)
    assert sorted(r["text"] for r in outputs(v1)) == sorted(first)

    # v2's new input: part1's texts again untouched, ten of them with small edits, and twenty new ones.
    write_jsonl(
        workdir / "input" / "part2.jsonl",
        [{"text": t} for t in first] + [{"text": _edit(t)} for t in first[:10]] + [{"text": t} for t in fresh],
    )
    v2 = Path(run(workdir, RECIPE).version_uri)
    assert sorted(r["text"] for r in processed(v2)) == sorted(fresh)  # what this run wrote
    assert sorted(r["text"] for r in outputs(v2)) == sorted(first + fresh)  # v1's records carried: each once

    manifest = read_manifest(str(v2))
    assert manifest.counts.input == 90
    assert manifest.counts.reasons["duplicate"] == {"earlier_version": 70}
    aside = set_aside(v2)
    by_stage = {}
    for row in aside:
        by_stage[row["stage"]] = by_stage.get(row["stage"], 0) + 1
        assert row["detail"].endswith("published in v1") and row["duplicate_of"]
    assert by_stage == {"exact_dedup": 60, "near_dedup": 10}

    # v3's new input repeats content of v1 and of v2: nothing is written, each record points back.
    write_jsonl(workdir / "input" / "part3.jsonl", [{"text": t} for t in first[:5] + fresh[:5]])
    v3 = Path(run(workdir, RECIPE).version_uri)
    assert processed(v3) == []
    assert sorted(r["text"] for r in outputs(v3)) == sorted(first + fresh)
    details = {row["detail"].rsplit(" ", 1)[-1] for row in set_aside(v3)}
    assert details == {"v1", "v2"}

    # A full refresh starts over: the new version holds all the content once, whatever was published before.
    v4 = Path(run(workdir, RECIPE, full_refresh=True).version_uri)
    assert sorted(r["text"] for r in outputs(v4)) == sorted(first + fresh)
    assert "earlier_version" not in read_manifest(str(v4)).counts.reasons.get("duplicate", {})

    # ... and later runs compare with the new start only: new content goes in, repeats do not.
    write_jsonl(
        workdir / "input" / "part4.jsonl", [{"text": t} for t in [*first[:3], "A brand new note about refunds."]]
    )
    v5 = Path(run(workdir, RECIPE).version_uri)
    assert [r["text"] for r in processed(v5)] == ["A brand new note about refunds."]
    assert sorted(r["text"] for r in outputs(v5)) == sorted([*first, *fresh, "A brand new note about refunds."])
    assert {row["detail"].rsplit(" ", 1)[-1] for row in set_aside(v5)} == {"v4"}


class FailsAfterWriting(LocalExecutor):
    """Runs every stage, then fails before publishing (as a full disk or a lost connection would)."""

    def run(self, *args: Any, **kwargs: Any) -> None:
        super().run(*args, **kwargs)
        raise RuntimeError("simulated failure after the stages ran")


def test_a_failed_run_leaves_no_signatures_behind(workdir: Path) -> None:
    texts = generate(20, duplicate_share=0.0, seed=4, related_share=0.0).texts
    write_jsonl(workdir / "input" / "a.jsonl", [{"text": t} for t in texts])
    recipe = load_recipe(write_recipe(workdir, RECIPE))
    with pytest.raises(RuntimeError, match="simulated"):
        run_recipe(recipe, executor=FailsAfterWriting())
    v1 = Path(run(workdir, RECIPE).version_uri)  # incremental: the failed run left its input unread
    assert len(outputs(v1)) == 20  # and its signatures did not count as published


@pytest.mark.parametrize("full_refresh", [False, True])
def test_a_run_without_the_dedup_stage_still_takes_what_it_replaced_out_of_the_signatures(
    workdir: Path, full_refresh: bool
) -> None:
    dedup = {"dataset": "notes", "sources": [{"path": "input"}], "record": {"kind": "document"}}
    write_jsonl(workdir / "input" / "a.jsonl", [{"text": f"Note {n} on refunds."} for n in range(3)])
    run(workdir, dedup)  # v1, with the default exact_dedup: its signatures stored
    write_jsonl(workdir / "input" / "a.jsonl", [{"text": f"Note {n} on refunds."} for n in range(2)])
    run(workdir, {**dedup, "stages": []}, full_refresh=full_refresh)  # v2 without it: note 2 is gone
    write_jsonl(workdir / "input" / "b.jsonl", [{"text": "Note 2 on refunds."}])
    v3 = run(workdir, dedup)  # the stage back: note 2 is not a repeat of anything v3 holds
    assert sorted(line["text"] for line in outputs(Path(v3.version_uri))) == [f"Note {n} on refunds." for n in range(3)]
    assert v3.manifest.counts.reasons == {}


def test_the_recorder_stores_the_signatures_the_dedup_stage_computed(workdir: Path) -> None:
    from curation.pipeline import build_stages
    from curation.stages.dedup_index import CrossRunDedup, SignatureIndex, SignatureRecorder
    from schemas.config import Recipe

    spec = {**RECIPE, "stages": [{"type": "exact_dedup"}, {"type": "clean"}], "state": f"sqlite:///{workdir}/s.db"}
    stages = build_stages(Recipe.model_validate(spec))
    (stage,) = [s for s in stages if isinstance(s, CrossRunDedup)]
    (recorder,) = [s for s in stages if isinstance(s, SignatureRecorder)]
    stage.index = SignatureIndex(f"sqlite:///{workdir}/s.db", "notes")
    batch = outputs_batch(["Alpha", "beta", "ALPHA", "gamma"], 0)
    signatures = stage.signatures(batch)
    dropped = stage.resolve([signatures])["id"].combine_chunks()
    assert dropped.to_pylist() == ["r2"]
    keep = pc.invert(pc.is_in(batch["id"], value_set=dropped))
    rows = signatures.drop_columns(["source"]).filter(keep)
    carried = stage.with_signatures(batch.filter(keep), rows)
    # A later stage changes the text and drops a record: the rows stored are the dedup stage's, for the
    # records that remain, and the column that carried them is gone before the writer.
    changed = carried.set_column(2, "text", pc.binary_join_element_wise(carried["text"], "edited", " ")).slice(1)
    stored: list[pa.Table] = []
    recorder.index = type("Index", (), {"stage_pending": lambda self, name, params, table: stored.append(table)})()
    result = recorder(changed)
    assert result.kept.column_names == batch.column_names
    assert result.kept["text"].to_pylist() == ["beta edited", "gamma edited"]
    assert stored == [rows.slice(1)]
    assert stored[0] != stage.signatures(result.kept).drop_columns(["source"])  # not the changed text's
    # With no column (an executor that does not carry them), they are computed from the batch.
    assert stage.to_record(batch)[0] == stage.signatures(batch).drop_columns(["source"])


def test_repeats_are_found_across_runs_when_a_later_stage_changed_the_published_text(workdir: Path) -> None:
    stages = [
        {"type": "exact_dedup"},
        {"type": "expectations", "expect": [{"column": "text", "check": "length_between", "min": 8}]},
        {"type": "clean"},
    ]
    texts = ["<b>Refunds take five days</b>", "Cards arrive in a week", "short"]
    write_jsonl(workdir / "input" / "part1.jsonl", [{"text": t} for t in texts])
    v1 = Path(run(workdir, {**RECIPE, "stages": stages}).version_uri)
    assert sorted(r["text"] for r in outputs(v1)) == ["Cards arrive in a week", "Refunds take five days"]
    (quarantined,) = set_aside(v1)  # its raw record holds its fields, not the signatures carried on
    assert quarantined["reason"].startswith("expect_column_value_lengths_to_be_between")
    assert json.loads(quarantined["record"]) == {"text": "short", "title": None}
    # The same input again: exact repeats of what v1 published (after cleaning), found by exact dedup.
    write_jsonl(workdir / "input" / "part2.jsonl", [{"text": t} for t in texts[:2]])
    v2 = Path(run(workdir, {**RECIPE, "stages": stages}).version_uri)
    assert processed(v2) == []
    assert [(r["stage"], r["reason"]) for r in set_aside(v2)] == [("exact_dedup", "earlier_version")] * 2


def outputs_batch(texts: list[str], first: int) -> pa.Table:
    from schemas.records import source_array

    count = len(texts)
    return pa.table(
        {
            "id": [f"r{first + i}" for i in range(count)],
            "source": source_array("files", "input/a.jsonl", list(range(first + 1, first + count + 1))),
            "text": texts,
            "title": pa.nulls(count, pa.string()),
        }
    )


def test_a_run_hashes_each_record_once_when_the_recorder_can_take_the_barriers_rows(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from curation.stages.dedup import ExactDedup

    hashed: list[str] = []
    signatures = ExactDedup.signatures
    monkeypatch.setattr(
        ExactDedup, "signatures", lambda self, b: (hashed.extend(b["id"].to_pylist()), signatures(self, b))[1]
    )
    texts = [f"note {n % 7}" for n in range(40)]  # 7 distinct, 33 duplicates
    write_jsonl(workdir / "input" / "part1.jsonl", [{"text": t} for t in texts])
    result = run(workdir, {**RECIPE, "stages": [{"type": "exact_dedup"}], "batch_rows": 10})
    assert result.manifest.counts.written == 7
    assert len(hashed) == len(set(hashed)) == 40  # at the barrier only, not again for the 7 recorded
    # What the recorder stored is what a second run compares with: all 40 are earlier versions' content.
    write_jsonl(workdir / "input" / "part2.jsonl", [{"text": t} for t in texts[:7]])
    second = run(workdir, {**RECIPE, "stages": [{"type": "exact_dedup"}], "batch_rows": 10})
    assert second.manifest.counts.reasons["duplicate"] == {"earlier_version": 7}


def test_signatures_computed_with_other_settings_are_said_not_to_be_compared(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_jsonl(workdir / "input" / "a.jsonl", [{"text": "Parcel 1 left the depot on Monday."}])
    run(workdir, {**RECIPE, "stages": [{"type": "exact_dedup", "fields": ["text", "title"]}]})
    # The same record in files of other bytes (one holding a taken file's bytes is not read again).
    (workdir / "input" / "b.jsonl").write_text('{"text":"Parcel 1 left the depot on Monday."}\n')
    with caplog.at_level("WARNING"):
        second = run(workdir, {**RECIPE, "stages": [{"type": "exact_dedup"}]})  # the fields changed
    assert second.manifest.counts.written == 1  # not compared: the warning says so
    assert "exact_dedup: the signatures of v1 were computed with other settings" in caplog.text
    caplog.clear()
    (workdir / "input" / "c.jsonl").write_text('{"text":  "Parcel 1 left the depot on Monday."}\n')
    with caplog.at_level("WARNING"):
        third = run(workdir, {**RECIPE, "stages": [{"type": "exact_dedup"}]})
    assert third.manifest.counts.duplicate == 1  # compared with v2's record, which has the recipe's settings
    assert "the signatures of v1 were computed with other settings" in caplog.text  # v1's still are not


def test_a_dedup_stage_new_to_the_dataset_says_earlier_versions_are_not_compared(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notes = [{"text": f"Note {n} on refunds and fees."} for n in range(8)]
    write_jsonl(workdir / "in" / "a.jsonl", notes[:5])
    recipe: dict[str, Any] = {
        "dataset": "notes",
        "sources": [{"path": "in"}],
        "record": {"kind": "document"},
        "stages": [],
    }
    run(workdir, recipe)
    write_jsonl(workdir / "in" / "b.jsonl", notes[3:])
    with caplog.at_level("WARNING", logger="curation.stages.dedup_index"):
        run(workdir, {**recipe, "stages": [{"type": "exact_dedup"}]})
    assert "exact_dedup: the versions published before it was in the recipe have no signatures" in caplog.text
    # Once it has stored signatures, a later run compares with them and says nothing.
    write_jsonl(workdir / "in" / "c.jsonl", notes[6:])
    caplog.clear()
    with caplog.at_level("WARNING", logger="curation.stages.dedup_index"):
        third = run(workdir, {**recipe, "stages": [{"type": "exact_dedup"}]})
    assert "have no signatures" not in caplog.text
    assert third.manifest.counts.reasons["duplicate"] == {"earlier_version": 2}


def test_a_dedup_stage_says_nothing_of_earlier_versions_that_held_no_record(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_jsonl(workdir / "in" / "a.jsonl", [{"text": "ok"}])  # filtered: v1 holds no record, stores no signature
    recipe: dict[str, Any] = {
        "dataset": "notes",
        "sources": [{"path": "in"}],
        "record": {"kind": "document"},
        "stages": [{"type": "length_filter", "min_chars": 5}, {"type": "exact_dedup"}],
    }
    assert run(workdir, recipe).manifest.counts.written == 0
    write_jsonl(workdir / "in" / "b.jsonl", [{"text": "Note on refunds and fees."}])
    with caplog.at_level("WARNING", logger="curation.stages.dedup_index"):
        assert run(workdir, recipe).manifest.counts.written == 1
    assert "have no signatures" not in caplog.text


class _ReadOnce(Spill):
    """Spilled batches as first read back: the test can tell whether a batch went on as read."""

    def __init__(self, prefix: Path) -> None:
        super().__init__(prefix)
        self.read: list[pa.Table] = []

    def batches(self) -> Iterator[pa.Table]:
        self.read = self.read or list(super().batches())
        yield from self.read


def test_spilled_batches_go_on_filtered_with_their_signatures_and_one_keeping_every_row_as_read(
    tmp_path: Path,
) -> None:
    from curation.stages.dedup import ExactDedup
    from curation.stages.dedup_index import CrossRunDedup, SignatureIndex

    stage = CrossRunDedup(ExactDedup(["text"]), SignatureIndex(f"sqlite:///{tmp_path}/state.db", "d"))
    batches = [
        pa.table(
            {
                "id": pa.array([f"{first + n:032x}" for n in range(size)], pa.string()),
                "source": pa.array(
                    [{"connector": "files", "uri": "u", "line": first + n} for n in range(size)], SOURCE_TYPE
                ),
                "text": pa.array([f"text é {(first + n) % 3}" for n in range(size)], pa.string()),
            }
        )
        for first, size in ((0, 4), (4, 3), (7, 5))
    ]
    spill = _ReadOnce(tmp_path / "0")
    with spill:
        for batch in batches:
            spill.write(batch)
    signatures = [stage.signatures(batch) for batch in batches]
    keep = pa.chunked_array([[True] * 4, [False, True, False], [True] * 5])
    recorded = pa.concat_tables([s.drop_columns(["source"]) for s in signatures])

    # As the barrier hands them on: without ids (the kept rows carry their own).
    kept = list(_kept_rows(spill, keep, stage.with_signatures, recorded.drop_columns(["id"])))
    everything = pa.concat_tables(batches)
    expected = everything.filter(keep.combine_chunks())
    assert [t.num_rows for t in kept] == [4, 1, 5]
    rows, written = zip(*(stage.to_record(t) for t in kept), strict=True)
    assert pa.concat_tables(written).equals(expected)
    # The signature rows recorded are the kept records' own, as the stage computed them.
    assert pa.concat_tables(rows).equals(recorded.filter(keep.combine_chunks()))
    # A batch keeping every row is not copied by a filter; the others are filtered.
    for table, read in zip(kept, spill.read, strict=True):
        same = table["text"].chunk(0).buffers()[2].address == read["text"].chunk(0).buffers()[2].address
        assert same == (table.num_rows == read.num_rows)


@pytest.mark.parametrize(
    ("stages", "fraction", "warned"),
    [
        ("[{type: exact_dedup, across_runs: false}]", 0.1, ["exact_dedup (stage 1)"]),
        ("[{type: clean}, {type: near_dedup, across_runs: false}]", 0.5, ["near_dedup (stage 2)"]),
        ("[{type: exact_dedup}, {type: near_dedup}]", 0.1, []),
        ("[{type: exact_dedup, across_runs: false}]", 0.0, []),  # one side: nothing to evaluate on
    ],
)
def test_a_dedup_stage_off_across_runs_under_a_split_is_warned_about(
    stages: str, fraction: float, warned: list[str]
) -> None:
    """Off across runs, a later version's record that repeats published content is a new record hashed to
    either side: a model evaluated on what it trained on (the same line read again in new files)."""
    from curation.pipeline import recipe_warnings
    from schemas.config import parse_recipe

    recipe = parse_recipe(
        "dataset: notes\n"
        "sources: [{path: in/}]\n"
        "record: {kind: instruction, prompt: q, completion: a}\n"
        f"stages: {stages}\n"
        f"output: {{dest: out, validation_fraction: {fraction}}}\n",
        reads_sources=False,
    )
    said = [w for w in recipe_warnings(recipe) if "across_runs: false" in w]
    assert [w.split(": ", 1)[1].split(" has ")[0] for w in said] == warned
    assert all("on either side of the split" in w and "keep across_runs on" in w for w in said)
