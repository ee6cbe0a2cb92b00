"""More recipes the Ray executor must run as the embedded one does: the same records, the same errors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_jsonl
from tests.test_ray import local_ray, published, run_both  # noqa: F401  (the session's Ray instance)

ray = pytest.importorskip("ray")


def test_language_filter_decides_as_on_the_embedded_executor(workdir: Path, local_ray: Any) -> None:  # noqa: F811
    # Short texts of a few English words: langdetect's guesses for them move with its random sampling,
    # so only a fixed seed in the process that detects gives both executors the same verdicts.
    rng = random.Random(1)
    words = [
        "account",
        "card",
        "payment",
        "refund",
        "travel",
        "notice",
        "settings",
        "security",
        "password",
        "reset",
        "branch",
        "loan",
        "rate",
    ]
    rows = [{"q": " ".join(rng.choice(words) for _ in range(rng.randint(3, 8))), "a": "Done."} for _ in range(200)]
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    recipe = {
        "dataset": "langs",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "stages": [{"type": "language_filter", "languages": ["en"], "min_confidence": 0.8}],
        "batch_rows": 50,
        "output": {"dest": str(workdir / "out")},
    }
    local, distributed = run_both(workdir, recipe)
    expected, actual = published(local), published(distributed)
    assert 0 < expected["counts"]["filtered"] < 200
    assert actual["set_aside"] == expected["set_aside"]
    assert actual["stats"] == expected["stats"]
    assert actual["shards"] == expected["shards"]
