"""Across runs: signatures of published records live in the state store, so a later version never
repeats content (exact or near) of an earlier one.

- ``CrossRunDedup`` wraps a dedup stage: its global step resolves this run's signatures together
  with those of every published version. Published records sort first, so a cluster that holds one
  keeps it, and this run's members are set aside with reason ``earlier_version``.
- ``SignatureRecorder`` is the last per-batch stage: it stores the signatures of exactly the
  records that go to the writer, as the dedup stage computed them (they travel with each kept row
  from the resolve, so a later stage that changes the text does not change what the next run is
  compared with), as *pending* (no version). ``published(version)``
  gives them the version once the run has published; a failed run's pending rows are never read
  and are removed by the next successful run.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from connectors.state import begin_confirmed
from curation.executors.envelope import pack, unpack
from curation.stages.base import DuplicateStage, StageResult, flag_payloads, with_payloads
from curation.stages.dedup import ExactDedup
from curation.stages.duplicates import PUBLISHED_ID, PUBLISHED_PREFIX, holds_one_key_each, one_key_each
from curation.state import in_memory, runs, state_engine
from schemas.hashing import hex_digests, prefixed
from schemas.records import SIGNATURE_COLUMN_PREFIX, SOURCE_TYPE, empty_flags

log = logging.getLogger(__name__)

REASON = "earlier_version"

_metadata = sa.MetaData()
published_signatures = sa.Table(
    "published_signatures",
    _metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(200), nullable=False, index=True),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("params", sa.String(64), nullable=False),  # signatures are comparable only with equal params
    sa.Column("token", sa.String(32), nullable=False, index=True),
    sa.Column("version", sa.Integer),  # null while the run has not published
    sa.Column("data", sa.LargeBinary, nullable=False),  # the signature rows, Arrow IPC stream
)


def signature_params(stage: Any) -> str:
    """A digest of the settings that shape a stage's signatures (not its threshold, nor the records
    annotators kept apart; its name once, a second stage of a type's ``own_name`` included)."""
    settings = {k: v for k, v in sorted(vars(stage).items()) if k not in ("threshold", "index", "kept_apart", "name")}
    return uuid.uuid5(uuid.NAMESPACE_OID, json.dumps([stage.name, settings], default=str)).hex


# Stored signatures take about half the bytes (writing them to the state store costs about as much
# as computing them): record ids of 32 lowercase hex digits (xxh3-128, what every connector makes)
# as their 16 bytes, and one key per row (exact dedup) as a plain ``key`` column. Rows stored
# before, or that do not fit, are kept as they come; ``_unpacked`` reads both.
_ID_BYTES = pa.binary(16)
# Two characters read as one little-endian 16-bit number -> the byte their hex digits spell (256: they
# are not two lowercase hex digits): one table look-up per byte of an id, not per digit. Looked up by
# Arrow's take, which reads the uint16 pairs as they are: NumPy's fancy index first copies them to int64,
# half its time (per 1M ids: 0.061 -> 0.022 CPU s). Back to hex: ``hex_digests``, as ids are made.
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8).astype("<u2")
_BYTE_OF_DIGITS = np.full(1 << 16, 256, "<u2")
_BYTE_OF_DIGITS[_HEX_DIGITS[:, None] | (_HEX_DIGITS[None, :] << 8)] = np.arange(256).reshape(16, 16)
_BYTE_OF_DIGITS_ARRAY = pa.array(_BYTE_OF_DIGITS)


def _id_bytes(ids: pa.Array) -> pa.Array | None:
    """Each id's 16 bytes, or None unless every id is 32 lowercase hex digits."""
    if len(ids) == 0 or ids.null_count or ids.type != pa.string():
        return None
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset : ids.offset + len(ids) + 1]
    if not (np.diff(offsets) == 32).all():
        return None
    digits = ids.buffers()[2].slice(offsets[0], len(ids) * 32)
    if digits.address % 2:  # the pairs are read as uint16: aligned, as Arrow expects
        digits = pa.py_buffer(digits.to_pybytes())
    pairs = pa.Array.from_buffers(pa.uint16(), len(ids) * 16, [None, digits])
    packed = np.frombuffer(pc.take(_BYTE_OF_DIGITS_ARRAY, pairs).buffers()[1], "<u2", len(ids) * 16)
    if packed.max() > 255:
        return None
    return pa.FixedSizeBinaryArray.from_buffers(_ID_BYTES, len(ids), [None, pa.py_buffer(packed.astype(np.uint8))])


