"""An export or import of many Label Studio tasks asks the state store a few queries per chunk of
tasks, not several per task (50k tasks would be hundreds of thousands of round trips)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from curation.review import decisions as dec
from curation.review.auth import add_user
from curation.review.labelstudio import LabelStudioError, export_tasks, import_annotations
from curation.review.queue import add_items
from schemas.records import FLAG_SCHEMA

NAME = "Ada Lovelace"


def pii_queue(state_url: str, count: int) -> sa.Engine:
    """``count`` PII items (records r0...), each text holding a name and an e-mail address; the first
    item's name is marked not PII."""
    engine = sa.create_engine(state_url)
    flags = []
    for n in range(count):
        text = f"Call {NAME} at ada{n}@example.com"
        spans = [
            {"start": 5, "end": 17, "entity": "PERSON", "score": 0.6, "placeholder": "<PERSON>"},
            {"start": 21, "end": len(text), "entity": "EMAIL_ADDRESS", "score": 0.9, "placeholder": "<EMAIL>"},
        ]
        payload = {"field": "prompt", "original": text, "redacted": "Call <PERSON> at <EMAIL>", "spans": spans}
        source = {"connector": "files", "uri": "a.jsonl", "line": n + 1, "page": None}
        flags.append(
            {
                "id": f"r{n}",
                "source": source,
                "stage": "pii",
                "kind": "pii",
                "detail": "p",
                "payload": json.dumps(payload),
            }
        )
    add_items(engine, "notes", 1, "one", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))
    add_user(engine, "pia", "pii-reviewer", "correct horse battery")
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=[("prompt", 5, 17)]))
    return engine


def statements(engine: sa.Engine, work) -> tuple[int, object]:
    """How many statements ``work()`` sends the store, and what it returns."""
    sent: list[str] = []

    def note(conn, cursor, statement, *args) -> None:
        sent.append(statement)

    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        result = work()
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
    return len(sent), result


def annotated(tasks: list[dict], choice: str) -> list[dict]:
    result = [{"from_name": "decision", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}]
    return [{**task, "annotations": [{"id": n, "result": result}]} for n, task in enumerate(tasks)]


def asked(state_url: str, count: int) -> tuple[int, int, int]:
    """Statements an export of ``count`` PII items sends, an import of its tasks, and one again."""
    engine = pii_queue(state_url, count)
    exported, tasks = statements(engine, lambda: export_tasks(engine, {"kind": "pii"}))
    # The first item's name is marked not PII: its exported text shows it, as the page would.
    assert tasks[0]["data"]["text"].startswith(f"Call {NAME} at") and NAME not in tasks[1]["data"]["text"]
    # Some tasks without a record id (exports from before): each is matched against its item's text.
    for task in tasks[::2]:
        del task["data"]["record_id"]
    imported, counts = statements(engine, lambda: import_annotations(engine, annotated(tasks, "reject"), "pia"))
    assert counts["reject"] == count
    tasks = export_tasks(engine, {"kind": "pii"})
    again, counts = statements(engine, lambda: import_annotations(engine, annotated(tasks, "reject"), "pia"))
    assert counts["already in force"] == count
    assert [row["action"] for row in dec.history(engine, 1)] == ["edit", "reject"]
    return exported, imported, again


def test_export_and_import_ask_the_store_as_often_for_many_tasks_as_for_few(tmp_path: Path) -> None:
    few, many = asked(f"sqlite:///{tmp_path / 'few.db'}", 3), asked(f"sqlite:///{tmp_path / 'many.db'}", 12)
    assert many == few


def test_a_task_without_a_record_id_is_taken_when_spans_marked_not_pii_since_its_export_are_not_now(
    tmp_path: Path,
) -> None:
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    tasks = export_tasks(engine, {"kind": "pii"})
    for task in tasks:
        del task["data"]["record_id"], task["data"]["seen"]  # as exports from before had none
    dec.undo_last(engine, "pia")  # the name marked not PII in item 1's exported text no longer is
    counts = import_annotations(engine, annotated(tasks, "approve"), "pia")
    assert counts["approve"] == 2 and counts["changed since export"] == 0
    # Another text is still not the item's.
    tasks[0]["data"]["text"] = "Call Ada at <EMAIL>"
    with pytest.raises(LabelStudioError, match=r"task 0 .* has no data.record_id, and its dataset and text are not"):
        import_annotations(engine, annotated(tasks, "reject"), "pia")


def test_tasks_exported_before_gone_and_gone_note_existed_are_imported(tmp_path: Path) -> None:
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    tasks = export_tasks(engine, {"kind": "pii"})
    for task in tasks:
        del task["data"]["gone"], task["data"]["gone_note"]
    assert import_annotations(engine, annotated(tasks, "reject"), "pia")["reject"] == 2
