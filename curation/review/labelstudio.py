"""The review queue as Label Studio tasks, and annotations from Label Studio back as decisions.

Export writes Label Studio's JSON task list (``[{"data": {...}, "predictions": [...]}]``); each
task's ``data`` carries our ``item_id`` so an exported project's annotations find their item on
import. PII text is exported redacted unless ``include_pii`` is set; only then do tasks carry the
raw text and the detected spans as ``labels`` predictions. ``LABEL_CONFIGS`` are the labeling
interfaces that match each kind.

Import reads Label Studio's JSON export: per task, the latest annotation's ``decision`` choice
(approve / reject, and keep: "not a duplicate", on a near-duplicate task) and, for PII tasks
exported with raw text, the spans as the annotator submitted them, set against those the task showed
(a span they removed becomes "not PII", one marked not PII that they labelled is PII again:
``_as_submitted``); for VQA, a changed ``answer`` becomes an edit. A task shows the item as the next run publishes it (spans marked not
PII in clear or not predicted, a VQA item's edited answer) or not at all (a PII item's edited fields), so an
approve that changes none of it keeps the edits in force, which an approve alone would set aside.

An item whose record a later run no longer found in the input is exported as the page lists it, with
``data.gone`` true (a column Label Studio's data manager can filter on) and ``data.gone_note``, which
the labeling configs show above the item; its annotation is taken as a
decision all the same, as on the page, and the import names it: the decision has no effect unless the
record comes back.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from html import escape
from typing import Any

import sqlalchemy as sa

from curation.review import decisions as dec
from curation.review.auth import NOT_PII_REFUSAL, find_user
from curation.review.queue import GONE_NOTE, MAX_ITEM_ID, create_tables, gone_items, review_items

_DECISION = """  <Choices name="decision" toName="{to}" choice="single" showInline="true">
    <Choice value="approve"/><Choice value="reject"/>{more}
  </Choices>"""
# A near duplicate may also be marked not a duplicate: the next run publishes it as it is.
_KEEP = '<Choice value="keep" hint="not a duplicate: publish this record as it is"/>'

# Label Studio's config language shows or hides an element by the annotation (a region, a choice), not
# by the task's data: a header of the task's ``gone_note`` says it, empty on the tasks whose record is there.
_GONE_HEADER = '  <Header value="$gone_note" style="color: #a40000"/>'
GONE_TASK_NOTE = f"Note: {GONE_NOTE}, unless the record comes back (its line put back as it was)."

DEFAULT_ENTITIES = ("PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "LOCATION", "CREDIT_CARD", "IBAN_CODE")

LABEL_CONFIGS: dict[str, str] = {
    "pii": f"""<View>
{_GONE_HEADER}
  <Labels name="pii" toName="text">{{labels}}</Labels>
  <Text name="text" value="$text"/>
{_DECISION.format(to="text", more="")}
</View>""",
    "near_duplicate": f"""<View>
{_GONE_HEADER}
  <Text name="kept" value="$kept"/><Text name="member" value="$member"/>
{_DECISION.format(to="member", more=_KEEP)}
</View>""",
    "quarantined": f"""<View>
{_GONE_HEADER}
  <Header value="$reason"/><Text name="raw" value="$raw"/>
{_DECISION.format(to="raw", more="")}
</View>""",
    "vqa": f"""<View>
{_GONE_HEADER}
  <Image name="image" value="$image"/><Header value="$question"/>
  <TextArea name="answer" toName="image" value="$answer" editable="true" maxSubmissions="1"/>
{_DECISION.format(to="image", more="")}
</View>""",
}


def label_config(kind: str, tasks: list[dict[str, Any]], entities: Iterable[str] = ()) -> str | None:
    """The labeling interface for ``kind``; for PII, a label for each entity the recipe looks for
    (``entities``) or the tasks' spans hold, so annotators can label the recipe's own entities too."""
    if kind not in LABEL_CONFIGS:
        return None
    if kind != "pii":
        return LABEL_CONFIGS[kind]
    found = [
        label
        for task in tasks
        for prediction in task.get("predictions", [])
        for result in prediction.get("result", [])
        for label in result.get("value", {}).get("labels", [])
    ]
    names = dict.fromkeys([*DEFAULT_ENTITIES, *entities, *sorted(set(found))])
    labels = "".join(f'<Label value="{escape(name)}"/>' for name in names)
    return LABEL_CONFIGS[kind].replace("{labels}", labels)


def _task(
    item: dict[str, Any],
    include_pii: bool,
    not_pii: set[tuple[str, int, int]],
    seen: str,
    gone: bool,
    edited: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``not_pii``: the spans of a PII item the decisions in force mark not PII, which the next run
    publishes in clear: in the text exported redacted, and not predicted as PII in the raw text.
    ``edited``: the field values the edits in force set, a VQA item's shown as the next run publishes them.
    ``seen``: the item's decisions as exported (``decisions.revision``), for the import to tell an
    item decided on since. ``gone``: whether its record is no longer in the input."""
    payload = json.loads(item["payload"] or "{}")
    data: dict[str, Any] = {
        "item_id": item["item_id"],
        "seen": seen,
        "record_id": item["record_id"],
        "kind": item["kind"],
        "dataset": item["dataset"],
        "version": item["version"],
        "detail": item["detail"],
        "gone": gone,
        "gone_note": GONE_TASK_NOTE if gone else "",
    }
    task: dict[str, Any] = {"data": data}
    if item["kind"] == "pii":
        data["field"] = payload.get("field")
        if include_pii:
            original = payload.get("original", "")
            data["text"] = original
            task["predictions"] = [
                {
                    "model_version": item["stage"],
                    "result": [
                        {
                            "id": f"s{index}",
                            "from_name": "pii",
                            "to_name": "text",
                            "type": "labels",
                            "value": {
                                "start": span["start"],
                                "end": span["end"],
                                "text": original[span["start"] : span["end"]],
                                "labels": [span["entity"]],
                            },
                            "score": span["score"],
                        }
                        for index, span in enumerate(payload.get("spans", []))
                        if (payload.get("field"), span["start"], span["end"]) not in not_pii
                    ],
                }
            ]
        else:
            places = {(start, end) for name, start, end in not_pii if name == payload.get("field")}
            data["text"] = dec.redacted_as_shown(payload, places)  # as the page shows a reviewer
    elif item["kind"] == "near_duplicate":
        # Texts taken before the recipe's PII stage have their redacted form beside them.
        text = "text" if include_pii else "published_text"
        kept, member = payload.get("kept", {}), payload.get("member", {})
        data.update(
            kept=kept.get(text, kept.get("text", "")),
            member=member.get(text, member.get("text", "")),
            similarity=payload.get("similarity"),
        )
    elif item["kind"] == "quarantined":
        # With a PII stage in the recipe, the input as published is beside the raw.
        raw = payload.get("record") if include_pii else payload.get("redacted_record", payload.get("record"))
        data.update(reason=payload.get("reason"), raw=raw)
    elif item["kind"] == "vqa":
        # As edited (what the next run publishes): an unchanged answer approved is then the edit, kept.
        data.update({name: (edited or {}).get(name, payload.get(name)) for name in ("image", "question", "answer")})
    return task