def _hex_ids(packed: pa.Array) -> pa.Array:
    """16-byte ids (``_id_bytes``) as their 32 hex digits."""
    digests = np.frombuffer(packed.buffers()[1] or b"", ">u8", len(packed) * 2, packed.offset * 16)
    return hex_digests(digests.reshape(len(packed), 2))


def _packed(signatures: pa.Table) -> pa.Table:
    """Signature rows (``source`` left out) as they are stored."""
    table = signatures.select([n for n in signatures.column_names if n != "source"]).combine_chunks()
    ids = _id_bytes(table["id"].chunk(0)) if table.num_rows else None
    if ids is not None:
        table = table.set_column(0, pa.field("id", _ID_BYTES), ids)
    keys = table["keys"]
    if holds_one_key_each(keys):
        table = table.set_column(table.schema.get_field_index("keys"), "key", pc.list_flatten(keys))
    return table


def _unpacked(table: pa.Table) -> pa.Table:
    """Stored signature rows as ``signatures`` gave them (``source`` left out)."""
    table = table.combine_chunks()
    if table.schema.field("id").type == _ID_BYTES:
        ids = _hex_ids(table["id"].chunk(0)) if table.num_rows else pa.array([], pa.string())
        table = table.set_column(0, "id", ids)
    if "key" in table.schema.names:
        index = table.schema.get_field_index("key")
        key = table["key"].chunk(0) if table.num_rows else pa.array([], pa.uint64())
        table = table.set_column(index, "keys", one_key_each(key))
    return table


def _key_of_each(part: pa.Table) -> dict[str, int]:
    """Each record's key, where ``part``'s rows hold one key each (exact dedup's content hash)."""
    if not part.num_rows or not holds_one_key_each(part["keys"]):
        return {}
    return dict(zip(part["id"].to_pylist(), pc.list_flatten(part["keys"]).to_pylist(), strict=True))


def _holding(stored: pa.Table, keys: pa.Array | None) -> pa.Table:
    """Stored rows of one key each that hold one of ``keys``; all rows without ``keys`` or when rows
    hold several keys (near-duplicate bands: a cluster can reach a row through any of them)."""
    if keys is None:
        return stored
    if "key" in stored.schema.names:
        return stored.filter(pc.is_in(stored["key"], value_set=keys))
    if holds_one_key_each(stored["keys"]):
        return stored.filter(pc.is_in(pc.list_flatten(stored["keys"]), value_set=keys))
    return stored


