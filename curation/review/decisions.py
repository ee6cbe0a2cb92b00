"""Annotators' decisions on review items, and what the next run of a recipe takes from them.

Every decision is a row: who, when, the action, and the item's state before and after, so the
history can be audited and the latest decision undone. The pipeline reads the decision *in force*
on each item (its decisions not undone, taken in order: an approve or a reject sets aside what came
before, edits add up), keyed by record id: rejected records (and records holding their content, see
``curation.review.rejected_content``) are filtered with reason ``review``,
edits replace field values, and redaction spans marked "not PII" are handed to the PII stage whose item they were marked on
(``RunDecisions.undone_in``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from difflib import SequenceMatcher
from typing import Any, Literal

import sqlalchemy as sa

from connectors.batches import IDS_PER_QUERY, batched, id_chunks
from curation.redaction import redacted
from curation.review.queue import UPGRADES, connected, create_tables, metadata, review_items
from curation.review.rejected_content import copies_of, keys_of

log = logging.getLogger(__name__)

Action = Literal["approve", "reject", "edit", "keep"]
ACTIONS: tuple[Action, ...] = ("approve", "reject", "edit", "keep")
STATUS_OF: dict[str, str] = {"approve": "approved", "reject": "rejected", "edit": "edited", "keep": "kept"}
# "Not a duplicate": the record a near-duplicate item set aside is published as it is (see ``RunDecisions.kept_apart``).
KEEP_KINDS = ("near_duplicate",)

decisions = sa.Table(
    "review_decisions",
    metadata,
    sa.Column("decision_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("item_id", sa.Integer, nullable=False, index=True),
    sa.Column("dataset", sa.String(200), nullable=False, index=True),
    sa.Column("record_id", sa.String(64), nullable=False, index=True),
    sa.Column("user", sa.String(100), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # approve, reject, edit, keep (not a duplicate)
    sa.Column("before", sa.Text, nullable=False),  # JSON: status and the values the action changes
    sa.Column("after", sa.Text, nullable=False),  # JSON: status, field edits, spans marked not PII
    sa.Column("undone_at", sa.DateTime(timezone=True)),
    sa.Column("undone_by", sa.String(100)),
    # Undos numbered in commit order, as decision ids are (``DecisionMark``); null while not undone.
    sa.Column("undo_seq", sa.Integer),
)


class DecisionError(ValueError):
    """A decision that cannot be taken (unknown item, bad edit); the message says why."""


@dataclass
class Edit:
    """What an ``edit`` changes: field values, and redaction spans an annotator says are not PII.

    ``replaces``: the edit is all that stands after it, setting aside the edits in force (a Label Studio
    task whose spans marked not PII were labelled again). Edits add up, so it is stored as an approve
    (which sets them aside) and this edit, one transaction, undone together (``undo_last``): a release
    that knows nothing of it reads the same decisions in force, and one undoing the two apart goes
    through the approve, the item as flagged, with every span redacted.

    ``again`` and ``own`` (``pii_again``'s): the spans it makes PII again, and the values of its own among
    those it holds. This release reads the two rows as what they say alone (``in_force``), so the values
    it copied stay the decisions of those who made them, for them to undo."""

    fields: dict[str, str] = field(default_factory=dict)
    not_pii: list[tuple[str, int, int]] = field(default_factory=list)
    replaces: bool = False
    again: list[tuple[str, int, int]] = field(default_factory=list)
    own: Edit | None = None

    def __bool__(self) -> bool:
        return bool(self.fields or self.not_pii)

    def as_json(self) -> dict[str, Any]:
        return {"fields": self.fields, "not_pii": [list(span) for span in self.not_pii]}


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DecisionMark:
    """The review decisions a run reads: every decision up to id ``decided``, with the undos up to
    number ``undone`` made. The store gives both numbers in commit order (``_one_writer``), so a run's
    mark says exactly what it saw. Times would not: a decision stamped (by its server's clock) before a
    run started but committed after the run read them was missed by that run and counted as applied
    by the next, which compares the decisions the last version read with those standing now.

    A run recorded without numbers (an earlier release's, or a version the store does not know) read
    the decisions standing at a moment (``at``), by their stamps, as that release compared them: its
    undos numbered since (``_number_undos``) are not in time order, so no number stands for it."""

    decided: int = 0
    undone: int = 0
    at: datetime | None = None

    def standing(self, row: dict[str, Any]) -> bool:
        """Whether a decision row was taken, and not undone, as of this mark."""
        if self.at is not None:  # compared here: SQLite hands datetimes back naive (see _utc)
            moment, undone_at = _utc(self.at), row["undone_at"]
            return _utc(row["at"]) <= moment and (undone_at is None or _utc(undone_at) > moment)
        undone = row["undo_seq"]
        return row["decision_id"] <= self.decided and (undone is None or undone > self.undone)


# The highest undo number given (0 before any): the next undo takes the one after it.
_LAST_UNDO = sa.func.coalesce(sa.func.max(decisions.c.undo_seq), 0)


def mark_now(engine: sa.Engine) -> DecisionMark:
    """The review decisions committed now, in every dataset of the store (``DecisionMark``)."""
    create_tables(engine)
    query = sa.select(sa.func.coalesce(sa.func.max(decisions.c.decision_id), 0), _LAST_UNDO)
    with engine.connect() as db:
        decided, undone = db.execute(query).one()
    return DecisionMark(int(decided), int(undone))


def _one_writer(db: sa.Connection) -> None:
    """Let one transaction at a time write decisions and undos, so that the ids and undo numbers they
    take commit in their order: whoever read up to a number (``DecisionMark``) has seen every one
    below it. SQLite writes one transaction at a time anyway; PostgreSQL hands out ids as rows are
    inserted, and a later one could commit first. Taken after the item rows' locks, before the first
    write of a decision, as a writer of an earlier release takes its locks (the item row, then the
    table's for its insert): taken first, the two waited for each other (a deadlock)."""
    if db.dialect.name == "postgresql":
        db.execute(sa.text(f"LOCK TABLE {decisions.name} IN SHARE ROW EXCLUSIVE MODE"))


def _number_undos(engine: sa.Engine) -> None:
    """Number the undos a store made before undos were numbered (by when they were made), after any
    numbered since (an earlier release's review server still running)."""
    unnumbered = decisions.c.undone_at.is_not(None) & decisions.c.undo_seq.is_(None)
    with engine.connect() as db:
        if db.execute(sa.select(decisions.c.decision_id).where(unnumbered).limit(1)).first() is None:
            return
    with engine.begin() as db:
        _one_writer(db)
        # Written first, so that SQLite takes its write lock before the rows are read (two numbering at once).
        db.execute(decisions.update().where(unnumbered).values(undo_seq=decisions.c.undo_seq))
        latest = db.execute(sa.select(_LAST_UNDO)).scalar_one()
        rows = db.execute(sa.select(decisions.c.decision_id, decisions.c.undone_at).where(unnumbered)).all()
        ordered = sorted(rows, key=lambda row: (_utc(row.undone_at), row.decision_id))
        for number, row in enumerate(ordered, start=latest + 1):
            db.execute(decisions.update().where(decisions.c.decision_id == row.decision_id).values(undo_seq=number))


UPGRADES.append(_number_undos)


def get_item(engine: sa.Engine, item_id: int) -> dict[str, Any]:
    create_tables(engine)
    with engine.connect() as db:
        row = db.execute(review_items.select().where(review_items.c.item_id == item_id)).first()
    if row is None:
        raise DecisionError(f"review item {item_id} does not exist")
    return dict(row._mapping)


def get_items(engine: sa.Engine, item_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """``get_item`` of each of these ids that names an item, a chunk of ids a query."""
    create_tables(engine)
    found: dict[int, dict[str, Any]] = {}
    with engine.connect() as db:
        for chunk in id_chunks(item_ids):
            rows = db.execute(review_items.select().where(review_items.c.item_id.in_(chunk)))
            found.update((row.item_id, dict(row._mapping)) for row in rows)
    return found


def known_values(item: dict[str, Any]) -> dict[str, str]:
    """Record fields whose value the flag's payload holds (to prefill an edit and record "before")."""
    payload = json.loads(item["payload"] or "{}")
    if item["kind"] == "pii" and "field" in payload:
        return {**payload.get("fields", {}), payload["field"]: payload.get("original", "")}
    if item["kind"] == "vqa":
        return {name: payload[name] for name in ("question", "answer") if name in payload}
    if item["kind"] == "near_duplicate":
        return dict(payload.get("member", {}).get("fields") or {})
    return {}


def _pii_spans(item: dict[str, Any]) -> set[tuple[str, int, int]]:
    payload = json.loads(item["payload"] or "{}")
    return {(payload.get("field", ""), s["start"], s["end"]) for s in payload.get("spans", [])}


def check_decision(item: dict[str, Any], action: str, edit: Edit | None) -> None:
    """Raise ``DecisionError`` when ``action`` (with ``edit``) cannot be taken on ``item``."""
    if action not in ACTIONS:
        raise DecisionError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    if action == "keep" and item["kind"] not in KEEP_KINDS:
        raise DecisionError(
            f"only a near-duplicate item can be marked not a duplicate; item {item['item_id']} is {item['kind']}"
        )
    if action == "edit":
        if not edit:
            raise DecisionError("an edit needs at least one changed field or one span marked not PII")
        empty = [name for name, value in edit.fields.items() if not value.strip()]
        if empty:
            raise DecisionError(f"edited field(s) {', '.join(empty)} must not be empty")
        unknown = set(edit.not_pii) - _pii_spans(item)
        if unknown:
            raise DecisionError("only spans the PII stage flagged on this item can be marked not PII")


class StaleDecision(DecisionError):
    """A decision posted from a page that showed the item before another decision or undo on it."""


def revision(db: sa.Engine | sa.Connection, item_id: int) -> str:
    """What a page showing the item saw of its decisions: changes with each decision and undo on it."""
    query = sa.select(sa.func.max(decisions.c.decision_id), sa.func.count(decisions.c.undone_at)).where(
        decisions.c.item_id == item_id
    )
    with connected(db) as conn:
        latest, undone = conn.execute(query).one()
    return _revision_text(latest, undone)


def revisions(engine: sa.Engine, item_ids: list[int]) -> dict[int, str]:
    """``revision`` of each of ``item_ids``, asked a chunk of items at a time (an export of the queue)."""
    with engine.connect() as conn:
        return _revisions(conn, item_ids)


def _revisions(conn: sa.Connection, item_ids: list[int]) -> dict[int, str]:
    found = {item_id: _revision_text(None, 0) for item_id in item_ids}
    query = sa.select(
        decisions.c.item_id, sa.func.max(decisions.c.decision_id), sa.func.count(decisions.c.undone_at)
    ).group_by(decisions.c.item_id)
    for chunk in id_chunks(item_ids):
        for item_id, latest, undone in conn.execute(query.where(decisions.c.item_id.in_(chunk))):
            found[item_id] = _revision_text(latest, undone)
    return found


def _revision_text(latest: int | None, undone: int) -> str:
    return f"{latest}.{undone}" if latest is not None else "0.0"


# Every text ``revision`` makes, and nothing else: a form's ``seen`` not of it came from no page.
REVISION = re.compile(r"[0-9]+\.[0-9]+")


def decide(
    engine: sa.Engine, item_id: int, user: str, action: str, edit: Edit | None = None, seen: str | None = None
) -> int:
    """Record a decision on an item and set its status; returns the decision id. With ``seen`` (the
    item's ``revision`` when the annotator's page showed it), raise ``StaleDecision`` when another
    decision or undo came since: the annotator decided on what the item no longer is."""
    item = get_item(engine, item_id)
    check_decision(item, action, edit)
    with engine.begin() as db:
        # Written first, so that two decisions at once (two servers on one store, too) are taken one
        # after the other: the row's lock in PostgreSQL, the database's write lock in SQLite.
        db.execute(review_items.update().where(review_items.c.item_id == item_id).values(status=review_items.c.status))
        _one_writer(db)
        check_seen(db, item_id, seen, action)
        status = db.execute(sa.select(review_items.c.status).where(review_items.c.item_id == item_id)).scalar_one()
        previous = _in_force_for_item(db, item_id) if takes_edit(action, edit) else None
        rows, status = _decision_rows(item, user, action, edit, status, previous)
        for row in rows:
            decision_id = db.execute(decisions.insert().values(**row)).inserted_primary_key[0]
        db.execute(review_items.update().where(review_items.c.item_id == item_id).values(status=status))
    return int(decision_id)


def takes_edit(action: str, edit: Edit | None) -> bool:
    """Whether a decision ``action`` is stored with ``edit``: an edit, and an approve that says the spans
    it makes PII again (``pii_again``). ``_decision_rows`` needs the decision in force (``previous``) for
    these: an edit's values replace it, and an approve that says its spans leaves what it did not touch
    standing."""
    return action == "edit" or (action == "approve" and edit is not None and bool(edit.again))


def _decision_rows(
    item: dict[str, Any], user: str, action: str, edit: Edit | None, status: str, previous: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], str]:
    """``_decision_row``, with an edit that ``replaces`` those in force stored after an approve, and an
    approve that makes spans PII again (``pii_again``, empty: nothing left standing) saying which."""
    if action == "approve" and edit is not None and edit.again:
        row, status = _decision_row(item, user, action, None, status, previous)
        # A release before reads it as the approve it is; this one as the spans taken out (``in_force``),
        # so it sets aside nothing that an undo before it brings back.
        row["before"] = json.dumps({**json.loads(row["before"]), **_said_again(edit)})
        # Nothing stood but these spans' marks when the caller read them; a decision may have come since
        # (an import of a task with no ``seen``): the status is what stands now, as ``in_force`` reads it.
        if fields_of(previous) or not_pii_of(previous) - set(edit.again):
            status = STATUS_OF["edit"]
        return [row], _status_after_again(status, previous, edit)
    if action != "edit" or edit is None or not edit.replaces:
        row, status = _decision_row(item, user, action, edit, status, previous)
        return [row], status
    approve, status = _decision_row(item, user, "approve", None, status, None)
    row, status = _decision_row(item, user, action, edit, status, None)
    # Undone with the approve before it (``undo_last``). ``again`` holds what it says alone; a release
    # before reads the copy in ``after``.
    said = _said_again(edit) if edit.own is not None else {}
    row["before"] = json.dumps({**json.loads(row["before"]), "replaces": True, **said})
    return [approve, row], _status_after_again(status, previous, edit) if said else status


def _status_after_again(status: str, previous: dict[str, Any] | None, edit: Edit) -> str:
    """The item's status after a "PII again" (``pii_again``): a reject in force that it was read before
    (a task with no ``seen``) stands after one with nothing of its own, as ``in_force`` reads it."""
    return STATUS_OF["reject"] if previous is not None and previous["action"] == "reject" and not edit.own else status


def _said_again(edit: Edit) -> dict[str, Any]:
    """What a "PII again" (``pii_again``) says alone, in the shape of an edit's ``after`` (``in_force``):
    the spans it makes PII again, and its own values."""
    return {"again": {**(edit.own or Edit()).as_json(), "pii": [list(span) for span in edit.again]}}


def _decision_row(
    item: dict[str, Any], user: str, action: str, edit: Edit | None, status: str, previous: dict[str, Any] | None
) -> tuple[dict[str, Any], str]:
    """The decision's row, and the item's status after it: ``status`` is the item's before, ``previous``
    the decision in force on it (``in_force``; needed for an edit only)."""
    before: dict[str, Any] = {"status": status}
    after: dict[str, Any] = {"status": STATUS_OF[action]}
    status = after["status"]
    if action == "edit" and edit is not None:
        # Only this edit's own values: it adds to the edits in force when they are read (see
        # ``in_force``), so undoing an earlier one takes out that one alone.
        after.update(edit.as_json())
        # The values the edit replaces: an edit's in force, else what the flag showed.
        earlier = json.loads(previous["after"]).get("fields", {}) if previous else {}
        known = {**known_values(item), **earlier}
        before["fields"] = {name: known.get(name) for name in edit.fields}
        if previous and previous["action"] == "keep":
            status = STATUS_OF["keep"]  # the keep stands, with the edit (see ``in_force``)
    row = {
        "item_id": item["item_id"],
        "dataset": item["dataset"],
        "record_id": item["record_id"],
        "user": user,
        "at": _now(),
        "action": action,
        "before": json.dumps(before),
        "after": json.dumps(after),
    }
    return row, status


def decide_all(
    engine: sa.Engine, user: str, wanted: list[tuple[dict[str, Any], str, Edit | None, str | None]]
) -> set[int]:
    """``decide`` on many items (each an item, as ``get_item`` reads it, checked with ``check_decision``;
    an action; an edit; ``seen``), a transaction and a few statements a chunk of items rather than
    several per item (a Label Studio import of a whole queue). Returns the items not decided on because
    they changed since ``seen`` (``StaleDecision``)."""
    stale: set[int] = set()
    # An item twice among them is decided on in a later round: after the first, as ``decide`` would be.
    rounds: list[list[tuple[dict[str, Any], str, Edit | None, str | None]]] = []
    taken: dict[int, int] = {}
    for one in wanted:
        place = taken.get(one[0]["item_id"], 0)
        taken[one[0]["item_id"]] = place + 1
        if place == len(rounds):
            rounds.append([])
        rounds[place].append(one)
    for chunk in (chunk for round_ in rounds for chunk in batched(round_, IDS_PER_QUERY)):
        ids = [item["item_id"] for item, *_ in chunk]
        these = review_items.c.item_id.in_(ids)
        with engine.begin() as db:
            # Locked first, as ``decide`` locks its one item: a decision or undo on one of them at once waits.
            db.execute(review_items.update().where(these).values(status=review_items.c.status))
            _one_writer(db)
            now_seen = _revisions(db, ids)
            statuses = dict(db.execute(sa.select(review_items.c.item_id, review_items.c.status).where(these)).all())
            edited = [item["item_id"] for item, action, edit, _ in chunk if takes_edit(action, edit)]
            previous = _in_force_per_item(db, decisions.c.item_id.in_(edited)) if edited else {}
            rows, after = [], {}
            for item, action, edit, seen in chunk:
                item_id = item["item_id"]
                if seen is not None and seen != now_seen[item_id]:
                    stale.add(item_id)
                    continue
                taken, after[item_id] = _decision_rows(
                    item, user, action, edit, statuses[item_id], previous.get(item_id)
                )
                rows += taken
            if rows:
                db.execute(decisions.insert(), rows)
            for status in set(after.values()):
                ids = [item_id for item_id, now in after.items() if now == status]
                db.execute(review_items.update().where(review_items.c.item_id.in_(ids)).values(status=status))
    return stale


def check_seen(db: sa.Engine | sa.Connection, item_id: int, seen: str | None, action: str) -> None:
    """Raise ``StaleDecision`` when the item's decisions changed since a page showed them (``seen``)."""
    if seen is None:
        return
    with connected(db) as conn:
        if seen != revision(conn, item_id):
            raise StaleDecision(_changed_since(conn, item_id, action))


def _changed_since(db: sa.Connection, item_id: int, action: str) -> str:
    """Why a decision from a stale page is not taken: the latest change on the item, and who made it."""
    query = decisions.select().where(decisions.c.item_id == item_id).order_by(decisions.c.decision_id.desc())
    latest = db.execute(query.limit(1)).first()
    undone = db.execute(
        query.where(decisions.c.undone_at.is_not(None)).order_by(decisions.c.undone_at.desc()).limit(1)
    ).first()
    if latest is None:
        change = "its decisions were changed"
    elif undone is not None and _utc(undone.undone_at) > _utc(latest.at):
        change = f"{undone.undone_by} undid the {undone.action} by {undone.user}"
    else:
        change = f"{latest.user} decided {latest.action}"
    now = _in_force_for_item(db, item_id)
    status = STATUS_OF[now["action"]] if now else "open"
    return (
        f"item {item_id} changed since your page showed it: {change}; it is now {status}. "
        f"Your {action} was not taken: look at the item again and decide."
    )


def _latest_in_force(*where: Any) -> sa.Select:
    """The latest decision not undone among those matching ``where``."""
    query = decisions.select().where(*where, decisions.c.undone_at.is_(None))
    return query.order_by(decisions.c.decision_id.desc()).limit(1)


def in_force(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What one item's decisions (not undone, oldest first) leave in force, as a decision row: the
    latest one's who and when, with the action and ``after`` they add up to. An approve or a reject
    sets aside what came before it; edits add up (a later value of a field wins), so two annotators'
    edits both stand and undoing one takes out its own values alone. A keep ("not a duplicate") sets
    aside what came before it too, and edits after it add to it: the action stays ``keep``, with them.
    A "PII again" (``pii_again``: an approve and an edit that copies what stands) is read as what it says
    alone, the spans it makes PII again taken out and its own values added, so the values it copied stay
    the edits of those who made them; stored as an approve alone (nothing else stood), it takes the spans
    out and sets nothing aside, and with nothing of its own it leaves a reject standing. ``field_ids`` says which decision set each field's value, for
    merging the items of a record (``newest_fields``)."""
    if not rows:
        return None
    rejected, kept, fields, spans, field_ids = False, False, {}, [], {}
    parsed = [(row, json.loads(row["before"])) for row in rows]
    for place, (row, before) in enumerate(parsed):
        again = before.get("again")
        if row["action"] != "edit" and again is None:
            if pii_again_of(row, parsed[place + 1] if place + 1 < len(parsed) else None):
                continue
            rejected, kept, fields, spans, field_ids = row["action"] == "reject", row["action"] == "keep", {}, [], {}
            continue
        after = again if again is not None else json.loads(row["after"])
        # A keep ("not a duplicate") stands: an edit after it adds to it. A reject stands after a PII
        # again with nothing of its own: that only redacts more (one read before the reject came).
        if again is None or again.get("fields") or again.get("not_pii"):
            rejected = False
        fields.update(after.get("fields", {}))
        field_ids.update(dict.fromkeys(after.get("fields", {}), row["decision_id"]))
        # Spans marked PII again: ``Edit.again``, or as a store written by a release before ``Edit.replaces`` may hold them.
        spans = [span for span in spans if span not in after.get("pii", [])]
        spans += [span for span in after.get("not_pii", []) if span not in spans]
    action = "reject" if rejected else "keep" if kept else "edit" if fields or spans else "approve"
    edits = {"fields": fields, "not_pii": spans} if action == "edit" or (action == "keep" and (fields or spans)) else {}
    after = {"status": STATUS_OF[action], **edits}
    return {**rows[-1], "action": action, "after": json.dumps(after), "field_ids": field_ids}


def pii_again_of(row: dict[str, Any], following: tuple[dict[str, Any], dict[str, Any]] | None) -> bool:
    """Whether ``row`` is the approve stored with the "PII again" edit that follows it (``Edit.again``),
    which this release reads alone: the approve sets nothing aside. ``following`` is the next row with
    its ``before`` parsed, if there is one."""
    if row["action"] != "approve" or following is None:
        return False
    after_it, its_before = following
    return after_it["action"] == "edit" and after_it["user"] == row["user"] and "again" in its_before


def newest_fields(in_force_rows: Iterable[tuple[dict[str, Any], dict[str, str]]]) -> dict[str, str]:
    """The field values the decisions in force on a record's items (``in_force``) set, each field's from
    the newest decision that set it, whichever item it was on: an item's later decision on other
    values leaves its older value of the field older. Each decision comes with the values it sets
    (``fields_of``), which its caller has read already (``run_decisions``)."""
    newest: dict[str, tuple[int, str]] = {}
    for decision, fields in in_force_rows:
        for name, value in fields.items():
            decided = decision["field_ids"][name]
            if name not in newest or decided > newest[name][0]:
                newest[name] = (decided, value)
    return {name: value for name, (_, value) in newest.items()}


def _in_force_per_item(
    engine: sa.Engine | sa.Connection, *where: Any, as_of: DecisionMark | None = None
) -> dict[int, dict[str, Any]]:
    """The decision in force (``in_force``) on each item with decisions matching ``where``: now, or as
    a run read them (``as_of``) (read on a connection, a transaction's, when given one)."""
    query = decisions.select().where(*where).order_by(decisions.c.decision_id)
    if as_of is None:
        query = query.where(decisions.c.undone_at.is_(None))
    with connected(engine) as db:
        rows = [dict(row._mapping) for row in db.execute(query)]
    if as_of is not None:
        rows = [row for row in rows if as_of.standing(row)]
    in_force_now = ((item, in_force(item_rows)) for item, item_rows in _by_item(rows).items())
    return {item: decision for item, decision in in_force_now if decision}


def _by_item(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Decision rows grouped by item, each group in the rows' order."""
    per_item: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        per_item.setdefault(row["item_id"], []).append(row)
    return per_item


def _in_force_for_item(engine: sa.Engine | sa.Connection, item_id: int) -> dict[str, Any] | None:
    return _in_force_per_item(engine, decisions.c.item_id == item_id).get(item_id)


def holds_already(engine: sa.Engine, item_id: int, action: str, edit: Edit | None = None) -> bool:
    """Whether the decisions in force on the item already say this (an export imported twice)."""
    return holds(_in_force_for_item(engine, item_id), action, edit)


def holds(current: dict[str, Any] | None, action: str, edit: Edit | None = None) -> bool:
    """``holds_already``, given the decision in force on the item (``in_force_on``)."""
    if current is None or current["action"] != action:
        return False
    if action != "edit" or edit is None:
        return True
    after = json.loads(current["after"])
    fields, spans = after.get("fields", {}), [tuple(span) for span in after.get("not_pii", [])]
    if edit.replaces:
        return fields == edit.fields and set(spans) == set(edit.not_pii)
    return all(fields.get(name) == value for name, value in edit.fields.items()) and all(
        tuple(span) in spans for span in edit.not_pii
    )


def in_force_on(engine: sa.Engine, item_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The decision in force (``in_force``) on each of these items that has one, a chunk of items a query."""
    found: dict[int, dict[str, Any]] = {}
    with engine.connect() as db:
        for chunk in id_chunks(item_ids):
            found.update(_in_force_per_item(db, decisions.c.item_id.in_(chunk)))
    return found


def undo_last(engine: sa.Engine, user: str) -> dict[str, Any] | None:
    """Undo this user's latest decision still in force; the item goes back to its earlier status.

    The decision row stays (marked undone, by whom and when) so the history keeps it. Returns the
    undone decision, or None when the user has nothing left to undo.
    """
    create_tables(engine)
    query = _latest_in_force(decisions.c.user == user)
    while True:
        # One transaction a try: a try whose decision another undo took first ends, and lets go of
        # that item's row, before the next locks another's. Held across tries, two undos retrying
        # onto each other's items (or an undo and a decision) would wait for each other: PostgreSQL
        # ends one of them with a deadlock error.
        with engine.begin() as db:
            row = db.execute(query).first()
            if row is None:
                return None
            undone = dict(row._mapping)
            # The item's row locked first, as ``decide`` does: a decision on the item at once waits for
            # this undo (and this undo for it), so the status set below counts it rather than going stale.
            item = review_items.c.item_id == undone["item_id"]
            db.execute(review_items.update().where(item).values(status=review_items.c.status))
            _one_writer(db)
            latest = db.execute(sa.select(_LAST_UNDO)).scalar_one()
            # Only if still in force: two undos at once (two tabs, two servers) undo two decisions,
            # not the same one twice while each says it undid one.
            taken = db.execute(
                decisions.update()
                .where(decisions.c.decision_id == undone["decision_id"], decisions.c.undone_at.is_(None))
                .values(undone_at=_now(), undone_by=user, undo_seq=latest + 1)
            )
            if taken.rowcount != 1:
                continue
            if undone["action"] == "edit" and json.loads(undone["before"]).get("replaces"):
                # The approve stored with it, just before it on the item (``Edit.replaces``), unless
                # a release that undoes them apart undid it.
                with_it = decisions.c.item_id == undone["item_id"], decisions.c.decision_id < undone["decision_id"]
                pair = db.execute(decisions.select().where(*with_it).order_by(decisions.c.decision_id.desc()).limit(1))
                approve = pair.first()
                if approve is not None and approve.action == "approve" and approve.undone_at is None:
                    db.execute(
                        decisions.update()
                        .where(decisions.c.decision_id == approve.decision_id)
                        .values(undone_at=_now(), undone_by=user, undo_seq=latest + 2)
                    )
            # The item takes the status of the decisions now in force on it (another annotator's, maybe), else open.
            now = _in_force_for_item(db, undone["item_id"])
            status = STATUS_OF[now["action"]] if now else "open"
            db.execute(review_items.update().where(item).values(status=status))
        return undone


def undone_together(approve: dict[str, Any], edit: dict[str, Any]) -> bool:
    """Whether the approve stored with an edit (``Edit.replaces``) and that edit stand or fell as one:
    both in force, or both undone by one ``undo_last``, which numbers the approve's undo right after
    the edit's. Not when one was undone alone (an earlier release's undo), though an undo took the
    other later: each was then a decision of its own. An undo left unnumbered (a server of a release
    before undo numbers, still running) took one row alone, as those releases did."""
    if approve["undone_at"] is None and edit["undone_at"] is None:
        return True
    approve_undo, edit_undo = approve["undo_seq"], edit["undo_seq"]
    return approve_undo is not None and edit_undo is not None and approve_undo == edit_undo + 1


def history(engine: sa.Engine, item_id: int) -> list[dict[str, Any]]:
    """Every decision on an item, oldest first, undone ones included."""
    create_tables(engine)
    query = decisions.select().where(decisions.c.item_id == item_id).order_by(decisions.c.decision_id)
    with engine.connect() as db:
        return [dict(row._mapping) for row in db.execute(query)]


def active_decisions(engine: sa.Engine, dataset: str, as_of: DecisionMark | None = None) -> list[dict[str, Any]]:
    """The decision in force on each item of a dataset (``in_force``), now or as of ``as_of``, oldest first."""
    if not sa.inspect(engine).has_table(decisions.name):
        return []
    create_tables(engine)  # a store an earlier release made gets the columns read here
    in_force_now = _in_force_per_item(engine, decisions.c.dataset == dataset, as_of=as_of)
    return sorted(in_force_now.values(), key=lambda row: row["decision_id"])


def in_force_through_record(
    engine: sa.Engine, item: dict[str, Any]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The decision in force on ``item``, and those in force on its record through its other items (an
    earlier version's flags, its other fields and stages), oldest first: one query for both."""
    where = (decisions.c.dataset == item["dataset"], decisions.c.record_id == item["record_id"])
    found = _in_force_per_item(engine, *where)
    own = found.pop(item["item_id"], None)
    return own, sorted(found.values(), key=lambda row: row["decision_id"])


@dataclass
class RunDecisions:
    """What the next run of a dataset applies: rejected record ids and field edits per record.

    ``undone_in`` holds, per PII stage name and record, the redaction spans (field, start, end)
    annotators marked not PII on that stage's items, for it to leave as they are in a record read
    again; ``restored_in``, per PII stage name, each such field of a carried record as that stage made
    it but with those spans put back (the later stages that rewrite text still have to see it);
    ``restored`` the texts carried records get, once they have (``restorations_through_stages``).
    """

    rejected: set[str] = field(default_factory=set)
    edits: dict[str, dict[str, str]] = field(default_factory=dict)
    # Per stage: a second PII stage scanning a field sees the first one's output, so a span's offsets
    # hold only in the text of the stage whose item it was marked on.
    undone_in: dict[str, dict[str, set[tuple[str, int, int]]]] = field(default_factory=dict)
    # As ``undone_in``, the text each span held when it was marked: a mark applies only where it still does.
    marked_in: dict[str, dict[str, dict[tuple[str, int, int], str]]] = field(default_factory=dict)
    restored_in: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    restored: dict[str, dict[str, str]] = field(default_factory=dict)
    # A rejection covers the record's content (``curation.review.rejected_content``): the content key of
    # each rejected record known, and the copies of its content filtered before (in ``rejected`` too).
    rejected_content: dict[int, str] = field(default_factory=dict)  # content key -> rejected record
    copy_of: dict[str, str] = field(default_factory=dict)  # copy's id -> rejected record

    # "Not a duplicate": records with such a decision in force (counted by the review stage).
    kept_apart: set[str] = field(default_factory=set)
    # The decision is on a pair and applies in the stage whose item it was: per stage name, each record
    # kept apart -> the records it was kept apart from (each item's kept record). The stage publishes it
    # unless it is near another record its cluster publishes (``keep_first``).
    kept_apart_in: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    # Per stage name as ``kept_apart_in``, the records of these pairs, either side (each one's side of its
    # item: id, text, uri, thumbnail): a later record that stage sets aside as an earlier version of one of
    # these is queued again (``CrossRunDedup``); another stage's decision says nothing of its pairs.
    kept_from: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def undone(self) -> dict[str, set[tuple[str, int, int]]]:
        """Per record, the spans marked not PII in any PII stage."""
        merged: dict[str, set[tuple[str, int, int]]] = {}
        for in_stage in self.undone_in.values():
            for record, spans in in_stage.items():
                merged.setdefault(record, set()).update(spans)
        return merged

    def __bool__(self) -> bool:
        return bool(self.rejected or self.edits or self.undone or self.kept_apart)

    def carried_edits(self) -> dict[str, dict[str, str]]:
        """Field values for carried records: restorations, and edits, which win for the same field."""
        return {
            record: {**self.restored.get(record, {}), **self.edits.get(record, {})}
            for record in self.restored.keys() | self.edits.keys()
        }


@dataclass
class Change:
    """An item whose decisions changed after a version was published: what was in force then (what the
    version's lines hold) and what is now."""

    kind: str
    source: str  # the item's source, as JSON
    then: dict[str, Any] | None
    now: dict[str, Any] | None
    payload: str = "{}"  # the item's, as JSON


def changes(engine: sa.Engine, dataset: str, since: DecisionMark, until: DecisionMark | None = None) -> list[Change]:
    """The items of a dataset whose decisions in force as of ``since`` (as the run of a version read
    them) and ``until`` (this run's reading; default now) differ in their effect on the record (an
    approve of a fresh flag changes nothing)."""
    if not sa.inspect(engine).has_table(decisions.name):
        return []
    create_tables(engine)  # a store an earlier release made gets the columns read here
    until = until or mark_now(engine)
    query = (
        sa.select(review_items.c.source, review_items.c.kind, review_items.c.payload, decisions)
        .join(decisions, decisions.c.item_id == review_items.c.item_id)
        .where(decisions.c.dataset == dataset)
        .order_by(decisions.c.decision_id)
    )
    with engine.connect() as db:
        rows = [dict(row._mapping) for row in db.execute(query)]
    found = []
    for item_rows in _by_item(rows).values():
        then = in_force([r for r in item_rows if since.standing(r)])
        now = in_force([r for r in item_rows if until.standing(r)])
        if _effect(then) != _effect(now):
            first = item_rows[0]
            found.append(Change(first["kind"], first["source"], then, now, first["payload"]))
    return found


def changes_since(engine: sa.Engine, dataset: str, since: DecisionMark, until: DecisionMark | None = None) -> int:
    """How many records' decisions in force changed after ``since`` (a version's publication) in a way
    their carried lines take: the next run publishes them even when it has no new input. (The other
    changes read their inputs again: ``inputs_to_read_again``.)"""
    return sum(
        1
        for c in changes(engine, dataset, since, until)
        if c.kind != "near_duplicate" and not _taken_away(c.then, c.now)
    )


def inputs_to_read_again(
    engine: sa.Engine, dataset: str, since: DecisionMark, until: DecisionMark | None = None
) -> set[str]:
    """The inputs (URIs) holding records whose decisions changed since ``since`` in a way a carried line
    cannot take: what was in force then (a rejection, an edit's field, a span marked not PII) is not
    now (undone, or set aside by a later approve), so the line lacks the record or holds a value that
    is not the input's; and a change on a near duplicate, which was set aside (it is in no line).
    Read again, the record meets the decisions in force as any record read does."""
    found = [
        c for c in changes(engine, dataset, since, until) if c.kind == "near_duplicate" or _taken_away(c.then, c.now)
    ]
    uris = {uri for uri in (json.loads(c.source).get("uri") for c in found) if uri}
    # A near duplicate is judged beside the record its cluster kept: read again too, or a recipe without
    # near-dedup across runs would find nothing to set it aside beside (a flag from before lacks it).
    uris |= {
        uri
        for c in found
        if c.kind == "near_duplicate" and (uri := json.loads(c.payload or "{}").get("kept", {}).get("uri"))
    }
    # A rejection no longer in force lets its content back: the inputs of the copies it filtered too.
    ended = {c.then["record_id"] for c in found if c.then is not None and c.then["action"] == "reject"}
    return uris | {uri for copies in copies_of(engine, dataset, ended).values() for _, uri in copies if uri}


def rejections_changed(
    engine: sa.Engine, dataset: str, since: DecisionMark, until: DecisionMark | None = None
) -> dict[str, str | None]:
    """The records rejected since ``since``, or no longer rejected (in force then or now, not both), each
    with the URI of its input."""
    return {
        (c.now or c.then)["record_id"]: json.loads(c.source).get("uri")
        for c in changes(engine, dataset, since, until)
        if _rejects(c.now) != _rejects(c.then)
    }


def _rejects(decision: dict[str, Any] | None) -> bool:
    return decision is not None and decision["action"] == "reject"


def _effect(decision: dict[str, Any] | None) -> tuple[str, str] | None:
    """What a decision in force does to its record: nothing for an approve (it confirms the flag)."""
    return None if decision is None or decision["action"] == "approve" else (decision["action"], decision["after"])


def _taken_away(then: dict[str, Any] | None, now: dict[str, Any] | None) -> bool:
    """Whether a carried line, which holds what was in force ``then``, holds an effect no longer in
    force ``now`` (a carried line takes a new rejection, edit or not-PII mark, not the end of one)."""
    if then is None or then["action"] == "approve" or (now is not None and now["action"] == "reject"):
        return False
    if now is None or now["action"] == "approve" or then["action"] == "reject":
        return True
    before, after = json.loads(then["after"]), json.loads(now["after"])
    return bool(set(before.get("fields", {})) - set(after.get("fields", {}))) or any(
        span not in after.get("not_pii", []) for span in before.get("not_pii", [])
    )


def _utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_decisions(engine: sa.Engine, dataset: str, as_of: DecisionMark | None = None) -> RunDecisions:
    """Decisions in force on a dataset (now, or as of ``as_of``: a run's one reading, which the next run
    compares with) as the review stage and carry-forward need them (later edits win per field)."""
    result = RunDecisions()
    not_pii: dict[int, tuple[str, list[list[Any]]]] = {}  # item -> record, spans marked not PII
    not_duplicates: dict[int, str] = {}  # items marked not a duplicate -> their record
    # record -> the decisions in force on its items that set fields, with those values
    edited: dict[str, list[tuple[dict[str, Any], dict[str, str]]]] = {}
    for decision in active_decisions(engine, dataset, as_of):
        record = decision["record_id"]
        if decision["action"] == "reject":
            result.rejected.add(record)
        elif decision["action"] in ("edit", "keep"):
            if decision["action"] == "keep":
                result.kept_apart.add(record)
                not_duplicates[decision["item_id"]] = record
            after = json.loads(decision["after"])
            if after.get("fields"):
                edited.setdefault(record, []).append((decision, after["fields"]))
            if after.get("not_pii"):
                not_pii[decision["item_id"]] = (record, after["not_pii"])
    result.edits = {record: newest_fields(on_record) for record, on_record in edited.items()}
    if result.rejected:
        result.rejected_content = {
            key: record for record, key in sorted(keys_of(engine, dataset, result.rejected).items())
        }
        for record, copies in copies_of(engine, dataset, result.rejected).items():
            result.copy_of.update((copy, record) for copy, _ in copies if copy not in result.rejected)
        result.rejected |= result.copy_of.keys()
    items = _items(engine, [*not_pii, *not_duplicates])  # their stage, payload and source, read once
    stages = {item_id: row.stage for item_id, row in items.items()}
    flags = {item_id: json.loads(items[item_id].payload or "{}") for item_id in not_pii}  # PII flags, read once
    for item_id, (record, spans) in not_pii.items():
        marked = {(field_name, int(start), int(end)) for field_name, start, end in spans}
        result.undone_in.setdefault(stages[item_id], {}).setdefault(record, set()).update(marked)
        flagged = flags[item_id]
        if isinstance(flagged.get("original"), str):
            held = result.marked_in.setdefault(stages[item_id], {}).setdefault(record, {})
            held.update(
                {span: flagged["original"][span[1] : span[2]] for span in marked if span[0] == flagged.get("field")}
            )
    # Spans were marked on the text the PII stage saw: a field an annotator has since edited holds other
    # text, where the same offsets would leave whatever now stands there unredacted.
    for stage, in_stage in list(result.undone_in.items()):
        for record, fields in result.edits.items():
            kept = {span for span in in_stage.pop(record, set()) if span[0] not in fields}
            if kept:
                in_stage[record] = kept
        if not in_stage:
            del result.undone_in[stage]
    payloads = {item_id: row.payload for item_id, row in items.items()}
    sources = {item_id: row.source for item_id, row in items.items()}
    members: dict[str, dict[str, dict[str, Any]]] = {}  # per stage, as ``kept_from``
    for item_id, record in not_duplicates.items():
        payload = json.loads(payloads.get(item_id) or "{}")
        side = payload.get("kept") or {}
        apart = result.kept_apart_in.setdefault(stages[item_id], {}).setdefault(record, set())
        if side.get("id"):
            apart.add(side["id"])
            shown = {k: v for k, v in side.items() if k != "published_text"}
            result.kept_from.setdefault(stages[item_id], {})[side["id"]] = shown
        # The pair holds both ways: the record kept apart is one a later record can be set aside beside
        # too, its side as this item showed it (a scheduled run that sets one aside does not read it).
        member = payload.get("member") or {}
        uri = json.loads(sources.get(item_id) or "{}").get("uri")
        members.setdefault(stages[item_id], {})[record] = {
            "id": record,
            "text": member.get("text", ""),
            "uri": uri,
            **({"thumbnail": member["thumbnail"]} if member.get("thumbnail") else {}),
        }
    result.kept_from = {
        stage: {**members.get(stage, {}), **result.kept_from.get(stage, {})}
        for stage in members.keys() | result.kept_from.keys()
    }
    if not_pii:
        for item_id, (record, spans) in not_pii.items():
            payload = flags[item_id]
            edited = result.edits.get(record, {})
            if payload.get("field") in edited:
                # An edit of the field keeps the spans marked not PII that it kept (see ``carried_over``).
                name = payload["field"]
                places = {(int(start), int(end)) for field_name, start, end in spans if field_name == name}
                edited[name], moved = carried_over(payload, places, edited[name])
                if moved:
                    in_stage = result.undone_in.setdefault(stages[item_id], {})
                    in_stage.setdefault(record, set()).update((name, start, end) for start, end in moved)
                    held = result.marked_in.setdefault(stages[item_id], {}).setdefault(record, {})
                    held.update({(name, start, end): edited[name][start:end] for start, end in moved})
            text = restored_text(payload, {(int(start), int(end)) for _, start, end in spans})
            if text is None:
                log.warning(
                    "review item %d: its flag does not hold every redaction of the field, so a carried copy "
                    "of record %s keeps the spans marked not PII redacted; --full-refresh reads it again",
                    item_id,
                    record,
                )
            else:
                result.restored_in.setdefault(stages[item_id], {}).setdefault(record, {})[payload["field"]] = text
    return result


def _items(engine: sa.Engine, item_ids: list[int]) -> dict[int, Any]:
    """The stage that flagged each of these items, its payload and its source."""
    found: dict[int, Any] = {}
    columns = (review_items.c.item_id, review_items.c.stage, review_items.c.payload, review_items.c.source)
    with engine.connect() as db:
        for chunk in batched(item_ids, IDS_PER_QUERY):
            query = sa.select(*columns).where(review_items.c.item_id.in_(chunk))
            found.update((row.item_id, row) for row in db.execute(query))
    return found


def restored_text(payload: dict[str, Any], not_pii: set[tuple[int, int]]) -> str | None:
    """A PII flag's field as published, but with the spans in ``not_pii`` left as they were.

    The payload keeps every redaction of the field; a flag written before it did kept only the
    uncertain ones, which are all of them when redacting with them alone gives the published text.
    None when the flag cannot say.
    """
    original, redactions = payload.get("original"), all_redactions(payload)
    if original is None or "field" not in payload or redactions is None:
        return None
    return redacted(original, [span for span in redactions if (span["start"], span["end"]) not in not_pii])


def redacted_as_shown(payload: dict[str, Any], not_pii: set[tuple[int, int]]) -> str:
    """A PII flag's field as a role that does not see PII is shown it: as published, the spans in
    ``not_pii`` in clear. Not where a later PII stage redacted the field further (``published_after``):
    put back from ``original``, the spans would bring back what that stage redacts with them, so they
    stay redacted there (the next run may publish them in clear)."""
    shown = restored_text(payload, not_pii) if not_pii and not payload.get("published_after") else None
    return payload.get("redacted", "") if shown is None else shown


def not_pii_in_force(engine: sa.Engine, item_id: int) -> set[tuple[str, int, int]]:
    """The spans of a PII item that the decisions in force on it mark not PII."""
    return not_pii_of(_in_force_for_item(engine, item_id))


def not_pii_of(current: dict[str, Any] | None) -> set[tuple[str, int, int]]:
    """The spans a decision in force (``in_force_on``) marks not PII."""
    after = json.loads(current["after"]) if current else {}
    return {(name, int(start), int(end)) for name, start, end in after.get("not_pii", [])}


def fields_in_force(engine: sa.Engine, item_id: int) -> dict[str, str]:
    """The field values the decisions in force on an item set (its edits, as typed)."""
    return fields_of(_in_force_for_item(engine, item_id))


def fields_of(current: dict[str, Any] | None) -> dict[str, str]:
    """The field values a decision in force (``in_force_on``) sets."""
    return dict(json.loads(current["after"]).get("fields", {})) if current else {}


def pii_again(current: dict[str, Any] | None, spans: Iterable[tuple[str, int, int]], edit: Edit | None = None) -> Edit:
    """The edit that makes ``spans``, marked not PII by the decisions in force (``current``), PII again,
    with ``edit``'s values and marks too (the page's and the Label Studio import's "PII again"). Edits
    add up, so it ``replaces`` those in force with all that stands after it: their field values and other
    marks, and ``edit``'s; it says which are ``edit``'s own (its new marks, not those in force), and the
    spans, for this release to read it as what it says alone (``in_force``). Empty (nothing left
    standing), it is to be taken as an approve alone, given this edit to say the spans (``decide``)."""
    edit, marks, spans = edit or Edit(), not_pii_of(current), set(spans)
    standing = (marks - spans) | set(edit.not_pii)
    own = Edit(fields=edit.fields, not_pii=sorted(set(edit.not_pii) - marks))
    fields = {**fields_of(current), **edit.fields}
    return Edit(fields=fields, not_pii=sorted(standing), replaces=True, again=sorted(spans), own=own)


def record_in_force(
    engine: sa.Engine, item: dict[str, Any], own: dict[str, Any] | None, others: list[dict[str, Any]]
) -> tuple[dict[str, str], dict[str, str]]:
    """The record's fields as the decisions in force through any of its items (one per flagged field or
    stage, an earlier version's: ``in_force_through_record``, ``own`` on ``item``) leave them for the next
    run: the values their edits set (a later one wins, as ``run_decisions`` takes them), and the fields
    other than ``item``'s that PII items flagged, as a role that does not see PII is shown them
    (``redacted_as_shown``: the spans marked not PII there in clear), those items that redacted the field
    as ``item``'s flag shows it (``redacted_fields``) alone."""
    fields = newest_fields((decision, fields_of(decision)) for decision in [*others, *([own] if own else [])])
    marked = {decision["item_id"]: not_pii_of(decision) for decision in others if not_pii_of(decision)}
    own_payload = json.loads(item["payload"] or "{}")
    flagged, published = own_payload.get("field"), own_payload.get("redacted_fields", {})
    shown: dict[str, str] = {}
    for other in get_items(engine, marked).values():
        payload = json.loads(other["payload"] or "{}")
        name = payload.get("field")
        # Only where the other item redacted the field as this flag shows it: another version's (or
        # stage's) item may leave in clear what this one redacts (a later stage's phone number), and its
        # spans put back would show it.
        if other["kind"] == "pii" and name != flagged and payload.get("redacted") == published.get(name):
            shown[name] = redacted_as_shown(payload, {(start, end) for _, start, end in marked[other["item_id"]]})
    return fields, shown


def all_redactions(payload: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every redaction of a PII flag's field (a flag written before they were kept: its uncertain
    spans, when they are all of them); None when the flag cannot say."""
    original, redactions = payload.get("original"), payload.get("redactions")
    if original is None or redactions is not None:
        return redactions
    spans = payload.get("spans", [])
    return spans if redacted(original, spans) == payload.get("redacted") else None


def _inside(blocks: Iterable[tuple[int, int, int]], start: int, end: int) -> int | None:
    """Where ``[start, end)`` of one text stands in another, when one of their matching blocks holds it whole."""
    for a, b, size in blocks:
        if a <= start and end <= a + size:
            return b + start - a
    return None


def carried_over(
    payload: dict[str, Any], not_pii: set[tuple[int, int]], value: str
) -> tuple[str, set[tuple[int, int]]]:
    """An edit's ``value`` of a PII flag's field with the spans marked not PII (``not_pii``, offsets in
    the flag's text) it kept, and where they stand in it, for the PII stage to leave as they are.

    An edit replaces the text the marks were made on, so they reach it only where it kept them: a span's
    own text (a pii-reviewer edits the raw text; a reviewer, the published text with the marks in force
    applied), or, in an edit of the redacted text made before the mark, the span's placeholder, which
    gives way to the span's text. Only text an annotator marked not PII is put back, never another
    redaction's value; a span the edit changed or removed is not kept, and is redacted if found again.
    """
    original = payload.get("original")
    if original is None or not not_pii:
        return value, set()
    found: dict[tuple[int, int], str] = {}  # place in value -> the span's text to stand there
    clear = SequenceMatcher(None, original, value, autojunk=False).get_matching_blocks()
    for start, end in not_pii:
        at = _inside(clear, start, end)
        if at is not None:
            found[(at, at + end - start)] = original[start:end]
    redactions = all_redactions(payload)
    if redactions:
        shown = SequenceMatcher(None, redacted(original, redactions), value, autojunk=False).get_matching_blocks()
        shift = 0
        for span in sorted(redactions, key=lambda span: span["start"]):
            start, end, placeholder = span["start"], span["end"], span["placeholder"]
            at = _inside(shown, start + shift, start + shift + len(placeholder))
            shift += len(placeholder) - (end - start)
            if (start, end) in not_pii and at is not None:
                found.setdefault((at, at + len(placeholder)), original[start:end])
    pieces, position, length, places = [], 0, 0, set()
    for (start, end), text in sorted(found.items()):
        if start < position:  # two places overlap: the first stands
            continue
        pieces += [value[position:start], text]
        length += start - position
        places.add((length, length + len(text)))
        length += len(text)
        position = end
    pieces.append(value[position:])
    return "".join(pieces), places