def export_tasks(
    engine: sa.Engine, filters: dict[str, Any] | None = None, include_pii: bool = False
) -> list[dict[str, Any]]:
    """Queue items matching ``filters`` (dataset, version, kind, status) as Label Studio tasks."""
    create_tables(engine)
    query = review_items.select().order_by(review_items.c.item_id)
    for name, value in (filters or {}).items():
        if value is not None:
            query = query.where(review_items.c[name] == value)
    with engine.connect() as db:
        rows = [dict(row._mapping) for row in db.execute(query)]
    gone = gone_items(engine, rows)
    seen = dec.revisions(engine, [row["item_id"] for row in rows])
    in_force = dec.in_force_on(engine, [row["item_id"] for row in rows if row["kind"] in ("pii", "vqa")])
    return [
        _task(
            row,
            include_pii,
            dec.not_pii_of(in_force.get(row["item_id"])),
            seen[row["item_id"]],
            (row["dataset"], row["record_id"]) in gone,
            dec.fields_of(in_force.get(row["item_id"])),
        )
        for row in rows
    ]


class LabelStudioError(ValueError):
    """A Label Studio export that cannot be read; the message names the task."""


def _annotations(task: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's annotations not cancelled, oldest first: a task annotated by several annotators (Label
    Studio's overlap) holds one each, and each is taken as a task of its own item (see ``import_annotations``)."""
    annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return sorted(annotations, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0))


