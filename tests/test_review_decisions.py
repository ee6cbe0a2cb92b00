"""Decisions as the pipeline sees them: what is in force after edits and undos, and the review
stage applying them to batches (typed columns, unknown fields, no state store yet)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from curation.pipeline import build_stages
from curation.review import decisions as dec
from curation.review.queue import add_items
from curation.stages.review import ReviewDecisions, load_decisions
from schemas.config import parse_recipe
from schemas.records import FLAG_SCHEMA, source_array


def flag(record: str, kind: str = "quarantined", payload: str = "{}") -> dict:
    source = {"connector": "files", "uri": "in.jsonl", "line": 1, "page": None}
    return {"id": record, "source": source, "stage": "s", "kind": kind, "detail": "d", "payload": payload}


def test_latest_decision_per_item_is_in_force(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    add_items(engine, "ds", 1, "run", pa.Table.from_pylist([flag("a"), flag("b"), flag("c")], schema=FLAG_SCHEMA))
    dec.decide(engine, 1, "rita", "reject")
    dec.decide(engine, 1, "rita", "approve")  # changed her mind: no longer rejected
    dec.decide(engine, 2, "rita", "edit", dec.Edit(fields={"completion": "first"}))
    dec.decide(engine, 2, "pia", "edit", dec.Edit(fields={"completion": "second", "label": "x"}))
    dec.decide(engine, 3, "pia", "reject")
    dec.undo_last(engine, "pia")  # pia's reject of c is undone; her edit of b stays
    decisions = dec.run_decisions(engine, "ds")
    assert decisions.rejected == set()
    assert decisions.edits == {"b": {"completion": "second", "label": "x"}}
    assert dec.get_item(engine, 3)["status"] == "open"
    # Undoing an older decision leaves the item as the newer one (another annotator's) set it.
    dec.decide(engine, 3, "rita", "approve")
    dec.decide(engine, 3, "pia", "reject")
    dec.undo_last(engine, "rita")  # rita's latest is her approve of c
    assert dec.get_item(engine, 3)["status"] == "rejected"
    dec.undo_last(engine, "pia")
    assert dec.get_item(engine, 3)["status"] == "open"
    assert dec.run_decisions(engine, "other") == dec.RunDecisions()
    with pytest.raises(dec.DecisionError, match="must not be empty"):
        dec.decide(engine, 1, "rita", "edit", dec.Edit(fields={"completion": "  "}))
    with pytest.raises(dec.DecisionError, match="only spans the PII stage flagged"):
        dec.decide(engine, 1, "rita", "edit", dec.Edit(not_pii=[("completion", 0, 3)]))
    with pytest.raises(dec.DecisionError, match="does not exist"):
        dec.decide(engine, 99, "rita", "approve")


def test_not_a_duplicate_is_in_force_on_a_near_duplicate_item_until_undone_or_set_aside(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    flags = [flag("x", "near_duplicate"), flag("y", "near_duplicate"), flag("q")]
    add_items(engine, "ds", 1, "run", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))
    with pytest.raises(dec.DecisionError, match="only a near-duplicate item can be marked not a duplicate"):
        dec.decide(engine, 3, "rita", "keep")  # a quarantined record is no one's duplicate
    dec.decide(engine, 1, "rita", "edit", dec.Edit(fields={"prompt": "typo fixed"}))
    dec.decide(engine, 1, "rita", "keep")  # sets aside the edit before it: published as it is
    dec.decide(engine, 2, "pia", "keep")
    dec.decide(engine, 2, "pia", "edit", dec.Edit(fields={"prompt": "and fixed"}))  # adds to the keep
    assert [dec.get_item(engine, i)["status"] for i in (1, 2)] == ["kept", "kept"]
    decisions = dec.run_decisions(engine, "ds")
    assert decisions.kept_apart == {"x", "y"} and decisions.edits == {"y": {"prompt": "and fixed"}}
    assert [d["action"] for d in dec.history(engine, 1)] == ["edit", "keep"]
    assert dec.holds_already(engine, 1, "keep")  # a Label Studio export imported twice
    dec.undo_last(engine, "rita")  # the keep: the edit before it is in force again
    assert dec.get_item(engine, 1)["status"] == "edited"
    dec.decide(engine, 2, "adm", "approve")  # a duplicate after all
    decisions = dec.run_decisions(engine, "ds")
    assert decisions.kept_apart == set() and decisions.edits == {"x": {"prompt": "typo fixed"}}


def test_an_edit_keeps_what_the_edit_in_force_on_the_item_holds(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    payload = json.dumps(
        {
            "field": "completion",
            "original": "Ask Dana in London.",
            "spans": [
                {"start": 4, "end": 8, "entity": "PERSON", "score": 0.5, "placeholder": "<PERSON>"},
                {"start": 12, "end": 18, "entity": "LOCATION", "score": 0.4, "placeholder": "<LOCATION>"},
            ],
        }
    )
    add_items(engine, "ds", 1, "run", pa.Table.from_pylist([flag("a", "pii", payload)], schema=FLAG_SCHEMA))
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=[("completion", 12, 18)]))  # London is no PII
    dec.decide(engine, 1, "rita", "edit", dec.Edit(fields={"prompt": "Who handles refunds?"}))
    decisions = dec.run_decisions(engine, "ds")
    # rita's edit of another field leaves pia's span in force (only the latest decision counts).
    assert decisions.undone == {"a": {("completion", 12, 18)}}
    assert decisions.edits == {"a": {"prompt": "Who handles refunds?"}}
    # An edit of the field itself: the spans were marked on text it no longer holds, and would leave
    # whatever stands at those offsets now (a name the annotator typed) unredacted.
    dec.decide(engine, 1, "rita", "edit", dec.Edit(fields={"completion": "Ask Jane Miller in Leeds."}))
    decisions = dec.run_decisions(engine, "ds")
    assert decisions.undone == {} and decisions.edits["a"]["completion"] == "Ask Jane Miller in Leeds."


def test_undoing_a_decision_takes_out_its_own_values_whatever_others_decided_since(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    payload = json.dumps(
        {
            "field": "completion",
            "original": "Ask Dana in London.",
            "spans": [{"start": 12, "end": 18, "entity": "LOCATION", "score": 0.4, "placeholder": "<LOCATION>"}],
        }
    )
    add_items(engine, "ds", 1, "run", pa.Table.from_pylist([flag("a", "pii", payload)], schema=FLAG_SCHEMA))
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=[("completion", 12, 18)]))
    dec.decide(engine, 1, "rita", "edit", dec.Edit(fields={"prompt": "Who handles refunds?"}))
    dec.undo_last(engine, "pia")  # London is PII after all: redacted again, rita's edit stands
    decisions = dec.run_decisions(engine, "ds")
    assert decisions.undone == {} and decisions.edits == {"a": {"prompt": "Who handles refunds?"}}
    assert dec.get_item(engine, 1)["status"] == "edited"
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=[("completion", 12, 18)]))
    dec.undo_last(engine, "rita")
    decisions = dec.run_decisions(engine, "ds")
    assert decisions.undone == {"a": {("completion", 12, 18)}} and decisions.edits == {}
    # An approve sets aside the edits before it; an edit after it starts from the flag again.
    dec.decide(engine, 1, "rita", "approve")
    assert dec.run_decisions(engine, "ds") == dec.RunDecisions()
    dec.decide(engine, 1, "rita", "edit", dec.Edit(fields={"prompt": "Who pays refunds?"}))
    assert dec.run_decisions(engine, "ds").edits == {"a": {"prompt": "Who pays refunds?"}}


DANA_LONDON = {
    "field": "completion",
    "original": "Ask Dana in London.",
    "redacted": "Ask <PERSON> in <LOCATION>.",
    "spans": [
        {"start": 4, "end": 8, "entity": "PERSON", "score": 0.5, "placeholder": "<PERSON>"},
        {"start": 12, "end": 18, "entity": "LOCATION", "score": 0.4, "placeholder": "<LOCATION>"},
    ],
}
DANA, LONDON = ("completion", 4, 8), ("completion", 12, 18)


def pii_again(engine: sa.Engine, item_id: int, user: str, *spans: tuple[str, int, int]) -> None:
    """``user`` marks ``spans`` PII again on the item, as the page stores it."""
    current = dec.in_force_on(engine, [item_id]).get(item_id)
    again = dec.pii_again(current, spans)
    dec.decide(engine, item_id, user, "edit" if again else "approve", again)


def test_pii_again_leaves_the_other_annotators_decisions_theirs_to_undo(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    add_items(
        engine, "ds", 1, "run", pa.Table.from_pylist([flag("a", "pii", json.dumps(DANA_LONDON))], schema=FLAG_SCHEMA)
    )
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=[DANA]))
    dec.decide(engine, 1, "ada", "edit", dec.Edit(not_pii=[LONDON]))
    dec.decide(engine, 1, "ada", "edit", dec.Edit(fields={"prompt": "Who handles refunds?"}))
    before = dec.run_decisions(engine, "ds")
    pii_again(engine, 1, "pia", DANA)
    assert dec.not_pii_in_force(engine, 1) == {LONDON}
    assert dec.fields_in_force(engine, 1) == {"prompt": "Who handles refunds?"}
    # Stored whole for an earlier release, which reads what stands after it from the edit.
    stored = json.loads(dec.history(engine, 1)[-1]["after"])
    assert stored["not_pii"] == [list(LONDON)] and stored["fields"] == {"prompt": "Who handles refunds?"}
    # Undone, the PII again leaves the item exactly as before it.
    dec.undo_last(engine, "pia")
    assert dec.run_decisions(engine, "ds") == before and dec.get_item(engine, 1)["status"] == "edited"
    pii_again(engine, 1, "pia", DANA)

    # ada's undos take out her own values, which pia's PII again did not make pia's: the prompt edit was
    # kept, and London stayed not PII, published in clear.
    dec.undo_last(engine, "ada")
    assert dec.fields_in_force(engine, 1) == {} and dec.run_decisions(engine, "ds").edits == {}
    assert dec.not_pii_in_force(engine, 1) == {LONDON}
    dec.undo_last(engine, "ada")
    assert dec.not_pii_in_force(engine, 1) == set() and dec.run_decisions(engine, "ds").undone == {}
    assert dec.get_item(engine, 1)["status"] == "approved"
    # pia's undo brings her mark back, alone.
    dec.undo_last(engine, "pia")
    assert dec.not_pii_in_force(engine, 1) == {DANA} and dec.get_item(engine, 1)["status"] == "edited"
    # Stored by a release before (no ``again``), the pair is read as the copy it holds, as that release reads it.
    dec.decide(engine, 1, "ada", "edit", dec.Edit(not_pii=[LONDON], replaces=True))
    assert dec.not_pii_in_force(engine, 1) == {LONDON}


def test_pii_again_stored_as_an_approve_alone_sets_aside_nothing_an_undo_brings_back(tmp_path: Path) -> None:
    # r70: with nothing else standing, PII again was an approve alone, read as any approve: ada's set
    # aside bob's, and when bob took his back, pia's mark (which his did not touch) stayed lost.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    add_items(
        engine, "ds", 1, "run", pa.Table.from_pylist([flag("a", "pii", json.dumps(DANA_LONDON))], schema=FLAG_SCHEMA)
    )
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=[DANA]))
    dec.decide(engine, 1, "ada", "edit", dec.Edit(fields={"prompt": "Who handles refunds?"}))
    dec.decide(engine, 1, "bob", "approve")  # sets ada's edit and pia's mark aside
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=[DANA]))
    pii_again(engine, 1, "bob", DANA)
    assert dec.in_force_on(engine, [1])[1]["action"] == "approve" and dec.get_item(engine, 1)["status"] == "approved"
    # Stored as an approve alone, which a release before reads as one, saying the span.
    stored = dec.history(engine, 1)[-1]
    assert stored["action"] == "approve"
    assert json.loads(stored["before"])["again"] == {"pii": [list(DANA)], "fields": {}, "not_pii": []}
    dec.decide(engine, 1, "ada", "edit", dec.Edit(not_pii=[LONDON]))
    pii_again(engine, 1, "ada", LONDON)
    assert dec.not_pii_in_force(engine, 1) == set()
    dec.undo_last(engine, "bob")  # his PII again of Dana: pia's mark stands again
    assert dec.not_pii_in_force(engine, 1) == {DANA} and dec.get_item(engine, 1)["status"] == "edited"
    assert dec.run_decisions(engine, "ds").undone_in == {"s": {"a": {DANA}}}
    # Undoing the approve before them brings back what it set aside; ada's PII again of London stands.
    dec.undo_last(engine, "pia")
    dec.undo_last(engine, "bob")
    assert dec.not_pii_in_force(engine, 1) == {DANA} and dec.fields_in_force(engine, 1) == {
        "prompt": "Who handles refunds?"
    }


@pytest.mark.parametrize("many", [False, True], ids=["decide", "decide_all"])
def test_a_pii_again_stored_alone_takes_its_status_from_what_stands_when_it_is_stored(
    tmp_path: Path, many: bool
) -> None:
    # r75: the PII again read nothing else standing (an approve alone), but ada marked London not PII
    # before it was stored (a Label Studio import of a task with no ``seen``): it was stored "approved"
    # while her mark stands, so the status and the decisions in force disagreed.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    add_items(
        engine, "ds", 1, "run", pa.Table.from_pylist([flag("a", "pii", json.dumps(DANA_LONDON))], schema=FLAG_SCHEMA)
    )
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=[DANA]))
    again = dec.pii_again(dec.in_force_on(engine, [1])[1], [DANA])
    assert not again  # nothing else stood: an approve that says its span
    dec.decide(engine, 1, "ada", "edit", dec.Edit(not_pii=[LONDON]))
    if many:
        dec.decide_all(engine, "bob", [(dec.get_item(engine, 1), "approve", again, None)])
    else:
        dec.decide(engine, 1, "bob", "approve", again)
    now = dec.in_force_on(engine, [1])[1]
    assert dec.not_pii_of(now) == {LONDON} and now["action"] == "edit"
    assert dec.get_item(engine, 1)["status"] == "edited"
    # ada takes London back: the PII again alone stands, an approve.
    dec.undo_last(engine, "ada")
    assert dec.not_pii_in_force(engine, 1) == set() and dec.get_item(engine, 1)["status"] == "approved"


@pytest.mark.parametrize("many", [False, True], ids=["decide", "decide_all"])
@pytest.mark.parametrize("marks", [[DANA], [DANA, LONDON]], ids=["approve_alone", "approve_and_edit"])
def test_a_pii_again_stored_after_a_reject_it_did_not_see_leaves_the_reject_standing(
    tmp_path: Path, many: bool, marks: list[tuple[str, int, int]]
) -> None:
    # A PII again read before rita's reject and stored after it (a Label Studio task with no ``seen``)
    # undid her reject: read as an edit, it published the record rejected, though it only redacts more.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    add_items(
        engine, "ds", 1, "run", pa.Table.from_pylist([flag("a", "pii", json.dumps(DANA_LONDON))], schema=FLAG_SCHEMA)
    )
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=marks))
    again = dec.pii_again(dec.in_force_on(engine, [1])[1], [DANA])
    dec.decide(engine, 1, "rita", "reject")
    action = "edit" if again else "approve"
    if many:
        dec.decide_all(engine, "bob", [(dec.get_item(engine, 1), action, again, None)])
    else:
        dec.decide(engine, 1, "bob", action, again)
    assert dec.in_force_on(engine, [1])[1]["action"] == "reject" and dec.get_item(engine, 1)["status"] == "rejected"
    assert dec.run_decisions(engine, "ds").rejected == {"a"}
    # rita takes her reject back: bob's PII again stands, Dana redacted.
    dec.undo_last(engine, "rita")
    assert DANA not in dec.not_pii_in_force(engine, 1) and dec.run_decisions(engine, "ds").rejected == set()


def test_the_newest_value_of_a_field_wins_across_the_items_of_a_record(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    prompt = {"field": "prompt", "original": "Ask Bob.", "spans": [{"start": 4, "end": 7, "entity": "PERSON"}]}
    flags = [flag("a", "pii", json.dumps(DANA_LONDON)), flag("a", "pii", json.dumps(prompt))]
    add_items(engine, "ds", 1, "run", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))
    dec.decide(engine, 1, "pia", "edit", dec.Edit(fields={"prompt": "older"}, not_pii=[DANA]))
    dec.decide(engine, 2, "ada", "edit", dec.Edit(fields={"prompt": "newer"}))

    def prompts() -> tuple[str, str]:
        item = dec.get_item(engine, 1)
        record, _ = dec.record_in_force(engine, item, *dec.in_force_through_record(engine, item))
        return record["prompt"], dec.run_decisions(engine, "ds").edits["a"]["prompt"]

    assert prompts() == ("newer", "newer")
    # A later decision on item 1 that leaves its prompt as it was does not make its older value newer.
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=[LONDON]))
    assert prompts() == ("newer", "newer")
    pii_again(engine, 1, "pia", DANA)
    assert prompts() == ("newer", "newer")
    dec.undo_last(engine, "ada")
    assert prompts() == ("older", "older")


def test_an_edit_of_a_field_keeps_the_spans_marked_not_pii_that_it_kept(tmp_path: Path) -> None:
    from curation.review.auth import User
    from curation.review.views import item_view

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    original = "Ask Dana under Settings, Plan."  # Settings (15-23) is taken for a name
    spans = [
        {"start": 4, "end": 8, "entity": "PERSON", "score": 0.5, "placeholder": "<PERSON>"},
        {"start": 15, "end": 23, "entity": "PERSON", "score": 0.5, "placeholder": "<PERSON>"},
    ]
    payload = {"field": "completion", "original": original, "redacted": "Ask <PERSON> under <PERSON>, Plan."}
    payload.update(spans=spans, redactions=[{k: s[k] for k in ("start", "end", "placeholder")} for s in spans])
    flags = [flag(record, "pii", json.dumps(payload)) for record in "abcd"]
    add_items(engine, "ds", 1, "run", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))
    not_pii = dec.Edit(not_pii=[("completion", 15, 23)])

    # a: marked not PII, then a reviewer edits the text the page shows: as the next run publishes it.
    dec.decide(engine, 1, "pia", "edit", not_pii)
    shown = item_view(dec.get_item(engine, 1), User("rita", "reviewer"), dec.not_pii_in_force(engine, 1))
    assert shown["edit_values"] == {"completion": "Ask <PERSON> under Settings, Plan."}
    assert "Dana" not in json.dumps(shown, default=str)
    dec.decide(
        engine, 1, "rita", "edit", dec.Edit(fields={"completion": "Ask <PERSON> under Settings, Plan, Billing."})
    )
    # b: a pii-reviewer marks the span and rewrites the raw text in one edit.
    dec.decide(
        engine,
        2,
        "pia",
        "edit",
        dec.Edit(fields={"completion": "Dana, please open Settings."}, not_pii=not_pii.not_pii),
    )
    # c: a reviewer edited the redacted text before the mark: the span's placeholder gives way to its
    # text, the other one (Dana) stays a placeholder.
    dec.decide(engine, 3, "rita", "edit", dec.Edit(fields={"completion": "Ask <PERSON> under <PERSON>, then Plan."}))
    dec.decide(engine, 3, "pia", "edit", not_pii)
    # d: the edit rewrote the span: nothing of it is kept, and the new text is scanned as any.
    dec.decide(engine, 4, "pia", "edit", not_pii)
    dec.decide(engine, 4, "rita", "edit", dec.Edit(fields={"completion": "Ask <PERSON> under Preferences."}))

    decisions = dec.run_decisions(engine, "ds")
    assert {record: fields["completion"] for record, fields in decisions.edits.items()} == {
        "a": "Ask <PERSON> under Settings, Plan, Billing.",
        "b": "Dana, please open Settings.",
        "c": "Ask <PERSON> under Settings, then Plan.",
        "d": "Ask <PERSON> under Preferences.",
    }
    assert decisions.undone == {
        "a": {("completion", 19, 27)},
        "b": {("completion", 18, 26)},
        "c": {("completion", 19, 27)},
    }
    for record, (start, end) in (("a", (19, 27)), ("b", (18, 26)), ("c", (19, 27))):
        assert decisions.edits[record]["completion"][start:end] == "Settings"


def test_stage_filters_rejected_and_applies_edits() -> None:
    stage = ReviewDecisions(
        dec.RunDecisions(
            rejected={"r2"},
            edits={"r1": {"completion": "fixed", "amount": "12.5", "nope": "x"}, "r3": {"amount": "twelve"}},
        )
    )
    batch = pa.table(
        {
            "id": ["r1", "r2", "r3"],
            "source": source_array("files", "in.jsonl", [1, 2, 3]),
            "completion": ["old", "gone", "same"],
            "amount": pa.array([1.0, 2.0, 3.0]),
        }
    )
    result = stage(batch)
    assert result.kept["id"].to_pylist() == ["r1", "r3"]
    assert result.kept["completion"].to_pylist() == ["fixed", "same"]
    assert result.kept["amount"].to_pylist() == [12.5, 3.0]  # "twelve" cannot be a float: skipped, counted
    assert result.set_aside.to_pylist()[0] | {"source": None} == {
        "id": "r2",
        "source": None,
        "stage": "review",
        "outcome": "filtered",
        "reason": "review",
        "detail": "rejected by an annotator",
        "record": None,
        "duplicate_of": None,
    }
    assert result.stats == {"rejected": 1, "edited": 1, "edits_skipped": 2}


def test_stage_sits_after_record_validation_and_creates_no_state(tmp_path: Path) -> None:
    state = tmp_path / "nothing-yet" / "state.db"
    recipe = parse_recipe(f"dataset: d\nsources: [{{path: in.jsonl}}]\nstate: sqlite:///{state}\n", base_dir=tmp_path)
    names = [stage.name for stage in build_stages(recipe)]
    assert names[names.index("validate_record") + 1] == "review"
    assert not state.exists()
    assert load_decisions(f"sqlite:///{state}", "d") == dec.RunDecisions()
    assert load_decisions(f"sqlite:///{state}", "d").undone == {}
    assert not state.exists()


def test_a_flag_the_queue_holds_is_not_queued_again(tmp_path: Path) -> None:
    from curation.review.queue import list_items

    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    first = pa.Table.from_pylist([flag("r1", payload='{"a": 1}'), flag("r2")], schema=FLAG_SCHEMA)
    assert add_items(engine, "tx", 1, "run1", first) == 2
    # A full refresh flags the same records again: only what differs is queued.
    again = pa.Table.from_pylist(
        [flag("r1", payload='{"a": 1}'), flag("r2", payload='{"b": 2}'), flag("r3")], schema=FLAG_SCHEMA
    )
    assert add_items(engine, "tx", 2, "run2", again) == 2
    assert sorted((i["record_id"], i["version"]) for i in list_items(engine)) == [
        ("r1", 1),
        ("r2", 1),
        ("r2", 2),
        ("r3", 2),
    ]
    assert add_items(engine, "other", 1, "run3", first) == 2  # another dataset's queue is its own
    # Nor one decided on: the decision stays in force for the record.
    (r3,) = [i for i in list_items(engine) if i["record_id"] == "r3"]
    dec.decide(engine, r3["item_id"], "rita", "approve")
    assert add_items(engine, "tx", 3, "run4", pa.Table.from_pylist([flag("r3")], schema=FLAG_SCHEMA)) == 0


def test_a_near_duplicate_pair_queued_again_with_another_similarity_is_not_a_second_item(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    pair = {"cluster": "a", "kept": {"id": "a", "text": "x"}, "member": {"id": "d", "text": "y", "fields": {}}}

    def near(similarity: float, stage: str = "s") -> pa.Table:
        payload = json.dumps({**pair, "similarity": similarity})
        return pa.Table.from_pylist([{**flag("d", "near_duplicate", payload), "stage": stage}], schema=FLAG_SCHEMA)

    assert add_items(engine, "tx", 1, "run1", near(0.8125)) == 1
    # Asked again across runs, measured against the published signature: the same pair, the same question.
    assert add_items(engine, "tx", 2, "run2", near(0.796875)) == 0
    # Another stage's item is its own (a "not a duplicate" holds in the stage whose item it was).
    assert add_items(engine, "tx", 2, "run2", near(0.8125, stage="s_2")) == 1
    changed = {**pair, "member": {"id": "d", "text": "y!", "fields": {}}, "similarity": 0.8125}
    again = pa.Table.from_pylist([flag("d", "near_duplicate", json.dumps(changed))], schema=FLAG_SCHEMA)
    assert add_items(engine, "tx", 3, "run3", again) == 1


def test_stage_filters_the_content_of_rejected_records_but_not_a_copy_an_annotator_edited() -> None:
    from curation.review.rejected_content import content_keys

    def batch(ids: list[str], prompts: list[str]) -> pa.Table:
        lines = list(range(1, len(ids) + 1))
        return pa.table(
            {
                "id": ids,
                "source": source_array("files", "in.jsonl", lines),
                "prompt": prompts,
                "completion": ["a"] * len(ids),
            }
        )

    known = content_keys(batch(["k"], ["Known rejected?"]), "instruction")[0].as_py()
    decisions = dec.RunDecisions(rejected={"r", "k"}, edits={"e": {"completion": "b"}}, rejected_content={known: "k"})
    stage = ReviewDecisions(decisions, kind="instruction")
    # c1 is read before the record r it copies (case and spacing do not make content new); e, a copy
    # too, has an annotator's edit in force; k2 holds the content of k, rejected in an earlier run.
    first = stage(
        batch(["c1", "r", "e", "k2", "n"], ["who  PAYS?", "Who pays?", "Who pays?", "known rejected?", "New"])
    )
    assert first.kept["id"].to_pylist() == ["e", "n"] and first.kept["completion"].to_pylist() == ["b", "a"]
    aside = {row["id"]: row["duplicate_of"] for row in first.set_aside.to_pylist()}
    assert aside == {"c1": "r", "r": None, "k2": "k"}
    assert first.stats == {"rejected": 1, "rejected_content": 2, "edited": 1}
    second = stage(batch(["c2"], ["Who pays?"]))  # a later batch: r's content is known from then on
    assert second.kept.num_rows == 0 and stage.learned == {
        "r": content_keys(batch(["r"], ["Who pays?"]), "instruction")[0].as_py()
    }
    assert ReviewDecisions(decisions)(batch(["c3"], ["Who pays?"])).kept.num_rows == 1  # without the kind: ids only


def test_an_edit_starts_from_the_edit_in_force_where_the_role_sees_the_text_raw(tmp_path: Path) -> None:
    from curation.review.auth import User
    from curation.review.views import item_view

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    member = {"id": "b", "text": "Ask Dana.", "fields": {"completion": "Ask Dana."}}
    payload = {"kept": {"id": "a", "text": "Ask Dana!"}, "member": member, "similarity": 0.9}
    redacted = {**member, "published_text": "Ask <PERSON>.", "published_fields": {"completion": "Ask <PERSON>."}}
    flags = [
        flag("b", "near_duplicate", json.dumps(payload)),
        flag("c", "near_duplicate", json.dumps({**payload, "member": {**redacted, "id": "c"}})),
    ]
    add_items(engine, "ds", 1, "run", pa.Table.from_pylist(flags, schema=FLAG_SCHEMA))
    for item in (1, 2):
        dec.decide(engine, item, "pia", "edit", dec.Edit(fields={"completion": "Ask Dana Smith."}))

    def shown(item: int, user: User) -> dict:
        return item_view(dec.get_item(engine, item), user, edited=dec.fields_in_force(engine, item))

    assert shown(1, User("rita", "reviewer"))["edit_values"] == {"completion": "Ask Dana Smith."}
    assert shown(2, User("pia", "pii-reviewer"))["edit_values"] == {"completion": "Ask Dana Smith."}
    # A role shown the texts redacted is not shown an edit, typed raw: told it is in force instead.
    view = shown(2, User("rita", "reviewer"))
    assert view["edit_values"] == {"completion": "Ask <PERSON>."} and view["edit_hidden"] == ["completion"]


def test_a_label_studio_export_leaves_spans_marked_not_pii_in_clear(tmp_path: Path) -> None:
    from curation.review.labelstudio import export_tasks

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    spans = [
        {"start": 4, "end": 8, "entity": "PERSON", "score": 0.5, "placeholder": "<PERSON>"},
        {"start": 15, "end": 23, "entity": "PERSON", "score": 0.5, "placeholder": "<PERSON>"},
    ]
    payload = {"field": "completion", "original": "Ask Dana under Settings, Plan.", "spans": spans}
    payload.update(redacted="Ask <PERSON> under <PERSON>, Plan.", redactions=spans)
    add_items(engine, "ds", 1, "run", pa.Table.from_pylist([flag("a", "pii", json.dumps(payload))], schema=FLAG_SCHEMA))
    dec.decide(engine, 1, "pia", "edit", dec.Edit(not_pii=[("completion", 15, 23)]))  # Settings is no name
    # Redacted, the text is as the next run publishes it (as the page shows a reviewer).
    (task,) = export_tasks(engine)
    assert task["data"]["text"] == "Ask <PERSON> under Settings, Plan."
    # Raw, only the spans still redacted are predicted as PII.
    (task,) = export_tasks(engine, include_pii=True)
    assert [r["value"]["text"] for r in task["predictions"][0]["result"]] == ["Dana"]


def test_a_role_shown_near_duplicate_texts_redacted_gets_no_raw_values_in_the_view() -> None:
    from curation.review.auth import User
    from curation.review.views import item_view

    raw = {"completion": "Ask Dana Smith at dana@example.com."}
    picture = "data:image/jpeg;base64,AAAA"  # taken before the PII stage, which can redact text in images
    member = {"id": "b", "text": raw["completion"], "fields": raw, "thumbnail": picture}
    member.update(published_text="Ask <PERSON> at <EMAIL_ADDRESS>.")
    member["published_fields"] = {"completion": member["published_text"]}
    kept = {"id": "a", "text": "Ask Dana Smith!", "published_text": "Ask <PERSON>!", "thumbnail": picture}
    payload = {"kept": kept, "member": member, "similarity": 0.9}
    item = {"kind": "near_duplicate", "detail": "d", "source": "{}", "payload": json.dumps(payload)}
    view = item_view(item, User("rita", "reviewer"))
    assert view["redacted"] and view["edit_values"] == member["published_fields"]
    shown = json.dumps({"kept": view["kept"], "member": view["member"]})
    assert "Dana" not in shown and "dana@" not in shown and picture not in shown
    assert view["member"]["text"] == member["published_text"] and view["kept"]["id"] == "a"
    # A role that sees PII still gets the record's fields, to edit from.
    assert item_view(item, User("pia", "pii-reviewer"))["member"]["fields"] == raw
