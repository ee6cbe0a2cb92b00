"""Across runs: content published in v1 and resubmitted (as is, or with small edits) is not in v2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bench.corpus import generate
from curation.pipeline import LocalExecutor, RunResult, run_recipe
from curation.published import read_manifest
from schemas.config import load_recipe
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


def test_the_recorder_stores_what_the_barrier_computed_only_when_nothing_in_between_changes_records(
    workdir: Path,
) -> None:
    from curation.pipeline import build_stages
    from curation.stages.dedup_index import CrossRunDedup, SignatureIndex
    from schemas.config import Recipe

    def across(stages: list[dict[str, Any]]) -> list[CrossRunDedup]:
        recipe = Recipe.model_validate({**RECIPE, "stages": stages, "state": f"sqlite:///{workdir}/s.db"})
        return [s for s in build_stages(recipe) if isinstance(s, CrossRunDedup)]

    # Near-dedup's barrier drops records after exact dedup's, and cleaning changes text: only the last
    # dedup stage, with nothing but the profile after it, can hand its rows on.
    exact, near = across([{"type": "exact_dedup"}, {"type": "near_dedup"}])
    assert (exact.reuse_for_recording, near.reuse_for_recording) == (False, True)
    (exact,) = across([{"type": "exact_dedup"}, {"type": "clean"}])
    assert not exact.reuse_for_recording

    (stage,) = across([{"type": "exact_dedup"}])
    texts = ["Alpha", "beta", "ALPHA", "gamma", "delta", "Beta "]
    batches = [outputs_batch(texts[:3], 0), outputs_batch(texts[3:], 3)]
    stage.index = SignatureIndex(f"sqlite:///{workdir}/s.db", "notes")
    signatures = [stage.signatures(b) for b in batches]
    aside = stage.resolve(signatures)
    assert sorted(aside["id"].to_pylist()) == ["r2", "r5"]
    dropped = aside["id"].combine_chunks()
    written = [b.filter(pc.invert(pc.is_in(b["id"], value_set=dropped))) for b in batches]
    computed = [stage.signatures(b).drop_columns(["source"]) for b in written]
    signature_rows = pa.concat_tables(s.drop_columns(["source"]) for s in signatures)
    kept = signature_rows.filter(pc.invert(pc.is_in(signature_rows["id"], value_set=dropped)))
    # The barrier hands each batch's kept rows on before the batch: they line up, nothing is computed again.
    stage.inner.signatures = None
    first = written[0].num_rows
    for rows, batch, expected in zip((kept.slice(0, first), kept.slice(first)), written, computed, strict=True):
        stage.remember_kept(rows)
        assert stage.to_record(batch) == expected
    # Out of step (as when a later stage drops rows): computed again from the batch, not taken from the rows kept.
    del stage.inner.signatures
    stage.remember_kept(kept)
    assert stage.to_record(written[1]) == computed[1]
    # And it stays so: rows handed on later are not trusted either.
    calls = []
    stage.inner.signatures = lambda batch: calls.append(batch) or type(stage.inner).signatures(stage.inner, batch)
    stage.remember_kept(kept.slice(0, first))
    assert stage.to_record(written[0]) == computed[0] and len(calls) == 1


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