CHANGED = "changed since export"
# Tasks of one item (an export imported twice into a Label Studio project, two exports overlapping):
# those that decide as another of the item does, and items whose tasks decide differently.
REPEATED = "same as another task"
DISAGREE = "tasks disagree"


def import_annotations(
    engine: sa.Engine,
    tasks: list[dict[str, Any]],
    user: str,
    changed: list[int] | None = None,
    gone: list[int] | None = None,
    disagreeing: list[str] | None = None,
    notes: list[str] | None = None,
) -> dict[str, int]:
    """Take each task's annotations as decisions by ``user`` (a user of the review page, whose
    role allows each decision, as on the page); returns counts per action. Nothing is recorded unless
    every task can be. A task whose item was decided on (or a decision undone) after the export is
    not taken, as a page showing the item from before is not: counted (``CHANGED``), its item added
    to ``changed`` (once; another task of the item, exported since, may be taken). A decision taken on an item whose record is no longer in the input (as the store
    says now, not the export) has its item added to ``gone``: as on the page, it is taken, and has no
    effect unless the record comes back.

    Several tasks of one item (or annotations of one task: annotators' overlap) that decide alike are one
    decision (the others counted ``REPEATED``), taken as the one exported from the item as it is now, if
    any; tasks of one item that decide differently are none: the item is counted (``DISAGREE``), and
    ``disagreeing`` says which tasks decide what, to settle in Label Studio or on the page. ``notes`` names
    each task whose labels were not taken (``_not_taken``), for the user to do on the page instead."""
    reviewer = find_user(engine, user)
    if reviewer is None:
        raise LabelStudioError(f"no review user {user!r}; create one with `curation review add-user`")
    counts = {"approve": 0, "reject": 0, "edit": 0, "keep": 0, "skipped": 0, "already in force": 0, CHANGED: 0}
    counts |= {REPEATED: 0, DISAGREE: 0}
    changed = [] if changed is None else changed
    gone = [] if gone is None else gone
    disagreeing = [] if disagreeing is None else disagreeing
    notes = [] if notes is None else notes
    # Each item's decided tasks, in task order: (where, action, edit, seen).
    asked: dict[int, list[tuple[str, str, dec.Edit | None, str | None]]] = {}
    decisions: list[tuple[dict[str, Any], str, dec.Edit | None, str | None]] = []
    # Read first, a chunk of tasks a query: an import of a whole queue asks the store a few times, not per task.
    items = dec.get_items(engine, _item_ids(tasks))
    in_force = dec.in_force_on(engine, items)
    revisions = dec.revisions(engine, list(items))
    for position, task in enumerate(tasks):
        where = f"task {position} (Label Studio id {task.get('id') if isinstance(task, dict) else None})"
        try:
            data = task.get("data") or {}
            if "item_id" not in data:
                raise LabelStudioError(f"{where} has no data.item_id")
            annotations = _annotations(task)
            if not annotations:
                counts["skipped"] += 1
                continue
            item_id = _item_id(data, where)
            item = items.get(item_id)
            if item is None:
                raise LabelStudioError(f"{where}: review item {item_id} does not exist")
            if data.get("record_id") is not None:
                _check_same_item(item, data, where)
            decided = []  # each annotation's (where, choice, edit, whether it says what the content is)
            for annotation in annotations:
                at = where if len(annotations) == 1 else f"{where} annotation {annotation.get('id')}"
                results = annotation.get("result") or []
                choices = next((r["value"]["choices"] for r in results if r.get("from_name") == "decision"), [None])
                choice = (choices or [None])[0] if isinstance(choices, list) else choices
                if choice not in (None, "approve", "reject", "keep"):
                    raise LabelStudioError(
                        f"{at}: unknown decision {choice!r}; the choices are approve, reject and keep (not a duplicate)"
                    )
                decided.append((at, choice, _edit(item, data, results), _says_content(item, data, results)))
                if choice != "reject":  # a reject's labels say nothing: the record is not published
                    current = in_force.get(item_id)
                    notes.extend(f"{at}, item {item_id}: {what}" for what in _not_taken(item, data, results, current))
            if data.get("record_id") is None and not _shows(item, data, in_force.get(item["item_id"])):
                raise LabelStudioError(
                    f"{where} has no data.record_id, and its dataset and text are not those of item "
                    f"{item['item_id']}: export the tasks again (`curation review export`). Nothing was imported"
                )
        except LabelStudioError:
            raise
        except (AttributeError, KeyError, IndexError, TypeError, ValueError, OverflowError) as error:
            problem = f"no {error}" if isinstance(error, KeyError) else str(error)
            raise LabelStudioError(f"{where} is not a task as Label Studio exports them: {problem}") from None
        seen = data.get("seen") if isinstance(data.get("seen"), str) else None  # exports from before have none
        # A task stale since its export is never taken (counted CHANGED below), and the decisions in force
        # now are not those it left out: an undo since would read as spans it newly marks.
        task_stale = seen is not None and seen != revisions[item["item_id"]]
        for at, choice, edit, said in decided:
            if said and item["kind"] == "pii" and not task_stale:
                # A task that says when it was exported showed the marks in force (none made since); one
                # without (an earlier release's) showed those its predictions leave out.
                shown = None if seen is not None else _marks_shown(item, task)
                edit, said = _as_submitted(edit, in_force.get(item["item_id"]), choice, shown)
            if choice == "approve" and edit is None and not said and not task_stale:
                # An approve alone sets aside the edits in force, which the export showed as the next run
                # publishes them, or not at all: approving the item as shown keeps them.
                edit = _shown_edits(item, data, in_force.get(item["item_id"]))
            if choice in ("reject", "keep"):
                action = choice
            elif edit:
                action = "edit"
            elif choice == "approve" or (edit is not None and edit.replaces):  # every mark set aside, no field edit
                action = "approve"
            else:
                counts["skipped"] += 1
                continue
            # An approve that makes spans PII again (nothing else left standing) says which (``decide``).
            taken = edit if dec.takes_edit(action, edit) else None
            try:
                # Spans already not PII are left out of the export's predictions, so they come back without a
                # label: only the others are marked now, and only an edit (not a reject or keep) marks them.
                marked = set(edit.not_pii) - dec.not_pii_of(in_force.get(item["item_id"])) if edit else set()
                if action == "edit" and marked and not task_stale and not reviewer.sees_pii:
                    raise dec.DecisionError(f"{user} is a {reviewer.role}; {NOT_PII_REFUSAL}")
                dec.check_decision(item, action, taken)
            except dec.DecisionError as error:
                raise LabelStudioError(f"{at}: {error}. Nothing was imported") from None
            asked.setdefault(item["item_id"], []).append((at, action, taken, seen))
    for item_id, wanted in asked.items():
        item = items[item_id]
        # The tasks exported from the item as it is now, when any were: older ones are not taken (as a page
        # showing the item from before is not), so they cannot make the current ones disagree either.
        current = [one for one in wanted if one[3] is None or one[3] == revisions[item_id]]
        pool = current or wanted
        if any(_decides(other) != _decides(pool[0]) for other in pool[1:]):
            # Which of them the annotators meant is theirs to say, not the order of the tasks in the file.
            counts[DISAGREE] += 1
            said = "; ".join(f"{where} {_said(action, edit)}" for where, action, edit, _ in pool)
            disagreeing.append(f"item {item_id}: {said}")
            continue
        older = [one for one in wanted if not any(one is chosen for chosen in pool)]
        counts[REPEATED] += len(pool) - 1 + sum(_decides(one) == _decides(pool[0]) for one in older)
        if any(_decides(one) != _decides(pool[0]) for one in older):
            counts[CHANGED] += sum(_decides(one) != _decides(pool[0]) for one in older)
            changed.append(item_id)
        _, action, taken, seen = pool[0]
        if dec.holds(in_force.get(item_id), action, taken):  # imported before: not decided twice
            counts["already in force"] += 1
            continue
        if seen is not None and seen != revisions[item_id]:
            counts[CHANGED] += 1
            changed.append(item_id)
            continue
        decisions.append((item, action, taken, seen))
    stale = dec.decide_all(engine, user, decisions)  # decided on the page while this import ran
    taken: list[dict[str, Any]] = []
    for item, action, _, _ in decisions:
        if item["item_id"] in stale:
            counts[CHANGED] += 1
            changed.append(item["item_id"])
        else:
            counts[action] += 1
            taken.append(item)
    changed[:] = dict.fromkeys(changed)  # an item with a stale task and a decision since the import began: once
    no_longer = gone_items(engine, taken)
    gone.extend(item["item_id"] for item in taken if (item["dataset"], item["record_id"]) in no_longer)
    return counts


