"""The image check runs on Ray workers as in the embedded executor: the same records quarantined, the
same published; a relative image path is the run's (the driver's working folder), not a worker's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import write_jsonl
from tests.test_ray import local_ray, published, run_both
from tests.test_vqa_image_check import pictures

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
