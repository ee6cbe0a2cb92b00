"""Across runs: content published in v1 and resubmitted (as is, or with small edits) is not in v2."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from bench.corpus import generate
from curation.pipeline import LocalExecutor, RunResult, run_recipe
from curation.published import read_manifest
from schemas.config import load_recipe
from tests.helpers import outputs, set_aside, write_jsonl, write_recipe


def run_again(folder: Path, recipe: dict[str, Any]) -> RunResult:
    """Run a recipe; the second run over the same input must reprocess it (``full_refresh`` where it exists)."""
    loaded = load_recipe(write_recipe(folder, recipe))
    if "full_refresh" in inspect.signature(run_recipe).parameters:
        return run_recipe(loaded, full_refresh=True)
    return run_recipe(loaded)


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
    v1 = Path(run_again(workdir, RECIPE).version_uri)
    assert sorted(r["text"] for r in outputs(v1)) == sorted(first)

    # v2's input: part1 again untouched, ten of its texts with small edits, and twenty new ones.
    write_jsonl(
        workdir / "input" / "part2.jsonl", [{"text": _edit(t)} for t in first[:10]] + [{"text": t} for t in fresh]
    )
    v2 = Path(run_again(workdir, RECIPE).version_uri)
    assert sorted(r["text"] for r in outputs(v2)) == sorted(fresh)

    manifest = read_manifest(str(v2))
    assert manifest.counts.input == 90
    assert manifest.counts.reasons["duplicate"] == {"earlier_version": 70}
    aside = set_aside(v2)
    by_stage = {}
    for row in aside:
        by_stage[row["stage"]] = by_stage.get(row["stage"], 0) + 1
        assert row["detail"].endswith("published in v1") and row["duplicate_of"]
    assert by_stage == {"exact_dedup": 60, "near_dedup": 10}

    # v3 over the same input publishes nothing new: every record points back at v1 or v2.
    v3 = Path(run_again(workdir, RECIPE).version_uri)
    assert outputs(v3) == []
    details = {row["detail"].rsplit(" ", 1)[-1] for row in set_aside(v3)}
    assert details == {"v1", "v2"}


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
    v1 = Path(run_again(workdir, RECIPE).version_uri)
    assert len(outputs(v1)) == 20  # the failed run's signatures did not count as published