def _decides(task: tuple[str, str, dec.Edit | None, str | None]) -> tuple[str, Any, Any, Any]:
    """What a task's annotation decides (its action and edit), for telling whether two tasks agree."""
    _, action, edit, _ = task
    # An approve that says the spans it makes PII again makes every mark in force PII again: the same as any
    # other approve of the item, a plain one from an earlier export included.
    if edit is None or action == "approve":
        return action, None, None, None
    return action, sorted(edit.fields.items()), sorted(edit.not_pii), edit.replaces


def _said(action: str, edit: dec.Edit | None) -> str:
    """A task's decision in a few words, for the message naming the tasks of an item that disagree."""
    if edit is None:
        return action
    changes = [f"{name}={value!r}" for name, value in sorted(edit.fields.items())]
    changes += [f"{field}[{start}:{end}] not PII" for field, start, end in sorted(edit.not_pii)]
    changes += ["the others PII"] if edit.replaces else []
    return f"{action} ({', '.join(changes)})"


# The task's field that holds what the item is about, by kind: one of its texts as an export holds it.
_SHOWN = {"pii": "text", "near_duplicate": "member", "quarantined": "raw", "vqa": "question"}


def _item_id(data: dict[str, Any], where: str) -> int:
    """The review item a task's ``data`` names: LabelStudioError if out of range, TypeError if not a whole
    number (the export writes an integer; a JSON reader may give it back as a float, 2.0, but not 2.7)."""
    item_id = data["item_id"]
    whole = isinstance(item_id, int) and not isinstance(item_id, bool)
    if not (whole or (isinstance(item_id, float) and item_id.is_integer())):
        raise TypeError(f"data.item_id {item_id!r} is not a whole number")
    if not 0 < item_id <= MAX_ITEM_ID:
        raise LabelStudioError(f"{where}: data.item_id {item_id!r} is no review item's id")
    return int(item_id)


