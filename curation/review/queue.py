"""The review queue in the state store: what the pipeline flagged for annotators.

Each published run adds its flags (from stages' ``StageResult.flags``, and every quarantined
record) under its dataset and version. Payloads can hold PII; they live only here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from connectors.batches import IDS_PER_QUERY, batched, id_chunks
from connectors.state import add_missing_columns

log = logging.getLogger(__name__)
metadata = sa.MetaData()
# The largest item id the store's integer column holds (PostgreSQL's INTEGER): a larger one names no item.
MAX_ITEM_ID = 2**31 - 1

review_items = sa.Table(
    "review_items",
    metadata,
    sa.Column("item_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(200), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("record_id", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False, index=True),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("source", sa.Text, nullable=False),  # JSON: connector, uri, line, page
    sa.Column("detail", sa.Text),
    sa.Column("payload", sa.Text),  # JSON; may hold PII
    sa.Column("status", sa.String(16), nullable=False, default="open"),  # open, approved, rejected, edited, kept
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
# Records of queued items that a later run did not find where they were: it read their input whole (a
# changed file, a full refresh) and the record was no longer in it (its line removed, or edited: an
# edited record is a new one). A decision on their items has no effect, unless the record comes back (the
# line put back as it was); a run that finds it again takes its row out (``note_read``).
review_gone = sa.Table(
    "review_gone",
    metadata,
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("record_id", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(32), nullable=False),  # the run that did not find it
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
KINDS = ("pii", "near_duplicate", "quarantined", "vqa")  # what the stages flag
# What the review page and Label Studio say of an item whose record is in ``review_gone``.
GONE_NOTE = "this record is no longer in the input: a decision has no effect"
STATUSES = ("open", "approved", "rejected", "edited", "kept")


# The tables made in each engine's store: every store call makes sure of them, and checking each table
# again per call would cost a statement per table on every page and decision.
_made: weakref.WeakKeyDictionary[sa.Engine, frozenset[str]] = weakref.WeakKeyDictionary()


# What a module defining review tables does to a store made by an earlier release, once its columns are added.
UPGRADES: list[Callable[[sa.Engine], None]] = []


def create_tables(engine: sa.Engine) -> None:
    """Make the review tables in the engine's store, or add the columns an earlier release's lack, once
    per engine (again if a module adds tables)."""
    tables = frozenset(metadata.tables)
    if tables <= _made.get(engine, frozenset()):
        return
    metadata.create_all(engine)
    for table in metadata.tables.values():
        add_missing_columns(engine, table)
    for upgrade in UPGRADES:
        upgrade(engine)
    _made[engine] = tables


def add_items(engine: sa.Engine, dataset: str, version: int, run_id: str, flags: pa.Table) -> int:
    """Store a run's flags, but those the queue already holds (the same record, kind, stage and question:
    an input read again, a full refresh), open or decided: a decision on the item stays in force for the
    record, so asking again would only repeat the annotators' work. A PII flag whose spans the record's
    items of that stage already ask about is held too. Returns how many."""
    if flags.num_rows == 0:
        return 0
    create_tables(engine)
    now = datetime.now(UTC)
    queued, spans = _queued(engine, dataset, flags["id"].to_pylist())
    rows = [
        {
            "dataset": dataset,
            "version": version,
            "run_id": run_id,
            "record_id": flag["id"],
            "kind": flag["kind"],
            "stage": flag["stage"],
            "source": json.dumps(flag["source"]),
            "detail": flag["detail"],
            "payload": flag["payload"],
            "status": "open",
            "created_at": now,
        }
        for flag in flags.to_pylist()
        if (flag["id"], flag["kind"], flag["stage"], question(flag["kind"], flag["payload"])) not in queued
        and not _spans_asked(flag, spans)
    ]
    if rows:
        with engine.begin() as db:
            db.execute(review_items.insert(), rows)
    return len(rows)


# What a flag's payload holds that does not change what the annotator is asked: a near duplicate's
# similarity is measured again each run (against the published signature when the pair is asked again
# across runs), and the same pair must not be queued twice for it.
_NOT_ASKED = {"near_duplicate": ("similarity",)}


def question(kind: str, payload: str | None) -> str | None:
    """What an item of ``kind`` with ``payload`` asks, for telling one already queued: the payload
    without what does not change the question (``_NOT_ASKED``), its keys in one order."""
    if payload is None or kind not in _NOT_ASKED:
        return payload
    asked = json.loads(payload)
    for key in _NOT_ASKED[kind]:
        asked.pop(key, None)
    return json.dumps(asked, sort_keys=True)


# A span a PII item asks about: (field, start, end, entity, its text).
Span = tuple[str, int, int, str, str]


def _asked_spans(payload: str | None) -> set[Span]:
    """The spans a PII item asks about. A span an annotator marked not
    PII is left in clear by the next run, so the record's flag then holds the others alone: the same
    spans of the same text, already asked."""
    asked = json.loads(payload or "{}")
    field, original = asked.get("field", ""), asked.get("original", "")
    return {(field, s["start"], s["end"], s["entity"], original[s["start"] : s["end"]]) for s in asked.get("spans", [])}


def _spans_asked(flag: dict[str, Any], asked: dict[tuple[str, str], set[Span]]) -> bool:
    """Whether ``flag`` is a PII flag whose spans the record's items of its stage ask about already."""
    spans = _asked_spans(flag["payload"]) if flag["kind"] == "pii" else set()
    return bool(spans) and spans <= asked.get((flag["id"], flag["stage"]), set())


