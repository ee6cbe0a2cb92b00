"""The image check runs on Ray workers as in the embedded executor: the same records quarantined, the
same published; a relative image path is the run's (the driver's working folder), not a worker's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_jsonl
from tests.test_ray import local_ray, published, run_both
from tests.test_vqa_image_check import asks_in_jsonl, asks_in_sql, pictures

__all__ = ["local_ray"]  # the session's Ray, a fixture


def test_vqa_rows_with_missing_images_are_quarantined_alike_on_ray(workdir: Path, local_ray: Any) -> None:
    good = [Path(p).relative_to(workdir).as_posix() for p in pictures(workdir / "scans", 4)]
    (workdir / "scans" / "notes.png").write_text("not an image")
    images = [*good, "scans/gone.png", "scans/notes.png"]
    write_jsonl(workdir / "qa.jsonl", [{"image": i, "question": "Colour?", "answer": Path(i).stem} for i in images])
    recipe = {
        "dataset": "scans",
        "sources": [{"path": "qa.jsonl"}],
        "record": {"kind": "vqa"},
        "output": {"dest": "out", "validation_fraction": 0.5},
    }
    local, distributed = run_both(workdir, recipe)
    assert published(distributed) == published(local)
    counts = distributed.manifest.counts
    assert counts.written == 4 and counts.reasons["quarantined"] == {"missing_image": 1, "unsupported": 1}


@pytest.mark.parametrize("source", [asks_in_jsonl, asks_in_sql], ids=["jsonl", "sql"])
def test_a_record_whose_image_was_moved_away_stays_as_published_on_ray(
    workdir: Path, local_ray: Any, source: Callable[[Path, list[str], bool], dict[str, Any]]
) -> None:
    from curation.executors.ray_executor import RayExecutor
    from curation.pipeline import run_recipe
    from schemas.config import load_recipe
    from tests.helpers import write_recipe

    good = pictures(workdir / "scans", 3)
    spec = {"dataset": "scans", "sources": [source(workdir, good[:2], False)], "record": {"kind": "vqa"}}
    loaded = load_recipe(write_recipe(workdir, {**spec, "output": {"dest": "out"}}))
    run_recipe(loaded, executor=RayExecutor())
    Path(good[0]).unlink()  # archived once taken; then a row added
    source(workdir, good, False)
    counts = run_recipe(loaded, executor=RayExecutor()).manifest.counts
    assert (counts.input, counts.written, counts.carried, counts.quarantined) == (2, 2, 1, 0)