def _item_ids(tasks: list[Any]) -> set[int]:
    """The item ids these tasks name, as the import reads each (the import says what is wrong with the others)."""
    found = set()
    for task in tasks:
        with contextlib.suppress(LabelStudioError, AttributeError, KeyError, TypeError, ValueError, OverflowError):
            found.add(_item_id(task["data"] or {}, ""))
    return found


def _check_same_item(item: dict[str, Any], data: dict[str, Any], where: str) -> None:
    """Refuse a task whose record, dataset, kind (or, for PII, field) are not its item's: item ids are the
    store's own and record ids name no dataset, so an export from another store (another recipe over the
    same input, or a store made again) names other items. Every export writes all of them."""
    holds = {"record": item["record_id"], "dataset": item["dataset"], "kind": item["kind"]}
    if item["kind"] == "pii":
        holds["field"] = json.loads(item["payload"] or "{}").get("field")
    named = {"record": data.get("record_id"), "dataset": data.get("dataset"), "kind": data.get("kind")}
    named["field"] = data.get("field")
    wrong = [f"{name} {value}, not the task's {named[name]}" for name, value in holds.items() if named[name] != value]
    if wrong:
        raise LabelStudioError(
            f"{where}: item {item['item_id']} holds {'; '.join(wrong)}: was it exported from another state "
            "store? Nothing was imported"
        )