class SignatureIndex:
    """The published signatures of one dataset in the state store.

    ``start_over`` (a full refresh) ignores what earlier versions published: this run's version stands
    alone, and once it publishes, the signatures of older versions are dropped so later runs
    compare with it and its successors only.
    """

    def __init__(self, url: str, dataset: str, start_over: bool = False, token: str | None = None) -> None:
        self.url, self.dataset, self.start_over = url, dataset, start_over
        self.token = token or uuid.uuid4().hex
        self.retired = pa.array([], pa.string())

    def retire(self, ids: pa.Array | pa.ChunkedArray) -> None:
        """Published records this run replaces or leaves out (added to those retired before): their rows
        are not compared with, and are removed from earlier versions' signatures once the run publishes."""
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        self.retired = pa.concat_arrays([self.retired, ids.cast(pa.string())])

    @functools.cached_property
    def engine(self) -> sa.Engine:
        # Made on first use: building a run's stages (``curation check``) leaves no state behind.
        engine = state_engine(self.url)
        _metadata.create_all(engine)
        return engine

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent to Ray workers by its settings: an engine (connection pool) does not pickle.
        return SignatureIndex, (self.url, self.dataset, self.start_over, self.token)

    def stage_pending(self, stage: str, params: str, signatures: pa.Table) -> None:
        with self.engine.begin() as db:
            db.execute(
                published_signatures.insert().values(
                    dataset=self.dataset,
                    stage=stage,
                    params=params,
                    token=self.token,
                    version=None,
                    data=pack(_packed(signatures)),
                )
            )

    def published(self, version: int, confirm: Callable[[sa.Connection], None] | None = None) -> None:
        """This run published ``version``: its pending signatures count from now on. ``confirm(db)`` first,
        in that transaction: it raises to record nothing (``HeldLock.confirm_within``)."""
        table = published_signatures
        # Taken over, the run that did may have rows pending: removed below. Not in an in-memory store: a
        # database per engine, this one's without the lock's table (and no other process sees the lock).
        with begin_confirmed(self.engine, None if in_memory(self.url) else confirm) as db:
            db.execute(table.update().where(table.c.token == self.token).values(version=version))
            if len(self.retired) and not self.start_over:
                self._remove_retired(db, version)
            if self.start_over:
                db.execute(table.delete().where(table.c.dataset == self.dataset, table.c.version < version))
            db.execute(
                table.delete().where(
                    table.c.dataset == self.dataset, table.c.version.is_(None), table.c.token != self.token
                )
            )

    def _remove_retired(self, db: sa.Connection, version: int) -> None:
        """Take the retired ids out of the signature rows of versions before ``version`` (its own rows
        hold the ids this run wrote again, with their new signatures)."""
        table = published_signatures
        rows = db.execute(
            sa.select(table.c.n, table.c.data).where(table.c.dataset == self.dataset, table.c.version < version)
        ).all()
        for n, data in rows:
            stored = _unpacked(unpack(data))
            kept = self._not_retired(stored)
            if kept.num_rows == stored.num_rows:
                continue
            if kept.num_rows:
                db.execute(table.update().where(table.c.n == n).values(data=pack(_packed(kept))))
            else:
                db.execute(table.delete().where(table.c.n == n))

    def keys_of(self, stage: str, params: str, ids: pa.Array) -> dict[str, int]:
        """The key each of ``ids`` holds in the published signatures of a stage of one key per row (exact
        dedup's content hash), for those it has one; read before they are retired."""
        found: dict[str, int] = {}
        for stored in self._published_rows(stage, params):
            stored = _unpacked(stored)
            found.update(_key_of_each(stored.filter(pc.is_in(stored["id"], value_set=ids.cast(pa.string())))))
        return found

    def _published_rows(self, stage: str, params: str) -> Iterator[pa.Table]:
        """The signature rows published by ``stage`` with ``params``, a stored table at a time, oldest first."""
        with self.engine.connect() as db:
            for (data,) in db.execute(self._published(stage, params, published_signatures.c.data)):
                yield unpack(data)

    def _published(self, stage: str, params: str, *columns: sa.Column) -> sa.Select:
        """``columns`` of the rows published by ``stage`` with ``params``, oldest first."""
        table = published_signatures
        return (
            sa.select(*columns)
            .where(
                table.c.dataset == self.dataset,
                table.c.stage == stage,
                table.c.params == params,
                table.c.version.is_not(None),
            )
            .order_by(table.c.n)
        )

    def _not_retired(self, part: pa.Table) -> pa.Table:
        """``part`` without the rows of records this run retires (written again, or gone)."""
        if not len(self.retired):
            return part
        return part.filter(pc.invert(pc.is_in(part["id"], value_set=self.retired)))

    def ids_holding(self, stage: str, params: str, keys: pa.Array) -> dict[str, int]:
        """The published records (not retired) whose row of a stage of one key per row holds one of
        ``keys``, with the key each holds."""
        found: dict[str, int] = {}
        for stored in self._published_rows(stage, params):
            found.update(_key_of_each(self._not_retired(_unpacked(_holding(stored, keys)))))
        return found

    def _warn_of_other_settings(self, db: sa.Connection, stage: str, params: str) -> None:
        """Say so when the published versions' signatures were computed with other settings of the stage
        (its fields, shingles, ...: a changed recipe, or defaults changed by an upgrade): they are not
        comparable, so this run's records are not compared with the published ones."""
        table = published_signatures
        other = (
            sa.select(table.c.version)
            .distinct()
            .where(
                table.c.dataset == self.dataset,
                table.c.stage == stage,
                table.c.params != params,
                table.c.version.is_not(None),
            )
        )
        versions = sorted(db.execute(other).scalars())
        if versions:
            log.warning(
                "%s: the signatures of v%s were computed with other settings of the stage (its fields or "
                "parameters changed), so this run's records are not compared with them; --full-refresh "
                "rebuilds the dataset with the settings of the recipe",
                stage,
                ", v".join(map(str, versions)),
            )

    def _warn_if_new_to_the_dataset(self, db: sa.Connection, stage: str) -> None:
        """Say so when versions were published before the stage was in the recipe: they stored no
        signatures of it, so their records are not compared with this run's (a repeat of one is
        published again)."""
        table = published_signatures
        stored = sa.select(table.c.n).where(table.c.dataset == self.dataset, table.c.stage == stage).limit(1)
        published = sa.select(runs.c.counts).where(runs.c.dataset == self.dataset, runs.c.status == "published")
        if (
            db.execute(stored).first() is None
            and sa.inspect(db).has_table(runs.name)  # a state store that only ever held signatures has none
            and any(json.loads(counts or "{}").get("written", 0) for (counts,) in db.execute(published))
        ):  # versions that held no record have nothing to compare with
            log.warning(
                "%s: the versions published before it was in the recipe have no signatures of it, so this "
                "run's records are not compared with theirs; --full-refresh deduplicates the whole dataset",
                stage,
            )

    def load(self, stage: str, params: str, keys: pa.Array | None = None) -> pa.Table | None:
        """Published signature rows; ``id`` is prefixed and ``source`` names the version. With ``keys``
        (for rows of one key each, as exact dedup stores them), only the rows holding one of them:
        a scheduled run adding a few records to millions unpacks only those."""
        if self.start_over:
            return None
        table = published_signatures
        with self.engine.connect() as db:
            rows = db.execute(self._published(stage, params, table.c.version, table.c.data)).all()
            self._warn_of_other_settings(db, stage, params)
            if not rows:
                self._warn_if_new_to_the_dataset(db, stage)
        parts = []
        for version, data in rows:
            part = self._not_retired(_unpacked(_holding(unpack(data), keys)))
            ids = prefixed(f"{PUBLISHED_PREFIX}{version}:", part["id"])
            count = part.num_rows
            source = pa.StructArray.from_arrays(
                [
                    pa.array(["published"] * count, pa.string()),
                    pa.array([""] * count, pa.string()),  # sorts before every real URI: published rows are kept
                    pa.array([version] * count, pa.int64()),
                    pa.nulls(count, pa.int64()),
                ],
                fields=list(SOURCE_TYPE),
            )
            parts.append(part.set_column(0, "id", ids).add_column(1, "source", source))
        return pa.concat_tables(parts) if parts else None


