"""A Label Studio export holding several tasks of one item (an export imported twice into a project,
two exports overlapping): tasks that decide alike are one decision, tasks that disagree none."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from curation.review import decisions as dec
from curation.review.app import history_listed
from curation.review.auth import add_user
from curation.review.labelstudio import LabelStudioError, _label_places, export_tasks, import_annotations
from curation.review.queue import add_items, list_items
from schemas.records import FLAG_SCHEMA
from tests.test_review_bulk import NAME, annotated, pii_queue
from tests.test_review_cli import review

# The counts as the command prints them.
CHANGED, REPEATED, DISAGREE = "changed since export", "same as another task", "tasks disagree"


# A VQA item's flagged content: item 2 of ``vqa_queue``'s store.
VQA = {"image": "a.png", "question": "Which bar is tallest?", "answer": "the blue one"}


def vqa_queue(tmp_path: Path) -> sa.Engine:
    """``pii_queue``'s store of one PII item, with a VQA item (2, record v1 of dataset charts) beside it."""
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 1)
    source = {"connector": "images", "uri": "a.png", "line": None, "page": None}
    vqa = {"id": "v1", "source": source, "stage": "s", "kind": "vqa", "detail": "d", "payload": json.dumps(VQA)}
    add_items(engine, "charts", 1, "one", pa.Table.from_pylist([vqa], schema=FLAG_SCHEMA))
    return engine


def twice(task: dict, first: str, second: str) -> list[dict]:
    """The task twice, as Label Studio exports two tasks (each its own id), decided ``first`` and ``second``."""
    one, other = annotated([task], first)[0], annotated([copy.deepcopy(task)], second)[0]
    return [{**one, "id": 11}, {**other, "id": 12}]


def test_tasks_of_one_item_that_agree_are_one_decision(tmp_path: Path) -> None:
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    tasks = export_tasks(engine, {"kind": "pii"})
    changed: list[int] = []
    counts = import_annotations(engine, twice(tasks[1], "reject", "reject"), "pia", changed)
    # Before, the second task was counted changed since export, and the first too though it was taken.
    assert counts["reject"] == 1 and counts[REPEATED] == 1 and counts[CHANGED] == 0 and changed == []
    assert [row["action"] for row in dec.history(engine, 2)] == ["reject"]
    # Exported before and after a decision, the two decide alike: taken as the one exported after it.
    dec.undo_last(engine, "pia")
    stale = export_tasks(engine, {"kind": "pii"})[1]
    dec.decide(engine, 2, "pia", "approve")
    now = export_tasks(engine, {"kind": "pii"})[1]
    counts = import_annotations(engine, [*annotated([stale], "reject"), *annotated([now], "reject")], "pia")
    assert counts["reject"] == 1 and counts[REPEATED] == 1 and counts[CHANGED] == 0
    assert [row["action"] for row in dec.history(engine, 2)] == ["reject", "approve", "reject"]