def _shows(item: dict[str, Any], data: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """Whether a task without a record id (item ids are the store's own: it could be any store's item)
    is of this item: its dataset, and its text as an export of the item holds it (raw or redacted, the
    spans marked not PII in clear or not; a VQA question as flagged or as the edits in force, ``current``,
    set it)."""
    field = _SHOWN.get(item["kind"])
    if field is None or data.get("dataset") != item["dataset"] or not data.get(field):
        return False
    if not isinstance(data[field], str):
        return False
    if item["kind"] == "pii":
        return _exported_pii_text(json.loads(item["payload"] or "{}"), data[field])
    edited = dec.fields_of(current)
    return any(
        data[field] == _task(item, raw, set(), "", False, shown)["data"].get(field)
        for raw in (True, False)
        for shown in (None, edited)
    )


def _exported_pii_text(payload: dict[str, Any], text: str) -> bool:
    """Whether ``text`` is a PII flag's field as an export holds it: raw, or redacted with any of its
    spans in clear (those marked not PII when it was exported: marks since made or undone change which)."""
    if text in (payload.get("original"), payload.get("redacted")):
        return True
    original, redactions = payload.get("original"), dec.all_redactions(payload)
    if original is None or redactions is None:
        return False
    markable = {(span["start"], span["end"]) for span in payload.get("spans", [])}
    # Where in ``text`` the flag's text so far can end, each redaction read as its placeholder or, for a
    # span that can be marked not PII, its own text: a set of places, not a try of every combination.
    places, position = {0}, 0
    for span in sorted(redactions, key=lambda span: span["start"]):
        between = original[position : span["start"]]
        places = {at + len(between) for at in places if text.startswith(between, at)}
        shown = {span["placeholder"]}
        if (span["start"], span["end"]) in markable:
            shown.add(original[span["start"] : span["end"]])
        places = {at + len(one) for at in places for one in shown if text.startswith(one, at)}
        position = span["end"]
    return any(text[at:] == original[position:] for at in places)


def _reads_labels(item: dict[str, Any], data: dict[str, Any], results: list[dict[str, Any]]) -> bool:
    """Whether a PII task's labels say which spans are PII: exported raw, and labelled (no labels at all
    means the annotator did not work on spans)."""
    raw = data.get("text") == json.loads(item["payload"] or "{}").get("original")
    return item["kind"] == "pii" and raw and any(r.get("type") == "labels" for r in results)


def _says_content(item: dict[str, Any], data: dict[str, Any], results: list[dict[str, Any]]) -> bool:
    """Whether an annotation says what the item's content is, not only a choice: a PII task's labels
    (``_reads_labels``), a VQA task's answer other than the one exported."""
    answer = _answer(results)
    return _reads_labels(item, data, results) or (
        item["kind"] == "vqa" and bool(answer) and answer != data.get("answer")
    )


def _shown_edits(item: dict[str, Any], data: dict[str, Any], current: dict[str, Any] | None) -> dec.Edit | None:
    """The edits in force (``current``) that an approve of the task as exported (``data``) keeps: all those
    it showed as the next run publishes them or did not show. A PII task shows its spans marked not PII
    (in clear, or not predicted) and not the fields its edits set: its text is the flagged one, for the
    spans. A VQA task shows its question and answer; one exported before its tasks showed the edits in
    force showed the flagged ones (``seen`` the same): its approve is of those, and keeps none."""
    if item["kind"] not in ("pii", "vqa"):
        return None
    fields = dec.fields_of(current)
    if item["kind"] == "vqa" and any(data.get(name) != value for name, value in fields.items()):
        # Keeping those it shows alike would read as already in force, and keep the others too.
        return None
    edit = dec.Edit(fields=fields, not_pii=sorted(dec.not_pii_of(current)))
    return edit or None


def _as_submitted(
    labelled: dec.Edit | None,
    current: dict[str, Any] | None,
    choice: str | None,
    shown: set[tuple[str, int, int]] | None = None,
) -> tuple[dec.Edit | None, bool]:
    """A raw PII task's labels (``labelled``: the spans they leave unlabelled) as the decision, set against
    the spans the task showed: it predicted those not marked not PII by the decisions in force (``current``),
    or, for a task that does not say when it was exported, not among the marks it ``shown`` (``None``: all
    those in force); a mark made since, which the annotator never saw, stands, and so does the undo since of
    a mark it showed. A span newly left unlabelled is marked not PII, a shown mark labelled again is PII again, the others stand as they are; the field edits in force, which the
    task does not show, stand too. Edits add up, so a mark labelled again takes an edit that ``replaces``
    those in force with all that stands after it (``decisions.pii_again``, as the page's "PII again";
    empty, with no field edit: an approve that says the spans, which sets aside nothing else). Taken whole
    instead, the labels would keep a mark the annotator set aside and an approve with them would set aside
    the field edits. Returns the edit, and whether the labels say anything: not when they are those the
    task showed (an approve of the task as shown, ``_shown_edits``), nor when every span is labelled and
    nothing is in force (an approve of the item as flagged)."""
    marks, fields = dec.not_pii_of(current), dec.fields_of(current)
    unseen = marks - shown if shown is not None else set()
    submitted = set(labelled.not_pii) if labelled else set()
    if shown is not None:
        # A mark the task showed that is no longer in force was undone since: left unlabelled as shown, it
        # is no new decision, and the later undo stands.
        submitted -= shown - marks
    if choice == "approve" and not submitted and not fields and not marks:
        return None, True
    again = marks - unseen - submitted
    if again:  # what stands after it: the marks unseen, and those submitted
        return dec.pii_again(current, again, dec.Edit(not_pii=sorted(submitted))), True
    edit = dec.Edit(not_pii=sorted(submitted - marks))
    return (edit, True) if edit else (None, False)


def _marks_shown(item: dict[str, Any], task: dict[str, Any]) -> set[tuple[str, int, int]] | None:
    """The spans a raw PII task showed marked not PII, read from the task itself (an earlier release's
    export does not say which marks were in force): the flagged spans its predictions leave out, as the
    export predicts all but those. ``None`` when its predictions cannot tell (none, not as the export
    writes them, or of spans the item does not flag): the task is then read as submitted, so a span the
    annotator labelled is redacted, and only those left unlabelled are in clear."""
    payload = json.loads(item["payload"] or "{}")
    flagged = {(span["start"], span["end"]) for span in payload.get("spans", [])}
    predictions = task.get("predictions")
    if not isinstance(predictions, list) or not predictions:
        return None
    predicted = set()
    for prediction in predictions:
        results = prediction.get("result") if isinstance(prediction, dict) else None
        if not isinstance(results, list):
            return None
        for result in results:
            value = result.get("value") if isinstance(result, dict) else {}
            place = (value.get("start"), value.get("end")) if isinstance(value, dict) else ()
            if not all(isinstance(at, int) for at in place) or place not in flagged:
                return None
            predicted.add(place)
    return {(payload.get("field", ""), start, end) for start, end in flagged - predicted}


def _answer(results: list[dict[str, Any]]) -> str | None:
    """A VQA annotation's answer, if it gives one; TypeError if it is not text."""
    answer = next((r["value"]["text"] for r in results if r.get("from_name") == "answer"), None)
    if isinstance(answer, list):
        answer = answer[0] if answer else None
    if answer is not None and not isinstance(answer, str):
        raise TypeError(f"the answer is a {type(answer).__name__}, not text")
    return answer


def _edit(item: dict[str, Any], data: dict[str, Any], results: list[dict[str, Any]]) -> dec.Edit | None:
    payload = json.loads(item["payload"] or "{}")
    edit = dec.Edit()
    labelled = [r for r in results if r.get("type") == "labels"]
    if _reads_labels(item, data, results):
        # Spans the annotator left labelled stay redacted; a detected span they removed is not PII. A
        # label whose edges they moved still covers the span: it stays redacted as detected.
        # (No labels at all means the annotator did not work on spans: nothing is restored.)
        original = payload.get("original", "")
        kept = [place for r in labelled for place in _label_places(original, r["value"])]
        for span in payload.get("spans", []):
            if not _overlaps(kept, span):
                edit.not_pii.append((payload.get("field", ""), span["start"], span["end"]))
    if item["kind"] == "vqa":
        answer = _answer(results)
        if answer and answer != payload.get("answer"):
            edit.fields["answer"] = answer
    return edit or None


def _overlaps(places: list[tuple[int, int]], span: dict[str, Any]) -> bool:
    """Whether any of ``places`` (start, end) overlaps a flagged ``span``."""
    return any(start < span["end"] and span["start"] < end for start, end in places)


def _not_taken(
    item: dict[str, Any], data: dict[str, Any], results: list[dict[str, Any]], current: dict[str, Any] | None
) -> list[str]:
    """What a raw PII task's labels say that the import does not take, in words: a label on text the
    pipeline did not flag (decisions mark flagged spans, not new ones), and no labels left of those the
    task showed (read as not worked on, ``_reads_labels``). Said, not dropped silently."""
    payload = json.loads(item["payload"] or "{}")
    original, spans = payload.get("original"), payload.get("spans", [])
    if item["kind"] != "pii" or data.get("text") != original:
        return []
    labelled = [r["value"] for r in results if r.get("type") == "labels"]
    if not labelled:
        marks = dec.not_pii_of(current)
        if all((payload.get("field"), span["start"], span["end"]) in marks for span in spans):
            return []  # it showed no label to remove
        return [
            "its labels were all removed: taken as not worked on, no span marked not PII; "
            "to mark spans not PII, do it on the review page"
        ]
    said = []
    for value in labelled:
        places = _label_places(original, value)
        if not any(_overlaps(places, span) for span in spans):
            # Its offsets, not its text: what an annotator took for PII is not written to the import's log.
            said.append(
                f"a label at {value['start']}:{value['end']} is on no span the pipeline found: not taken; to redact "
                "more, edit the text on the review page"
            )
    return said


def _label_places(text: str, value: dict[str, Any]) -> list[tuple[int, int]]:
    """Where a label lies in ``text``, in characters. Label Studio releases differ in how they count a
    label's ``start`` and ``end`` after an emoji or another character outside the BMP: in characters,
    or in JavaScript's UTF-16 units (two for such a character). The reading whose slice is the label's
    ``text`` wins; a label without one is taken at both. ValueError for a label on no text of ``text``
    (outside it, empty) or not on its own ``text``: read as covering nothing, it would mark the span the
    annotator kept "not PII"."""
    start, end = int(value["start"]), int(value["end"])
    places = [(start, end)] if 0 <= start < end <= len(text) else []
    units = text.encode("utf-16-le")
    # Checked in units before reading them in characters, which stops at the text's end.
    if len(units) != 2 * len(text) and 0 <= start < end <= len(units) // 2:

        def in_characters(unit: int) -> int:
            return len(units[: 2 * unit].decode("utf-16-le", errors="ignore"))

        places.append((in_characters(start), in_characters(end)))
    if not places:
        raise ValueError(f"a label at {start}:{end} lies outside the text ({len(text)} characters)")
    said = value.get("text")
    if said is not None:
        # Whitespace compared collapsed: Label Studio's `text` may collapse a run of spaces its offsets cover
        # (HumanSignal/label-studio#3078); a refusal there would block the whole import.
        places = [(a, b) for a, b in places if text[a:b].split() == str(said).split()][:1]
        if not places:
            raise ValueError(f"a label at {start}:{end} does not hold the text it names")
    return places