class CrossRunDedup:
    """A dedup stage whose clusters also hold the records of every earlier published version."""

    def __init__(
        self,
        inner: DuplicateStage,
        index: SignatureIndex,
        replaces_own: bool = True,
        keyed_uris: frozenset[str] = frozenset(),
        kept_from: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        # ``replaces_own``: versions carry forward, so a record written again replaces its published
        # copy. Delta versions (carry_forward: false) hold each record once: there only a row whose id
        # comes from a key (``keyed_uris``: an edited row keeps its id) can be a new version of
        # itself, and only a near one (an exact repeat is the row unchanged). Any other id includes
        # its content: the same id is the same record, published in an earlier delta.
        self.inner, self.index, self.replaces_own, self.keyed_uris = inner, index, replaces_own, keyed_uris
        self.name, self.reason = inner.name, inner.reason
        self.params = signature_params(inner)
        self.column = f"{SIGNATURE_COLUMN_PREFIX}{self.name}"
        # Records annotators kept another apart from, with their side of that item (``RunDecisions.kept_from``):
        # a record set aside as an earlier version of one is queued again (``review_flags``).
        self.kept_from = kept_from or {}

    @property
    def loads_by_key(self) -> bool:
        """A content hash is the whole cluster key (exact dedup): only published rows with one of this
        run's keys can be in a cluster. A scheduled run adding a few records to millions loads only those."""
        return isinstance(self.inner, ExactDedup)

    def check_columns(self, batch: pa.Table) -> None:
        """The inner stage's check of the records' columns, where it has one (``curation check``)."""
        if hasattr(self.inner, "check_columns"):
            self.inner.check_columns(batch)

    def signatures(self, batch: pa.Table) -> pa.Table:
        return self.inner.signatures(batch)

    def with_signatures(self, kept: pa.Table, rows: pa.Table) -> pa.Table:
        """``kept`` (rows the resolve let through) with their signature ``rows`` (same order, without
        ``source``; ``id`` may be left out: the kept rows' own go with them) in a column that travels to
        the recorder, which takes it off. What is stored is what this stage compared: a later stage
        (clean, PII) can change the text that is published, and the next run compares its input as this
        stage sees it, not as it was published."""
        values = rows.select([name for name in rows.column_names if name != "id"])
        columns = [column.combine_chunks() for column in values.columns]
        carried = pa.StructArray.from_arrays(columns, names=values.column_names)
        return kept.append_column(self.column, carried)

    def to_record(self, batch: pa.Table) -> tuple[pa.Table, pa.Table]:
        """The signature rows of ``batch`` (about to be written) for the index, without ``source``, and the
        batch without the column that carried them (computed from the batch when none did)."""
        if self.column not in batch.column_names:
            return self.signatures(batch).drop_columns(["source"]), batch
        carried = batch[self.column].combine_chunks()
        names = [field.name for field in carried.type]
        rows = pa.Table.from_arrays([batch["id"].combine_chunks(), *carried.flatten()], names=["id", *names])
        return rows, batch.drop_columns([self.column])

    def pairs(self, group: pa.Table) -> pa.Table:
        return self.inner.pairs(group)

    def resolve(self, signatures: Iterable[pa.Table]) -> pa.Table:
        signatures = [t for t in signatures if t.num_rows]
        if not signatures:
            return self.inner.resolve(signatures)
        keys = None
        if self.loads_by_key:
            # Chunks, not ChunkedArrays: pa.chunked_array converts a ChunkedArray element through Python
            # objects (0.4 s per million keys).
            flat = [chunk for s in signatures for chunk in pc.list_flatten(s["keys"]).chunks]
            keys = pa.chunked_array(flat, pa.uint64()).combine_chunks()
        return self.resolve_among(self.earlier(signatures[0].schema, keys), signatures)

    def resolve_among(self, earlier: pa.Table | None, signatures: list[pa.Table]) -> pa.Table:
        """``resolve`` with the published rows given (``earlier``), first: they sort first in a cluster.
        A distributed executor loads them before its shuffle, and gives only the rows that can be in a
        cluster."""
        return self.relabel(self.inner.resolve([earlier, *signatures] if earlier is not None else signatures))

    def earlier(self, schema: pa.Schema, keys: pa.Array | None = None) -> pa.Table | None:
        """Signature rows of every published version, in this run's signature schema (with ``keys``,
        only the rows holding one of them: see ``SignatureIndex.load``).

        A distributed executor adds their keys to its shuffle on keys, then gives those that can be in
        a cluster to ``resolve_among``.
        """
        published = self.index.load(self.name, self.params, keys)
        return None if published is None else published.select(schema.names).cast(schema)

    def relabel(self, aside: pa.Table) -> pa.Table:
        """Drop published rows; rows whose cluster keeps a published record get reason ``earlier_version``.

        A duplicate of its own published version (the same record id: a keyed SQL row read again) is
        not set aside: it is the record as it is now, written again, and replaces the carried one.
        """
        aside = aside.filter(pc.invert(pc.starts_with(aside["id"], PUBLISHED_PREFIX)))
        # "published:<version>:<original id>"; null where the kept record is one of this run's.
        published = pc.extract_regex(aside["duplicate_of"], PUBLISHED_ID)
        own = pc.fill_null(pc.equal(pc.struct_field(published, "original"), aside["id"]), False)
        if not self.replaces_own:
            keyed = pa.array(sorted(self.keyed_uris) if not isinstance(self.inner, ExactDedup) else [], pa.string())
            own = pc.and_(own, pc.is_in(pc.struct_field(aside["source"], "uri"), value_set=keyed))
        if pc.any(own).as_py():
            aside, published = aside.filter(pc.invert(own)), published.filter(pc.invert(own))
        earlier = pc.is_valid(published)
        if not pc.any(earlier).as_py():
            return aside
        version, original = pc.struct_field(published, "version"), pc.struct_field(published, "original")
        detail = pc.binary_join_element_wise("duplicate of ", original, " published in v", version, "")
        relabelled = {"reason": REASON, "detail": detail, "duplicate_of": original}
        for name, value in relabelled.items():
            index = aside.schema.get_field_index(name)
            aside = aside.set_column(index, aside.field(index), pc.if_else(earlier, value, aside[name]))
        return aside

    def review_flags(self, dropped: pa.Table, signatures: list[pa.Table], batches: Iterable[pa.Table]) -> pa.Table:
        """The inner stage's flags (its own reason), and a near-duplicate flag for each record set aside as
        an earlier version of a record an annotator kept another apart from ("not a duplicate"): most
        often that record corrected in its input, which made it a new record the decision does not name.
        The annotator is asked again, beside the text the decision's item showed of the published record
        (a scheduled run does not read it), rather than the decision being silently undone."""
        flags = getattr(self.inner, "review_flags", None)
        if flags is None:  # exact dedup: no review items, so no pair an annotator kept apart
            return empty_flags()
        # And one for each record an annotator kept apart, set aside as an earlier version of another
        # published record (the decision is on a pair, see ``keep_first``): asked about that pair.
        kept_apart = pa.array(sorted(getattr(self.inner, "kept_apart", None) or ()), pa.string())
        # Not a record set aside as an earlier version of itself (a delta version's unchanged record of a
        # changed input): it is no near duplicate to ask about.
        other = pc.fill_null(pc.not_equal(dropped["id"], dropped["duplicate_of"]), False)
        again = dropped.filter(
            pc.and_(
                pc.and_(pc.equal(dropped["reason"], REASON), other),
                pc.or_(
                    pc.is_in(dropped["duplicate_of"], value_set=pa.array(sorted(self.kept_from), pa.string())),
                    pc.is_in(dropped["id"], value_set=kept_apart),
                ),
            )
        )
        if again.num_rows == 0:
            return flags(dropped, signatures, batches)
        index = again.schema.get_field_index("reason")
        again = again.set_column(index, again.field(index), pa.array([self.reason] * again.num_rows, pa.string()))
        published = self._published_signatures(again["duplicate_of"], signatures[0].schema if signatures else None)
        found = flags(pa.concat_tables([dropped, again]), [*signatures, *published], batches)
        payloads = flag_payloads(found, "near_duplicate", {self.name}, set(again["id"].to_pylist()))
        for payload in payloads.values():
            payload["kept"] = {**payload["kept"], **self.kept_from.get(payload["kept"]["id"], {})}
        return with_payloads(found, payloads)

    def _published_signatures(self, ids: pa.Array, schema: pa.Schema | None) -> list[pa.Table]:
        """The published signature rows of ``ids``, under their own ids (for the flags' similarity)."""
        published = self.index.load(self.name, self.params) if schema is not None else None
        if published is None:
            return []
        original = pc.struct_field(pc.extract_regex(published["id"], PUBLISHED_ID), "original")
        rows = published.set_column(0, "id", original).filter(pc.is_in(original, value_set=pc.unique(ids)))
        return [rows.select(schema.names).cast(schema)]


class SignatureRecorder:
    """Last stage before the writer: stores the signatures of the records being written."""

    name = "dedup_index"

    def __init__(self, stages: list[CrossRunDedup], index: SignatureIndex) -> None:
        self.stages, self.index = stages, index

    def __call__(self, batch: pa.Table) -> StageResult:
        for stage in self.stages:
            rows, batch = stage.to_record(batch)
            self.index.stage_pending(stage.name, stage.params, rows)
        return StageResult(kept=batch)

    def published(self, version: int, confirm: Callable[[sa.Connection], None] | None = None) -> None:
        self.index.published(version, confirm)
