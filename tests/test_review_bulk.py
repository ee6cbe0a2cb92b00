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


def other_store(state_url: str) -> sa.Engine:
    """Another state store over the same input file as ``pii_queue``'s (records r0 and r1, items 1 and 2),
    for another dataset, its PII flags on another field."""
    engine = sa.create_engine(state_url)
    payload = {
        "field": "completion",
        "original": "Hi Bob",
        "redacted": "Hi <PERSON>",
        "spans": [{"start": 3, "end": 6, "entity": "PERSON", "score": 0.5, "placeholder": "<PERSON>"}],
    }
    source = {"connector": "files", "uri": "a.jsonl", "line": 1, "page": None}
    flags = [
        {"id": f"r{n}", "source": source, "stage": "pii", "kind": "pii", "detail": "p", "payload": json.dumps(payload)}
        for n in range(2)
    ]
    add_items(engine, "other-dataset", 7, "two", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))
    add_user(engine, "pia", "pii-reviewer", "correct horse battery")
    return engine


def test_a_task_of_another_dataset_or_field_with_the_same_record_and_item_id_is_refused(tmp_path: Path) -> None:
    tasks = export_tasks(pii_queue(f"sqlite:///{tmp_path / 'a.db'}", 2), {"kind": "pii"})
    other = other_store(f"sqlite:///{tmp_path / 'b.db'}")
    # The record id and item id match; the dataset and the flagged field do not: the annotator never saw it.
    said = (
        r"task 0 .*: item 1 holds dataset other-dataset, not the task's notes; field completion, not the task's prompt"
    )
    with pytest.raises(LabelStudioError, match=said):
        import_annotations(other, annotated(tasks, "reject"), "pia")
    assert dec.history(other, 1) == dec.history(other, 2) == []
    # Each of them alone tells too.
    task = {**tasks[1], "data": {**tasks[1]["data"], "dataset": "other-dataset"}}
    with pytest.raises(LabelStudioError, match=r"item 2 holds field completion, not the task's prompt: was it"):
        import_annotations(other, annotated([task], "reject"), "pia")
    task = {**tasks[1], "data": {**tasks[1]["data"], "dataset": "other-dataset", "field": "completion", "kind": "vqa"}}
    with pytest.raises(LabelStudioError, match=r"item 2 holds kind pii, not the task's vqa: was it"):
        import_annotations(other, annotated([task], "reject"), "pia")
    task["data"]["kind"] = "pii"
    assert import_annotations(other, annotated([task], "reject"), "pia")["reject"] == 1


@pytest.mark.parametrize("item_id", [2.7, "2", True, float("inf")])
def test_an_item_id_that_is_not_a_whole_number_is_refused_naming_the_task(tmp_path: Path, item_id: object) -> None:
    engine = pii_queue(f"sqlite:///{tmp_path / 'a.db'}", 2)
    task = export_tasks(engine, {"kind": "pii"})[1]
    task = {**task, "id": 5, "data": {**task["data"], "item_id": item_id}}
    said = rf"task 0 \(Label Studio id 5\) is not a task .*: data.item_id {item_id!r} is not a whole number"
    with pytest.raises(LabelStudioError, match=said):
        import_annotations(engine, annotated([task], "approve"), "pia")
    assert dec.history(engine, 2) == []
    # A whole number read back as a float is the item's id.
    task["data"]["item_id"] = 2.0
    assert import_annotations(engine, annotated([task], "approve"), "pia")["approve"] == 1


def test_a_reviewer_who_keeps_every_predicted_label_marks_nothing_not_pii(tmp_path: Path) -> None:
    # Item 1's name is marked not PII: the export leaves it out of the predictions, so it comes back unlabelled.
    engine = pii_queue(f"sqlite:///{tmp_path / 'a.db'}", 2)
    add_user(engine, "rita", "reviewer", "correct horse battery")

    def chose(choice: str, keep_email: bool) -> list[dict]:
        """Item 1's task, decided ``choice``, the e-mail's label kept or moved onto another word."""
        task = export_tasks(engine, {"kind": "pii"}, include_pii=True)[0]
        (email,) = task["predictions"][0]["result"]
        assert email["value"]["labels"] == ["EMAIL_ADDRESS"]
        label = email if keep_email else {**email, "value": {"start": 0, "end": 4, "text": "Call", "labels": ["X"]}}
        decision = {"from_name": "decision", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}
        return [{**task, "annotations": [{"id": 1, "result": [decision, label]}]}]

    assert import_annotations(engine, chose("approve", True), "rita")["already in force"] == 1
    assert import_annotations(engine, chose("reject", True), "rita")["reject"] == 1
    dec.undo_last(engine, "rita")
    # A reject sets aside what the labels say: the e-mail's removed label marks nothing.
    assert import_annotations(engine, chose("reject", False), "rita")["reject"] == 1
    assert [row["action"] for row in dec.history(engine, 1)] == ["edit", "reject", "reject"]
    dec.undo_last(engine, "rita")
    # An edit that marks the e-mail not PII is still not a reviewer's to make.
    with pytest.raises(LabelStudioError, match="only a pii-reviewer or an admin can mark redactions as not PII"):
        import_annotations(engine, chose("approve", False), "rita")


def test_a_reviewers_task_stale_since_its_export_whose_not_pii_mark_was_undone_is_counted_changed(
    tmp_path: Path,
) -> None:
    # Item 1's name, marked not PII when exported, comes back unlabelled; the mark is undone since the export.
    engine = pii_queue(f"sqlite:///{tmp_path / 'a.db'}", 2)
    add_user(engine, "rita", "reviewer", "correct horse battery")
    tasks = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    decision = {"from_name": "decision", "to_name": "text", "type": "choices", "value": {"choices": ["approve"]}}
    kept = [
        {**task, "annotations": [{"id": n, "result": [decision, *task["predictions"][0]["result"]]}]}
        for n, task in enumerate(tasks)
    ]
    dec.undo_last(engine, "pia")
    # The stale task marks nothing new (it is not taken at all): the import is not refused for it.
    counts = import_annotations(engine, kept, "rita")
    assert counts["changed since export"] == 1 and counts["approve"] == 1
    assert [row["action"] for row in dec.history(engine, 1)] == ["edit"]
    assert [row["action"] for row in dec.history(engine, 2)] == ["approve"]