def test_tasks_of_one_item_that_disagree_are_not_taken_and_named(tmp_path: Path) -> None:
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    tasks = export_tasks(engine, {"kind": "pii"})
    disagreeing: list[str] = []
    both = [*twice(tasks[1], "approve", "reject"), *annotated([tasks[0]], "reject")]
    counts = import_annotations(engine, both, "pia", disagreeing=disagreeing)
    # Before, the first was taken and both counted changed since export: the annotator told nothing was.
    assert counts[DISAGREE] == 1 and counts["approve"] == 0 and counts["reject"] == 1 and counts[CHANGED] == 0
    assert dec.history(engine, 2) == []  # neither decision of item 2; item 1's reject is taken
    assert disagreeing == [
        "item 2: task 0 (Label Studio id 11) approve; task 1 (Label Studio id 12) reject",
    ]
    # The command says which tasks, and what each decides.
    export = tmp_path / "export.json"
    export.write_text(json.dumps(twice(tasks[1], "approve", "reject")))
    done = review("import", str(export), "--user", "pia", "--state", f"sqlite:///{tmp_path / 'state.db'}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    assert "1 tasks disagree" in said
    assert (
        "not taken, its tasks decide differently: item 2: task 0 (Label Studio id 11) approve; "
        "task 1 (Label Studio id 12) reject" in said
    )


def overlapping(task: dict, *choices: str) -> dict:
    """The task as Label Studio exports it annotated by several annotators (its overlap), one choice each."""
    annotations = [
        {
            "id": n + 1,
            "completed_by": n + 1,
            "created_at": f"2026-01-01T1{n}:00:00Z",
            "result": annotated([task], choice)[0]["annotations"][0]["result"],
        }
        for n, choice in enumerate(choices)
    ]
    return {**task, "id": 7, "annotations": annotations}


def test_annotations_of_one_task_that_disagree_are_not_taken_and_named(tmp_path: Path) -> None:
    # The latest annotation was taken alone: one annotator's reject dropped, and nothing said.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    task = export_tasks(engine, {"kind": "pii"})[1]
    disagreeing: list[str] = []
    counts = import_annotations(engine, [overlapping(task, "reject", "approve")], "pia", disagreeing=disagreeing)
    assert counts[DISAGREE] == 1 and counts["approve"] == counts["reject"] == 0
    assert dec.history(engine, 2) == []
    assert disagreeing == [
        "item 2: task 0 (Label Studio id 7) annotation 1 reject; task 0 (Label Studio id 7) annotation 2 approve"
    ]
    counts = import_annotations(engine, [overlapping(task, "reject", "reject")], "pia")  # alike: one decision
    assert counts["reject"] == 1 and counts[REPEATED] == 1 and counts[DISAGREE] == 0
    assert [row["action"] for row in dec.history(engine, 2)] == ["reject"]


def test_a_task_exported_before_a_decision_does_not_block_one_exported_after_it(tmp_path: Path) -> None:
    # Approved from one export, then exported again and rejected (the annotator changed their mind), the
    # project imported whole: the old task, not taken anyway, made the two disagree and nothing was taken.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    stale = export_tasks(engine, {"kind": "pii"})[1]
    dec.decide(engine, 2, "pia", "approve")
    now = export_tasks(engine, {"kind": "pii"})[1]
    changed: list[int] = []
    counts = import_annotations(engine, [*annotated([stale], "approve"), *annotated([now], "reject")], "pia", changed)
    assert counts["reject"] == 1 and counts[DISAGREE] == 0
    assert counts[CHANGED] == 1 and changed == [2]  # the old task's approve is not taken: said, as before
    assert [row["action"] for row in dec.history(engine, 2)] == ["approve", "reject"]


def test_an_item_whose_current_task_is_taken_is_not_said_not_taken(tmp_path: Path) -> None:
    # The old task's approve is dropped and the current task's reject taken: the warning said "not taken,
    # decided on since the export: item(s) 2" as if the item's reject had not been taken either.
    state = f"sqlite:///{tmp_path / 'state.db'}"
    engine = pii_queue(state, 2)
    stale = export_tasks(engine, {"kind": "pii"})[1]
    dec.decide(engine, 2, "pia", "approve")
    now = export_tasks(engine, {"kind": "pii"})[1]
    export = tmp_path / "export.json"
    export.write_text(json.dumps([*annotated([stale], "approve"), *annotated([now], "reject")]))
    done = review("import", str(export), "--user", "pia", "--state", state, cwd=tmp_path)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 0 and "1 reject" in said and f"1 {CHANGED}" in said, said
    assert "task(s) not taken, their item decided on since they were exported: item(s) 2;" in said
    assert [row["action"] for row in dec.history(engine, 2)] == ["approve", "reject"]


def test_an_item_is_named_once_among_those_changed_since_the_export(tmp_path: Path, monkeypatch) -> None:
    # A stale task of the item, and a decision on the page while the import runs: the item was named twice.
    import curation.review.labelstudio as labelstudio

    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    stale = export_tasks(engine, {"kind": "pii"})[1]
    dec.decide(engine, 2, "pia", "approve")
    now = export_tasks(engine, {"kind": "pii"})[1]
    decide_all = dec.decide_all

    def page_decides_first(*args):
        dec.decide(engine, 2, "pia", "reject")  # on the page, after the import read the item
        return decide_all(*args)

    monkeypatch.setattr(labelstudio.dec, "decide_all", page_decides_first)
    changed: list[int] = []
    tasks = [*annotated([stale], "approve"), *annotated([now], "reject")]
    counts = import_annotations(engine, tasks, "pia", changed)
    assert counts[CHANGED] == 2 and counts["reject"] == 0 and changed == [2]


def test_an_approve_from_an_export_keeps_the_spans_marked_not_pii_that_it_showed(tmp_path: Path) -> None:
    # Item 1's name is marked not PII: the redacted export shows it in clear, the raw one does not predict it.
    # Approving either took the approve alone, which set the mark aside: the name was redacted again.
    from curation.review.auth import add_user

    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 1)
    add_user(engine, "rita", "reviewer", "correct horse battery")
    marked = {("prompt", 5, 17)}
    (redacted,) = export_tasks(engine, {"kind": "pii"})
    assert redacted["data"]["text"].startswith(f"Call {NAME} at")
    counts = import_annotations(engine, annotated([redacted], "approve"), "rita")
    assert counts["already in force"] == 1 and dec.not_pii_in_force(engine, 1) == marked
    (raw,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    assert [r["value"]["text"] for r in raw["predictions"][0]["result"]] == ["ada0@example.com"]
    counts = import_annotations(engine, annotated([raw], "approve"), "pia")  # no label touched
    assert counts["already in force"] == 1 and dec.not_pii_in_force(engine, 1) == marked
    # Labelled PII again, every span, by the annotator: the approve is theirs to set the mark aside.
    (task,) = annotated([raw], "approve")
    name = {"from_name": "pii", "to_name": "text", "type": "labels"}
    name["value"] = {"start": 5, "end": 17, "text": NAME, "labels": ["PERSON"]}
    task["annotations"][0]["result"] += [*raw["predictions"][0]["result"], name]
    assert import_annotations(engine, [task], "pia")["approve"] == 1 and dec.not_pii_in_force(engine, 1) == set()
    assert [row["action"] for row in dec.history(engine, 1)] == ["edit", "approve"]


def test_a_vqa_task_shows_the_edit_in_force_and_an_approve_keeps_it(tmp_path: Path) -> None:
    # Exported as flagged, an edited answer was not what the annotator saw, and approving it undid the edit.
    engine = vqa_queue(tmp_path)
    dec.decide(engine, 2, "pia", "edit", dec.Edit(fields={"answer": "the orange one"}))
    (task,) = export_tasks(engine, {"kind": "vqa"})
    assert task["data"]["answer"] == "the orange one" and task["data"]["question"] == VQA["question"]
    counts = import_annotations(engine, annotated([task], "approve"), "pia")
    assert counts["already in force"] == 1
    assert dec.run_decisions(engine, "charts").edits == {"v1": {"answer": "the orange one"}}
    # The annotator puts the flagged answer back: no edit, and the approve sets the one in force aside.
    (task,) = annotated([task], "approve")
    task["annotations"][0]["result"].append(
        {"from_name": "answer", "type": "textarea", "value": {"text": ["the blue one"]}}
    )
    assert import_annotations(engine, [task], "pia")["approve"] == 1
    assert dec.run_decisions(engine, "charts").edits == {}


def test_an_approve_from_an_export_keeps_a_pii_items_field_edits_with_or_without_a_span_marked(
    tmp_path: Path,
) -> None:
    # A PII task shows the text as flagged, for its spans, not the fields an edit sets. The approve kept
    # item 1's field edit (it also had a span marked not PII) and set aside item 2's, unsaid.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    for item_id in (1, 2):
        dec.decide(engine, item_id, "pia", "edit", dec.Edit(fields={"prompt": f"fixed prompt {item_id}"}))
    marks = {1: {("prompt", 5, 17)}, 2: set()}
    for include_pii in (False, True):
        tasks = export_tasks(engine, {"kind": "pii"}, include_pii=include_pii)
        counts = import_annotations(engine, annotated(tasks, "approve"), "pia")
        assert counts["already in force"] == 2 and counts["approve"] == 0
        for item_id in (1, 2):
            assert dec.fields_in_force(engine, item_id) == {"prompt": f"fixed prompt {item_id}"}
            assert dec.not_pii_in_force(engine, item_id) == marks[item_id]
    assert [row["action"] for row in dec.history(engine, 2)] == ["edit"]


def test_an_approve_of_a_vqa_task_that_showed_the_flagged_answer_approves_that_answer(tmp_path: Path) -> None:
    # An export from before tasks showed the edits in force showed the flagged answer, with the same
    # ``seen``: approving it kept the edited answer, which the annotator never saw.
    engine = vqa_queue(tmp_path)
    # The question edited and put back as flagged, then the answer edited.
    dec.decide(engine, 2, "pia", "edit", dec.Edit(fields={"question": "Which bar is shortest?"}))
    dec.decide(engine, 2, "pia", "edit", dec.Edit(fields={"question": VQA["question"]}))
    dec.decide(engine, 2, "pia", "edit", dec.Edit(fields={"answer": "the orange one"}))
    (task,) = export_tasks(engine, {"kind": "vqa"})
    task["data"].update(question=VQA["question"], answer=VQA["answer"])  # as exported before
    counts = import_annotations(engine, annotated([task], "approve"), "pia")
    # The question's edit, the one the task showed as in force, does not keep the answer's it did not.
    assert counts["approve"] == 1 and counts["already in force"] == 0
    assert dec.run_decisions(engine, "charts").edits == {}


def test_a_vqa_task_without_a_record_id_is_of_its_item_by_the_question_as_edited(tmp_path: Path) -> None:
    # The export shows the question its edit in force sets: such a task, trimmed of its record id, was
    # refused as another item's, and exported again it was refused again.
    engine = vqa_queue(tmp_path)
    dec.decide(engine, 2, "pia", "edit", dec.Edit(fields={"question": "Which bar is shortest?"}))
    (task,) = export_tasks(engine, {"kind": "vqa"})
    old = {**task, "data": {**task["data"], "question": VQA["question"]}}  # as exported before
    for one in (task, old):
        del one["data"]["record_id"]
    counts = import_annotations(engine, [*annotated([task], "reject"), *annotated([old], "reject")], "pia")
    assert counts["reject"] == 1 and counts[REPEATED] == 1


def labels(task: dict, *spans: tuple[int, int, str]) -> list[dict]:
    """``task`` approved with these spans labelled (start, end, entity), as an annotator submits them."""
    (done,) = annotated([task], "approve")
    text = task["data"]["text"]
    done["annotations"][0]["result"] += [
        {
            "from_name": "pii",
            "to_name": "text",
            "type": "labels",
            "value": {"start": start, "end": end, "text": text[start:end], "labels": [entity]},
        }
        for start, end, entity in spans
    ]
    return [done]


def test_a_raw_pii_task_relabelled_in_part_decides_by_the_spans_as_submitted(tmp_path: Path) -> None:
    # Item 1's name is marked not PII, so its raw task predicts the e-mail address alone. The annotator
    # labels the name PII again and leaves the address unlabelled: the edit added the address's mark to
    # the name's in force, and the name the annotator labelled was published in clear.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 1)
    (raw,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    assert [r["value"]["start"] for r in raw["predictions"][0]["result"]] == [21]
    published = dec.mark_now(engine)  # a version published with the name in clear
    counts = import_annotations(engine, labels(raw, (5, 17, "PERSON")), "pia")
    assert counts["edit"] == 1
    assert dec.not_pii_in_force(engine, 1) == {("prompt", 21, 37)}
    assert dec.run_decisions(engine, "notes").undone == {"r0": {("prompt", 21, 37)}}
    # Its carried line holds the name in clear: the next run reads the input again, to redact it.
    assert dec.inputs_to_read_again(engine, "notes", published) == {"a.jsonl"}
    # Undone, the relabelling takes out its own values alone: the name's mark stands again.
    dec.undo_last(engine, "pia")
    assert dec.not_pii_in_force(engine, 1) == {("prompt", 5, 17)}


def test_a_raw_pii_task_relabelled_keeps_the_field_edits_in_force_it_did_not_show(tmp_path: Path) -> None:
    # Item 2's prompt is edited; its raw task shows the flagged text, for the spans. An annotator who moved
    # the address label's edge (it still covers the span: redacted as detected), or labelled every span,
    # approved the item as flagged: the edit, never shown, was set aside.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    dec.decide(engine, 2, "pia", "edit", dec.Edit(fields={"prompt": "fixed prompt"}))
    raw = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    moved = labels(raw[1], (5, 17, "PERSON"), (21, 33, "EMAIL_ADDRESS"))
    assert import_annotations(engine, moved, "pia")["already in force"] == 1
    assert dec.run_decisions(engine, "notes").edits == {"r1": {"prompt": "fixed prompt"}}
    # Item 1 has its name marked and its prompt edited: every span labelled sets the mark aside, not the edit.
    dec.decide(engine, 1, "pia", "edit", dec.Edit(fields={"prompt": "fixed prompt"}))
    raw = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    counts = import_annotations(engine, labels(raw[0], (5, 17, "LOCATION"), (21, 37, "EMAIL_ADDRESS")), "pia")
    assert counts["edit"] == 1 and dec.not_pii_in_force(engine, 1) == set()
    assert dec.fields_in_force(engine, 1) == {"prompt": "fixed prompt"}


def test_a_raw_pii_task_labelled_again_is_stored_as_any_release_reads_it(tmp_path: Path) -> None:
    # "PII again" was stored as a new part of an edit (``pii``), which an earlier release reading the
    # store does not know: it kept the name marked not PII, and published it in clear.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 1)
    (raw,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    assert import_annotations(engine, labels(raw, (5, 17, "PERSON")), "pia")["edit"] == 1
    # An approve (it sets the mark aside) and an edit with what stands after the task (the address's mark).
    rows = [row for row in dec.history(engine, 1) if row["undone_at"] is None]
    assert [(row["action"], json.loads(row["after"])) for row in rows[1:]] == [
        ("approve", {"status": "approved"}),
        ("edit", {"status": "edited", "fields": {}, "not_pii": [["prompt", 21, 37]]}),
    ]
    assert dec.not_pii_in_force(engine, 1) == {("prompt", 21, 37)}
    # One undo takes both out: the name's mark stands again, and the item is edited as before.
    dec.undo_last(engine, "pia")
    assert dec.not_pii_in_force(engine, 1) == {("prompt", 5, 17)}
    assert [row["undone_at"] is None for row in dec.history(engine, 1)] == [True, False, False]
    assert list_items(engine)[0]["status"] == "edited"


def test_a_raw_pii_task_labelled_again_is_one_entry_of_the_items_history(tmp_path: Path) -> None:
    # Stored as an approve and an edit, the import's PII again was listed as an approve pia never took too.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 1)
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=[("prompt", 21, 37)]))
    (raw,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    assert import_annotations(engine, labels(raw, (5, 17, "PERSON")), "pia")["edit"] == 1
    dec.decide(engine, 1, "pia", "approve")
    listed = history_listed(dec.history(engine, 1))
    assert [(row["action"], row["after"]) for row in listed[2:]] == [
        ("edit", "PII again: prompt[5:17]"),
        ("approve", json.dumps({"status": "approved"})),
    ]
    # An earlier release undoes the edit alone: the approve stands by itself, an approve, and is listed.
    edit_id = listed[2]["decision_id"]
    with engine.begin() as db:
        db.execute(dec.decisions.update().where(dec.decisions.c.decision_id == edit_id).values(undone_at=dec._now()))
    listed = history_listed(dec.history(engine, 1))
    assert [(row["action"], row["undone_at"] is None) for row in listed[2:]] == [
        ("approve", True),
        ("edit", False),
        ("approve", True),
    ]
    # This release then undoes pia's approves, that one last: both rows of the pair are undone, by two
    # undos, and the approve stays listed, undone (as pia was told, "undid approve on item 1").
    assert [dec.undo_last(engine, "pia")["decision_id"] for _ in range(2)] == [
        listed[4]["decision_id"],
        listed[2]["decision_id"],
    ]
    listed = history_listed(dec.history(engine, 1))
    assert [(row["action"], row["undone_at"] is None) for row in listed[2:]] == [
        ("approve", False),
        ("edit", False),
        ("approve", False),
    ]


def test_a_raw_pii_task_labelled_again_leaves_another_annotators_mark_theirs_to_undo(tmp_path: Path) -> None:
    # Item 1's name is marked not PII by pia, its address by ada; pia labels the name PII again. Stored
    # with what stands after it (the address's mark) as pia's own, ada's undo of her mark kept it in
    # force: the address was published in clear.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 1)
    dec.decide(engine, 1, "ada", "edit", dec.Edit(not_pii=[("prompt", 21, 37)]))
    (raw,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    assert import_annotations(engine, labels(raw, (5, 17, "PERSON")), "pia")["edit"] == 1
    assert dec.not_pii_in_force(engine, 1) == {("prompt", 21, 37)}
    dec.undo_last(engine, "ada")
    assert dec.not_pii_in_force(engine, 1) == set() and dec.run_decisions(engine, "notes").undone == {}
    dec.undo_last(engine, "pia")  # the relabelling: the name's mark stands again, alone
    assert dec.not_pii_in_force(engine, 1) == {("prompt", 5, 17)}


def test_a_raw_pii_task_labelled_again_with_nothing_left_standing_sets_aside_nothing_else(tmp_path: Path) -> None:
    # r70: pia's name mark (item 1), then ada's address mark; pia makes the name PII again, leaving the
    # address's mark; ada labels the address again. Stored as an approve alone, read as any approve, it
    # set the name's mark aside: pia's undo of her PII again did not bring it back.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 1)
    from curation.review.auth import add_user

    add_user(engine, "ada", "admin", "correct horse battery")
    name, address = ("prompt", 5, 17), ("prompt", 21, 37)
    dec.decide(engine, 1, "ada", "edit", dec.Edit(not_pii=[address]))
    dec.decide(engine, 1, "pia", "edit", dec.pii_again(dec.in_force_on(engine, [1])[1], [name]))
    (raw,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    assert import_annotations(engine, labels(raw, (5, 17, "PERSON"), (21, 37, "EMAIL_ADDRESS")), "ada")["approve"] == 1
    stored = dec.history(engine, 1)[-1]  # an approve to a release before, saying the span to this one
    assert stored["action"] == "approve" and json.loads(stored["before"])["again"]["pii"] == [list(address)]
    assert dec.not_pii_in_force(engine, 1) == set()
    dec.undo_last(engine, "pia")
    assert dec.not_pii_in_force(engine, 1) == {name} and list_items(engine)[0]["status"] == "edited"


def test_a_task_from_an_export_before_seen_adds_its_marks_to_those_made_since(tmp_path: Path) -> None:
    # A task exported by an earlier release (no ``seen``) cannot say which marks it showed: read as
    # submitted, a name marked not PII on the page after the export, labelled as the task predicted it,
    # was set aside though the annotator never saw the mark.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    raw = export_tasks(engine, {"kind": "pii"}, include_pii=True)[1]
    del raw["data"]["seen"]
    dec.decide(engine, 2, "pia", "edit", dec.Edit(not_pii=[("prompt", 5, 17)]))
    assert import_annotations(engine, labels(raw, (5, 17, "PERSON")), "pia")["edit"] == 1
    assert dec.not_pii_in_force(engine, 2) == {("prompt", 5, 17), ("prompt", 21, 37)}


def test_every_span_labelled_with_no_decision_chosen_approves_the_item(tmp_path: Path) -> None:
    # The name's mark set aside with nothing else in force: the item is approved, not left edited.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 1)
    (raw,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    (task,) = labels(raw, (5, 17, "PERSON"), (21, 37, "EMAIL_ADDRESS"))
    task["annotations"][0]["result"] = task["annotations"][0]["result"][1:]  # labels alone, no decision
    assert import_annotations(engine, [task], "pia")["approve"] == 1
    assert list_items(engine)[0]["status"] == "approved"
    assert dec.in_force_on(engine, [1])[1]["action"] == "approve"


def test_a_task_from_an_export_before_seen_labelling_a_mark_it_showed_redacts_it(tmp_path: Path) -> None:
    # Item 1's name is marked not PII, so its raw task, exported by an earlier release (no ``seen``), does
    # not predict it. The annotator labels the name PII: added to the marks in force, the name stayed in clear.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 1)
    (raw,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    del raw["data"]["seen"]
    assert import_annotations(engine, labels(raw, (5, 17, "PERSON")), "pia")["edit"] == 1
    assert dec.not_pii_in_force(engine, 1) == {("prompt", 21, 37)}
    dec.undo_last(engine, "pia")
    assert import_annotations(engine, labels(raw, (5, 17, "PERSON"), (21, 37, "EMAIL_ADDRESS")), "pia")["approve"] == 1
    assert dec.not_pii_in_force(engine, 1) == set()


def test_a_task_from_an_export_before_seen_keeps_a_mark_made_since_with_every_span_labelled(tmp_path: Path) -> None:
    # Exported before the name was marked, the task predicted it: labelled as predicted, with the address,
    # the approve set aside the mark the annotator never saw.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    raw = export_tasks(engine, {"kind": "pii"}, include_pii=True)[1]
    del raw["data"]["seen"]
    dec.decide(engine, 2, "pia", "edit", dec.Edit(not_pii=[("prompt", 5, 17)]))
    counts = import_annotations(engine, labels(raw, (5, 17, "PERSON"), (21, 37, "EMAIL_ADDRESS")), "pia")
    assert counts["already in force"] == 1
    assert dec.not_pii_in_force(engine, 2) == {("prompt", 5, 17)}


def test_a_task_from_an_export_before_seen_whose_predictions_cannot_tell_is_read_as_submitted(tmp_path: Path) -> None:
    # Without predictions (trimmed, written as ids, or another model's) the task cannot say which marks it
    # showed: the name labelled is redacted, and nothing but the spans left unlabelled is in clear.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 1)
    (raw,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    del raw["data"]["seen"]
    another = [{"result": [{"type": "labels", "value": {"start": 0, "end": 4, "labels": ["PERSON"]}}]}]
    for predictions in (None, [7], another):
        raw["predictions"] = predictions
        assert import_annotations(engine, labels(raw, (5, 17, "PERSON")), "pia")["edit"] == 1
        assert dec.not_pii_in_force(engine, 1) == {("prompt", 21, 37)}
        dec.undo_last(engine, "pia")


def test_a_task_from_an_export_before_seen_approved_as_shown_keeps_an_undo_made_since(tmp_path: Path) -> None:
    # The task showed item 1's name marked not PII; the mark was undone after the export. Approved as it
    # showed the item (name unlabelled), it marked the name not PII again: in clear, though no one decided so.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 1)
    (raw,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    del raw["data"]["seen"]
    dec.undo_last(engine, "pia")
    assert dec.not_pii_in_force(engine, 1) == set()
    assert import_annotations(engine, labels(raw, (21, 37, "EMAIL_ADDRESS")), "pia")["approve"] == 1
    assert dec.not_pii_in_force(engine, 1) == set()
    # A span the task showed flagged and the annotator left unlabelled is a decision still.
    dec.undo_last(engine, "pia")
    assert import_annotations(engine, labels(raw, (5, 17, "PERSON")), "pia")["edit"] == 1
    assert dec.not_pii_in_force(engine, 1) == {("prompt", 21, 37)}
    assert dec.not_pii_in_force(engine, 1) == {("prompt", 21, 37)}


def test_two_exports_of_an_item_approved_with_every_span_labelled_are_the_same_decision(tmp_path: Path) -> None:
    # With a mark in force, the current task's approve says the spans it makes PII again and the stale task's is
    # a plain approve: both are one decision, the second counted as the same, not as changed since export (r75).
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 1)  # the name marked not PII
    add_user(engine, "ada", "admin", "correct horse battery")
    (old,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    dec.decide(engine, 1, "ada", "reject")
    dec.undo_last(engine, "ada")  # the item as it was: the older export is stale
    (new,) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    every = ((5, 17, "PERSON"), (21, 37, "EMAIL_ADDRESS"))
    changed: list[int] = []
    counts = import_annotations(engine, labels(old, *every) + labels(new, *every), "ada", changed=changed)
    assert (counts["approve"], counts[REPEATED], counts[CHANGED], changed) == (1, 1, 0, [])
    assert dec.not_pii_in_force(engine, 1) == set()


def approved_with(task: dict, *values: dict) -> list[dict]:
    """``task`` approved with these label values (``start``, ``end``, ``text``), as an export holds them."""
    (done,) = annotated([task], "approve")
    done["annotations"][0]["result"] += [
        {"from_name": "pii", "to_name": "text", "type": "labels", "value": {**value, "labels": ["PERSON"]}}
        for value in values
    ]
    return [done]


@pytest.mark.parametrize(
    "name",
    [
        {"start": 500, "end": 512, "text": NAME},  # past the end of the text
        {"start": -3, "end": 17, "text": NAME},
        {"start": 17, "end": 5, "text": NAME},
        {"start": 5, "end": 17, "text": "Grace Hopper"},  # not the text at its offsets
    ],
)
def test_a_label_that_is_not_on_the_text_refuses_the_task(tmp_path: Path, name: dict) -> None:
    # Item 2's raw task with its name label somewhere else than the text (and its address labelled as
    # exported): read as covering nothing, the name was marked not PII and published in clear.
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    _, raw = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    text = raw["data"]["text"]
    address = {"start": 21, "end": len(text), "text": text[21:]}
    with pytest.raises(LabelStudioError, match=r"task 0 .* is not a task as Label Studio exports them: a label at"):
        import_annotations(engine, approved_with(raw, name, address), "pia")
    assert dec.history(engine, 2) == [] and dec.not_pii_in_force(engine, 2) == set()


def test_a_label_whose_text_collapses_a_run_of_spaces_is_taken_at_its_offsets() -> None:
    # Label Studio may collapse whitespace in a label's `text` while its offsets cover the run of spaces
    # (HumanSignal/label-studio#3078): refused as not on its text, the whole import was blocked.
    text = "Text: Berlin,  Germany."
    assert _label_places(text, {"start": 6, "end": 22, "text": "Berlin, Germany"}) == [(6, 22)]
    with pytest.raises(ValueError, match="does not hold the text it names"):
        _label_places(text, {"start": 6, "end": 22, "text": "Paris, France"})


def test_a_label_on_text_the_pipeline_did_not_flag_is_named_not_taken(tmp_path: Path) -> None:
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    _, raw = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    text = raw["data"]["text"]
    spans = [{"start": 5, "end": 17, "text": NAME}, {"start": 21, "end": len(text), "text": text[21:]}]
    notes: list[str] = []
    counts = import_annotations(
        engine, approved_with(raw, *spans, {"start": 0, "end": 4, "text": "Call"}), "pia", notes=notes
    )
    # Taken as before (every span labelled: the item approved as flagged), and the new label named.
    assert counts["approve"] == 1 and [row["action"] for row in dec.history(engine, 2)] == ["approve"]
    assert notes == [
        "task 0 (Label Studio id None), item 2: a label at 0:4 is on no span the pipeline found: not taken; "
        "to redact more, edit the text on the review page"
    ]


def test_a_task_whose_labels_were_all_removed_is_named_not_worked_on(tmp_path: Path) -> None:
    engine = pii_queue(f"sqlite:///{tmp_path / 'state.db'}", 2)
    _, raw = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    notes: list[str] = []
    counts = import_annotations(engine, approved_with(raw), "pia", notes=notes)
    assert counts["approve"] == 1 and dec.not_pii_in_force(engine, 2) == set()
    assert len(notes) == 1 and notes[0].startswith("task 0 (Label Studio id None), item 2: its labels were all removed")
    # A reject says nothing of the spans: nothing to name.
    notes.clear()
    (_, raw) = export_tasks(engine, {"kind": "pii"}, include_pii=True)
    import_annotations(engine, annotated([raw], "reject"), "pia", notes=notes)
    assert notes == []