def _queued(
    engine: sa.Engine, dataset: str, record_ids: list[str]
) -> tuple[set[tuple[str, str, str, str | None]], dict[tuple[str, str], set[Span]]]:
    """(record, kind, stage, question) of the items of these records, and the spans their PII items ask
    about, by (record, stage)."""
    found: set[tuple[str, str, str, str | None]] = set()
    spans: dict[tuple[str, str], set[Span]] = {}
    table = review_items
    with engine.connect() as db:
        for chunk in id_chunks(record_ids):
            query = sa.select(table.c.record_id, table.c.kind, table.c.stage, table.c.payload).where(
                table.c.dataset == dataset, table.c.record_id.in_(chunk)
            )
            for row in db.execute(query):
                found.add((row.record_id, row.kind, row.stage, question(row.kind, row.payload)))
                if row.kind == "pii":
                    spans.setdefault((row.record_id, row.stage), set()).update(_asked_spans(row.payload))
    return found, spans


def list_items(
    engine: sa.Engine, dataset: str | None = None, kind: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    create_tables(engine)
    query = review_items.select().order_by(review_items.c.item_id)
    for column, value in (("dataset", dataset), ("kind", kind), ("status", status)):
        if value is not None:
            query = query.where(review_items.c[column] == value)
    with engine.connect() as db:
        return [dict(row._mapping) for row in db.execute(query)]


def queued_datasets(engine: sa.Engine) -> set[str]:
    """The datasets with items in the queue."""
    create_tables(engine)
    with engine.connect() as db:
        return set(db.execute(sa.select(review_items.c.dataset).distinct()).scalars())


def queued_versions(engine: sa.Engine, dataset: str | None = None) -> set[int]:
    """The versions with items in the queue: of ``dataset`` only, if given."""
    create_tables(engine)
    query = sa.select(review_items.c.version).distinct()
    if dataset is not None:
        query = query.where(review_items.c.dataset == dataset)
    with engine.connect() as db:
        return set(db.execute(query).scalars())


def queued_records(engine: sa.Engine, dataset: str) -> pa.Array:
    """The record ids of a dataset's items: a run tells which of them it reads (``note_read``)."""
    if not sa.inspect(engine).has_table(review_items.name):
        return pa.array([], pa.string())
    query = sa.select(review_items.c.record_id).where(review_items.c.dataset == dataset).distinct()
    with engine.connect() as db:
        return pa.array(sorted(db.execute(query).scalars()), pa.string())


def note_read(engine: sa.Engine, dataset: str, run_id: str, found: set[str], read_whole: set[str] | None) -> int:
    """Record, once a run has published, which items' records it did not find: those of the inputs it
    read whole (``read_whole``, URIs; None: every input, as on a full refresh, when the version holds
    only what the run read) that are not in ``found`` (the records it read, written or set aside, and
    those it kept as published). Records found are no longer gone. Call it before the run's own items
    are queued. Returns how many it marks gone."""
    if (read_whole is not None and not read_whole and not found) or not sa.inspect(engine).has_table(review_items.name):
        return 0  # nothing read whole, no queued record read: nothing to note
    create_tables(engine)  # a store from before ``review_gone``
    query = sa.select(review_items.c.record_id, review_items.c.source).where(review_items.c.dataset == dataset)
    with engine.connect() as db:
        items = db.execute(query).all()
    gone = {
        row.record_id
        for row in items
        if row.record_id not in found and (read_whole is None or json.loads(row.source).get("uri") in read_whole)
    }
    seen = {row.record_id for row in items} & found
    now = datetime.now(UTC)
    with engine.begin() as db:
        for chunk in batched(sorted(seen | gone), IDS_PER_QUERY):
            db.execute(review_gone.delete().where(review_gone.c.dataset == dataset, review_gone.c.record_id.in_(chunk)))
        if gone:
            rows = [{"dataset": dataset, "record_id": record, "run_id": run_id, "at": now} for record in sorted(gone)]
            db.execute(review_gone.insert(), rows)
    if gone:
        log.info(
            "%d queued record(s) no longer in the input: the review page says decisions on them have no effect",
            len(gone),
        )
    return len(gone)


def connected(db: sa.Engine | sa.Connection) -> contextlib.AbstractContextManager[sa.Connection]:
    """A connection to use: a new one of an engine (closed after), or the one given, left open (its
    caller's transaction goes on)."""
    return db.connect() if isinstance(db, sa.Engine) else contextlib.nullcontext(db)


def gone_records(db: sa.Engine | sa.Connection, dataset: str, record_ids: list[str]) -> set[str]:
    """Which of these records of ``dataset`` the latest run that read their input did not find."""
    found: set[str] = set()
    with connected(db) as conn:
        for chunk in id_chunks(record_ids):
            query = sa.select(review_gone.c.record_id).where(
                review_gone.c.dataset == dataset, review_gone.c.record_id.in_(chunk)
            )
            found.update(conn.execute(query).scalars())
    return found


def gone_items(db: sa.Engine | sa.Connection, items: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(dataset, record id) of these queue items whose record is no longer in the input: a query per
    dataset and chunk of records, not per item."""
    datasets = {item["dataset"] for item in items}
    return {
        (dataset, record)
        for dataset in datasets
        for record in gone_records(db, dataset, [item["record_id"] for item in items if item["dataset"] == dataset])
    }
