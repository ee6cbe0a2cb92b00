"""More recipes the Ray executor must run as the embedded one does: the same records, the same errors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_jsonl, write_recipe
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


def test_a_dedup_setting_the_records_cannot_meet_is_the_same_recipe_error_on_ray(
    workdir: Path,
    local_ray: Any,  # noqa: F811
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A dedup stage's signatures are computed in Ray tasks outside the envelopes: a recipe error there
    comes back as the embedded executor says it, with no Ray notes or traceback."""
    from typer.testing import CliRunner

    from curation.cli import app

    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"question {i}", "a": "answer"} for i in range(30)])
    outputs = {}
    for engine in ("local", "ray"):
        recipe = {
            "dataset": "fields",
            "sources": [{"path": str(workdir / "in")}],
            "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
            # A column the split carries, so the recipe cannot tell at load that no record has it.
            "stages": [{"type": "near_dedup", "fields": ["customer"]}],
            "output": {"dest": str(workdir / engine), "group_by": "customer"},
        }
        path = write_recipe(workdir, recipe, name=f"{engine}.yaml")
        capfd.readouterr()
        result = CliRunner().invoke(app, ["run", str(path), "--engine", engine, "--quiet"])
        printed = capfd.readouterr()
        shown = printed.out + printed.err + result.output
        assert "Traceback" not in shown and "Failed to apply" not in shown  # Ray's notes on a failed task
        outputs[engine] = (result.exit_code, result.output.splitlines()[-1])  # Ray warns of progress bars first
    assert outputs["local"][0] == 2 and "near_dedup fields: ['customer'] are not columns" in outputs["local"][1]
    assert outputs["ray"] == outputs["local"]
    assert not (workdir / "ray" / "fields" / "v1").exists()
