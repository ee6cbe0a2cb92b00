"""A review queue to work on, made by a real run plus flags in the contract's payload shapes.

The PII and near-duplicate stages land on other branches, so their flags are added here through
``curation.review.queue.add_items`` exactly as those stages will emit them. Used by the review
tests and by scripts/screenshots.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa
from PIL import Image, ImageDraw

from curation.pipeline import RunResult, run_recipe
from curation.review.auth import add_user
from curation.review.queue import add_items
from schemas.config import Recipe, load_recipe
from schemas.records import FLAG_SCHEMA
from tests.helpers import lineage_rows, write_jsonl, write_recipe

PASSWORD = "correct horse battery"
USERS = {"rita": "reviewer", "pia": "pii-reviewer", "ada": "admin"}
NAME, PHONE = "Maria Lopez", "555-0100"
PII_COMPLETION = f"Call {NAME} at {PHONE} about the refund."
TICKETS = [
    {"question": "Where is my refund?", "answer": PII_COMPLETION, "category": "billing"},
    {
        "question": "How do I reset my password?",
        "answer": "Use the reset link on the sign-in page.",
        "category": "account",
    },
    {
        "question": "How can I reset my password?",
        "answer": "Use the reset link on the sign in page.",
        "category": "account",
    },
    {"question": "Can I change my plan?", "answer": "Yes, under Settings, Plan.", "category": "billing"},
    {"question": "Do you ship abroad?", "answer": "We ship to 30 countries.", "category": "shipping"},
]


@dataclass
class Seeded:
    folder: Path
    recipe_path: Path
    recipe: Recipe
    first: RunResult
    ids: dict[int, str]  # input line -> record id
    # The VQA items' dataset: an images source of the seed's folder (the page serves pictures from it only).
    charts_recipe_path: Path

    @property
    def state_url(self) -> str:
        return self.recipe.state


def run_again(recipe: Recipe) -> RunResult:
    """The next run of the same input (full refresh once incremental runs exist)."""
    import inspect

    if "full_refresh" in inspect.signature(run_recipe).parameters:
        return run_recipe(recipe, full_refresh=True)
    return run_recipe(recipe)


def _flags(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(
        [{**row, "payload": json.dumps(row["payload"]), "source": row["source"]} for row in rows], schema=FLAG_SCHEMA
    )


def _source(uri: str, line: int) -> dict:
    return {"connector": "files", "uri": uri, "line": line, "page": None}


def publish_to_s3(seeded: Seeded, bucket: str) -> Path:
    """The well-formed tickets published as ``support-s3`` to an S3 bucket (for the training handoff); its recipe.

    Clean input, so this dataset adds nothing to the review queue the queue test works through."""
    write_jsonl(seeded.folder / "tickets-s3.jsonl", TICKETS)
    path = write_recipe(
        seeded.folder,
        {
            "dataset": "support-s3",
            "sources": [{"path": "tickets-s3.jsonl"}],
            "record": {"kind": "instruction", "prompt": "{{ question }}", "completion": "{{ answer }}"},
            "output": {"dest": f"s3://{bucket}/datasets", "validation_fraction": 0.0},
            "state": seeded.recipe.state,
        },
        name="recipe-s3.yaml",
    )
    run_recipe(load_recipe(path))
    return path


def seed(folder: Path) -> Seeded:
    """Input with one malformed line, a published v1, its queue (quarantined, pii, near-dup, vqa) and users."""
    folder.mkdir(parents=True, exist_ok=True)
    tickets = write_jsonl(folder / "tickets.jsonl", [*TICKETS[:3], '{"question": "broken', *TICKETS[3:]])
    recipe_path = write_recipe(
        folder,
        {
            "dataset": "support",
            "sources": [{"path": "tickets.jsonl"}],
            "record": {
                "kind": "instruction",
                "prompt": "{{ question }}",
                "completion": "{{ answer }}",
                "label": "category",
            },
            "output": {"dest": str(folder / "output"), "validation_fraction": 0.0},
            "state": f"sqlite:///{folder / 'state.db'}",
        },
    )
    recipe = load_recipe(recipe_path)
    first = run_recipe(recipe)
    lineage = lineage_rows(first.version_uri)
    ids = {row["source"]["line"]: row["id"] for row in lineage}
    uri = str(tickets)
    engine = sa.create_engine(recipe.state)
    start, end = PII_COMPLETION.index(NAME), PII_COMPLETION.index(NAME) + len(NAME)
    pstart, pend = PII_COMPLETION.index(PHONE), PII_COMPLETION.index(PHONE) + len(PHONE)
    redacted = PII_COMPLETION.replace(NAME, "<PERSON>").replace(PHONE, "<PHONE_NUMBER>")
    add_items(
        engine,
        "support",
        first.manifest.version,
        "seed",
        _flags(
            [
                {
                    "id": ids[1],
                    "source": _source(uri, 1),
                    "stage": "pii",
                    "kind": "pii",
                    "detail": "completion: PERSON 0.62, PHONE_NUMBER 0.55",
                    "payload": {
                        "field": "completion",
                        "original": PII_COMPLETION,
                        "redacted": redacted,
                        "spans": [
                            {"start": start, "end": end, "entity": "PERSON", "score": 0.62, "placeholder": "<PERSON>"},
                            {
                                "start": pstart,
                                "end": pend,
                                "entity": "PHONE_NUMBER",
                                "score": 0.55,
                                "placeholder": "<PHONE_NUMBER>",
                            },
                        ],
                    },
                },
                {
                    "id": ids[3],
                    "source": _source(uri, 3),
                    "stage": "near_dedup",
                    "kind": "near_duplicate",
                    "detail": "near duplicate, similarity 0.91",
                    "payload": {
                        "cluster": ids[2],
                        "kept": {"id": ids[2], "text": f"{TICKETS[1]['question']}\n{TICKETS[1]['answer']}"},
                        "member": {
                            "id": ids[3],
                            "text": f"{TICKETS[2]['question']}\n{TICKETS[2]['answer']}",
                            "fields": {"prompt": TICKETS[2]["question"], "completion": TICKETS[2]["answer"]},
                        },
                        "similarity": 0.91,
                    },
                },
            ]
        ),
    )
    image = folder / "chart.png"
    picture = Image.new("RGB", (240, 160), "white")
    draw = ImageDraw.Draw(picture)
    for index, height in enumerate((60, 110, 40)):
        draw.rectangle(
            [30 + index * 70, 150 - height, 80 + index * 70, 150], fill=("#3367d6", "#e8710a", "#1e8e3e")[index]
        )
    picture.save(image)
    add_items(
        engine,
        "charts",
        1,
        "seed",
        _flags(
            [
                {
                    "id": "vqa-record-1",
                    "source": _source(str(folder / "charts.jsonl"), 1),
                    "stage": "vqa",
                    "kind": "vqa",
                    "detail": "answer not checked yet",
                    "payload": {"image": str(image), "question": "Which bar is tallest?", "answer": "the blue one"},
                }
            ]
        ),
    )
    charts = {"type": "images", "path": str(folder), "sidecar": str(folder / "charts.jsonl")}
    charts_recipe_path = write_recipe(
        folder,
        {"dataset": "charts", "sources": [charts], "record": {"kind": "vqa"}, "state": recipe.state},
        name="recipe-charts.yaml",
    )
    for name, role in USERS.items():
        add_user(engine, name, role, PASSWORD)
    engine.dispose()
    return Seeded(folder, recipe_path, recipe, first, ids, charts_recipe_path)
