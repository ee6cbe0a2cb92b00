"""What an annotator rejected is the record's content, not only its id.

A record id includes its input's URI, so the same content read from another input (a file renamed or
copied, an exact twin set aside as its duplicate) has another id, which a rejection keyed by id
misses. So the content key of each rejected record is kept here: the exact-dedup content hash of the
record's content fields, normalised (``content_keys``: the key a recipe's default ``exact_dedup``
compares), whether or not the recipe has a dedup stage. The review stage filters a record whose key
is that of a rejection in force, with reason ``review``, as it filters the rejected record itself;
each such copy is kept too (its id and input), so that undoing the rejection reads its input again
and the content comes back, and a carried copy leaves with its record when the rejection comes back.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from connectors.batches import id_chunks
from curation.review.queue import connected, create_tables, metadata
from schemas.records import dedup_fields

rejected_content = sa.Table(
    "review_rejected_content",
    metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(200), nullable=False, index=True),
    sa.Column("record_id", sa.String(64), nullable=False, index=True),
    sa.Column("content_key", sa.String(16), nullable=False),  # the content hash, 16 hex digits
)
rejected_copies = sa.Table(
    "review_rejected_copies",
    metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(200), nullable=False, index=True),
    sa.Column("record_id", sa.String(64), nullable=False, index=True),  # the record an annotator rejected
    sa.Column("copy_id", sa.String(64), nullable=False),  # a record filtered for holding its content
    sa.Column("uri", sa.Text, nullable=False),  # the copy's input
)


def content_keys(batch: pa.Table, kind: str) -> pa.Array:
    """Each record's content key (uint64): the hash default ``exact_dedup`` gives it."""
    from curation.stages.dedup import ExactDedup  # the stage's own hash, so the two never drift apart

    signatures = ExactDedup(dedup_fields(kind)).signatures(batch)
    return pc.list_flatten(signatures["keys"]).combine_chunks().cast(pa.uint64())


def as_text(key: int) -> str:
    return f"{key:016x}"


def remember(engine: sa.Engine, dataset: str, keys: dict[str, int]) -> None:
    """Keep the content key of each record in ``keys`` (record id -> key) not kept yet."""
    if not keys:
        return
    create_tables(engine)
    known = set(keys_of(engine, dataset, keys))
    rows = [
        {"dataset": dataset, "record_id": record, "content_key": as_text(key)}
        for record, key in sorted(keys.items())
        if record not in known
    ]
    if rows:
        with engine.begin() as db:
            db.execute(rejected_content.insert(), rows)


def keys_of(engine: sa.Engine | sa.Connection, dataset: str, records: Iterable[str]) -> dict[str, int]:
    """The content keys kept for ``records`` (those that have one)."""
    if not sa.inspect(engine).has_table(rejected_content.name):
        return {}
    found: dict[str, int] = {}
    table = rejected_content
    with connected(engine) as db:
        for chunk in id_chunks(records):
            query = sa.select(table.c.record_id, table.c.content_key).where(
                table.c.dataset == dataset, table.c.record_id.in_(chunk)
            )
            found.update((record, int(key, 16)) for record, key in db.execute(query))
    return found


def remember_copies(engine: sa.Engine, dataset: str, copies: Iterable[tuple[str, str, str]]) -> None:
    """Keep (rejected record, copy's id, copy's input) for copies filtered for holding its content."""
    copies = set(copies)
    if not copies:
        return
    create_tables(engine)
    table = rejected_copies
    with engine.begin() as db:
        rejected = sorted({record for record, _, _ in copies})
        known = set()
        for chunk in id_chunks(rejected):
            query = sa.select(table.c.record_id, table.c.copy_id, table.c.uri).where(
                table.c.dataset == dataset, table.c.record_id.in_(chunk)
            )
            known.update(tuple(row) for row in db.execute(query))
        rows = [
            {"dataset": dataset, "record_id": record, "copy_id": copy, "uri": uri}
            for record, copy, uri in sorted(copies - known)
        ]
        if rows:
            db.execute(table.insert(), rows)


def copies_of(
    engine: sa.Engine | sa.Connection, dataset: str, records: Iterable[str]
) -> dict[str, set[tuple[str, str]]]:
    """Per rejected record, the (copy id, input) of the copies filtered for holding its content."""
    if not sa.inspect(engine).has_table(rejected_copies.name):
        return {}
    found: dict[str, set[tuple[str, str]]] = {}
    table = rejected_copies
    with connected(engine) as db:
        for chunk in id_chunks(records):
            query = sa.select(table.c.record_id, table.c.copy_id, table.c.uri).where(
                table.c.dataset == dataset, table.c.record_id.in_(chunk)
            )
            for record, copy, uri in db.execute(query):
                found.setdefault(record, set()).add((copy, uri))
    return found
